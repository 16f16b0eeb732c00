use super::*;
use crate::config::SetupStep;
use crate::lock::{AptPackage, PythonPackage};
use std::path::Path;

fn py(name: &str, version: &str, url: &str, sha256: &str) -> PythonPackage {
    PythonPackage {
        name: name.into(),
        version: version.into(),
        url: url.into(),
        sha256: sha256.into(),
    }
}

const SIX_116: &str = "https://index.example/packages/d9/5a/e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl";
const SIX_116_SHA: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";
const SIX_117: &str = "https://index.example/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed46c2cc5e/six-1.17.0-py2.py3-none-any.whl";
const SIX_117_SHA: &str = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274";
const NUMPY: &str = "https://index.example/packages/3a/d0/edc009c27b406c4f9cbc79274d6e46d634d139075492ad055e3d68445925/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
const NUMPY_SHA: &str = "666dbfb6ec68962c033a450943ded891bed2d54e6755e35e5835d63f4f6931d5";

/// six 1.16.0 (or 1.17.0) and numpy 1.26.4 for CPython 3.11 on x86_64, jq from bookworm.
fn lock(six_117: bool) -> Lock {
    let six = if six_117 {
        py("six", "1.17.0", SIX_117, SIX_117_SHA)
    } else {
        py("six", "1.16.0", SIX_116, SIX_116_SHA)
    };
    let mut l = Lock::default();
    l.python.packages = vec![six, py("numpy", "1.26.4", NUMPY, NUMPY_SHA)];
    l.apt.packages = [
        ("jq", "1.6-2.1+deb12u3"),
        ("libjq1", "1.6-2.1+deb12u3"),
        ("libonig5", "6.9.8-1"),
    ]
    .iter()
    .map(|(n, v)| AptPackage {
        name: n.to_string(),
        version: v.to_string(),
    })
    .collect();
    l
}

#[test]
fn steps_in_order_apt_python_run() {
    let steps = plan(
        &lock(false),
        &[SetupStep::cmd("echo hi"), SetupStep::cmd("make")],
        Path::new("/nonexistent"),
    )
    .unwrap();
    let labels: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "apt (3 packages)",
            "python (2 packages)",
            "run `echo hi`",
            "run `make`"
        ]
    );
    assert_eq!(
        steps[0].inputs,
        "jq=1.6-2.1+deb12u3\nlibjq1=1.6-2.1+deb12u3\nlibonig5=6.9.8-1"
    );
    assert_eq!(
        &steps[0].argv[4..],
        [
            "jq=1.6-2.1+deb12u3",
            "libjq1=1.6-2.1+deb12u3",
            "libonig5=6.9.8-1"
        ]
    );
    assert_eq!(steps[3].argv, ["/bin/sh", "-c", "make"]);
    assert!(
        plan(&Lock::default(), &[], Path::new("/nonexistent"))
            .unwrap()
            .is_empty(),
        "nothing to build"
    );
}

#[test]
fn requirements_are_sorted_pinned_and_hashed() {
    let steps = plan(&lock(false), &[], Path::new("/nonexistent")).unwrap();
    let text = &steps[1].inputs;
    assert_eq!(
        *text,
        format!(
            "installer uv {}\nnumpy @ {NUMPY} --hash=sha256:{NUMPY_SHA}\nsix @ {SIX_116} --hash=sha256:{SIX_116_SHA}\n",
            uv::VERSION
        ),
        "the key covers the installer's version too"
    );
}

#[test]
fn python_step_installs_with_uv_from_the_store_and_adds_the_images_pip() {
    let steps = plan(&lock(false), &[], Path::new("/nonexistent")).unwrap();
    let script = &steps[1].argv[2];
    assert!(
        script.contains("python3 -m venv --without-pip /opt/devenv/venv"),
        "{script}"
    );
    let install = script
        .lines()
        .find(|l| l.contains("-r /tmp/devenv-build/requirements.txt"))
        .expect("the locked install");
    for flag in [
        "/tmp/devenv-uv/uv pip install",
        "--offline",
        "--no-index",
        "--find-links /tmp/devenv-build/files",
        "--require-hashes",
        "--no-deps",
        "--python /opt/devenv/venv/bin/python",
    ] {
        assert!(install.contains(flag), "{flag}: {install}");
    }
    assert!(!install.contains("--compile"), "no bytecode: {install}");
    assert!(
        script.contains("/usr/share/python-wheels/pip-*.whl"),
        "{script}"
    );
    let mut with_pip = lock(false);
    with_pip.python.packages.push(py(
        "pip",
        "24.0",
        "https://f/pip-24.0-py3-none-any.whl",
        NUMPY_SHA,
    ));
    let script = &plan(&with_pip, &[], Path::new("/nonexistent")).unwrap()[1].argv[2];
    assert!(
        !script.contains("python-wheels"),
        "a locked pip wins: {script}"
    );
}

#[test]
fn changing_one_step_changes_its_key_and_those_after_not_those_before() {
    let base = Digest::of(b"base manifest");
    let keys = |l: &Lock| {
        let mut parent = base.clone();
        plan(l, &[SetupStep::cmd("make")], Path::new("/nonexistent"))
            .unwrap()
            .iter()
            .map(|s| {
                parent = step_key(&parent, s.kind, &s.inputs);
                parent.clone()
            })
            .collect::<Vec<_>>()
    };
    let a = keys(&lock(false));
    let b = keys(&lock(false));
    let c = keys(&lock(true));
    assert_eq!(a, b, "same inputs, same keys");
    assert_eq!(a[0], c[0], "apt is before the change");
    assert_ne!(a[1], c[1]);
    assert_ne!(a[2], c[2], "the run step sits on a changed parent");
    let other_base = step_key(
        &Digest::of(b"other"),
        StepKind::Apt,
        &plan(&lock(false), &[], Path::new("/nonexistent")).unwrap()[0].inputs,
    );
    assert_ne!(a[0], other_base, "another base image, another layer");
    assert_ne!(
        step_key(&base, StepKind::Run, "x"),
        step_key(&base, StepKind::Apt, "x"),
        "the kind is part of the key"
    );
}

#[test]
fn pip_installs_by_name_version_and_hash() {
    assert_eq!(
        install_requirements(&lock(false)),
        format!(
            "numpy==1.26.4 --hash=sha256:{NUMPY_SHA}\nsix==1.16.0 --hash=sha256:{SIX_116_SHA}\n"
        )
    );
}

#[test]
fn venv_comes_first_on_path_once_built() {
    let image = vec!["PATH=/usr/bin:/bin".to_string(), "LANG=C.UTF-8".into()];
    let get = |env: &[(String, String)], k: &str| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let before = step_env(&image, false);
    assert_eq!(get(&before, "PATH").as_deref(), Some("/usr/bin:/bin"));
    assert_eq!(get(&before, "VIRTUAL_ENV"), None);
    assert_eq!(
        get(&before, "PYTHONDONTWRITEBYTECODE").as_deref(),
        Some("1")
    );
    let after = step_env(&image, true);
    assert_eq!(
        get(&after, "PATH").as_deref(),
        Some("/opt/devenv/venv/bin:/usr/bin:/bin")
    );
    assert_eq!(get(&after, "VIRTUAL_ENV").as_deref(), Some(VENV));
    assert_eq!(after.iter().filter(|(k, _)| k == "PATH").count(), 1);
}

#[test]
fn failed_steps_hint_at_the_cause() {
    assert!(
        step_hint("apt (1 package)", 100, "E: Unable to locate package nosuch")
            .contains("Debian release")
    );
    assert!(
        step_hint(
            "python (1 package)",
            127,
            "devenv: the image has no python3"
        )
        .contains("python3 -m venv")
    );
    assert!(
        step_hint(
            "python (1 package)",
            1,
            "Temporary failure in name resolution"
        )
        .contains("network")
    );
    let e = BuildError::StepFailed {
        step: "run `false`".into(),
        status: 1,
        tail: "  | boom\n".into(),
        log: "/s/envs/x/build.log".into(),
    };
    assert_eq!(
        e.to_string(),
        "build step run `false` exited with status 1\n  | boom\n\nfull log: /s/envs/x/build.log"
    );
}
