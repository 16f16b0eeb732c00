//! End-to-end tests of `devenv export`, run as the unprivileged test user: a project over the
//! busybox test image with two `[setup]` steps (one writes /opt/marker, one removes
//! /etc/os-release, a whiteout) is exported, then read by real tools: skopeo inspects it,
//! umoci unpacks it, and skopeo pushes it to the shared registry, where `devenv run` in another
//! project runs it. One test exports a Python venv built from a real PyPI wheel on the Debian
//! bookworm test image (network needed, as in tests/build.rs).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::env::{busybox_layer, push, write_env_toml};
use common::image::ImageBuilder;
use common::registry::registry;
use common::{Outcome, TestHome, as_user, bookworm_image, devenv, run, unique};

const MARKER: &str = "export-tests-image";

/// The busybox image with an /opt directory, pushed once per test process.
fn base_ref() -> &'static str {
    static REF: OnceLock<String> = OnceLock::new();
    REF.get_or_init(|| {
        let image = ImageBuilder::new().layer(busybox_layer(MARKER).dir("opt", 0o755));
        push("export/busybox", &image.build())
    })
}

const SETUP: &str = "[setup]\nrun = [\"echo hi > /opt/marker\", \"rm /etc/os-release\"]\n\n\
[env]\nGREETING = \"hello from env.toml\"\n";

fn project() -> TestHome {
    let home = TestHome::new();
    write_env_toml(&home, "project", base_ref(), SETUP);
    home
}

/// A tool run as the test user with HOME in the test home.
fn tool(home: &TestHome, program: &str, args: &[&str]) -> Outcome {
    run(as_user(program)
        .env("HOME", home.home())
        .env("XDG_RUNTIME_DIR", home.home())
        .args(args))
}

fn export(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).arg("export").args(args))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// The image config skopeo reads from `layout` (`oci:DIR`).
fn image_config(home: &TestHome, layout: &str) -> serde_json::Value {
    let config = tool(home, "skopeo", &["inspect", "--config", layout]).success();
    serde_json::from_str(&config.stdout).unwrap()
}

/// The config's `Env` entries.
fn config_env(c: &serde_json::Value) -> Vec<&str> {
    c["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect()
}

/// `skopeo copy SRC docker://REGISTRY/<unique repo>:1`: the exported image pushed by a real
/// tool; the reference it was pushed to.
fn skopeo_push(home: &TestHome, src: &str, repo: &str) -> String {
    let dest = format!("{}/{}:1", registry(), unique(repo));
    let args = ["--insecure-policy", "copy", "--dest-tls-verify=false", src];
    let target = format!("docker://{dest}");
    let all: Vec<&str> = args.iter().copied().chain([target.as_str()]).collect();
    tool(home, "skopeo", &all).success();
    dest
}

#[test]
fn export_is_an_oci_layout_that_skopeo_and_umoci_read() {
    let home = project();
    let dir = home.root().join("image");
    let out = export(&home, &["-o", path(&dir)]).success();
    assert!(out.stderr.contains("Exported"), "{out:?}");
    for f in ["oci-layout", "index.json", "blobs/sha256"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );

    let layout = format!("oci:{}", path(&dir));
    let inspect = tool(&home, "skopeo", &["inspect", &layout]).success();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(
        v["Layers"].as_array().map(|l| l.len()),
        Some(4),
        "base + two setup layers + the workspace: {inspect:?}"
    );
    let c = image_config(&home, &layout);
    let env = config_env(&c);
    assert!(env.contains(&"GREETING=hello from env.toml"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    // not the host's (nor the test runner's) variables
    assert!(!env.iter().any(|e| e.starts_with("HOME=")), "{env:?}");
    let history: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.contains(&"devenv: run echo hi > /opt/marker"),
        "{history:?}"
    );

    let bundle = home.root().join("bundle");
    tool(
        &home,
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", path(&dir)),
            path(&bundle),
        ],
    )
    .success();
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs_err::read_to_string(rootfs.join("opt/marker")).unwrap(),
        "hi\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(
        fs_err::symlink_metadata(rootfs.join("etc/os-release")).is_err(),
        "the whiteout hides /etc/os-release"
    );
}

#[test]
fn an_exported_env_pushed_with_skopeo_runs_in_another_project() {
    let home = project();
    let dir = home.root().join("image");
    export(&home, &["-o", path(&dir), "--tag", "v1"]).success();
    let dest = skopeo_push(&home, &format!("oci:{}:v1", path(&dir)), "export/x");

    let other = TestHome::new();
    write_env_toml(&other, "project", &dest, "");
    let out = run(devenv(&other).args([
        "run",
        "--",
        "sh",
        "-c",
        "cat /opt/marker; echo \"$GREETING\"; test -e /etc/os-release && echo present || echo gone",
    ]))
    .success();
    assert_eq!(out.stdout, "hi\nhello from env.toml\ngone\n", "{out:?}");
}

#[test]
fn two_exports_are_identical_and_an_archive_is_readable() {
    let home = project();
    let a = home.root().join("a");
    let b = home.root().join("b");
    export(&home, &["-o", path(&a)]).success();
    export(&home, &["-o", path(&b)]).success();
    assert_eq!(
        fs_err::read(a.join("index.json")).unwrap(),
        fs_err::read(b.join("index.json")).unwrap(),
        "same store, same image digest"
    );

    let tar = home.root().join("env.tar");
    export(&home, &["--format", "oci-archive", "-o", path(&tar)]).success();
    tool(
        &home,
        "skopeo",
        &["inspect", &format!("oci-archive:{}", path(&tar))],
    )
    .success();
}

#[test]
fn export_refuses_a_non_empty_path_unless_forced() {
    let home = project();
    let dir = home.mkdir("taken");
    home.write("taken/keep", "mine");
    let out = export(&home, &["-o", path(&dir)]).failure(&["already exists", "--force"]);
    assert!(out.stderr.contains("hint:"), "{out:?}");
    assert_eq!(fs_err::read_to_string(dir.join("keep")).unwrap(), "mine");
    // refused before pulling or building anything
    let layers = fs_err::read_dir(home.store().join("layers")).map_or(0, |d| d.count());
    assert_eq!(layers, 0, "refused after the build, not before");
    export(&home, &["-o", path(&dir), "--force"]).success();
    assert!(!dir.join("keep").exists());
    assert!(dir.join("index.json").is_file());
}

#[test]
fn export_defaults_to_project_env_in_the_current_directory() {
    let home = project();
    export(&home, &[]).success();
    let entries: Vec<String> = fs_err::read_dir(home.project())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let name = entries
        .iter()
        .find(|n| n.ends_with("-env"))
        .unwrap_or_else(|| panic!("no <project>-env in {entries:?}"));
    assert!(home.project().join(name).join("index.json").is_file());
}

#[test]
fn an_exported_python_env_carries_the_venv_and_runs_after_a_push() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"six==1.16.0\"]\n",
            bookworm_image()
        ),
    );
    let dir = home.root().join("image");
    export(&home, &["-o", path(&dir)]).success();
    let layout = format!("oci:{}", path(&dir));
    let c = image_config(&home, &layout);
    let env = config_env(&c);
    assert!(env.contains(&"VIRTUAL_ENV=/opt/devenv/venv"), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=/opt/devenv/venv/bin:")),
        "{env:?}"
    );
    let history: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.iter().any(|h| h.starts_with("devenv: python")),
        "{history:?}"
    );

    let dest = skopeo_push(&home, &layout, "export/py");
    let other = TestHome::new();
    write_env_toml(&other, "project", &dest, "");
    let out = run(devenv(&other).args([
        "run",
        "--",
        "python",
        "-c",
        "import six, sys; print(six.__version__, sys.prefix)",
    ]))
    .success();
    assert_eq!(out.stdout, "1.16.0 /opt/devenv/venv\n", "{out:?}");
}

#[test]
fn an_exported_archive_is_pulled_without_a_registry_and_runs_offline() {
    let home = project();
    let tar = home.root().join("env.tar");
    export(
        &home,
        &["--format", "oci-archive", "-o", path(&tar), "--tag", "v1"],
    )
    .success();

    // Another machine, no registry reachable: the archive alone.
    let other = TestHome::new();
    fs_err::copy(&tar, other.root().join("env.tar")).unwrap();
    other.chown(&other.root().join("env.tar"));
    let archive = format!("oci-archive:{}:v1", path(&other.root().join("env.tar")));
    let out =
        run(devenv(&other).args(["pull", &archive, "--as", "localhost/team/env:v1"])).success();
    assert!(out.stderr.contains("Imported"), "{out:?}");
    write_env_toml(&other, "project", "localhost/team/env:v1", "");
    let ran = run(devenv(&other).current_dir(other.project()).args([
        "--offline",
        "run",
        "--",
        "sh",
        "-c",
        "cat /opt/marker; echo \"$GREETING\"",
    ]))
    .success();
    assert_eq!(ran.stdout, "hi\nhello from env.toml\n", "{ran:?}");

    // A layout directory works too, and a damaged blob is refused with nothing kept.
    let dir = home.root().join("layout");
    export(&home, &["-o", path(&dir)]).success();
    let third = TestHome::new();
    let blobs = dir.join("blobs/sha256");
    let biggest = fs_err::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs_err::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs_err::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs_err::write(&biggest, &bytes).unwrap();
    let bad = run(devenv(&third).args(["pull", &format!("oci:{}", path(&dir))]))
        .failure(&["hashes to", "hint:"]);
    assert!(!bad.stderr.contains("Imported"), "{bad:?}");
    let layers = fs_err::read_dir(third.store().join("layers")).map_or(0, |d| d.count());
    assert_eq!(layers, 0, "nothing unpacked from a damaged layout");
}
