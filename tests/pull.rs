//! End-to-end tests of `devenv pull`, run as the unprivileged test user against real
//! registries (the shared one from `scripts/test`, private ones with auth) and the fault
//! server, asserting what lands in the store byte by byte.
//!
//! The contract: `devenv pull [IMAGE] [--platform os/arch[/variant]] [-q]`; on success exit 0,
//! `$DEVENV_HOME/layers/<diff_id hex>/` holds each unpacked layer (whiteouts as 0/0 character
//! devices, opaque directories with `user.overlay.opaque=y`, everything owned by the user,
//! modes kept) and `$DEVENV_HOME/blobs/sha256/<hex>` each compressed layer blob. On failure
//! exit 1, an `error:` line on stderr, and no new `layers/*` or `blobs/sha256/*` entry for the
//! failed content.

// Tests print for the person running them; no ui here.
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultServer};
use common::image::{
    BuiltImage, BuiltLayer, Compression, Format, ImageBuilder, Layer, RawEntry, index,
};
use common::registry::Client;
use common::tree::{Node, Tree};
use common::{
    Bait, Outcome, Registry, TestHome, devenv, host_arch, noise, other_arch, overlay_listing,
    registry, run, runner_ids, unique,
};

fn pull(home: &TestHome, reference: &str) -> Outcome {
    run(devenv(home).args(["pull", reference]))
}

fn push(name: &str, image: &BuiltImage) -> String {
    Client::shared().push(&unique(name), "1", image)
}

/// The layer is in the store, holds exactly `expected`, belongs to the user, and its blob is
/// stored byte for byte.
#[track_caller]
fn assert_layer(home: &TestHome, layer: &BuiltLayer, expected: &Tree) {
    let dir = home.layer(&layer.diff_id);
    assert!(
        dir.is_dir(),
        "layer {} is not in the store; store has {:?}",
        layer.diff_id,
        home.store_entries()
    );
    assert_eq!(&Tree::read(&dir), expected, "layer {}", layer.diff_id);
    let (uid, gid) = runner_ids();
    Tree::assert_owned_by(&dir, uid, gid);
    assert_blob(home, layer);
}

#[track_caller]
fn assert_blob(home: &TestHome, layer: &BuiltLayer) {
    let blob = home.blob(&layer.digest);
    let stored = fs_err::read(&blob).unwrap_or_else(|e| {
        panic!(
            "blob {} not stored ({e}); store has {:?}",
            layer.digest,
            home.store_entries()
        )
    });
    assert!(stored == layer.blob, "stored blob {} differs", layer.digest);
}

fn simple_layer(tag: &str) -> (Layer, Tree) {
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/which", format!("{tag}\n"), 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", format!("#!/bin/sh\necho {tag}\n"), 0o755);
    let tree = Tree::new()
        .dir("etc", 0o755)
        .file("etc/which", format!("{tag}\n"), 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", format!("#!/bin/sh\necho {tag}\n"), 0o755);
    (layer, tree)
}

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn pulls_one_layer_image() {
    let home = TestHome::new();
    let (layer, tree) = simple_layer("one");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/one", &img);
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn pulls_multi_layer_image_one_directory_per_layer() {
    let home = TestHome::new();
    let (l1, t1) = simple_layer("base");
    let l2 = Layer::new()
        .dir("etc", 0o755)
        .file("etc/which", "second\n", 0o600);
    let t2 = Tree::new()
        .dir("etc", 0o755)
        .file("etc/which", "second\n", 0o600);
    let l3 = Layer::new()
        .dir("opt", 0o700)
        .file("opt/data", noise(70_000, 3), 0o444);
    let t3 = Tree::new()
        .dir("opt", 0o700)
        .file("opt/data", noise(70_000, 3), 0o444);
    let img = ImageBuilder::new().layer(l1).layer(l2).layer(l3).build();
    let reference = push("pull/multi", &img);
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &t1);
    assert_layer(&home, &img.layers[1], &t2);
    assert_layer(&home, &img.layers[2], &t3);
    let layers: BTreeSet<_> = home
        .store_entries()
        .into_iter()
        .filter(|e| e.starts_with("layers/"))
        .collect();
    let expected: BTreeSet<_> = img
        .diff_ids()
        .iter()
        .map(|d| format!("layers/{}", common::hex_of(d)))
        .collect();
    assert_eq!(layers, expected);
}

fn pulls_compressed(c: Compression, format: Format) {
    let home = TestHome::new();
    let (l1, t1) = simple_layer(&format!("{c:?}-{format:?}"));
    let l2 = Layer::new().file("big", noise(300_000, 7), 0o644);
    let img = ImageBuilder::new()
        .format(format)
        .layer(l1.compression(c))
        .layer(l2.compression(c))
        .build();
    let reference = push("pull/compressed", &img);
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &t1);
    assert_layer(
        &home,
        &img.layers[1],
        &Tree::new().file("big", noise(300_000, 7), 0o644),
    );
}

#[test]
fn pulls_gzip_layers() {
    pulls_compressed(Compression::Gzip, Format::Oci);
}

#[test]
fn pulls_zstd_layers() {
    pulls_compressed(Compression::Zstd, Format::Oci);
}

#[test]
fn pulls_uncompressed_layers() {
    pulls_compressed(Compression::None, Format::Oci);
}

#[test]
fn pulls_docker_schema2_gzip_image() {
    pulls_compressed(Compression::Gzip, Format::Docker);
}

#[test]
fn pulls_docker_schema2_uncompressed_image() {
    pulls_compressed(Compression::None, Format::Docker);
}

#[test]
fn pulls_image_by_digest() {
    let home = TestHome::new();
    let (layer, tree) = simple_layer("digest");
    let img = ImageBuilder::new().layer(layer).build();
    let name = unique("pull/bydigest");
    Client::shared().push(&name, "1", &img);
    let reference = format!("{}/{name}@{}", registry(), img.manifest_digest);
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
}

// ---------------------------------------------------------------------------------------------
// Platforms

/// An index over the host's platform and another, each with a file naming its architecture.
fn two_platform_index(format: Format) -> (common::image::BuiltIndex, BuiltImage, BuiltImage) {
    let build = |arch: &str, variant: Option<&str>| {
        ImageBuilder::new()
            .format(format)
            .platform("linux", arch, variant)
            .layer(Layer::new().file("arch", format!("{arch}\n"), 0o644))
            .build()
    };
    let host = build(host_arch(), None);
    let other_variant = (other_arch() == "arm64").then_some("v8");
    let other = build(other_arch(), other_variant);
    (
        index(format, vec![host.clone(), other.clone()]),
        host,
        other,
    )
}

fn index_pull(format: Format, platform: Option<&str>) {
    let home = TestHome::new();
    let (idx, host, other) = two_platform_index(format);
    let reference = Client::shared().push_index(&unique("pull/index"), "multi", &idx);
    let mut cmd = devenv(&home);
    cmd.args(["pull", &reference]);
    let want = match platform {
        Some(p) => {
            cmd.args(["--platform", p]);
            other.clone()
        }
        None => host.clone(),
    };
    let unwanted = if platform.is_some() { &host } else { &other };
    run(&mut cmd).success();
    assert_layer(
        &home,
        &want.layers[0],
        &Tree::new().file("arch", format!("{}\n", want.architecture), 0o644),
    );
    assert!(
        !home.layer(&unwanted.layers[0].diff_id).exists(),
        "the other platform's layer was pulled too"
    );
    assert!(!home.blob(&unwanted.layers[0].digest).exists());
}

#[test]
fn oci_index_defaults_to_host_platform() {
    index_pull(Format::Oci, None);
}

#[test]
fn oci_index_platform_flag_picks_the_other_image() {
    index_pull(Format::Oci, Some(&format!("linux/{}", other_arch())));
}

#[test]
fn docker_manifest_list_platform_flag_picks_the_other_image() {
    index_pull(Format::Docker, Some(&format!("linux/{}", other_arch())));
}

#[test]
fn platform_variant_picks_between_arm_versions() {
    let home = TestHome::new();
    let build = |variant: &str| {
        ImageBuilder::new()
            .platform("linux", "arm", Some(variant))
            .layer(Layer::new().file("variant", format!("{variant}\n"), 0o644))
            .build()
    };
    let (v6, v7) = (build("v6"), build("v7"));
    let idx = index(Format::Oci, vec![v6.clone(), v7.clone()]);
    let reference = Client::shared().push_index(&unique("pull/variant"), "multi", &idx);
    run(devenv(&home).args(["pull", &reference, "--platform", "linux/arm/v7"])).success();
    assert_layer(
        &home,
        &v7.layers[0],
        &Tree::new().file("variant", "v7\n", 0o644),
    );
    assert!(!home.layer(&v6.layers[0].diff_id).exists());
}

#[test]
fn env_toml_platform_selects_the_image() {
    let home = TestHome::new();
    let (idx, host, other) = two_platform_index(Format::Oci);
    let reference = Client::shared().push_index(&unique("pull/envplat"), "multi", &idx);
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{reference}\"\nplatform = \"linux/{}\"\n",
            other_arch()
        ),
    );
    run(devenv(&home).arg("pull")).success();
    assert_layer(
        &home,
        &other.layers[0],
        &Tree::new().file("arch", format!("{}\n", other.architecture), 0o644),
    );
    assert!(!home.layer(&host.layers[0].diff_id).exists());
}

#[test]
fn index_without_requested_platform_is_an_error() {
    let home = TestHome::new();
    let (idx, _, _) = two_platform_index(Format::Oci);
    let reference = Client::shared().push_index(&unique("pull/noplat"), "multi", &idx);
    run(devenv(&home).args(["pull", &reference, "--platform", "linux/s390x"])).failure(&["s390x"]);
    assert_eq!(home.store_entries(), BTreeSet::new());
}

// ---------------------------------------------------------------------------------------------
// Layer contents

#[test]
fn whiteouts_and_opaque_dirs_merge_under_overlay() {
    let home = TestHome::new();
    let lower = Layer::new()
        .dir("a", 0o755)
        .file("a/keep", "keep\n", 0o644)
        .file("a/gone", "gone\n", 0o644)
        .dir("b", 0o755)
        .file("b/old", "old\n", 0o644)
        .dir("c", 0o755)
        .file("c/x", "x\n", 0o644);
    let upper = Layer::new()
        .dir("a", 0o755)
        .whiteout("a/gone")
        .dir("b", 0o755)
        .opaque("b")
        .file("b/new", "new\n", 0o644)
        .whiteout("c");
    let img = ImageBuilder::new().layer(lower).layer(upper).build();
    let reference = push("pull/whiteouts", &img);
    pull(&home, &reference).success();
    assert_layer(
        &home,
        &img.layers[1],
        &Tree::new()
            .dir("a", 0o755)
            .whiteout("a/gone")
            .opaque_dir("b", 0o755)
            .file("b/new", "new\n", 0o644)
            .whiteout("c"),
    );
    let listing = overlay_listing(
        &home,
        &[
            home.layer(&img.layers[1].diff_id),
            home.layer(&img.layers[0].diff_id),
        ],
    );
    assert_eq!(
        listing,
        [
            "a d 755",
            "a/keep f 644",
            "b d 755",
            "b/new f 644",
            "a/keep: keep",
            "b/new: new",
        ]
    );
}

#[test]
fn keeps_links_modes_and_long_names() {
    let home = TestHome::new();
    let long_dir = format!("long/{}", "d".repeat(90));
    let long_file = format!("{long_dir}/{}", "f".repeat(90));
    assert!(long_file.len() > 100 && long_file.len() < 255);
    let long_target = format!("../{}", "t".repeat(150));
    let layer = Layer::new()
        .dir("bin", 0o755)
        .file("bin/prog", "#!/bin/sh\n", 0o755)
        .hardlink("bin/prog-alias", "bin/prog")
        .symlink("bin/sh", "prog")
        .symlink("bin/abs", "/usr/bin/env")
        .symlink("bin/long-target", &long_target)
        .dir("ro", 0o555)
        .file("ro/inside", "read-only dir\n", 0o444)
        .file("setuid-dropped-or-kept", "s\n", 0o4755)
        .dir("long", 0o755)
        .dir(&long_dir, 0o750)
        .file(&long_file, "long\n", 0o640)
        .hardlink("long-link", &long_file);
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/links", &img);
    pull(&home, &reference).success();
    let dir = home.layer(&img.layers[0].diff_id);
    let mut got = Tree::read(&dir);
    // Whether setuid bits survive as the unprivileged user is the kernel's call; the rwx bits
    // must.
    match got.0.remove("setuid-dropped-or-kept") {
        Some(Node::File { mode, data }) => {
            assert_eq!(mode & 0o777, 0o755);
            assert_eq!(data, b"s\n");
        }
        other => panic!("setuid file: {other:?}"),
    }
    let expected = Tree::new()
        .dir("bin", 0o755)
        .file("bin/prog", "#!/bin/sh\n", 0o755)
        .file("bin/prog-alias", "#!/bin/sh\n", 0o755)
        .symlink("bin/sh", "prog")
        .symlink("bin/abs", "/usr/bin/env")
        .symlink("bin/long-target", &long_target)
        .dir("ro", 0o555)
        .file("ro/inside", "read-only dir\n", 0o444)
        .dir("long", 0o755)
        .dir(&long_dir, 0o750)
        .file(&long_file, "long\n", 0o640)
        .file("long-link", "long\n", 0o640);
    assert_eq!(got, expected);
    let ino = |p: &str| fs_err::symlink_metadata(dir.join(p)).unwrap().ino();
    assert_eq!(
        ino("bin/prog"),
        ino("bin/prog-alias"),
        "hardlink became a copy"
    );
    assert_eq!(ino(&long_file), ino("long-link"), "hardlink became a copy");
    let (uid, gid) = runner_ids();
    Tree::assert_owned_by(&dir, uid, gid);
}

#[test]
fn device_nodes_are_skipped() {
    let home = TestHome::new();
    let layer = Layer::new()
        .dir("dev", 0o755)
        .raw(RawEntry::new("dev/null", b'3').device(1, 3).mode(0o666))
        .raw(RawEntry::new("dev/sda", b'4').device(8, 0).mode(0o660))
        .raw(RawEntry::new("dev/fifo", b'6').mode(0o644))
        .file("after", "after devices\n", 0o644);
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/devices", &img);
    pull(&home, &reference).success();
    let got = Tree::read(&home.layer(&img.layers[0].diff_id));
    assert_eq!(
        got.get("after"),
        Tree::new()
            .file("after", "after devices\n", 0o644)
            .get("after")
    );
    for dev in ["dev/null", "dev/sda"] {
        assert!(
            !matches!(got.get(dev), Some(Node::Other(_))),
            "device {dev} was created: {got:?}"
        );
    }
}

/// umoci builds the image (unpack, change the rootfs, repack: one layer with files, one with a
/// whiteout) and skopeo pushes it, so neither the layers nor the manifest come from our code.
/// (`umoci insert` 0.4.7 writes tars without their final padding, which GNU tar rejects too,
/// so it is not used.)
#[test]
fn pulls_image_built_by_umoci_and_skopeo() {
    let home = TestHome::new();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    let image = format!("{}:t", layout.display());
    let sh = |args: &[&str]| {
        run(Command::new(args[0])
            .args(&args[1..])
            .env("PATH", common::SYSTEM_PATH))
        .success()
    };
    sh(&["umoci", "init", "--layout", &layout.display().to_string()]);
    sh(&["umoci", "new", "--image", &image]);
    let bundle_s = bundle.display().to_string();
    let rootless: &[&str] = if common::is_root() {
        &[]
    } else {
        &["--rootless"]
    };
    sh(&[
        &["umoci", "unpack"],
        rootless,
        &["--image", &image, &bundle_s],
    ]
    .concat());
    fs_err::create_dir_all(rootfs.join("etc")).unwrap();
    fs_err::create_dir_all(rootfs.join("bin")).unwrap();
    fs_err::write(rootfs.join("etc/hello.txt"), "hello from umoci\n").unwrap();
    fs_err::write(rootfs.join("etc/gone.txt"), "whited out later\n").unwrap();
    fs_err::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    // repack takes no --rootless: unpack recorded it in the bundle.
    sh(&[
        "umoci",
        "repack",
        "--refresh-bundle",
        "--image",
        &image,
        &bundle_s,
    ]);
    fs_err::remove_file(rootfs.join("etc/gone.txt")).unwrap();
    sh(&["umoci", "repack", "--image", &image, &bundle_s]);
    sh(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        host_arch(),
        "--config.env",
        "MADE_BY=umoci",
    ]);
    let name = unique("pull/umoci");
    let reference = format!("{}/{name}:t", registry());
    sh(&[
        "skopeo",
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{reference}"),
    ]);
    pull(&home, &reference).success();

    let config = Client::shared().get_config(&name, "t");
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(diff_ids.len(), 2, "{config}");
    let l0 = home.layer(&diff_ids[0]);
    assert_eq!(
        fs_err::read(l0.join("etc/hello.txt")).unwrap(),
        b"hello from umoci\n"
    );
    let busybox = fs_err::read(l0.join("bin/busybox")).unwrap();
    assert!(busybox == fs_err::read("/usr/bin/busybox").unwrap());
    assert_eq!(
        fs_err::metadata(l0.join("bin/busybox")).unwrap().mode() & 0o777,
        0o755
    );
    let l1 = Tree::read(&home.layer(&diff_ids[1]));
    assert_eq!(
        l1,
        Tree::new().dir("etc", 0o755).whiteout("etc/gone.txt"),
        "umoci's whiteout layer"
    );
    let listing = overlay_listing(&home, &[home.layer(&diff_ids[1]), l0]);
    assert!(
        listing
            .iter()
            .any(|l| l == "etc/hello.txt: hello from umoci"),
        "{listing:?}"
    );
    assert!(
        !listing.iter().any(|l| l.contains("gone.txt")),
        "{listing:?}"
    );
    assert!(
        listing.iter().any(|l| l == "bin/busybox f 755"),
        "{listing:?}"
    );
}

#[test]
fn pulls_zstd_image_recompressed_by_skopeo() {
    let home = TestHome::new();
    let work = tempfile::tempdir().unwrap();
    let gz = ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("data", 0o755)
                .file("data/f", noise(50_000, 11), 0o644),
        )
        .build();
    let src_name = unique("pull/skopeo-src");
    let src = Client::shared().push(&src_name, "1", &gz);
    let layout = work.path().join("zstd");
    let sh = |args: &[&str]| run(Command::new(args[0]).args(&args[1..])).success();
    sh(&[
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        "--dest-compress-format=zstd",
        &format!("docker://{src}"),
        &format!("oci:{}:t", layout.display()),
    ]);
    let name = unique("pull/skopeo-zstd");
    let reference = format!("{}/{name}:1", registry());
    sh(&[
        "skopeo",
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{reference}"),
    ]);
    let (_, manifest) = Client::shared().get_manifest(&name, "1");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
        "skopeo did not make a zstd layer: {manifest}"
    );
    pull(&home, &reference).success();
    // Same tar, so the same diff_id as the gzip original.
    let got = Tree::read(&home.layer(&gz.layers[0].diff_id));
    assert_eq!(
        got,
        Tree::new()
            .dir("data", 0o755)
            .file("data/f", noise(50_000, 11), 0o644)
    );
    let zstd_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    assert!(home.blob(zstd_digest).is_file());
}

// ---------------------------------------------------------------------------------------------
// Hostile layers: each escape is aimed at a bait directory the user could write to.

/// Enough `..` to climb from anywhere in the store to `/`.
fn up() -> String {
    "../".repeat(40)
}

fn find_named(root: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs_err::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name() == name {
                found.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    found
}

#[test]
fn unpack_refuses_or_contains_dotdot_entry() {
    hostile_in_home("pull/dotdot", |bait| {
        Layer::new()
            .file("ok", "fine\n", 0o644)
            .raw(RawEntry::new(format!("{}{bait}/pwned", up()), b'0').data("pwned\n"))
            .raw(RawEntry::new("../pwned", b'0').data("pwned\n"))
    });
}

#[test]
fn unpack_keeps_absolute_entry_inside_the_layer() {
    let (home, out, layer) = hostile_in_home("pull/absolute", |bait| {
        Layer::new()
            .raw(
                RawEntry::new(format!("/{bait}/pwned"), b'0')
                    .data("pwned\n")
                    .mode(0o644),
            )
            .raw(RawEntry::new("/abs-top", b'0').data("top\n").mode(0o644))
    });
    let out = out.success();
    let dir = home.layer(&layer.diff_id);
    assert_eq!(
        fs_err::read(dir.join("abs-top")).unwrap(),
        b"top\n",
        "{out:?}"
    );
    let pwned = find_named(&dir, "pwned");
    assert_eq!(
        pwned.len(),
        1,
        "absolute entry not kept inside the layer: {out:?}"
    );
}

#[test]
fn unpack_refuses_or_contains_symlink_to_root() {
    hostile_in_home("pull/symlink-root", |bait| {
        Layer::new()
            .symlink("evil", "/")
            .raw(RawEntry::new(format!("evil/{bait}/pwned"), b'0').data("pwned\n"))
    });
}

#[test]
fn unpack_refuses_or_contains_symlink_to_dotdot() {
    hostile_in_home("pull/symlink-dotdot", |bait| {
        Layer::new()
            .symlink("up", up().trim_end_matches('/'))
            .raw(RawEntry::new(format!("up/{bait}/pwned"), b'0').data("pwned\n"))
    });
}

#[test]
fn unpack_refuses_or_contains_symlinked_directory_chain() {
    // A symlink to a directory that is itself a symlink out: resolution must be in-root at
    // every step.
    hostile_in_home("pull/symlink-chain", |bait| {
        Layer::new()
            .dir("a", 0o755)
            .symlink("a/b", "../c")
            .symlink("c", &format!("{}{bait}", up()))
            .raw(RawEntry::new("a/b/pwned", b'0').data("pwned\n"))
    });
}

#[test]
fn unpack_refuses_or_contains_hardlink_to_outside() {
    hostile_in_home("pull/hardlink-out", |bait| {
        Layer::new()
            .hardlink("pwned", &format!("{}{bait}/secret", up()))
            .raw(RawEntry::new("pwned", b'0').data("overwritten through the link\n"))
    });
}

#[test]
fn unpack_refuses_or_contains_hardlink_through_symlink() {
    hostile_in_home("pull/hardlink-symlink", |bait| {
        Layer::new()
            .symlink("evil", "/")
            .hardlink("pwned", &format!("evil/{bait}/secret"))
    });
}

#[test]
fn unpack_refuses_or_contains_whiteout_naming_dotdot() {
    hostile_in_home("pull/whiteout-dotdot", |bait| {
        Layer::new()
            .raw(RawEntry::new(format!("{}{bait}/.wh.victim", up()), b'0'))
            .raw(RawEntry::new("../.wh.x", b'0'))
    });
}

/// Pulls a one-layer image whose layer `make` aims at this home's bait (it gets the bait's
/// path relative to `/`), and asserts the pull was refused (exit 1, `error:`, no new store
/// entry) or contained (every file named `pwned` is inside the layer); the bait is unchanged
/// either way.
fn hostile_in_home(
    name: &str,
    make: impl FnOnce(&str) -> Layer,
) -> (TestHome, Outcome, BuiltLayer) {
    let home = TestHome::new();
    let bait = Bait::new(&home);
    let layer = make(&bait.rel_from_root());
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push(name, &img);
    // A control: this store and registry can pull at all, so a refusal below means something.
    let (control, control_tree) = simple_layer("control");
    let control = ImageBuilder::new().layer(control).build();
    pull(&home, &push("pull/control", &control)).success();
    assert_layer(&home, &control.layers[0], &control_tree);
    let before = home.store_entries();
    let out = pull(&home, &reference);
    bait.assert_unchanged();
    // Which of the two allowed outcomes happened, for whoever reads the log.
    match out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:") || l.starts_with("caused by:"))
    {
        Some(_) if !out.status.success() => eprintln!("{name}: refused:\n{}", out.stderr),
        _ => eprintln!("{name}: contained"),
    }
    let layer_dir = home.layer(&img.layers[0].diff_id);
    let markers = find_named(home.root(), "pwned");
    if out.status.success() {
        for m in &markers {
            assert!(
                m.starts_with(&layer_dir),
                "{} escaped the layer {}: {out:?}",
                m.display(),
                layer_dir.display()
            );
        }
    } else {
        assert_no_layer_stored(&home, &before, &img);
    }
    let out = if out.status.success() {
        out
    } else {
        out.failure(&[])
    };
    (home, out, img.layers[0].clone())
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[test]
fn pulls_from_htpasswd_registry_with_docker_config_credentials() {
    let home = TestHome::new();
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let (layer, tree) = simple_layer("private");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = reg.client().push("team/private", "1", &img);
    home.docker_login(reg.addr(), "alice", "s3cret");
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn htpasswd_registry_without_credentials_is_an_authentication_error() {
    let home = TestHome::new();
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let img = ImageBuilder::new().layer(simple_layer("private").0).build();
    let reference = reg.client().push("team/private", "1", &img);
    pull(&home, &reference).failure(&["authenticat"]);
    assert_eq!(home.store_entries(), BTreeSet::new());
}

#[test]
fn htpasswd_registry_with_wrong_password_is_an_authentication_error() {
    let home = TestHome::new();
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let img = ImageBuilder::new().layer(simple_layer("private").0).build();
    let reference = reg.client().push("team/private", "1", &img);
    home.docker_login(reg.addr(), "alice", "wrong");
    pull(&home, &reference).failure(&["authenticat"]);
    assert_eq!(home.store_entries(), BTreeSet::new());
}

#[test]
fn follows_bearer_token_challenge() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (layer, tree) = simple_layer("bearer");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = srv.serve_image("x", "1", &img);
    srv.require_bearer("tok-anon", None);
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
    let reqs = srv.requests();
    let token_reqs: Vec<_> = reqs.iter().filter(|r| r.path == "/token").collect();
    assert!(!token_reqs.is_empty(), "no token was fetched: {reqs:#?}");
    assert!(
        token_reqs.iter().any(|r| r.query.contains("service=test")
            && (r.query.contains("scope=repository:x:pull")
                || r.query.contains("scope=repository%3Ax%3Apull"))),
        "token request without the challenge's service and scope: {token_reqs:#?}"
    );
    let blob = srv.blob_path("x", &img.layers[0].digest);
    assert!(
        reqs.iter().any(|r| r.path == blob
            && r.method == "GET"
            && r.authorization.as_deref() == Some("Bearer tok-anon")),
        "blob never fetched with the token: {reqs:#?}"
    );
}

#[test]
fn bearer_token_endpoint_gets_docker_config_credentials() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (layer, tree) = simple_layer("bearer-basic");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = srv.serve_image("x", "1", &img);
    srv.require_bearer("tok-bob", Some(("bob", "pw")));
    pull(&home, &reference).failure(&["authenticat"]);
    assert_eq!(home.store_entries(), BTreeSet::new());
    home.docker_login(srv.addr(), "bob", "pw");
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
}

// ---------------------------------------------------------------------------------------------
// Faults

fn served(srv: &FaultServer, tag: &str) -> (String, BuiltImage, Tree) {
    let (layer, _) = simple_layer(tag);
    let big = noise(512 * 1024, 5);
    let img = ImageBuilder::new()
        .layer(layer.file("big", &big, 0o644))
        .build();
    let tree = simple_layer(tag).1.file("big", &big, 0o644);
    (srv.serve_image("x", "1", &img), img, tree)
}

fn retries_after_status(code: u16) {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (reference, img, tree) = served(&srv, "status");
    let blob = srv.blob_path("x", &img.layers[0].digest);
    let manifest = srv.manifest_path("x", "1");
    srv.once(&manifest, Fault::Status(code));
    srv.once(&blob, Fault::Status(code));
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
    assert_eq!(srv.gets(&blob), 2, "one failed and one good blob fetch");
}

#[test]
fn retries_after_429() {
    retries_after_status(429);
}

#[test]
fn retries_after_500() {
    retries_after_status(500);
}

#[test]
fn resumes_cut_blob_with_range() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (reference, img, tree) = served(&srv, "cut");
    let blob = srv.blob_path("x", &img.layers[0].digest);
    let cut_at = img.layers[0].blob.len() / 2;
    srv.once(&blob, Fault::CutAfter(cut_at));
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
    let gets: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == blob)
        .collect();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    let range = gets[1]
        .range
        .as_deref()
        .unwrap_or_else(|| panic!("the retry did not resume with Range: {gets:#?}"));
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range {range:?}"));
    assert!(
        start > 0 && start <= cut_at,
        "resumed at {start}, cut at {cut_at}"
    );
}

/// After a failed pull of `img`: the store gained no layer and no layer blob; the only new
/// entry allowed is the image's config blob, which was verified before the failure.
#[track_caller]
fn assert_no_layer_stored(home: &TestHome, before: &BTreeSet<String>, img: &BuiltImage) {
    let config = format!("blobs/sha256/{}", common::hex_of(&img.config_digest));
    let new: Vec<_> = home
        .store_entries()
        .difference(before)
        .filter(|e| **e != config)
        .cloned()
        .collect();
    assert!(new.is_empty(), "a failed pull left {new:?} in the store");
    for l in &img.layers {
        assert!(
            !home.layer(&l.diff_id).exists(),
            "layer {} stored",
            l.diff_id
        );
        assert!(!home.blob(&l.digest).exists(), "blob {} stored", l.digest);
    }
}

/// The error names the blob's digest or the layer's diff_id (at least their first 12 hex
/// digits, as `Digest::short` prints them).
#[track_caller]
fn assert_names_layer(out: &Outcome, layer: &BuiltLayer) {
    let short = |d: &str| common::hex_of(d)[..12].to_owned();
    assert!(
        out.stderr.contains(&short(&layer.digest)) || out.stderr.contains(&short(&layer.diff_id)),
        "the error names neither {} nor {}: {out:?}",
        layer.digest,
        layer.diff_id
    );
}

#[test]
fn wrong_digest_blob_fails_and_leaves_store_unchanged() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (reference, img, _) = served(&srv, "wrong");
    let blob = srv.blob_path("x", &img.layers[0].digest);
    srv.always(&blob, Fault::WrongBytes);
    let out = pull(&home, &reference).failure(&[]);
    assert_names_layer(&out, &img.layers[0]);
    assert_no_layer_stored(&home, &BTreeSet::new(), &img);
}

#[test]
fn corrupt_blob_in_registry_storage_is_refused() {
    let home = TestHome::new();
    let reg = Registry::start();
    let (layer, _) = simple_layer("corrupt");
    let img = ImageBuilder::new()
        .layer(layer.compression(Compression::None))
        .build();
    let reference = reg.client().push("corrupt", "1", &img);
    let data = reg.blob_data(&img.layers[0].digest);
    let mut bytes = fs_err::read(&data).unwrap();
    // Inside the first file's content: still a valid tar, only the digest is wrong.
    let pos = bytes.windows(6).position(|w| w == b"corrup").unwrap();
    bytes[pos] = b'C';
    fs_err::write(&data, &bytes).unwrap();
    let out = pull(&home, &reference).failure(&[]);
    assert_names_layer(&out, &img.layers[0]);
    assert_no_layer_stored(&home, &BTreeSet::new(), &img);
}

#[test]
fn concurrent_pulls_share_the_store_and_fetch_each_blob_once() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let img = ImageBuilder::new()
        .layer(Layer::new().file("a", noise(1 << 20, 21), 0o644))
        .layer(Layer::new().file("b", noise(1 << 20, 22), 0o644))
        .build();
    let reference = srv.serve_image("x", "1", &img);
    for l in &img.layers {
        let slow = Fault::Slow {
            chunk: 64 * 1024,
            delay: Duration::from_millis(25),
        };
        srv.always(&srv.blob_path("x", &l.digest), slow);
    }
    let a = common::spawn(devenv(&home).args(["pull", &reference]));
    let b = common::spawn(devenv(&home).args(["pull", &reference]));
    let (a, b) = (common::wait(a.0, a.1), common::wait(b.0, b.1));
    a.success();
    b.success();
    assert_layer(
        &home,
        &img.layers[0],
        &Tree::new().file("a", noise(1 << 20, 21), 0o644),
    );
    assert_layer(
        &home,
        &img.layers[1],
        &Tree::new().file("b", noise(1 << 20, 22), 0o644),
    );
    for l in &img.layers {
        assert_eq!(
            srv.gets(&srv.blob_path("x", &l.digest)),
            1,
            "blob {} fetched more than once",
            l.digest
        );
    }
}

#[test]
fn second_pull_fetches_no_blob_again() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (reference, img, tree) = served(&srv, "again");
    pull(&home, &reference).success();
    pull(&home, &reference).success();
    assert_layer(&home, &img.layers[0], &tree);
    assert_eq!(srv.gets(&srv.blob_path("x", &img.layers[0].digest)), 1);
}

#[test]
fn pinned_digest_in_the_store_makes_no_registry_request() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let (reference, img, tree) = served(&srv, "pinned");
    let pinned = format!(
        "{}@{}",
        reference.rsplit_once(':').unwrap().0,
        img.manifest_digest
    );
    pull(&home, &pinned).success();
    let before = srv.requests().len();
    assert!(before > 0);
    pull(&home, &pinned).success();
    assert_eq!(
        srv.requests().len(),
        before,
        "a cached pinned digest went to the registry: {:?}",
        &srv.requests()[before..]
    );
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn pull_killed_mid_download_leaves_nothing_trusted_and_next_pull_succeeds() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let data = noise(4 << 20, 31);
    let img = ImageBuilder::new()
        .layer(Layer::new().file("big", &data, 0o644))
        .build();
    let reference = srv.serve_image("x", "1", &img);
    let blob = srv.blob_path("x", &img.layers[0].digest);
    srv.once(
        &blob,
        Fault::Slow {
            chunk: 32 * 1024,
            delay: Duration::from_millis(50),
        },
    );
    let (mut child, what) = common::spawn(devenv(&home).args(["pull", &reference]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.gets(&blob) == 0 {
        assert!(Instant::now() < deadline, "the blob was never requested");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pull ended before the blob download: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    let killed = common::wait(child, what);
    assert!(!killed.status.success(), "{killed:?}");
    assert!(
        !home.layer(&img.layers[0].diff_id).exists(),
        "a half-pulled layer is visible"
    );
    assert!(
        !home.blob(&img.layers[0].digest).exists(),
        "a half-downloaded blob is visible"
    );
    pull(&home, &reference).success();
    assert_layer(
        &home,
        &img.layers[0],
        &Tree::new().file("big", &data, 0o644),
    );
}

// ---------------------------------------------------------------------------------------------
// References and env.toml

#[test]
fn unknown_image_is_an_error() {
    let home = TestHome::new();
    let name = unique("pull/does-not-exist");
    let reference = format!("{}/{name}:1", registry());
    pull(&home, &reference).failure(&[&name]);
    assert_eq!(home.store_entries(), BTreeSet::new());
}

#[test]
fn unknown_tag_is_an_error() {
    let home = TestHome::new();
    let img = ImageBuilder::new().layer(simple_layer("tag").0).build();
    let name = unique("pull/tagged");
    Client::shared().push(&name, "1", &img);
    pull(&home, &format!("{}/{name}:nope", registry())).failure(&["nope"]);
    assert_eq!(home.store_entries(), BTreeSet::new());
}

fn env_toml_image(home: &TestHome) -> (BuiltImage, Tree) {
    let (layer, tree) = simple_layer("envtoml");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/envtoml", &img);
    home.write(
        "project/env.toml",
        format!("[image]\nbase = \"{reference}\"\n"),
    );
    (img, tree)
}

#[test]
fn pulls_base_image_from_env_toml() {
    let home = TestHome::new();
    let (img, tree) = env_toml_image(&home);
    run(devenv(&home).arg("pull")).success();
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn finds_env_toml_upward_from_a_subdirectory() {
    let home = TestHome::new();
    let (img, tree) = env_toml_image(&home);
    let sub = home.mkdir("project/src/deep");
    run(devenv(&home).arg("pull").current_dir(&sub)).success();
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn dash_c_points_pull_at_the_project() {
    let home = TestHome::new();
    let (img, tree) = env_toml_image(&home);
    run(devenv(&home)
        .arg("-C")
        .arg(home.project())
        .arg("pull")
        .current_dir(home.home()))
    .success();
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn pull_without_image_or_env_toml_is_an_error() {
    let home = TestHome::new();
    run(devenv(&home).arg("pull")).failure(&["env.toml"]);
}

#[test]
fn quiet_pull_prints_nothing() {
    let home = TestHome::new();
    let (layer, tree) = simple_layer("quiet");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/quiet", &img);
    let out = run(devenv(&home).args(["pull", "-q", &reference])).success();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{out:?}"
    );
    assert_layer(&home, &img.layers[0], &tree);
}

#[test]
fn pull_keeps_stdout_for_data() {
    let home = TestHome::new();
    let (layer, _) = simple_layer("stdout");
    let img = ImageBuilder::new().layer(layer).build();
    let reference = push("pull/stdout", &img);
    let out = pull(&home, &reference).success();
    assert_eq!(out.stdout, "", "status belongs on stderr: {out:?}");
}
