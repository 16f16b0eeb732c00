//! End-to-end tests of the team cache, run as the unprivileged test user: machine A builds an
//! env and fills the cache (`devenv build --push-cache`) in a real registry of the test's own;
//! a teammate (another store, a fresh clone holding only env.toml and env.lock) gets every tool
//! layer from it with every package index unreachable, and the same image digest. Entries that
//! are corrupt, mislabelled or differ from env.lock's pin are refused and the layer is built;
//! an unreachable cache is a note.

mod common;

use common::registry::Registry;
use common::{Outcome, TestHome, bookworm_image, devenv, run};

fn env_toml(cache: &str, pip: &str) -> String {
    format!(
        "[image]\nbase = \"{}\"\n\n[packages]\npip = [{pip}]\n\n[cache]\nregistry = \"{cache}\"\n",
        bookworm_image()
    )
}

fn devenv_in(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).current_dir(home.project()).args(args))
}

/// `devenv` with every package index out of reach: proxies to a closed port for everything
/// but loopback (where the registries are).
fn offline_from_pypi(home: &TestHome, args: &[&str]) -> Outcome {
    let mut cmd = devenv(home);
    common::mirror::behind_closed_proxy(&mut cmd);
    run(cmd.current_dir(home.project()).args(args))
}

/// `python -c 'import six; print(six.__version__)'` in `home`'s env.
fn six_version(home: &TestHome) -> Outcome {
    devenv_in(
        home,
        &[
            "run",
            "--",
            "python",
            "-c",
            "import six; print(six.__version__)",
        ],
    )
}

/// A teammate's fresh clone of `a`'s project: env.toml and env.lock only.
fn clone_of(a: &TestHome) -> TestHome {
    let b = TestHome::new();
    b.write("project/env.toml", a.read("project/env.toml"));
    b.write("project/env.lock", a.read("project/env.lock"));
    b
}

/// The digest of the image `devenv export` writes for `home`'s env.
fn image_digest(home: &TestHome) -> String {
    devenv_in(home, &["export", "-o", "out"]).success();
    let index: serde_json::Value =
        serde_json::from_slice(&home.read("project/out/index.json")).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_teammate_onboards_from_the_team_cache_with_every_index_unreachable() {
    let registry = Registry::start();
    let cache = format!("{}/team/devenv-cache", registry.addr());
    let a = TestHome::new();
    a.write(
        "project/env.toml",
        env_toml(
            &cache,
            "\"numpy==2.1.3\", \"pandas==2.2.3\", \"scikit-learn==1.5.2\"",
        ),
    );
    let filled = devenv_in(&a, &["build", "--push-cache"]).success();
    assert!(filled.stderr.contains("1 uploaded"), "{filled:?}");
    let lock = String::from_utf8(a.read("project/env.lock")).unwrap();
    assert!(
        lock.contains("[layers]"),
        "the python layer is pinned:\n{lock}"
    );

    let b = clone_of(&a);
    let out = offline_from_pypi(
        &b,
        &[
            "run",
            "--",
            "python",
            "-c",
            "import sklearn, pandas, numpy; print(sklearn.__version__, numpy.__version__)",
        ],
    )
    .success();
    assert_eq!(out.stdout, "1.5.2 2.1.3\n", "{out:?}");
    assert!(out.stderr.contains("from the team cache"), "{out:?}");
    assert!(
        !out.stderr.contains("Building"),
        "nothing was built: {out:?}"
    );
    assert!(
        !b.store().join("cache/pip").exists() && !b.store().join("cache/uv").exists(),
        "neither pip nor uv ran for the teammate"
    );
    assert_eq!(
        b.read("project/env.lock"),
        a.read("project/env.lock"),
        "the teammate's env.lock is unchanged"
    );
    assert_eq!(
        image_digest(&a),
        image_digest(&b),
        "the same env, byte for byte"
    );

    // The teammate's store now has it: a second push of the cache uploads nothing.
    let again = devenv_in(&b, &["push", "--cache"]).success();
    assert!(again.stderr.contains("0 uploaded"), "{again:?}");
}

/// Machine A with a small env (six) whose cache is filled; returns A and the cache.
fn filled(registry: &Registry) -> (TestHome, String) {
    let cache = format!("{}/team/devenv-cache", registry.addr());
    let a = TestHome::new();
    a.write("project/env.toml", env_toml(&cache, "\"six==1.16.0\""));
    devenv_in(&a, &["build", "--push-cache"]).success();
    (a, cache)
}

/// The cache entry's layer blob digest (the one tool layer of `a`).
fn entry_layer(registry: &Registry, a: &TestHome) -> String {
    let lock = String::from_utf8(a.read("project/env.lock")).unwrap();
    let key = lock
        .lines()
        .skip_while(|l| *l != "[layers]")
        .nth(1)
        .and_then(|l| l.split('"').nth(1))
        .expect("a pinned layer")
        .to_string();
    let tag = format!("key-{}", &key[7..]);
    let (_, bytes) = registry.client().get_manifest("team/devenv-cache", &tag);
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn a_corrupt_entry_is_refused_and_the_layer_built() {
    let registry = Registry::start();
    let (a, _) = filled(&registry);
    let blob = registry.blob_data(&entry_layer(&registry, &a));
    let mut bytes = fs_err::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs_err::write(&blob, &bytes).unwrap();

    let b = clone_of(&a);
    let out = six_version(&b).success();
    assert_eq!(out.stdout, "1.16.0\n", "{out:?}");
    assert!(
        out.stderr.contains("note:") && out.stderr.contains("building it instead"),
        "{out:?}"
    );
    assert!(out.stderr.contains("Building"), "{out:?}");
    assert!(!out.stderr.contains("error:"), "{out:?}");
}

#[test]
fn an_entry_other_than_env_locks_pin_is_refused() {
    let registry = Registry::start();
    let (a, _) = filled(&registry);
    let b = clone_of(&a);
    // The lock pins another diff_id for the layer: the cache's entry is not that layer.
    let lock = String::from_utf8(b.read("project/env.lock")).unwrap();
    let mut lines: Vec<String> = lock.lines().map(str::to_string).collect();
    let at = lines.iter().position(|l| l == "[layers]").unwrap() + 1;
    let (key, _) = lines[at].split_once(" = ").unwrap();
    lines[at] = format!("{key} = \"sha256:{}\"", "0".repeat(64));
    b.write("project/env.lock", lines.join("\n") + "\n");

    let out = devenv_in(&b, &["run", "--", "python", "-c", "import six"]).success();
    assert!(out.stderr.contains("env.lock pins"), "{out:?}");
    assert!(out.stderr.contains("Building"), "{out:?}");
}

#[test]
fn an_entry_tagged_with_another_key_is_refused() {
    let registry = Registry::start();
    let (a, _) = filled(&registry);
    // Another env (another six) whose key's tag is made to point at a's entry.
    let b = TestHome::new();
    let cache = format!("{}/team/devenv-cache", registry.addr());
    b.write("project/env.toml", env_toml(&cache, "\"six==1.15.0\""));
    devenv_in(&b, &["lock"]).success();
    let tags = registry
        .client()
        .get_manifest("team/devenv-cache", &first_tag(&a));
    let b_key = python_key_after_lock(&b);
    registry.client().push_manifest(
        "team/devenv-cache",
        &format!("key-{}", &b_key[7..]),
        "application/vnd.oci.image.manifest.v1+json",
        &tags.1,
    );
    let out = six_version(&b).success();
    assert_eq!(out.stdout, "1.15.0\n", "{out:?}");
    assert!(
        out.stderr.contains("not the key it is tagged with"),
        "{out:?}"
    );
}

fn first_tag(a: &TestHome) -> String {
    let lock = String::from_utf8(a.read("project/env.lock")).unwrap();
    let line = lock
        .lines()
        .skip_while(|l| *l != "[layers]")
        .nth(1)
        .unwrap();
    format!("key-{}", &line.split('"').nth(1).unwrap()[7..])
}

/// The python layer's key for `home`'s locked env, from `devenv status --json`.
fn python_key_after_lock(home: &TestHome) -> String {
    let out = devenv_in(home, &["status", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["tool_layers"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|t| t["step"].as_str().is_some_and(|s| s.starts_with("python")))
        })
        .and_then(|t| t["key"].as_str())
        .unwrap_or_else(|| panic!("no python tool layer key in status: {v}"))
        .to_string()
}

#[test]
fn an_unreachable_cache_is_a_note_and_status_says_what_it_would_give() {
    let registry = Registry::start();
    let (a, cache) = filled(&registry);
    let b = clone_of(&a);
    let status = devenv_in(&b, &["status"]).success();
    assert!(status.stdout.contains(&cache), "{status:?}");
    assert!(status.stdout.contains("from the team cache"), "{status:?}");

    drop(registry);
    let out = devenv_in(&b, &["run", "--", "python", "-c", "import six"]).success();
    let notes: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("team cache"))
        .collect();
    assert_eq!(notes.len(), 1, "one note: {out:?}");
    assert!(notes[0].starts_with("note:"), "{out:?}");
}

#[test]
fn the_users_setting_wins_and_off_turns_the_cache_off() {
    let registry = Registry::start();
    let (a, _) = filled(&registry);
    let b = clone_of(&a);
    let out = run(devenv(&b)
        .current_dir(b.project())
        .env("DEVENV_CACHE", "off")
        .args(["build"]))
    .success();
    assert!(out.stderr.contains("Building"), "{out:?}");
    assert!(!out.stderr.contains("team cache"), "{out:?}");

    // The user's config.toml says no cache: env.toml's is not used.
    let c = clone_of(&a);
    c.write("config/devenv/config.toml", "[cache]\nregistry = \"off\"\n");
    let out = devenv_in(&c, &["build"]).success();
    assert!(out.stderr.contains("Building"), "{out:?}");

    devenv_in(&b, &["push", "--cache"]).success();
    let bad = run(devenv(&b)
        .current_dir(b.project())
        .env("DEVENV_CACHE", "no-registry-here")
        .args(["build"]))
    .failure(&["DEVENV_CACHE", "hint:"]);
    assert!(!bad.stderr.contains("Building"), "{bad:?}");
}

#[test]
fn push_cache_without_a_cache_is_an_error_before_any_build() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!("[image]\nbase = \"{}\"\n", bookworm_image()),
    );
    devenv_in(&home, &["build", "--push-cache"]).failure(&["no team cache is set"]);
    devenv_in(&home, &["push", "--cache"]).failure(&["no team cache is set"]);
    let layers = fs_err::read_dir(home.store().join("layers")).map_or(0, |d| d.count());
    assert_eq!(layers, 0);
}

#[test]
fn a_bad_cache_setting_in_env_toml_is_an_error_with_its_place() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[cache]\nregistry = \"host.example/team/cache:v1\"\n",
            bookworm_image()
        ),
    );
    let out = devenv_in(&home, &["status"]).failure(&["env.toml:5", "tag or digest"]);
    assert!(out.stderr.contains("hint:"), "{out:?}");
}
