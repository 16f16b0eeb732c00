//! End-to-end tests of the GPU preflight, run as the unprivileged test user on a machine
//! without a GPU: a fixture driver root (`DEVENV_GPU_ROOT`, with `proc/driver/nvidia/version`
//! in the driver's own format) stands in for the host's driver. A lock that needs CUDA 12.1
//! (PyPI's `nvidia-cuda-runtime-cu12==12.1.105`, the wheel torch+cu121 pins) is refused on a
//! 470 driver before anything is built, with the driver it needs; on 550 it starts.

mod common;

use common::{Outcome, TestHome, bookworm_image, devenv, run};

const PROPRIETARY: &str = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {V}  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
const OPEN: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {V}  Release Build  (dvs-builder@U16-I3-B03-4-3)  Wed May 21 2025\n";

/// `home`'s env.toml: the bookworm image with `gpu = VALUE`.
fn gpu_env(home: &TestHome, value: &str) {
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[container]\ngpu = {value}\n",
            bookworm_image()
        ),
    );
}

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
    assert_eq!(out.errors(), 1, "{out:?}");

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
    gpu_env(&home, "true");
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

/// A fixture driver root: device nodes as regular files, a stub `libcuda.so.VERSION` built by
/// `cc` (its `cuInit` returns 0) linked as `libcuda.so.1` in `/usr/local/nvidia/lib64`, the
/// kernel module's version file, and a decoy older libcuda elsewhere.
fn stub_driver(home: &TestHome, version: &str) -> std::path::PathBuf {
    let root = home.root().join("stub-driver");
    let lib = root.join("usr/local/nvidia/lib64");
    let _ = fs_err::remove_dir_all(&lib);
    fs_err::create_dir_all(&lib).unwrap();
    for dev in ["nvidiactl", "nvidia0", "nvidia-uvm"] {
        home.write(format!("stub-driver/dev/{dev}"), "");
    }
    home.write(
        "stub-driver/proc/driver/nvidia/version",
        PROPRIETARY.replace("{V}", version),
    );
    let src = home.write(
        "stub-driver/stub.c",
        "int cuInit(unsigned int flags) { return 0; }\n",
    );
    let file = lib.join(format!("libcuda.so.{version}"));
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&file)
        .arg(&src)
        .output()
        .expect("running cc (scripts/test installs gcc)");
    assert!(cc.status.success(), "cc failed: {cc:?}");
    std::os::unix::fs::symlink(format!("libcuda.so.{version}"), lib.join("libcuda.so.1")).unwrap();
    home.write(
        "stub-driver/usr/lib/x86_64-linux-gnu/libcuda.so.470.82.01",
        "decoy",
    );
    home.chown(&root);
    root
}

#[test]
fn the_stub_driver_is_found_by_ctypes_and_a_driver_update_leaves_nothing_behind() {
    let home = TestHome::new();
    gpu_env(&home, "true");
    // dlopen by soname with LD_LIBRARY_PATH removed: the image's ldconfig cache has the driver.
    let check = "import ctypes, os, subprocess; os.environ.pop('LD_LIBRARY_PATH'); \
                 c = subprocess.run(['python3', '-c', 'import ctypes; print(ctypes.CDLL(\"libcuda.so.1\").cuInit(0))'], \
                 capture_output=True, text=True); \
                 p = subprocess.run(['ldconfig', '-p'], capture_output=True, text=True).stdout; \
                 print(c.stdout.strip() or c.stderr, sorted(os.listdir('/usr/local/nvidia/lib64')), \
                 os.environ['TRITON_LIBCUDA_PATH'], '/usr/local/nvidia/lib64/libcuda.so.1' in p)";
    let start = |version: &str| {
        let root = stub_driver(&home, version);
        run(devenv(&home)
            .current_dir(home.project())
            .env("DEVENV_GPU_ROOT", &root)
            .args(["--trust", "run", "--", "python3", "-c", check]))
        .success()
    };
    let first = start("550.54.14");
    assert_eq!(
        first.stdout,
        "0 ['libcuda.so', 'libcuda.so.1', 'libcuda.so.550.54.14'] /usr/local/nvidia/lib64 True\n",
        "{first:?}"
    );
    // The host's driver is updated: the next start has the new library and none of the old.
    let second = start("560.35.03");
    assert_eq!(
        second.stdout,
        "0 ['libcuda.so', 'libcuda.so.1', 'libcuda.so.560.35.03'] /usr/local/nvidia/lib64 True\n",
        "{second:?}"
    );
    // Nothing of the driver was kept in the env's writable layer or anywhere in the store.
    let mut kept = Vec::new();
    let mut stack = vec![home.store()];
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libcuda") {
                kept.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    assert!(kept.is_empty(), "driver files in the store: {kept:?}");
}

#[test]
fn a_list_of_gpus_selects_them_and_a_missing_one_is_a_note() {
    let home = TestHome::new();
    gpu_env(&home, "[1, 5]");
    let root = stub_driver(&home, "550.54.14");
    home.write("stub-driver/dev/nvidia1", "");
    home.chown(&root);
    let show = "echo $NVIDIA_VISIBLE_DEVICES $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER";
    let out = run(devenv(&home)
        .current_dir(home.project())
        .env("DEVENV_GPU_ROOT", &root)
        .args(["--trust", "run", "--", "sh", "-c", show]))
    .success();
    assert_eq!(out.stdout, "1 1 PCI_BUS_ID\n", "{out:?}");
    assert!(out.stderr.contains("no GPU 5 (it has 0,1)"), "{out:?}");
    // A scheduler's choice (Slurm's gres) wins.
    let slurm = run(devenv(&home)
        .current_dir(home.project())
        .env("DEVENV_GPU_ROOT", &root)
        .env("CUDA_VISIBLE_DEVICES", "0")
        .args(["--trust", "run", "--", "sh", "-c", show]))
    .success();
    assert_eq!(slurm.stdout, "1 0\n", "{slurm:?}");
    // All of them: NVIDIA_VISIBLE_DEVICES=all, CUDA's variable left alone.
    gpu_env(&home, "\"all\"");
    let all = run(devenv(&home)
        .current_dir(home.project())
        .env("DEVENV_GPU_ROOT", &root)
        .args(["--trust", "run", "--", "sh", "-c", show]))
    .success();
    assert_eq!(all.stdout, "all\n", "{all:?}");
}
