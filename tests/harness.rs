//! Self-checks of the test harness: if these fail, the pull tests' verdicts mean nothing.
//! The registry answers and gives back what was pushed (to curl and skopeo, not only to our
//! own client), the test user runs commands and the devenv binary, the fault server misbehaves
//! exactly as told, built tars read back with GNU tar, overlay mounts in a user namespace, and
//! the bait notices a change.

mod common;

use std::process::Command;

use common::fault::{Fault, FaultServer};
use common::image::{Compression, Format, ImageBuilder, Layer, RawEntry, index, sha256};
use common::registry::Client;
use common::{Bait, Registry, TestHome, as_user, devenv, registry, run, runner_ids, unique};

fn curl(args: &[&str]) -> common::Outcome {
    run(Command::new("curl").args(["-sS"]).args(args))
}

fn sample_image() -> common::image::BuiltImage {
    ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file("etc/greeting", "hello\n", 0o644),
        )
        .build()
}

#[test]
fn shared_registry_answers_v2() {
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/v2/", registry()),
    ])
    .success();
    assert_eq!(out.stdout, "200");
}

#[test]
fn pushed_image_comes_back_through_curl() {
    let img = sample_image();
    let name = unique("harness/curl");
    Client::shared().push(&name, "v1", &img);
    let accept = format!("Accept: {}", img.manifest_media_type);
    let url = format!("http://{}/v2/{name}/manifests/v1", registry());
    let out = curl(&["-fD", "/dev/stderr", "-H", &accept, &url]).success();
    assert_eq!(out.stdout.as_bytes(), img.manifest.as_slice());
    assert!(
        out.stderr
            .to_lowercase()
            .contains(&format!("docker-content-digest: {}", img.manifest_digest)),
        "{out:?}"
    );
    for (digest, bytes) in [(&img.layers[0].digest, &img.layers[0].blob)]
        .into_iter()
        .chain([(&img.config_digest, &img.config)])
    {
        let url = format!("http://{}/v2/{name}/blobs/{digest}", registry());
        let got = Command::new("curl").args(["-fsSL", &url]).output().unwrap();
        assert!(got.status.success(), "{got:?}");
        assert_eq!(&got.stdout, bytes);
        assert_eq!(&sha256(&got.stdout), digest);
    }
}

#[test]
fn pushed_docker_index_is_read_by_skopeo() {
    let amd = ImageBuilder::new()
        .format(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(Layer::new().file("arch", "amd64\n", 0o644))
        .build();
    let arm = ImageBuilder::new()
        .format(Format::Docker)
        .platform("linux", "arm64", Some("v8"))
        .layer(Layer::new().file("arch", "arm64\n", 0o644))
        .build();
    let idx = index(Format::Docker, vec![amd, arm.clone()]);
    let name = unique("harness/skopeo");
    let reference = Client::shared().push_index(&name, "multi", &idx);
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]))
    .success();
    assert_eq!(out.stdout.as_bytes(), idx.bytes.as_slice());
    // skopeo resolves the index to the arm64 image and copies it out: same layer bytes.
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--override-arch=arm64",
        "--override-variant=v8",
        "--preserve-digests",
        &format!("docker://{reference}"),
        &format!("dir:{}", dir.path().display()),
    ]))
    .success();
    let layer = fs_err::read(dir.path().join(common::hex_of(&arm.layers[0].digest))).unwrap();
    assert_eq!(layer, arm.layers[0].blob);
}

#[test]
fn test_user_runs_commands_unprivileged() {
    let out = run(&mut as_user("id")).success();
    let (uid, gid) = runner_ids();
    assert!(out.stdout.contains(&format!("uid={uid}(")), "{out:?}");
    assert!(out.stdout.contains(&format!("gid={gid}(")), "{out:?}");
    if common::is_root() {
        assert_ne!(uid, 0, "the runner must not be root");
        assert!(out.stdout.contains(common::TEST_USER), "{out:?}");
        // --clear-groups: no supplementary root group either.
        assert!(!out.stdout.contains("groups=0"), "{out:?}");
    }
}

#[test]
fn devenv_binary_runs_as_test_user_in_its_home() {
    let home = TestHome::new();
    let out = run(devenv(&home).arg("--version")).success();
    assert!(out.stdout.starts_with("devenv "), "{out:?}");
    // The home is the user's: it can create entries in the store root and the project.
    let script = format!(
        "touch {0}/x && mkdir {1}/d && test \"$HOME\" = {2}",
        home.store().display(),
        home.project().display(),
        home.home().display()
    );
    run(as_user("sh")
        .env("HOME", home.home())
        .args(["-euc", &script]))
    .success();
}

#[test]
fn htpasswd_registry_demands_credentials() {
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let url = format!("http://{}/v2/", reg.addr());
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]).success();
    assert_eq!(out.stdout, "401");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        "alice:s3cret",
        &url,
    ])
    .success();
    assert_eq!(out.stdout, "200");
    let img = sample_image();
    reg.client().push("private/img", "1", &img);
    let (_, manifest) = reg.client().get_manifest("private/img", "1");
    assert_eq!(manifest, img.manifest);
    // The corrupting helper finds the stored bytes.
    let stored = fs_err::read(reg.blob_data(&img.layers[0].digest)).unwrap();
    assert_eq!(stored, img.layers[0].blob);
}

#[test]
fn private_registry_without_auth_starts() {
    let reg = Registry::start();
    let img = sample_image();
    reg.client().push("plain", "1", &img);
    let config = reg.client().get_config("plain", "1");
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        img.layers[0].diff_id.as_str()
    );
}

fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = ureq::get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body)
}

#[test]
fn fault_server_misbehaves_as_told_and_counts() {
    let img = sample_image();
    let srv = FaultServer::start();
    let reference = srv.serve_image("x", "1", &img);
    assert_eq!(reference, format!("{}/x:1", srv.addr()));
    let blob_path = srv.blob_path("x", &img.layers[0].digest);
    let url = format!("http://{}{blob_path}", srv.addr());
    let blob = &img.layers[0].blob;

    srv.once(&blob_path, Fault::Status(429));
    srv.once(&blob_path, Fault::Status(500));
    srv.once(&blob_path, Fault::CutAfter(10));
    srv.once(&blob_path, Fault::WrongBytes);
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(429, r)) => assert_eq!(r.header("Retry-After"), Some("0")),
        other => panic!("expected 429, got {other:?}"),
    }
    assert!(matches!(
        ureq::get(&url).call(),
        Err(ureq::Error::Status(500, _))
    ));
    let resp = ureq::get(&url).call().unwrap();
    let mut cut = Vec::new();
    let err = std::io::Read::read_to_end(&mut resp.into_reader(), &mut cut);
    assert!(
        err.is_err() || cut.len() < blob.len(),
        "the cut body was complete"
    );
    assert_eq!(&cut[..10], &blob[..10]);
    let (_, wrong) = get(&url, &[]);
    assert_eq!(wrong.len(), blob.len());
    assert_ne!(&wrong, blob);
    // Faults spent: the right bytes, whole or by range.
    let (status, good) = get(&url, &[]);
    assert_eq!((status, &good), (200, blob));
    let (status, tail) = get(&url, &[("Range", "bytes=10-")]);
    assert_eq!((status, tail.as_slice()), (206, &blob[10..]));
    assert_eq!(srv.gets(&blob_path), 6);
    let ranges: Vec<_> = srv.requests().into_iter().filter_map(|r| r.range).collect();
    assert_eq!(ranges, ["bytes=10-"]);

    // Manifests carry their media type and digest.
    let resp = ureq::get(&format!("http://{}/v2/x/manifests/1", srv.addr()))
        .call()
        .unwrap();
    assert_eq!(resp.content_type(), img.manifest_media_type);
    assert_eq!(
        resp.header("Docker-Content-Digest"),
        Some(img.manifest_digest.as_str())
    );
    assert!(matches!(
        ureq::get(&format!("http://{}/v2/x/manifests/nope", srv.addr())).call(),
        Err(ureq::Error::Status(404, _))
    ));
}

#[test]
fn fault_server_bearer_challenge_and_token() {
    let img = sample_image();
    let srv = FaultServer::start();
    srv.serve_image("team/x", "1", &img);
    srv.require_bearer("tok123", Some(("bob", "pw")));
    let url = format!("http://{}/v2/team/x/manifests/1", srv.addr());
    let challenge = match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, r)) => r.header("WWW-Authenticate").unwrap().to_owned(),
        other => panic!("expected 401, got {other:?}"),
    };
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"test\",scope=\"repository:team/x:pull\"",
            srv.addr()
        )
    );
    let token_url = format!(
        "http://{}/token?service=test&scope=repository:team/x:pull",
        srv.addr()
    );
    assert!(matches!(
        ureq::get(&token_url).call(),
        Err(ureq::Error::Status(401, _))
    ));
    let (_, token) = get(&token_url, &[("Authorization", "Basic Ym9iOnB3")]);
    let token: serde_json::Value = serde_json::from_slice(&token).unwrap();
    assert_eq!(token["token"], "tok123");
    let (status, body) = get(&url, &[("Authorization", "Bearer tok123")]);
    assert_eq!((status, body), (200, img.manifest));
}

#[test]
fn built_layers_read_back_with_gnu_tar() {
    let long = format!("deep/{}/file", "n".repeat(120));
    let layer = Layer::new()
        .dir("deep", 0o755)
        .dir(&format!("deep/{}", "n".repeat(120)), 0o555)
        .file(&long, "long name\n", 0o640)
        .symlink("link", "deep")
        .hardlink("hard", &long)
        .whiteout("gone/file")
        .opaque("opq")
        .raw(RawEntry::new("../escape", b'0').data("x"));
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let built = layer.clone().compression(c).build(Format::Oci);
        assert_eq!(built.diff_id, sha256(&built.tar));
        let tar = match c {
            Compression::Gzip => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(built.blob.as_slice()),
                    &mut out,
                )
                .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(built.blob.as_slice()).unwrap(),
            Compression::None => built.blob.clone(),
        };
        assert_eq!(tar, built.tar, "{c:?} does not round-trip");
    }
    let dir = tempfile::tempdir().unwrap();
    let tar_file = dir.path().join("l.tar");
    fs_err::write(&tar_file, layer.tar()).unwrap();
    let out = run(Command::new("tar").arg("-tf").arg(&tar_file)).success();
    let names: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        names,
        [
            "deep/",
            &format!("deep/{}/", "n".repeat(120)),
            &long,
            "link",
            "hard",
            "gone/.wh.file",
            "opq/.wh..wh..opq",
            "../escape",
        ]
    );
    let out = run(Command::new("tar").arg("-tvf").arg(&tar_file)).success();
    assert!(out.stdout.contains("link -> deep"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("hard link to {long}")),
        "{out:?}"
    );
}

#[test]
fn overlay_mounts_layer_dirs_in_a_user_namespace() {
    let home = TestHome::new();
    home.write("lower/a", "from lower\n");
    home.write("lower/only-lower", "l\n");
    home.write("upper/a", "from upper\n");
    let listing = common::overlay_listing(
        &home,
        &[home.root().join("upper"), home.root().join("lower")],
    );
    assert_eq!(
        listing,
        [
            "a f 644",
            "only-lower f 644",
            "a: from upper",
            "only-lower: l",
        ]
    );
}

#[test]
fn bait_notices_changes_and_new_links() {
    let home = TestHome::new();
    let bait = Bait::new(&home);
    bait.assert_unchanged();
    fs_err::hard_link(bait.dir.join("secret"), home.root().join("stolen")).unwrap();
    let caught = std::panic::catch_unwind(|| bait.assert_unchanged());
    assert!(
        caught.is_err(),
        "a new hard link to the bait went unnoticed"
    );
    fs_err::remove_file(home.root().join("stolen")).unwrap();
    bait.assert_unchanged();
    fs_err::write(bait.dir.join("victim"), "changed").unwrap();
    let caught = std::panic::catch_unwind(|| bait.assert_unchanged());
    assert!(caught.is_err(), "a changed bait file went unnoticed");
}

#[test]
fn devenv_runs_are_bounded_and_captured() {
    let home = TestHome::new();
    let out = run(devenv(&home).arg("no-such-command"));
    assert!(
        !out.status.success(),
        "an unknown command succeeded: {out:?}"
    );
    assert!(out.stderr.contains("no-such-command"), "{out:?}");
}
