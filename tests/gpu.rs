//! End-to-end tests of the GPU preflight, run as the unprivileged test user on a machine
//! without a GPU: a fixture driver root (`DEVENV_GPU_ROOT`, with `proc/driver/nvidia/version`
//! in the driver's own format) stands in for the host's driver. A lock that needs CUDA 12.1
//! (PyPI's `nvidia-cuda-runtime-cu12==12.1.105`, the wheel torch+cu121 pins) is refused on a
//! 470 driver before anything is built, with the driver it needs; on 550 it starts.

mod common;

use common::{Outcome, TestHome, bookworm_image, devenv, run};

const PROPRIETARY: &str = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {V}  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
const OPEN: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {V}  Release Build  (dvs-builder@U16-I3-B03-4-3)  Wed May 21 2025\n";

/// A project whose env needs CUDA 12.1, locked, with `[container].gpu = true`.
fn project() -> TestHome {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"nvidia-cuda-runtime-cu12==12.1.105\"]\n\n\
             [container]\ngpu = true\n",
            bookworm_image()
        ),
    );
    run(devenv(&home).current_dir(home.project()).arg("lock")).success();
    home
}

/// `devenv --trust ARGS` with the driver of the fixture root `version` (in `format`).
fn with_driver(home: &TestHome, format: &str, version: &str, args: &[&str]) -> Outcome {
    let root = home.root().join(format!("driver-{version}"));
    home.write(
        format!("driver-{version}/proc/driver/nvidia/version"),
        format.replace("{V}", version),
    );
    run(devenv(home)
        .current_dir(home.project())
        .env("DEVENV_GPU_ROOT", &root)
        .arg("--trust")
        .args(args))
}

#[test]
fn a_cuda_12_lock_is_refused_on_a_470_driver_with_the_fix_and_starts_on_550() {
    let home = project();
    let out = with_driver(&home, PROPRIETARY, "470.82.01", &["run", "--", "true"]).failure(&[
        "needs CUDA 12.1",
        "nvidia-cuda-runtime-cu12 12.1.105",
        "470.82.01",
    ]);
    assert!(
        out.stderr
            .contains("hint: install NVIDIA driver 525.60.13 or newer"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("Building"),
        "refused before the build: {out:?}"
    );
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{out:?}"
    );

    // doctor says the same, as a failed check with the fix.
    let doctor = with_driver(&home, PROPRIETARY, "470.82.01", &["doctor"]);
    assert!(doctor.stdout.contains("gpu-preflight"), "{doctor:?}");
    assert!(doctor.stdout.contains("525.60.13"), "{doctor:?}");

    let ok = with_driver(
        &home,
        OPEN,
        "550.54.14",
        &["run", "--", "python", "-c", "print('started')"],
    )
    .success();
    assert_eq!(ok.stdout, "started\n", "{ok:?}");
}

#[test]
fn an_env_without_cuda_never_fails_the_preflight() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[container]\ngpu = true\n",
            bookworm_image()
        ),
    );
    let out = with_driver(&home, PROPRIETARY, "390.157", &["run", "--", "true"]).success();
    assert!(!out.stderr.contains("error"), "{out:?}");
}

#[test]
fn the_preflight_can_be_turned_off() {
    let home = project();
    with_driver(&home, PROPRIETARY, "470.82.01", &["run", "--", "true"]).failure(&["needs CUDA"]);
    let root = home.root().join("driver-470.82.01");
    run(devenv(&home)
        .current_dir(home.project())
        .env("DEVENV_GPU_ROOT", &root)
        .env("DEVENV_GPU_PREFLIGHT", "off")
        .args(["--trust", "run", "--", "true"]))
    .success();
}
