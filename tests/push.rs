//! End-to-end tests of `devenv push`, run as the unprivileged test user against real
//! registries (Debian's docker-registry, one per test, with and without basic auth): what was
//! pushed is read by skopeo and pulled and run by rootless podman; a second push uploads
//! nothing; a base on the same registry is mounted, not uploaded; a push without credentials
//! is refused with a hint; a push killed halfway leaves no partial image.

mod common;

use common::podman::Podman;

use common::env::{busybox_layer, write_env_toml};
use common::image::ImageBuilder;
use common::registry::Registry;
use common::{Outcome, TestHome, as_user, devenv, run};

const SETUP: &str = "[setup]\nrun = [\"echo hi > /opt/marker\", \"rm /etc/os-release\"]\n\n\
[env]\nGREETING = \"hello from env.toml\"\n";

/// A project over a busybox image that `registry` serves as `base/busybox:1`.
fn project(registry: &Registry) -> TestHome {
    let image = ImageBuilder::new().layer(busybox_layer("push-tests").dir("opt", 0o755));
    let base = registry.client().push("base/busybox", "1", &image.build());
    let home = TestHome::new();
    write_env_toml(&home, "project", &base, SETUP);
    home
}

fn push(home: &TestHome, target: &str) -> Outcome {
    run(devenv(home)
        .env("DEVENV_LOG", "devenv::registry=debug")
        .args(["push", target]))
}

/// Blob bodies the debug log shows devenv sending (`PUT` of an upload).
fn uploads(out: &Outcome) -> usize {
    out.stderr
        .lines()
        .filter(|l| l.contains("blob upload") && l.contains("method=\"PUT\""))
        .count()
}

fn tool(home: &TestHome, program: &str, args: &[&str]) -> Outcome {
    run(as_user(program)
        .env("HOME", home.home())
        .env("XDG_RUNTIME_DIR", home.home())
        .args(args))
}

#[test]
fn a_pushed_env_is_an_image_skopeo_reads_and_podman_runs() {
    let registry = Registry::start();
    let home = project(&registry);
    let target = format!("{}/team/env:1", registry.addr());
    let out = push(&home, &target).success();
    let pinned = out.stdout.trim();
    assert!(
        pinned.starts_with(&format!("{}/team/env@sha256:", registry.addr())),
        "stdout is the pinned reference: {out:?}"
    );
    assert!(out.stderr.contains("Pushed"), "{out:?}");

    let docker = format!("docker://{target}");
    let inspect = tool(&home, "skopeo", &["inspect", "--tls-verify=false", &docker]).success();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(
        v["Layers"].as_array().map(|l| l.len()),
        Some(4),
        "base + two setup layers + the workspace: {inspect:?}"
    );
    assert_eq!(
        format!(
            "{}@{}",
            v["Name"].as_str().unwrap(),
            v["Digest"].as_str().unwrap()
        ),
        pinned,
        "the digest printed is the one the registry serves"
    );
    let config = tool(
        &home,
        "skopeo",
        &["inspect", "--config", "--tls-verify=false", &docker],
    )
    .success();
    let c: serde_json::Value = serde_json::from_str(&config.stdout).unwrap();
    assert_eq!(c["config"]["User"], "1000:1000", "{c}");
    assert_eq!(c["config"]["WorkingDir"], "/workspaces/project", "{c}");
    let labels = &c["config"]["Labels"];
    let toml_hash = common::image::sha256(&home.read("project/env.toml"));
    assert_eq!(labels["dev.devenv.env-toml.sha256"], toml_hash, "{c}");
    assert!(
        labels["dev.devenv.env-lock.sha256"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{c}"
    );
    assert!(
        labels["org.opencontainers.image.base.digest"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{c}"
    );

    let podman = Podman::new(&home);
    podman
        .run(&["pull", "-q", "--tls-verify=false", pinned])
        .success();
    let ran = podman
        .run(&[
            "run",
            "--rm",
            "--pull=never",
            "--network=host",
            pinned,
            "sh",
            "-c",
            "cat /opt/marker; echo \"$GREETING\"; id -u; pwd; test -e /etc/os-release && echo present || echo gone",
        ])
        .success();
    assert_eq!(
        ran.stdout, "hi\nhello from env.toml\n1000\n/workspaces/project\ngone\n",
        "{ran:?}"
    );
}

#[test]
fn a_second_push_uploads_nothing_and_packs_nothing() {
    let registry = Registry::start();
    let home = project(&registry);
    let target = format!("{}/team/env:1", registry.addr());
    let first = push(&home, &target).success();
    // the base's one layer is mounted from base/busybox; two tool layers, the workspace and
    // the config are uploaded
    assert_eq!(uploads(&first), 4, "{first:?}");
    assert!(first.stderr.contains("1 mounted"), "{first:?}");

    let second = push(&home, &format!("{}/team/env:2", registry.addr())).success();
    assert_eq!(uploads(&second), 0, "{second:?}");
    assert!(second.stderr.contains("0 uploaded"), "{second:?}");
    assert!(
        !second.stderr.contains("Packing") && !second.stderr.contains("Packed"),
        "the remembered digests were used: {second:?}"
    );
    assert_eq!(
        first.stdout,
        second.stdout.replace(":2", ":1"),
        "the same image under both tags"
    );
}

#[test]
fn a_tool_layer_pushed_from_two_stores_has_one_digest() {
    let registry = Registry::start();
    let a = project(&registry);
    let target = format!("{}/team/env:a", registry.addr());
    push(&a, &target).success();
    // another machine: another store, the same env.toml and env.lock
    let b = TestHome::new();
    b.write("project/env.toml", a.read("project/env.toml"));
    b.write("project/env.lock", a.read("project/env.lock"));
    let out = push(&b, &format!("{}/team/env:b", registry.addr())).success();
    assert_eq!(uploads(&out), 0, "every blob was already there: {out:?}");
}

#[test]
fn a_push_without_credentials_is_refused_with_a_hint_and_works_after_login() {
    let registry = Registry::start_with_htpasswd("ci", "s3cret");
    // the base comes from the shared registry, which needs no login
    let image = ImageBuilder::new().layer(busybox_layer("push-auth").dir("opt", 0o755));
    let base = common::env::push("push/busybox", &image.build());
    let home = TestHome::new();
    write_env_toml(&home, "project", &base, SETUP);
    let target = format!("{}/team/env:1", registry.addr());
    let out = push(&home, &target).failure(&["authentication required"]);
    assert!(out.stderr.contains("podman login"), "{out:?}");
    assert_eq!(out.errors(), 1, "{out:?}");

    home.docker_login(registry.addr(), "ci", "s3cret");
    let ok = push(&home, &target).success();
    assert!(ok.stdout.contains("@sha256:"), "{ok:?}");
    let (media_type, _) = registry.client().get_manifest("team/env", "1");
    assert_eq!(media_type, "application/vnd.oci.image.manifest.v1+json");
}

#[test]
fn push_refuses_a_digest_target_and_offline() {
    let registry = Registry::start();
    let home = project(&registry);
    let digest = format!("{}/team/env@sha256:{}", registry.addr(), "a".repeat(64));
    push(&home, &digest).failure(&["names a digest"]);
    run(devenv(&home).args([
        "--offline",
        "push",
        &format!("{}/team/env:1", registry.addr()),
    ]))
    .failure(&["--offline"]);
}

/// `HEAD`/`GET` status of `path` on `registry` (plain HTTP, anonymous).
fn status_of(registry: &Registry, method: &str, path: &str) -> u16 {
    let url = format!("http://{}{path}", registry.addr());
    let accept = "application/vnd.oci.image.manifest.v1+json";
    match ureq::request(method, &url).set("Accept", accept).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn a_push_killed_halfway_leaves_no_partial_image_and_the_next_push_completes_it() {
    use std::io::BufRead as _;
    let registry = Registry::start();
    let home = project(&registry);
    run(devenv(&home).current_dir(home.project()).arg("build")).success();
    let target = format!("{}/team/env:1", registry.addr());
    let (mut child, _) = common::spawn(
        devenv(&home)
            .env("DEVENV_LOG", "devenv::registry=debug")
            .args(["push", &target]),
    );
    // SIGKILL right after the first blob went up: the manifest goes last, so no tag yet.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("blob upload") && line.contains("method=\"PUT\"") {
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    // Whatever it had sent, the tag is absent, or names an image whose every blob is there.
    match status_of(&registry, "GET", "/v2/team/env/manifests/1") {
        404 => {}
        200 => {
            let (_, bytes) = registry.client().get_manifest("team/env", "1");
            let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let blobs = m["layers"].as_array().unwrap().iter().chain([&m["config"]]);
            for b in blobs {
                let path = format!("/v2/team/env/blobs/{}", b["digest"].as_str().unwrap());
                assert_eq!(status_of(&registry, "HEAD", &path), 200, "{path}");
            }
        }
        s => panic!("the registry answered {s}"),
    }
    // The next push finishes it, and the image runs.
    let again = push(&home, &target).success();
    let pinned = again.stdout.trim();
    let other = TestHome::new();
    write_env_toml(&other, "project", pinned, "");
    let out =
        run(devenv(&other)
            .current_dir(other.project())
            .args(["run", "--", "cat", "/opt/marker"]))
        .success();
    assert_eq!(out.stdout, "hi\n", "{out:?}");
}
