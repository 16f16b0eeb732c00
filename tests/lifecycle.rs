//! End-to-end tests of the store's lifecycle commands (issue 5): `devenv gc` with projects
//! sharing layers, while containers run and after their project is gone; `devenv status`,
//! `devenv cache ls|rm` and `devenv doctor` against their documented JSON (docs/cli.md); and
//! `devenv completions`. All run as the unprivileged test user against the shared registry.

mod common;

use std::time::Duration;

use common::env::{NoXattrMount, busybox_image, busybox_layer, push, wait_for, write_env_toml};
use common::fault::{Fault, FaultServer};
use common::image::{BuiltImage, ImageBuilder, Layer};
use common::{Outcome, TestHome, devenv, run, spawn, wait};
use serde_json::Value;

/// `devenv ARGS` in the project directory.
fn dv(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).args(args))
}

/// `devenv ARGS` in `dir` (relative to the home's root).
fn dv_in(home: &TestHome, dir: &str, args: &[&str]) -> Outcome {
    run(devenv(home).current_dir(home.root().join(dir)).args(args))
}

#[track_caller]
fn json(out: &Outcome) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out:?}"))
}

/// The image of a base busybox layer plus one layer of its own.
fn image_on_base(marker: &str, own: &str) -> BuiltImage {
    ImageBuilder::new()
        .layer(busybox_layer(marker))
        .layer(
            Layer::new()
                .dir("opt", 0o755)
                .file("opt/own", format!("{own}\n"), 0o644),
        )
        .build()
}

// ---------------------------------------------------------------------------------------------
// gc

#[test]
fn gc_keeps_a_shared_base_and_removes_what_only_a_gone_project_used() {
    let home = TestHome::new();
    let first = busybox_image("gc-shared").build();
    let second = image_on_base("gc-shared", "second");
    assert_eq!(
        first.layers[0].diff_id, second.layers[0].diff_id,
        "same base"
    );
    write_env_toml(&home, "project", &push("gc/first", &first), "");
    home.mkdir("project2");
    write_env_toml(&home, "project2", &push("gc/second", &second), "");
    dv(&home, &["run", "--", "true"]).success();
    dv_in(&home, "project2", &["run", "--", "cat", "/opt/own"]).success();

    let base = home.layer(&first.layers[0].diff_id);
    let own = home.layer(&second.layers[1].diff_id);
    let own_blob = home.blob(&second.layers[1].digest);
    assert!(base.is_dir() && own.is_dir() && own_blob.is_file());

    fs_err::remove_dir_all(home.root().join("project2")).unwrap();
    let doc = json(&dv(&home, &["cache", "ls", "--json"]).success());
    let live: Vec<bool> = doc["envs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["live"].as_bool().unwrap())
        .collect();
    assert_eq!(
        {
            let mut l = live.clone();
            l.sort();
            l
        },
        vec![false, true],
        "cache ls before gc: {doc}"
    );
    let before = home.store_entries();
    let out = dv(&home, &["gc", "--dry-run"]).success();
    assert_eq!(
        home.store_entries(),
        before,
        "gc --dry-run removed something: {out:?}"
    );
    assert!(
        out.stderr
            .contains(&common::hex_of(&second.layers[1].diff_id)[..12])
            || out
                .stdout
                .contains(&common::hex_of(&second.layers[1].diff_id)[..12]),
        "--dry-run lists the layer it would remove: {out:?}"
    );

    let out = dv(&home, &["gc"]).success();
    assert!(base.is_dir(), "the shared base layer was removed: {out:?}");
    assert!(
        home.blob(&first.layers[0].digest).is_file(),
        "the shared base blob was removed"
    );
    assert!(
        !own.exists(),
        "the gone project's own layer survived gc: {out:?}"
    );
    assert!(
        !own_blob.exists(),
        "the gone project's own blob survived gc: {out:?}"
    );

    let doc = json(&dv(&home, &["cache", "ls", "--json"]).success());
    let envs = doc["envs"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "gc kept the gone project's env: {doc}");
    assert!(
        !doc["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["digest"] == second.manifest_digest),
        "gc kept the gone project's image tag: {doc}"
    );

    let out = dv(&home, &["--offline", "run", "--", "cat", "/etc/os-release"]).success();
    assert!(out.stdout.contains("MARKER=gc-shared"), "{out:?}");
    let out = dv(&home, &["gc"]).success();
    assert!(base.is_dir(), "a second gc removed the live base: {out:?}");
}

#[test]
fn gc_removes_the_image_a_project_switched_away_from() {
    let home = TestHome::new();
    let old = image_on_base("gc-switch", "old");
    let new = image_on_base("gc-switch", "new");
    write_env_toml(&home, "project", &push("gc/old", &old), "");
    dv(&home, &["run", "--", "true"]).success();
    write_env_toml(&home, "project", &push("gc/new", &new), "");
    let out = dv(&home, &["run", "--", "cat", "/opt/own"]).success();
    assert_eq!(out.stdout, "new\n", "{out:?}");
    let out = dv(&home, &["gc"]).success();
    assert!(
        !home.layer(&old.layers[1].diff_id).exists(),
        "gc kept the layer of the image the project no longer names: {out:?}"
    );
    assert!(home.layer(&new.layers[1].diff_id).is_dir(), "{out:?}");
    assert!(home.layer(&new.layers[0].diff_id).is_dir(), "{out:?}");
    dv(&home, &["--offline", "run", "--", "true"]).success();
}

/// Starts `devenv run` of a command that signals `<project>/up` and then waits for
/// `<project>/go` before printing the image's os-release.
fn start_waiting_run(home: &TestHome) -> (std::process::Child, String) {
    let started = spawn(devenv(home).args([
        "run",
        "--",
        "sh",
        "-c",
        "touch up; i=0; while [ ! -e go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; \
         cat /etc/os-release",
    ]));
    let up = home.project().join("up");
    wait_for("the container to start", Duration::from_secs(120), || {
        up.exists()
    });
    started
}

#[test]
fn gc_during_a_run_leaves_it_unharmed() {
    let home = TestHome::new();
    let img = busybox_image("gc-during-run").build();
    write_env_toml(&home, "project", &push("gc/during", &img), "");
    let (child, what) = start_waiting_run(&home);
    let before = home.store_entries();
    let gc = dv(&home, &["gc"]).success();
    assert!(home.layer(&img.layers[0].diff_id).is_dir(), "{gc:?}");
    home.write("project/go", "");
    let out = wait(child, what).success();
    assert!(out.stdout.contains("MARKER=gc-during-run"), "{out:?}");
    assert_eq!(
        home.store_entries(),
        before,
        "gc removed what a live env uses: {gc:?}"
    );
}

#[test]
fn gc_keeps_a_running_env_whose_env_toml_is_gone_until_it_ends() {
    let home = TestHome::new();
    let img = busybox_image("gc-running-gone").build();
    write_env_toml(&home, "project", &push("gc/running-gone", &img), "");
    let layer = home.layer(&img.layers[0].diff_id);
    let (child, what) = start_waiting_run(&home);
    fs_err::remove_file(home.project().join("env.toml")).unwrap();

    let gc = dv(&home, &["gc"]).success();
    assert!(
        layer.is_dir(),
        "gc removed the layers of a running container: {gc:?}"
    );
    home.write("project/go", "");
    let out = wait(child, what).success();
    assert!(out.stdout.contains("MARKER=gc-running-gone"), "{out:?}");

    let gc = dv(&home, &["gc"]).success();
    assert!(
        !layer.exists(),
        "gc after the run ended kept the layer: {gc:?}"
    );
    assert!(
        !home.blob(&img.layers[0].digest).exists(),
        "gc after the run ended kept the blob: {gc:?}"
    );
}

#[test]
fn gc_waits_for_a_run_that_is_still_pulling() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let img = busybox_image("gc-while-pulling").build();
    let reference = srv.serve_image("slow", "1", &img);
    let blob = srv.blob_path("slow", &img.layers[0].digest);
    srv.always(
        &blob,
        Fault::Slow {
            chunk: 64 * 1024,
            delay: Duration::from_millis(60),
        },
    );
    write_env_toml(&home, "project", &reference, "");
    let (child, what) = spawn(devenv(&home).args(["run", "--", "cat", "/etc/os-release"]));
    wait_for(
        "the layer download to start",
        Duration::from_secs(60),
        || srv.gets(&blob) > 0,
    );
    let gc = dv(&home, &["gc"]).success();
    let out = wait(child, what).success();
    assert!(out.stdout.contains("MARKER=gc-while-pulling"), "{out:?}");
    assert!(
        home.layer(&img.layers[0].diff_id).is_dir(),
        "gc removed the layer of a run that was pulling it: {gc:?}"
    );
    assert!(home.blob(&img.layers[0].digest).is_file(), "{gc:?}");
    assert_eq!(srv.gets(&blob), 1, "the blob was fetched twice");
}

#[test]
fn gc_removes_what_a_killed_pull_left() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let img = ImageBuilder::new()
        .layer(Layer::new().file("big", common::noise(4 << 20, 5), 0o644))
        .build();
    let reference = srv.serve_image("killed", "1", &img);
    let blob = srv.blob_path("killed", &img.layers[0].digest);
    srv.always(
        &blob,
        Fault::Slow {
            chunk: 32 * 1024,
            delay: Duration::from_millis(50),
        },
    );
    let (mut child, what) = spawn(devenv(&home).args(["pull", &reference]));
    wait_for(
        "the layer download to start",
        Duration::from_secs(60),
        || srv.gets(&blob) > 0,
    );
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL: no cleanup of its own
    let _ = wait(child, what);
    let leftovers = fs_err::read_dir(home.store().join("tmp")).unwrap().count();
    assert!(
        leftovers > 0,
        "the killed pull left nothing in tmp/: the test proves nothing"
    );
    let out = dv(&home, &["gc"]).success();
    let tmp: Vec<_> = fs_err::read_dir(home.store().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tmp.is_empty(), "gc left {tmp:?}: {out:?}");
    assert!(
        home.store_entries().is_empty(),
        "gc left {:?}: {out:?}",
        home.store_entries()
    );
}

#[test]
fn gc_removes_an_image_pulled_by_name_that_no_env_uses() {
    let home = TestHome::new();
    let img = image_on_base("gc-by-name", "by-name");
    let reference = push("gc/by-name", &img);
    dv(&home, &["pull", &reference]).success();
    assert!(home.layer(&img.layers[1].diff_id).is_dir());
    let out = dv(&home, &["gc"]).success();
    assert!(
        home.store_entries().is_empty(),
        "gc kept {:?}: {out:?}",
        home.store_entries()
    );
    let doc = json(&dv(&home, &["cache", "ls", "--json"]).success());
    assert_eq!(doc["images"], Value::Array(vec![]), "{doc}");
}

// ---------------------------------------------------------------------------------------------
// doctor

/// The documented shape: `{"ok": bool, "checks": [{"name", "status", "detail", "fix"?}]}`.
#[track_caller]
fn assert_doctor_shape(doc: &Value) -> Vec<(String, String, Option<String>)> {
    assert!(doc["ok"].is_boolean(), "`ok` is not a bool: {doc}");
    let checks = doc["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks array: {doc}"));
    assert!(!checks.is_empty(), "{doc}");
    checks
        .iter()
        .map(|c| {
            let obj = c
                .as_object()
                .unwrap_or_else(|| panic!("check is not an object: {c}"));
            for k in obj.keys() {
                assert!(
                    ["name", "status", "detail", "fix"].contains(&k.as_str()),
                    "undocumented key {k} in {c}"
                );
            }
            let name = c["name"].as_str().unwrap_or_else(|| panic!("no name: {c}"));
            let status = c["status"]
                .as_str()
                .unwrap_or_else(|| panic!("no status: {c}"));
            assert!(
                ["ok", "warn", "fail"].contains(&status),
                "status {status}: {c}"
            );
            assert!(c["detail"].is_string(), "detail is not a string: {c}");
            let fix = c.get("fix").map(|f| {
                f.as_str()
                    .unwrap_or_else(|| panic!("fix is not a string: {c}"))
                    .to_owned()
            });
            if status != "ok" {
                assert!(
                    fix.as_deref().is_some_and(|f| !f.is_empty()),
                    "a {status} check without a fix: {c}"
                );
            }
            (name.to_owned(), status.to_owned(), fix)
        })
        .collect()
}

#[test]
fn doctor_passes_here_and_its_json_has_the_documented_shape() {
    let home = TestHome::new();
    write_env_toml(
        &home,
        "project",
        &push("doctor/ok", &busybox_image("doctor").build()),
        "",
    );
    let out = dv(&home, &["doctor"]);
    assert_eq!(
        out.code(),
        Some(0),
        "doctor fails on the machine the tests run on: {out:?}"
    );
    assert!(!out.stdout.contains("FAIL"), "{out:?}");

    let out = dv(&home, &["doctor", "--json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let doc = json(&out);
    assert_eq!(doc["ok"], Value::Bool(true), "{doc}");
    let checks = assert_doctor_shape(&doc);
    let names: Vec<&str> = checks.iter().map(|(n, _, _)| n.as_str()).collect();
    for expected in [
        "userns-sysctl",
        "store",
        "xattr",
        "userns",
        "overlay",
        "disk",
        "proxy",
        "ca",
        "config",
        "python-index",
        "registry",
        "gpu",
    ] {
        assert!(
            names.contains(&expected),
            "no `{expected}` check in {names:?}"
        );
    }
    for (name, status, _) in &checks {
        assert_ne!(status, "fail", "check {name} fails: {doc}");
    }
    for must_pass in ["userns", "overlay", "xattr", "store", "registry"] {
        let (_, status, _) = checks.iter().find(|(n, _, _)| n == must_pass).unwrap();
        assert_eq!(status, "ok", "check {must_pass}: {doc}");
    }

    // A misspelt table in the user's config.toml, which every part of devenv would ignore,
    // is a warning naming it; the user's index is shown with where it was set.
    home.write(
        "config/devenv/config.toml",
        "[pyhton]\nindex = \"https://mirror.example/simple\"\n",
    );
    let out = run(devenv(&home)
        .env("PIP_INDEX_URL", "https://mirror.example/simple")
        .args(["doctor", "--json"]));
    let doc = json(&out);
    assert_doctor_shape(&doc);
    let find = |name: &str| {
        let c = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {doc}"));
        (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
    };
    let (status, detail) = find("config");
    assert_eq!(status, "warn", "{doc}");
    assert!(detail.ends_with("devenv reads no `pyhton`"), "{doc}");
    assert_eq!(
        find("python-index"),
        ("ok", "https://mirror.example/simple (PIP_INDEX_URL)"),
        "{doc}"
    );
}

#[test]
fn doctor_fails_with_its_fix_when_the_store_has_no_user_xattrs() {
    let home = TestHome::new();
    let mount = NoXattrMount::new(&home);
    let store = mount.dir.join("store");
    let out = run(devenv(&home)
        .env("DEVENV_HOME", &store)
        .args(["doctor", "--json"]));
    assert_eq!(
        out.code(),
        Some(1),
        "doctor passed on a store without user xattrs: {out:?}"
    );
    let doc = json(&out);
    assert_eq!(doc["ok"], Value::Bool(false), "{doc}");
    let checks = assert_doctor_shape(&doc);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(n, s, _)| s == "fail" && (n == "xattr" || n == "overlay"))
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert!(!failed.is_empty(), "neither xattr nor overlay fails: {doc}");

    let out = run(devenv(&home).env("DEVENV_HOME", &store).arg("doctor"));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("FAIL"), "{out:?}");
    assert!(out.stdout.contains("fix:"), "no fix line: {out:?}");
}

// ---------------------------------------------------------------------------------------------
// status

#[track_caller]
fn assert_status_shape(doc: &Value) {
    let s = |v: &Value, what: &str| {
        assert!(v.is_string(), "{what} is not a string: {doc}");
    };
    let env = &doc["env"];
    s(&env["name"], "env.name");
    s(&env["id"], "env.id");
    s(&env["project"], "env.project");
    s(&env["env_toml"], "env.env_toml");
    let id = env["id"].as_str().unwrap();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "env.id {id}"
    );
    let image = &doc["image"];
    s(&image["reference"], "image.reference");
    s(&image["platform"], "image.platform");
    for k in ["resolved", "manifest"] {
        let v = &image[k];
        assert!(
            v.is_null()
                || v.as_str()
                    .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71),
            "image.{k} is neither null nor a digest: {doc}"
        );
    }
    for l in doc["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers array: {doc}"))
    {
        assert!(
            l["diff_id"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{l}"
        );
        assert!(l["cached"].is_boolean(), "{l}");
        assert!(l["bytes"].is_u64(), "{l}");
    }
    for t in doc["tool_layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_layers array: {doc}"))
    {
        assert!(
            t["key"].as_str().is_some_and(|d| d.starts_with("sha256:")),
            "{t}"
        );
        assert!(t["cached"].is_boolean(), "{t}");
        assert!(t["bytes"].is_u64(), "{t}");
    }
    assert!(
        matches!(doc["lock"].as_str(), Some("missing" | "present")),
        "lock: {doc}"
    );
    let drift = doc["lock_drift"]
        .as_array()
        .unwrap_or_else(|| panic!("no lock_drift array: {doc}"));
    assert!(drift.iter().all(Value::is_string), "{doc}");
    s(&doc["store"]["root"], "store.root");
    assert!(doc["store"]["bytes"].is_u64(), "store.bytes: {doc}");
    for c in ["pip", "uv", "apt", "tools"] {
        assert!(
            doc["store"]["caches"][c].is_u64(),
            "store.caches.{c}: {doc}"
        );
    }
    let pending = doc["pending"]
        .as_array()
        .unwrap_or_else(|| panic!("no pending: {doc}"));
    assert!(pending.iter().all(Value::is_string), "{doc}");
}

#[test]
fn status_json_has_the_documented_shape_before_and_after_a_pull() {
    let home = TestHome::new();
    let img = image_on_base("status", "status");
    let reference = push("status/img", &img);
    let toml = write_env_toml(&home, "project", &reference, "");

    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_status_shape(&doc);
    let project = fs_err::canonicalize(home.project()).unwrap();
    assert_eq!(
        doc["env"]["project"],
        project.display().to_string(),
        "{doc}"
    );
    assert_eq!(
        doc["env"]["env_toml"],
        fs_err::canonicalize(&toml).unwrap().display().to_string(),
        "{doc}"
    );
    assert_eq!(doc["env"]["name"], "project", "{doc}");
    assert_eq!(doc["image"]["reference"], reference, "{doc}");
    assert_eq!(
        doc["image"]["platform"],
        format!("linux/{}", common::host_arch()),
        "{doc}"
    );
    assert!(
        doc["image"]["manifest"].is_null(),
        "manifest before any pull: {doc}"
    );
    assert!(
        !doc["pending"].as_array().unwrap().is_empty(),
        "nothing pending before a pull: {doc}"
    );
    assert_eq!(doc["lock"], "missing", "{doc}");
    assert_eq!(
        doc["store"]["root"],
        home.store().display().to_string(),
        "{doc}"
    );

    dv(&home, &["pull"]).success();
    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_status_shape(&doc);
    assert_eq!(
        doc["pending"],
        serde_json::json!(["lock: write env.lock"]),
        "{doc}"
    );
    dv(&home, &["lock"]).success();
    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_status_shape(&doc);
    assert_eq!(doc["pending"], Value::Array(vec![]), "{doc}");
    assert_eq!(doc["lock_drift"], Value::Array(vec![]), "{doc}");
    assert_eq!(doc["image"]["manifest"], img.manifest_digest, "{doc}");
    assert_eq!(doc["image"]["resolved"], img.manifest_digest, "{doc}");
    let layers = doc["layers"].as_array().unwrap();
    let diff_ids: Vec<&str> = layers
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        diff_ids,
        img.diff_ids()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    for l in layers {
        assert_eq!(l["cached"], Value::Bool(true), "{doc}");
        assert!(l["bytes"].as_u64().unwrap() > 0, "{doc}");
    }
    assert!(doc["store"]["bytes"].as_u64().unwrap() > 0, "{doc}");

    // env.toml moves to another image: status says how env.lock differs, resolving nothing.
    let other = push("status/other", &image_on_base("status", "other"));
    write_env_toml(&home, "project", &other, "");
    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_status_shape(&doc);
    let drift = doc["lock_drift"].as_array().unwrap();
    assert!(
        drift.len() == 1 && drift[0].as_str().unwrap().contains(&other),
        "{doc}"
    );
    assert!(
        doc["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("lock: re-resolve")),
        "{doc}"
    );
    let out = dv(&home, &["status"]).success();
    assert!(
        out.stdout.contains("env.lock differs from env.toml"),
        "{out:?}"
    );
}

#[test]
fn status_makes_no_network_request_and_sees_env_lock() {
    let home = TestHome::new();
    let srv = FaultServer::start();
    let img = busybox_image("status-offline").build();
    let reference = srv.serve_image("st", "1", &img);
    write_env_toml(&home, "project", &reference, "");
    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_status_shape(&doc);
    assert_eq!(srv.requests().len(), 0, "status contacted the registry");
    home.write("project/env.lock", "");
    let doc = json(&dv(&home, &["status", "--json"]).success());
    assert_eq!(doc["lock"], "present", "{doc}");
    let out = dv(&home, &["status"]).success();
    assert!(out.stdout.contains("pending"), "{out:?}");
    assert_eq!(srv.requests().len(), 0, "status contacted the registry");
}

// ---------------------------------------------------------------------------------------------
// cache

#[test]
fn an_env_whose_only_image_choice_is_tools_python_has_a_base_everywhere() {
    // `[tools] python = "3.12"` stands for python:3.12-slim (docs/env-toml.md); every command
    // must see the same base, not only the lock.
    let home = TestHome::new();
    home.write("project/env.toml", "[tools]\npython = \"3.12\"\n");
    let out = dv(&home, &["status", "--json"]).success();
    let doc = json(&out);
    assert_eq!(
        doc["image"]["reference"], "docker.io/library/python:3.12-slim",
        "{out:?}"
    );
    dv(&home, &["--offline", "pull"]).failure(&[
        "docker.io/library/python:3.12-slim is not in the store and --offline forbids fetching it",
    ]);
}

/// A file in the store's download caches, as builds leave them, last used `days_ago`.
fn cache_entry(home: &TestHome, rel: &str, bytes: usize, days_ago: u64) -> std::path::PathBuf {
    let path = home.write(format!("cache/{rel}"), vec![b'x'; bytes]);
    let when = std::time::SystemTime::now() - Duration::from_secs(days_ago * 86_400);
    let times = std::fs::FileTimes::new()
        .set_accessed(when)
        .set_modified(when);
    fs_err::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .into_file()
        .set_times(times)
        .unwrap();
    path
}

#[test]
fn gc_prunes_download_caches_by_age_and_all_with_sizes() {
    let home = TestHome::new();
    write_env_toml(
        &home,
        "project",
        &push("lc/caches", &busybox_image("caches").build()),
        "",
    );
    let old_wheel = cache_entry(
        &home,
        &format!("cache/pip/sha256/{}", "a".repeat(64)),
        3000,
        40,
    );
    let new_wheel = cache_entry(
        &home,
        &format!("cache/pip/sha256/{}", "b".repeat(64)),
        2000,
        1,
    );
    let old_deb = cache_entry(&home, "cache/apt/libfoo_1.0_amd64.deb", 5000, 90);
    let uv = cache_entry(&home, "cache/uv/cache/wheels-v5/pypi/x.http", 700, 0);
    let old_tool = cache_entry(&home, "tools/uv-0.0.1-x86_64/uv", 400, 60);

    let status = json(&dv(&home, &["status", "--json"]).success());
    assert_eq!(status["store"]["caches"]["pip"], 5000, "{status}");
    assert_eq!(status["store"]["caches"]["apt"], 5000, "{status}");
    assert_eq!(status["store"]["caches"]["uv"], 700, "{status}");
    assert_eq!(status["store"]["caches"]["tools"], 400, "{status}");
    let human = dv(&home, &["status"]).success();
    assert!(
        human
            .stdout
            .contains("caches   pip 4.9 KiB, uv 700 B, apt 4.9 KiB, tools 400 B"),
        "{human:?}"
    );

    let dry = dv(&home, &["gc", "--dry-run"]).success();
    for (p, size) in [(&old_wheel, "2.9 KiB"), (&old_deb, "4.9 KiB")] {
        assert!(
            dry.stderr.contains(&format!("{} ({size})", p.display())),
            "{dry:?}"
        );
    }
    assert!(
        dry.stderr.contains("pip cache 2.9 KiB") && dry.stderr.contains("apt cache 4.9 KiB"),
        "{dry:?}"
    );
    assert!(
        !dry.stderr.contains(&new_wheel.display().to_string()),
        "{dry:?}"
    );
    assert!(
        old_wheel.exists() && old_deb.exists(),
        "a dry run removes nothing"
    );

    dv(&home, &["gc"]).success();
    assert!(
        !old_wheel.exists() && !old_deb.exists(),
        "unused for 30 days: gone"
    );
    assert!(
        !old_tool.parent().unwrap().exists(),
        "an unused tool is gone"
    );
    assert!(new_wheel.exists() && uv.exists(), "used lately: kept");

    dv(&home, &["gc", "--cache-age", "1"]).success();
    assert!(
        !new_wheel.exists() && uv.exists(),
        "--cache-age 1 takes the day-old wheel only"
    );
    dv(&home, &["gc", "--all"]).success();
    assert!(!uv.exists(), "--all empties uv's cache");
    let status = json(&dv(&home, &["status", "--json"]).success());
    for c in ["pip", "uv", "apt", "tools"] {
        assert_eq!(status["store"]["caches"][c], 0, "{status}");
    }
}

#[test]
fn cache_ls_json_has_the_documented_shape() {
    let home = TestHome::new();
    let img = busybox_image("cache-ls").build();
    let reference = push("cache/ls", &img);
    write_env_toml(&home, "project", &reference, "");
    dv(&home, &["run", "--", "true"]).success();
    let doc = json(&dv(&home, &["cache", "ls", "--json"]).success());
    assert_eq!(doc["root"], home.store().display().to_string(), "{doc}");
    let images = doc["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images: {doc}"));
    assert!(
        images
            .iter()
            .any(|i| i["reference"] == reference && i["digest"] == img.manifest_digest),
        "the pulled image is not listed: {doc}"
    );
    let envs = doc["envs"]
        .as_array()
        .unwrap_or_else(|| panic!("no envs: {doc}"));
    assert_eq!(envs.len(), 1, "{doc}");
    let e = &envs[0];
    assert!(e["id"].as_str().is_some_and(|i| i.len() == 16), "{doc}");
    assert_eq!(
        e["project"],
        fs_err::canonicalize(home.project())
            .unwrap()
            .display()
            .to_string(),
        "{doc}"
    );
    assert_eq!(e["live"], Value::Bool(true), "{doc}");
    assert_eq!(e["image"], reference, "{doc}");
    assert!(
        e["last_used"].as_u64().is_some_and(|t| t > 1_600_000_000),
        "{doc}"
    );
    for k in ["layers", "blobs"] {
        assert!(
            doc[k]["count"].as_u64().is_some_and(|n| n >= 1),
            "{k}: {doc}"
        );
        assert!(
            doc[k]["bytes"].as_u64().is_some_and(|n| n > 0),
            "{k}: {doc}"
        );
    }
    assert_eq!(doc["layers"]["count"], 1, "{doc}");
}

#[test]
fn cache_rm_removes_an_image_no_live_env_uses_and_keeps_what_one_does() {
    let home = TestHome::new();
    let used = busybox_image("cache-rm").build();
    let unused = image_on_base("cache-rm", "unused");
    write_env_toml(&home, "project", &push("cache/used", &used), "");
    let unused_ref = push("cache/unused", &unused);
    dv(&home, &["run", "--", "true"]).success();
    dv(&home, &["pull", &unused_ref]).success();
    let own = home.layer(&unused.layers[1].diff_id);
    assert!(own.is_dir());

    let out = dv(&home, &["cache", "rm", &unused_ref]).success();
    assert!(
        !own.exists(),
        "cache rm kept the image's own layer: {out:?}"
    );
    assert!(!home.blob(&unused.layers[1].digest).exists(), "{out:?}");
    assert!(
        home.layer(&used.layers[0].diff_id).is_dir(),
        "cache rm removed a layer the live env uses: {out:?}"
    );
    let doc = json(&dv(&home, &["cache", "ls", "--json"]).success());
    assert!(
        !doc["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["reference"] == unused_ref),
        "the removed image is still listed: {doc}"
    );
    dv(&home, &["--offline", "run", "--", "true"]).success();
}

#[test]
fn cache_rm_of_a_live_envs_image_keeps_everything_it_runs_on() {
    let home = TestHome::new();
    let img = image_on_base("cache-rm-live", "live");
    let reference = push("cache/live", &img);
    write_env_toml(&home, "project", &reference, "");
    dv(&home, &["run", "--", "true"]).success();
    let before = home.store_entries();
    let out = dv(&home, &["cache", "rm", &reference]).success();
    assert_eq!(
        home.store_entries(),
        before,
        "cache rm removed what a live env uses: {out:?}"
    );
    let out = dv(&home, &["run", "--", "cat", "/opt/own"]).success();
    assert_eq!(out.stdout, "live\n", "{out:?}");
}

/// `cache rm` promises to keep what a live env still uses; the env resolves its image through
/// the tag, so removing the tag (while keeping every layer) leaves the env unable to start
/// offline although nothing was freed.
#[test]
fn cache_rm_of_a_live_envs_image_keeps_it_usable_offline() {
    let home = TestHome::new();
    let img = image_on_base("cache-rm-offline", "offline");
    let reference = push("cache/offline", &img);
    write_env_toml(&home, "project", &reference, "");
    dv(&home, &["run", "--", "true"]).success();
    dv(&home, &["cache", "rm", &reference]).success();
    let out = dv(&home, &["--offline", "run", "--", "cat", "/opt/own"]).success();
    assert_eq!(out.stdout, "offline\n", "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// completions

#[test]
fn completions_for_bash_zsh_and_fish() {
    let home = TestHome::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = dv(&home, &["completions", shell]).success();
        assert!(
            out.stdout.len() > 100 && out.stdout.contains("devenv"),
            "{shell}: {out:?}"
        );
        for sub in ["pull", "shell", "run", "status", "gc", "doctor"] {
            assert!(out.stdout.contains(sub), "{shell} completion lacks `{sub}`");
        }
    }
}
