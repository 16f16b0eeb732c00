//! End-to-end tests of what a command inside the env cannot do to the host (issue 15,
//! docs/security.md "Containment"), run as the unprivileged test user. The attacker is
//! `tests/probe.c`, built here with `cc -static` and put into the busybox test image; a host
//! shell on a pseudo-terminal stands for the user's own.
//!
//! Each test names a way out that worked before devenv closed it: terminal injection
//! (TIOCSTI), descriptors inherited from devenv's parent, the session keyring, the calls the
//! seccomp profile refuses, `--root` undoing a read-only mount, mounts and signals reaching
//! the host.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::env::{PtySession, busybox_layer, push, write_env_toml};
use common::image::ImageBuilder;
use common::{Outcome, TestHome, devenv, devenv_bin, run, user_in};

/// The probe, compiled once per test process into a directory every user can read.
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        // Kept for the whole test process (statics are not dropped); a later run removes it.
        let home = Box::leak(Box::new(TestHome::new()));
        let out = home.root().join("probe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe.c");
        let status = std::process::Command::new("cc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cc: {e}: the containment tests build their probe with a C compiler")
            });
        assert!(
            status.success(),
            "cc -static {} failed ({status}); static linking needs libc6-dev",
            src.display()
        );
        out
    })
}

/// The busybox image with the probe at /usr/bin/probe, pushed once per test process.
fn base_ref() -> &'static str {
    static REF: OnceLock<String> = OnceLock::new();
    REF.get_or_init(|| {
        let bytes = fs_err::read(probe()).unwrap();
        let layer = busybox_layer("containment-tests").file("usr/bin/probe", bytes, 0o755);
        push(
            "containment/busybox",
            &ImageBuilder::new().layer(layer).build(),
        )
    })
}

fn project(extra: &str) -> TestHome {
    let home = TestHome::new();
    write_env_toml(&home, "project", base_ref(), extra);
    run(devenv(&home).arg("pull")).success();
    home
}

/// [`project`], with what its env.toml asks beyond the project granted (`devenv trust`).
fn trusted_project(extra: &str) -> TestHome {
    let home = project(extra);
    run(devenv(&home).arg("trust")).success();
    home
}

/// `sh -c SCRIPT` on the host as the test user, devenv's environment set, `$DEVENV` naming it.
fn host_sh(home: &TestHome, script: &str) -> Outcome {
    run(user_in(home, "/bin/sh")
        .env("DEVENV", devenv_bin())
        .arg("-c")
        .arg(script))
}

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

// ---------------------------------------------------------------------------------------------
// Terminal injection

/// An interactive host shell on a terminal of its own, prompt `host$ `.
fn host_shell_on_a_pty(home: &TestHome) -> PtySession {
    let mut cmd = user_in(home, "/bin/sh");
    cmd.env("PS1", "host$ ").env("TERM", "dumb").arg("-i");
    let mut s = PtySession::spawn(cmd);
    s.expect("host$ ", Duration::from_secs(10));
    s
}

/// After `attack` ran in the host shell (and devenv ended), the host shell runs what is typed
/// next, and nothing the command pushed into the terminal ran before it.
fn assert_nothing_typed_into_the_host_shell(s: &mut PtySession, marker: &Path) {
    s.type_str("echo after-$((20+22))\n");
    s.expect("after-42", Duration::from_secs(30));
    s.type_str("exit\n");
    let (_, output) = s.wait(Duration::from_secs(20));
    assert!(
        output.contains("tiocsti: Operation not permitted"),
        "the probe's TIOCSTI was not refused; the terminal showed:\n{output}"
    );
    assert!(
        !marker.exists(),
        "characters pushed by the command ran in the host shell; the terminal showed:\n{output}"
    );
}

#[test]
fn tiocsti_from_devenv_run_types_nothing_into_the_host_shell() {
    let home = project("");
    let marker = home.root().join("injected-by-run");
    let mut s = host_shell_on_a_pty(&home);
    // `|` is Enter to the probe: a whole command line for the host shell to read next.
    s.type_str(&format!(
        "{} run -- probe tiocsti 'touch {}|'\n",
        devenv_bin().display(),
        marker.display()
    ));
    s.expect("tiocsti: ", Duration::from_secs(60));
    assert_nothing_typed_into_the_host_shell(&mut s, &marker);
}

#[test]
fn tiocsti_from_inside_devenv_shell_types_nothing_into_the_host_shell() {
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    let marker = home.root().join("injected-by-shell");
    let mut s = host_shell_on_a_pty(&home);
    s.type_str(&format!("{} shell\n", devenv_bin().display()));
    s.expect("devenv:project", Duration::from_secs(60));
    // The shell inside reads `exit` and ends; the host shell would read the rest.
    s.type_str(&format!(
        "probe tiocsti 'exit|touch {}|'; exit\n",
        marker.display()
    ));
    s.expect("tiocsti: ", Duration::from_secs(30));
    assert_nothing_typed_into_the_host_shell(&mut s, &marker);
}

// ---------------------------------------------------------------------------------------------
// Descriptors

#[test]
fn a_directory_descriptor_left_open_by_the_parent_does_not_reach_the_command() {
    let home = project("");
    // Descriptor 7 on a host directory outside the project, as a leaky parent leaves it.
    let dir = home.root().display().to_string();
    let out = host_sh(
        &home,
        &format!("exec 7< {dir}; exec \"$DEVENV\" run -- probe fds"),
    )
    .success();
    assert_eq!(out.stdout, "fds: none above 2\n", "{out:?}");
}

#[test]
fn a_directory_on_stdin_is_replaced_by_dev_null() {
    let home = project("");
    let dir = home.root().display().to_string();
    let out = host_sh(
        &home,
        &format!(
            "exec \"$DEVENV\" run -- sh -c 'readlink /proc/self/fd/0; \
             cd /proc/self/fd/0 2>/dev/null && echo entered; true' < {dir}"
        ),
    )
    .success();
    assert_eq!(out.stdout, "/dev/null\n", "{out:?}");
    assert!(
        out.stderr.contains("descriptor 0 is a directory"),
        "{out:?}"
    );
    // PID 1's notes follow -q like the rest of devenv's.
    let quiet = host_sh(&home, &format!("exec \"$DEVENV\" -q run -- true < {dir}")).success();
    assert_eq!(quiet.stderr, "", "{quiet:?}");
}

#[test]
fn preserve_fds_passes_exactly_the_descriptors_asked_for() {
    let home = project("");
    let file = home.write("passed-on", "x");
    let f = file.display();
    let out = host_sh(
        &home,
        &format!("exec 3< {f} 4< {f}; exec \"$DEVENV\" run --preserve-fds 1 -- probe fds"),
    )
    .success();
    let fds = lines_with(&out.stdout, "fd ");
    assert_eq!(fds.len(), 1, "{out:?}");
    assert!(
        fds[0].starts_with("fd 3: ") && fds[0].ends_with("passed-on"),
        "{out:?}"
    );

    let out = host_sh(
        &home,
        &format!("exec 3< {f}; exec \"$DEVENV\" run --preserve-fds 2 -- true"),
    );
    out.failure(&["--preserve-fds 2: descriptor 4 is not open", "hint:"]);
}

#[test]
fn socket_activation_descriptors_reach_the_command_with_its_own_pid() {
    let home = project("");
    let f = home.write("socket", "x");
    let script = format!(
        "exec 3< {}; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$DEVENV\" run -- probe listen",
        f.display()
    );
    let out = host_sh(&home, &script).success();
    assert!(
        out.stdout.starts_with("listen: pid is ours, fds 1\n"),
        "{out:?}"
    );
    assert_eq!(lines_with(&out.stdout, "fd ").len(), 1, "{out:?}");
    // Meant for another process: nothing passed.
    let script = format!(
        "exec 3< {}; LISTEN_FDS=1 LISTEN_PID=1 exec \"$DEVENV\" run -- probe listen",
        f.display()
    );
    let out = host_sh(&home, &script).success();
    assert_eq!(
        out.stdout, "listen: pid unset, fds unset\nfds: none above 2\n",
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The session keyring

fn key_probe(home: &TestHome) -> Outcome {
    run(user_in(home, probe())
        .args(["with-key", "devenv-probe-secret", "s3cret-payload"])
        .arg(devenv_bin())
        .args(["run", "--", "probe", "key", "{key}", "devenv-probe-secret"]))
}

#[test]
fn a_key_in_the_users_session_keyring_is_not_readable_inside() {
    let home = project("");
    let out = key_probe(&home).success();
    assert!(!out.stdout.contains("s3cret-payload"), "{out:?}");
    assert!(
        out.stdout.contains("key read: Operation not permitted"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("key search: Operation not permitted"),
        "{out:?}"
    );
}

#[test]
fn with_the_keyring_calls_allowed_the_container_still_has_a_keyring_of_its_own() {
    let home = trusted_project("[container]\nallow_syscalls = [\"keyring\"]\n");
    let out = key_probe(&home).success();
    assert!(!out.stdout.contains("s3cret-payload"), "{out:?}");
    // The calls run (another errno than the filter's), but the key is not possessed.
    assert!(!out.stdout.contains("Operation not permitted"), "{out:?}");
    assert!(
        out.stdout
            .contains("key search: Required key not available"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The seccomp profile

const REFUSED: [&str; 12] = [
    "add_key",
    "keyctl",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "userfaultfd",
    "bpf",
    "io_uring_setup",
];

fn syscall_results(home: &TestHome, root: bool) -> std::collections::BTreeMap<String, String> {
    let mut cmd = devenv(home);
    cmd.arg("run");
    if root {
        cmd.arg("--root");
    }
    let out = run(cmd.args(["--", "probe", "syscalls"])).success();
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_seccomp_profile_refuses_each_listed_call_with_eperm_and_keeps_the_rest() {
    let home = project("");
    for root in [false, true] {
        let got = syscall_results(&home, root);
        for name in REFUSED {
            assert_eq!(
                got.get(name).map(String::as_str),
                Some("Operation not permitted"),
                "{name} (root: {root}): {got:?}"
            );
        }
        assert_eq!(got["getpid"], "allowed", "{got:?}");
        assert_eq!(
            got["unshare_user"], "allowed",
            "nested user namespaces: {got:?}"
        );
    }
}

#[test]
fn allow_syscalls_lets_a_group_through() {
    let home = trusted_project("[container]\nallow_syscalls = [\"io_uring\", \"keyring\"]\n");
    let got = syscall_results(&home, false);
    let disabled =
        fs_err::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0");
    if !disabled {
        assert_eq!(got["io_uring_setup"], "allowed", "{got:?}");
    }
    assert_eq!(got["keyctl"], "allowed", "{got:?}");
    assert_eq!(
        got["bpf"], "Operation not permitted",
        "still refused: {got:?}"
    );
}

#[test]
fn an_unknown_allow_syscalls_name_is_an_error_with_its_position() {
    let home = TestHome::new();
    write_env_toml(
        &home,
        "project",
        "index.example/img:1",
        "[container]\nallow_syscalls = [\"ptrace\"]\n",
    );
    run(devenv(&home).args(["run", "--", "true"])).failure(&[
        "env.toml:4:",
        "`ptrace` in [container].allow_syscalls is not a call the seccomp profile refuses",
        "hint: name one of: keyring,",
    ]);
}

#[test]
fn a_debugger_attaches_to_a_process_of_the_env() {
    let home = project("");
    for root in [false, true] {
        let mut cmd = devenv(&home);
        cmd.arg("run");
        if root {
            cmd.arg("--root");
        }
        let out = run(cmd.args(["--", "probe", "ptrace"])).success();
        assert_eq!(out.stdout, "ptrace attach: ok\n", "root: {root}: {out:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts and signals

#[test]
fn root_inside_cannot_make_a_read_only_mount_writable() {
    let home = TestHome::new();
    let shared = home.mkdir("shared");
    home.chown(&shared);
    write_env_toml(
        &home,
        "project",
        base_ref(),
        &format!(
            "[container]\nmounts = [\"{}:/shared:ro\"]\n",
            shared.display()
        ),
    );
    run(devenv(&home).arg("trust")).success();
    let out = run(devenv(&home).args([
        "run",
        "--root",
        "--",
        "sh",
        "-c",
        "mount -o remount,bind,rw /shared 2>/dev/null; touch /shared/written 2>/dev/null; \
         umount /shared 2>/dev/null; test -d /shared && echo still-mounted",
    ]))
    .success();
    assert_eq!(out.stdout, "still-mounted\n", "{out:?}");
    assert!(
        !shared.join("written").exists(),
        "root inside wrote through a read-only mount"
    );
}

#[test]
fn a_mount_made_inside_never_reaches_the_host() {
    let home = project("");
    home.mkdir("project/sub");
    run(devenv(&home).args([
        "run",
        "--root",
        "--",
        "sh",
        "-c",
        "mount -t tmpfs none sub && touch sub/inside && echo mounted",
    ]))
    .success();
    let sub = home.project().join("sub");
    assert!(!sub.join("inside").exists(), "the tmpfs reached the host");
    let mounts = fs_err::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&sub.display().to_string()), "{mounts}");
}

#[test]
fn a_signal_to_every_process_inside_reaches_no_process_outside() {
    let home = project("");
    let mut host = common::as_user("sleep").arg("60").spawn().unwrap();
    let out = run(devenv(&home).args(["run", "--", "sh", "-c", "kill -9 -1; echo sent"]));
    let alive = host.try_wait().unwrap().is_none();
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(out.stdout, "sent\n", "{out:?}");
    assert!(
        alive,
        "kill -9 -1 inside killed a process of the user's on the host"
    );
}
