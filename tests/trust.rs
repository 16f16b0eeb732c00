//! End-to-end tests of trust (issue 16, docs/security.md "Trust"): what a cloned repository's
//! env.toml asks for beyond the project starts only once the user granted it, as the
//! unprivileged test user against the busybox test image.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::env::{PtySession, busybox_image, push, write_env_toml};
use common::{Outcome, TestHome, devenv, run};

fn base_ref() -> &'static str {
    static REF: OnceLock<String> = OnceLock::new();
    REF.get_or_init(|| push("trust/busybox", &busybox_image("trust-tests").build()))
}

/// A test home with a host directory `hostdir/` outside the project holding `secret`, and the
/// project's env.toml with `container` as its [container] section.
fn project(container: &str) -> (TestHome, PathBuf) {
    let home = TestHome::new();
    home.write("hostdir/secret", "host secret\n");
    let hostdir = home.root().join("hostdir");
    write_env_toml(
        &home,
        "project",
        base_ref(),
        &format!("[container]\n{container}\n"),
    );
    (home, hostdir)
}

/// env.toml mounting the host directory `dir` at /s.
fn mount_at_s(home: &TestHome, dir: &std::path::Path) {
    write_env_toml(
        home,
        "project",
        base_ref(),
        &format!("[container]\nmounts = [\"{}:/s\"]\n", dir.display()),
    );
}

fn cat_secret(home: &TestHome, at: &str) -> Outcome {
    run(devenv(home).args(["run", "--", "cat", &format!("{at}/secret")]))
}

#[test]
fn a_host_directory_outside_the_project_needs_a_grant_then_mounts() {
    let (home, hostdir) = project("");
    mount_at_s(&home, &hostdir);
    let out = cat_secret(&home, "/s").failure(&[
        "asks for reach beyond the project that you have not granted",
        &format!("mount {} at /s (read-write)", hostdir.display()),
        "devenv trust",
        "--trust",
    ]);
    assert!(!out.stdout.contains("host secret"), "{out:?}");
    assert!(
        !home.store().join("blobs").exists(),
        "nothing fetched before the grant: {out:?}"
    );
    // status says what is asked and not granted.
    let status = run(devenv(&home).arg("status")).success();
    assert!(
        status.stdout.contains("trust    not granted: mount"),
        "{status:?}"
    );

    let granted = run(devenv(&home).arg("trust")).success();
    assert!(granted.stderr.contains("Granted mount"), "{granted:?}");
    assert_eq!(cat_secret(&home, "/s").success().stdout, "host secret\n");
    let status = run(devenv(&home).arg("status")).success();
    assert!(
        status.stdout.contains("trust    granted: mount"),
        "{status:?}"
    );
    // The grant lives in the user's config, not in the repository.
    assert!(home.config().join("devenv/trusted.toml").is_file());
    let project_files: Vec<_> = fs_err::read_dir(home.project())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        project_files.len(),
        2,
        "env.toml and env.lock only: {project_files:?}"
    );

    // Another path is another question.
    home.write("otherdir/secret", "other\n");
    let other = home.root().join("otherdir");
    mount_at_s(&home, &other);
    cat_secret(&home, "/s").failure(&[&format!("mount {} at /s", other.display())]);

    // Revoked: asked again.
    mount_at_s(&home, &hostdir);
    cat_secret(&home, "/s").success();
    run(devenv(&home).args(["trust", "--revoke"])).success();
    cat_secret(&home, "/s").failure(&["not granted"]);
}

#[test]
fn a_symlink_in_the_project_pointing_out_of_it_is_the_place_it_points_to() {
    let (home, hostdir) = project("mounts = [\"data:/data\"]");
    std::os::unix::fs::symlink(&hostdir, home.project().join("data")).unwrap();
    let out = cat_secret(&home, "/data").failure(&[&format!(
        "mount {} at /data (read-write), through the symlink",
        hostdir.display()
    )]);
    assert!(!out.stdout.contains("host secret"), "{out:?}");
    run(devenv(&home).arg("trust")).success();
    assert_eq!(cat_secret(&home, "/data").success().stdout, "host secret\n");
    // A real directory in the project asks nothing.
    let (home, _) = project("mounts = [\"data:/data\"]");
    home.write("project/data/secret", "in the project\n");
    assert_eq!(
        cat_secret(&home, "/data").success().stdout,
        "in the project\n"
    );
}

#[test]
fn the_users_config_can_grant_a_path_for_every_project() {
    let (home, hostdir) = project("");
    home.write(
        "config/devenv/config.toml",
        format!("[trust]\nmounts = [\"{}\"]\n", hostdir.display()),
    );
    for dir in ["project", "second"] {
        write_env_toml(
            &home,
            dir,
            base_ref(),
            &format!("[container]\nmounts = [\"{}:/s:ro\"]\n", hostdir.display()),
        );
        let out = run(devenv(&home).current_dir(home.root().join(dir)).args([
            "run",
            "--",
            "cat",
            "/s/secret",
        ]))
        .success();
        assert_eq!(out.stdout, "host secret\n", "{dir}");
    }
}

#[test]
fn ci_grants_for_one_run_with_trust_and_a_locked_lock() {
    let (home, hostdir) = project("");
    mount_at_s(&home, &hostdir);
    run(devenv(&home).args(["--trust", "lock"])).success();
    let out =
        run(devenv(&home).args(["--locked", "--trust", "run", "--", "cat", "/s/secret"])).success();
    assert_eq!(out.stdout, "host secret\n");
    assert!(
        out.stderr.contains("--trust: granting for this run"),
        "{out:?}"
    );
    let out = run(devenv(&home).env("DEVENV_TRUST", "1").args([
        "--locked",
        "run",
        "--",
        "cat",
        "/s/secret",
    ]))
    .success();
    assert_eq!(out.stdout, "host secret\n");
    // Nothing was kept: without it, not granted.
    cat_secret(&home, "/s").failure(&["not granted"]);
}

#[test]
fn gpu_and_allow_syscalls_are_reach_too() {
    let (home, _) = project("gpu = true\nallow_syscalls = [\"io_uring\"]");
    run(devenv(&home).args(["run", "--", "true"])).failure(&[
        "gpu: the host's NVIDIA devices and driver libraries",
        "allow_syscalls: let io_uring through the seccomp profile",
    ]);
    run(devenv(&home).arg("trust")).success();
    run(devenv(&home).args(["run", "--", "true"])).success();
}

fn prompt(home: &TestHome, answer: &str) -> (std::process::ExitStatus, String) {
    let mut cmd = devenv(home);
    cmd.env("TERM", "dumb")
        .args(["run", "--", "cat", "/s/secret"]);
    let mut s = PtySession::spawn(cmd);
    s.expect("[y/N]", Duration::from_secs(30));
    assert!(s.output().contains("mount "), "{}", s.output());
    s.type_str(answer);
    s.wait(Duration::from_secs(60))
}

#[test]
fn at_a_terminal_devenv_asks_and_only_y_grants() {
    let (home, hostdir) = project("");
    mount_at_s(&home, &hostdir);
    for refused in ["\n", "n\n", "yes please\n", "Y es\n"] {
        let (status, output) = prompt(&home, refused);
        assert!(!status.success(), "{refused:?}: {output}");
        assert!(output.contains("not granted"), "{refused:?}: {output}");
        assert!(!output.contains("host secret"), "{refused:?}: {output}");
    }
    let (status, output) = prompt(&home, "y\n");
    assert!(status.success(), "{output}");
    assert!(output.contains("host secret"), "{output}");
    // Kept: no question the next time.
    assert_eq!(cat_secret(&home, "/s").success().stdout, "host secret\n");
}

#[test]
fn a_build_step_cannot_swap_a_mount_source_for_a_link_out_of_the_project() {
    // The check comes before anything runs; a [setup] step then runs the repository's commands
    // with the project writable. What it changes is judged again before the mounts are made.
    let (home, hostdir) = project("mounts = [\"data:/data\"]");
    home.write("project/data/inside", "inside\n");
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n[setup]\nrun = [\"rm -rf data && ln -s {} data\"]\n\
             [container]\nmounts = [\"data:/data\"]\n",
            base_ref(),
            hostdir.display()
        ),
    );
    let out = cat_secret(&home, "/data").failure(&["changed during the build", "mount "]);
    assert!(!out.stdout.contains("host secret"), "{out:?}");
}

#[test]
fn a_requirements_file_that_links_out_of_the_project_is_refused() {
    let (home, hostdir) = project("");
    std::os::unix::fs::symlink(hostdir.join("secret"), home.project().join("reqs.txt")).unwrap();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n[packages]\nrequirements = \"reqs.txt\"\n",
            base_ref()
        ),
    );
    let out = run(devenv(&home).arg("lock")).failure(&["is outside the project", "hint:"]);
    assert!(!home.project().join("env.lock").exists(), "{out:?}");
}
