//! End-to-end tests of tool layers, run as the unprivileged test user: a real Debian bookworm
//! image (built by `scripts/test` with mmdebstrap, pushed to the shared registry), real PyPI
//! wheels and a real Debian package. `devenv run` locks, pulls and builds, then runs in the env;
//! changing one pip pin rebuilds the python layer and nothing before it; two stores build the
//! same files from the same env.lock.
//!
//! These need the network (PyPI, Debian's mirrors) as the issue asks; they fail, never skip,
//! without it.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::env::{busybox_image, push, write_env_toml};
use common::{Outcome, TestHome, bookworm_image, devenv, run};

fn env_toml(six: &str) -> String {
    format!(
        "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"six=={six}\", \"numpy==1.26.4\"]\napt = [\"jq\"]\n",
        bookworm_image()
    )
}

fn devenv_in(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).args(args))
}

/// The names under `layers/`.
fn layers(home: &TestHome) -> BTreeSet<String> {
    fs_err::read_dir(home.store().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The one layer holding `rel` among `names`.
fn layer_with(home: &TestHome, names: &BTreeSet<String>, rel: &str) -> PathBuf {
    let found: Vec<PathBuf> = names
        .iter()
        .map(|n| home.store().join("layers").join(n))
        .filter(|d| fs_err::symlink_metadata(d.join(rel)).is_ok())
        .collect();
    assert_eq!(found.len(), 1, "layers holding {rel}: {found:?}");
    found.into_iter().next().unwrap()
}

/// Every entry of a layer as `path type mode [sha256 | -> target]`, sorted: what the issue
/// calls identical (path, mode, content), mtimes left out.
fn layer_files(dir: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs_err::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs_err::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                out.push(format!("{rel} d {mode:o}"));
                go(root, &p, out);
            } else if m.is_symlink() {
                out.push(format!(
                    "{rel} l -> {}",
                    fs_err::read_link(&p).unwrap().display()
                ));
            } else if m.is_file() {
                let sum = common::image::sha256(&fs_err::read(&p).unwrap());
                out.push(format!("{rel} f {mode:o} {sum}"));
            } else {
                out.push(format!("{rel} c {mode:o} {}", m.rdev()));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn pinned_wheels_and_apt_package_build_and_one_pin_rebuilds_only_its_layer() {
    let home = TestHome::new();
    home.write("project/env.toml", env_toml("1.16.0"));
    let out = devenv_in(
        &home,
        &[
            "run",
            "--",
            "python",
            "-c",
            "import numpy, six; print(numpy.__version__, six.__version__)",
        ],
    )
    .success();
    assert_eq!(out.stdout.trim(), "1.26.4 1.16.0", "{out:?}");
    assert!(out.stderr.contains("Building apt"), "{out:?}");
    assert!(
        out.stderr.contains("Building python (2 packages)"),
        "{out:?}"
    );

    let lock = String::from_utf8(home.read("project/env.lock")).unwrap();
    for name in ["six", "numpy"] {
        assert!(lock.contains(&format!("name = \"{name}\"")), "{lock}");
    }
    assert_eq!(
        lock.matches("sha256 = \"").count(),
        lock.matches("[[python.package]]").count(),
        "every distribution has a sha256:\n{lock}"
    );

    let out = devenv_in(&home, &["run", "--", "jq", "--version"]).success();
    assert!(out.stdout.starts_with("jq-1.6"), "{out:?}");
    assert!(!out.stderr.contains("Building"), "all cached: {out:?}");
    let out = devenv_in(
        &home,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "echo $VIRTUAL_ENV; command -v python",
        ],
    )
    .success();
    assert_eq!(
        out.stdout, "/opt/devenv/venv\n/opt/devenv/venv/bin/python\n",
        "the venv comes first on PATH"
    );
    let out = devenv_in(
        &home,
        &["run", "--", "/usr/bin/python3", "-c", "import six"],
    );
    assert_eq!(
        out.code(),
        Some(1),
        "the image's Python stays intact: {out:?}"
    );

    let before = layers(&home);
    let apt = layer_with(&home, &before, "usr/bin/jq");
    let python = layer_with(&home, &before, "opt/devenv/venv");
    let apt_meta = fs_err::metadata(&apt).unwrap();
    let site = "opt/devenv/venv/lib/python3.11/site-packages";
    let pyc = layer_files(&python)
        .into_iter()
        .filter(|l| l.contains("__pycache__") || l.contains(".pyc "))
        .collect::<Vec<_>>();
    assert!(pyc.is_empty(), "no bytecode in a layer: {pyc:?}");
    assert!(
        !python.join("root/.cache").exists() && !apt.join("var/cache/apt/pkgcache.bin").exists(),
        "no caches in layers"
    );

    home.write("project/env.toml", env_toml("1.17.0"));
    let out = devenv_in(&home, &["build"]).success();
    assert!(out.stderr.contains("Building python"), "{out:?}");
    assert!(
        !out.stderr.contains("Building apt"),
        "apt is before the change: {out:?}"
    );
    let after = layers(&home);
    let added: Vec<_> = after.difference(&before).collect();
    assert_eq!(added.len(), 1, "only the python layer is new: {added:?}");
    let again = fs_err::metadata(&apt).unwrap();
    assert_eq!(
        (again.ino(), again.mtime(), again.mtime_nsec()),
        (apt_meta.ino(), apt_meta.mtime(), apt_meta.mtime_nsec()),
        "the apt layer is reused, not rebuilt"
    );
    let new_python = home.store().join("layers").join(added[0]);
    assert!(new_python.join(site).join("six-1.17.0.dist-info").is_dir());
    let out = devenv_in(
        &home,
        &[
            "run",
            "--",
            "python",
            "-c",
            "import six; print(six.__version__)",
        ],
    )
    .success();
    assert_eq!(out.stdout.trim(), "1.17.0");
    let log = String::from_utf8(
        home.read(
            home.store()
                .join("envs")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("build.log"),
        ),
    )
    .unwrap();
    assert!(
        log.contains("Installed 1 package") && log.contains("+ six==1.17.0"),
        "the build log keeps uv's output: {log}"
    );
    let out = devenv_in(&home, &["run", "--", "python", "-m", "pip", "--version"]).success();
    assert!(
        out.stdout.contains("/opt/devenv/venv/"),
        "the venv has the image's pip, as `python3 -m venv` gives it: {out:?}"
    );
}

/// The wheels a build downloaded serve every later build from the store: a second project
/// pinning the same wheels (on another parent layer, so its python step really runs) builds
/// with PyPI unreachable. The control shows the proxy does block: with one wheel gone from
/// the store, the same build fails downloading it.
#[test]
fn a_second_project_pinning_the_same_wheels_downloads_nothing() {
    let home = TestHome::new();
    home.write("first/env.toml", env_toml("1.16.0"));
    run(devenv(&home).args(["-C", "../first", "build"])).success();
    let pip_only = format!(
        "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"six==1.16.0\", \"numpy==1.26.4\"]\n",
        bookworm_image()
    );
    home.write("second/env.toml", &pip_only);
    home.write("second/env.lock", home.read("first/env.lock"));
    let offline_pypi = |home: &TestHome| {
        let mut cmd = devenv(home);
        cmd.args(["-C", "../second", "build"])
            .env("https_proxy", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9");
        run(&mut cmd)
    };
    let out = offline_pypi(&home).success();
    assert!(
        out.stderr.contains("Building python (2 packages)"),
        "{out:?}"
    );
    let out = run(devenv(&home).args([
        "-C",
        "../second",
        "run",
        "--",
        "python",
        "-c",
        "import numpy, six; print(numpy.__version__, six.__version__)",
    ]))
    .success();
    assert_eq!(out.stdout.trim(), "1.26.4 1.16.0", "{out:?}");

    let lock = String::from_utf8(home.read("second/env.lock")).unwrap();
    assert!(
        !lock.contains("[apt]"),
        "the second project has no apt part: {lock}"
    );
    let six = lock
        .split("[[python.package]]")
        .find(|p| p.contains("name = \"six\""))
        .and_then(|p| p.split("sha256 = \"").nth(1))
        .map(|s| s[..64].to_string())
        .expect("six's sha256");
    fs_err::remove_file(home.store().join("cache/pip/sha256").join(&six)).unwrap();
    for name in layers(&home) {
        let dir = home.store().join("layers").join(name);
        if dir.join("opt/devenv/venv").exists() {
            fs_err::remove_dir_all(&dir).unwrap();
        }
    }
    offline_pypi(&home).failure(&["downloading", "six-1.16.0", "hint:"]);
}

#[test]
fn two_stores_build_identical_tool_layers_from_one_lock() {
    let first = TestHome::new();
    first.write("project/env.toml", env_toml("1.16.0"));
    devenv_in(&first, &["build"]).success();
    let second = TestHome::new();
    second.write("project/env.toml", env_toml("1.16.0"));
    second.write("project/env.lock", first.read("project/env.lock"));
    devenv_in(&second, &["--locked", "build"]).success();

    let (a, b) = (layers(&first), layers(&second));
    assert_eq!(a, b, "the same keys: base layer and the same tool layers");
    assert_eq!(a.len(), 3, "base, apt, python: {a:?}");
    for name in &a {
        let (la, lb) = (
            layer_files(&first.store().join("layers").join(name)),
            layer_files(&second.store().join("layers").join(name)),
        );
        let only_a: Vec<_> = la.iter().filter(|l| !lb.contains(l)).collect();
        let only_b: Vec<_> = lb.iter().filter(|l| !la.contains(l)).collect();
        assert!(
            only_a.is_empty() && only_b.is_empty(),
            "layer {name} differs:\nfirst only: {only_a:#?}\nsecond only: {only_b:#?}"
        );
    }
    // Every entry of a tool layer carries one fixed time, so the layers export to the same
    // bytes: the same blob digests in both stores' images (issue 12).
    for home in [&first, &second] {
        for key in tool_layer_keys(home) {
            let dir = home.store().join("layers").join(&key);
            for p in all_paths(&dir) {
                let m = fs_err::symlink_metadata(&p).unwrap();
                assert_eq!(m.mtime(), 315_532_800, "{}", p.display());
            }
        }
    }
    let digests = |home: &TestHome| {
        devenv_in(home, &["export", "-o", "out"]).success();
        let index: serde_json::Value =
            serde_json::from_slice(&home.read("project/out/index.json")).unwrap();
        let manifest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let bytes = home.read(format!("project/out/blobs/sha256/{}", &manifest[7..]));
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (da, db) = (digests(&first), digests(&second));
    assert_eq!(da.len(), 4, "base, apt, python, workspace: {da:?}");
    assert_eq!(da, db, "the exported layers are byte-identical");
}

/// `dir` and every path below it, symlinks not followed.
fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs_err::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(all_paths(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The keys (hex) of the project's tool layers, as `tool-layers.json` lists them.
fn tool_layer_keys(home: &TestHome) -> Vec<String> {
    let envs = home.store().join("envs");
    let env = fs_err::read_dir(&envs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let keys: Vec<String> =
        serde_json::from_slice(&fs_err::read(env.join("tool-layers.json")).unwrap()).unwrap();
    keys.iter()
        .map(|k| k.trim_start_matches("sha256:").to_string())
        .collect()
}

#[test]
fn a_failing_setup_step_shows_its_status_last_lines_and_log() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[setup]\nrun = [\"echo made > /opt/made\", \"echo about to fail; exit 3\"]\n",
            bookworm_image()
        ),
    );
    let out = devenv_in(&home, &["build"]).failure(&[
        "exited with status 3",
        "about to fail",
        "build.log",
        "hint:",
    ]);
    assert!(
        out.stderr.contains("Building run `echo made > /opt/made`"),
        "{out:?}"
    );
    // The first step is cached: the next build starts at the failed one.
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[setup]\nrun = [\"echo made > /opt/made\", \"cat /opt/made > done\"]\n",
            bookworm_image()
        ),
    );
    let out = devenv_in(&home, &["build"]).success();
    assert!(!out.stderr.contains("Building run `echo made"), "{out:?}");
    assert_eq!(
        home.read("project/done"),
        b"made\n",
        "setup runs in the project directory"
    );
}

#[test]
fn a_setup_step_is_built_again_when_the_project_files_it_names_change() {
    let image = push("build/setup-inputs", &busybox_image("setup-inputs").build());
    let home = TestHome::new();
    home.write("project/vendor/mylib/VERSION", "1\n");
    home.write("project/notes.txt", "not an input\n");
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{image}\"\n\n[setup]\nrun = [\"mkdir -p /opt; echo plain > /opt/plain\", \
             {{ cmd = \"cp vendor/mylib/VERSION /opt/mylib\", inputs = [\"vendor/mylib/**\"] }}]\n"
        ),
    );
    let installed = |home: &TestHome| {
        devenv_in(home, &["run", "--", "cat", "/opt/mylib"])
            .success()
            .stdout
    };
    assert_eq!(installed(&home), "1\n");
    // Nothing it reads changed: nothing built.
    home.write("project/notes.txt", "edited\n");
    let out = devenv_in(&home, &["build"]).success();
    assert!(!out.stderr.contains("Building"), "{out:?}");
    // Its input changed: that step alone is built again.
    home.write("project/vendor/mylib/VERSION", "2\n");
    let out = devenv_in(&home, &["build"]).success();
    assert!(
        out.stderr.contains("Building run `cp vendor/mylib/VERSION"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("Building run `mkdir"), "{out:?}");
    assert_eq!(installed(&home), "2\n");
    // A pattern that matches nothing is a typo, said before anything runs.
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{image}\"\n\n[setup]\nrun = [\
             {{ cmd = \"true\", inputs = [\"vendr/**\"] }}]\n"
        ),
    );
    devenv_in(&home, &["build"]).failure(&["input `vendr/**`: matches no file in the project"]);
}

/// man-db ships /var/cache/man owned by man:man, which a one-id namespace cannot hold: dpkg's
/// chown succeeds without effect instead of failing the unpack.
#[test]
fn apt_package_with_files_owned_by_other_users_installs() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\napt = [\"man-db\"]\n",
            bookworm_image()
        ),
    );
    let out = devenv_in(
        &home,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "man --version && stat -c %u /var/cache/man",
        ],
    )
    .success();
    assert!(out.stdout.starts_with("man "), "{out:?}");
    let owner = common::runner_ids().0.to_string();
    assert_eq!(
        out.stdout.lines().nth(1),
        Some(owner.as_str()),
        "files owned by other users belong to the user: {out:?}"
    );
}

/// Python packages on an image without Python: the lock says so, with the fix, and writes
/// nothing.
#[test]
fn python_packages_on_an_image_without_python_fail_with_a_hint() {
    let home = TestHome::new();
    let image = push("build/no-python", &busybox_image("no-python").build());
    write_env_toml(
        &home,
        "project",
        &image,
        "\n[packages]\npip = [\"six==1.16.0\"]\n",
    );
    devenv_in(&home, &["lock"]).failure(&["has no python3", "hint:", "[tools] python"]);
    assert!(!home.project().join("env.lock").exists());
}

/// Everyday work inside (issue 11): a commit records the host user's git identity, and the
/// host's SSH agent is there once the user grants it (trust.rs), not before.
#[test]
fn git_commits_carry_the_users_identity_and_the_agent_comes_in_when_granted() {
    let home = TestHome::new();
    home.write(
        "home/.gitconfig",
        "[user]\n\tname = Dev Person\n\temail = dev@example.invalid\n[credential]\n\thelper = store\n",
    );
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\napt = [\"git\", \"openssh-client\"]\n",
            bookworm_image()
        ),
    );
    // A throwaway agent of the test user's, holding one key.
    let sock = home.root().join("agent.sock");
    let mut agent = common::as_user("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client) is needed; scripts/test installs it");
    common::env::wait_for(
        "the agent's socket",
        std::time::Duration::from_secs(10),
        || sock.exists(),
    );
    let key = home.root().join("key");
    run(common::as_user("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "devenv-test-key",
            "-f",
        ])
        .arg(&key))
    .success();
    run(common::as_user("ssh-add")
        .env("SSH_AUTH_SOCK", &sock)
        .arg(&key))
    .success();

    let script = "git init -q repo && cd repo && git commit -q --allow-empty -m first && \
                  git log -1 --format='%an <%ae>'; git config --global credential.helper; \
                  ssh-add -l 2>&1; true";
    let inside = |home: &TestHome| {
        run(devenv(home)
            .env("SSH_AUTH_SOCK", &sock)
            .args(["run", "--", "sh", "-c", script]))
        .success()
    };
    let before = inside(&home);
    assert!(
        before.stdout.contains("Dev Person <dev@example.invalid>"),
        "{before:?}"
    );
    assert!(
        !before.stdout.contains("store"),
        "only name and email are copied: {before:?}"
    );
    assert!(
        !before.stdout.contains("devenv-test-key"),
        "not granted yet: {before:?}"
    );
    assert!(
        before.stderr.contains("your SSH agent is not in the env"),
        "{before:?}"
    );

    run(devenv(&home).env("SSH_AUTH_SOCK", &sock).arg("trust")).success();
    let after = inside(&home);
    assert!(after.stdout.contains("devenv-test-key"), "{after:?}");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A company's package mirror and no other index: `[python] index` in the user's config.toml
/// names it (Python's http.server on loopback over a PEP 503 tree holding the pinned uv and
/// six), every other index is behind a closed proxy. devenv fetches its uv from the mirror,
/// resolves and installs six from it, and env.lock's URL points at it. `PIP_INDEX_URL` does the
/// same, and pip inside the env uses it too; the control, with the mirror named nowhere, fails
/// to get uv at all.
#[test]
fn a_mirror_in_the_users_configuration_is_the_only_index_a_build_needs() {
    use common::mirror::{Mirror, behind_closed_proxy, wheels};
    let mirror = Mirror::serve(&wheels());
    let env = format!(
        "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"six==1.16.0\"]\n",
        bookworm_image()
    );
    let home = TestHome::new();
    home.write("project/env.toml", &env);
    home.write(
        "config/devenv/config.toml",
        format!("[python]\nindex = \"{}\"\n", mirror.url),
    );
    let mut cmd = devenv(&home);
    behind_closed_proxy(&mut cmd).args([
        "run",
        "--",
        "python",
        "-c",
        "import six; print(six.__version__)",
    ]);
    let out = run(&mut cmd).success();
    assert_eq!(out.stdout.trim(), "1.16.0", "{out:?}");
    let asked = mirror.requests();
    for path in [
        "GET /simple/uv/",
        "GET /files/uv-0.13.9-",
        "GET /simple/six/",
        "GET /files/six-1.16.0-py2.py3-none-any.whl",
    ] {
        assert!(
            asked.iter().any(|a| a.starts_with(path)),
            "{path} not asked of the mirror: {asked:?}"
        );
    }
    let lock = String::from_utf8(home.read("project/env.lock")).unwrap();
    assert!(
        lock.contains(&format!(
            "url = \"{}",
            mirror.url.trim_end_matches("/simple")
        )),
        "env.lock's six comes from the mirror: {lock}"
    );

    let by_variable = TestHome::new();
    by_variable.write("project/env.toml", &env);
    let before = mirror.requests().len();
    let mut cmd = devenv(&by_variable);
    behind_closed_proxy(&mut cmd)
        .env("PIP_INDEX_URL", &mirror.url)
        .arg("lock");
    run(&mut cmd).success();
    assert!(
        mirror.requests()[before..]
            .iter()
            .any(|a| a.starts_with("GET /simple/six/")),
        "PIP_INDEX_URL names the mirror: {:?}",
        mirror.requests()
    );
    // The variable reaches the shell too: the image's own pip downloads from the mirror.
    let mut cmd = devenv(&by_variable);
    behind_closed_proxy(&mut cmd)
        .env("PIP_INDEX_URL", &mirror.url)
        .args([
            "run",
            "--",
            "/usr/bin/python3",
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--dest",
            "/tmp/dl",
            "six==1.16.0",
        ]);
    let out = run(&mut cmd).success();
    assert!(out.stdout.contains("Saved /tmp/dl/six-1.16.0"), "{out:?}");

    let control = TestHome::new();
    control.write("project/env.toml", &env);
    let mut cmd = devenv(&control);
    behind_closed_proxy(&mut cmd).arg("lock");
    run(&mut cmd).failure(&["downloading uv 0.13.9 from", "hint:"]);
}
