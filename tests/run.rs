//! End-to-end tests of `devenv run` and `devenv shell` (issue 3), run as the unprivileged test
//! user against images built from the host's static busybox and pushed to the shared registry.
//!
//! The contract (docs/cli.md, docs/env-toml.md): the command runs as the same uid/gid (uid 0
//! with `--root`, still the user on the host), in the project's own path, on the image's root
//! filesystem whose system directories are fresh at every entry, with a persistent home of the
//! env's own; its exit status is devenv's (128+N for signal N, 127 not found, 126 not
//! executable); the environment is image Env < `[env]` < the host's allow-list < devenv's own.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::env::{
    PtySession, busybox_image, busybox_layer, kill_processes, processes_with, push, runner_name,
    wait_for, write_env_toml,
};
use common::image::{ImageBuilder, Layer};
use common::{Outcome, TestHome, devenv, run, runner_ids, spawn, wait};

const MARKER: &str = "run-tests-image";

/// The busybox image, pushed once per test process.
fn base_ref() -> &'static str {
    static REF: OnceLock<String> = OnceLock::new();
    REF.get_or_init(|| push("run/busybox", &busybox_image(MARKER).build()))
}

/// A test home whose project's env.toml names the busybox image, plus `extra` sections.
fn project(extra: &str) -> TestHome {
    let home = TestHome::new();
    write_env_toml(&home, "project", base_ref(), extra);
    home
}

/// `devenv trust`: grant what the project's env.toml asks beyond the project (trust.rs).
fn trust(home: &TestHome) {
    run(devenv(home).arg("trust")).success();
}

/// `devenv run -- ARGS` in the project directory.
fn run_cmd(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).arg("run").arg("--").args(args))
}

/// `devenv run -- sh -c SCRIPT` in the project directory.
fn sh(home: &TestHome, script: &str) -> Outcome {
    run_cmd(home, &["sh", "-c", script])
}

// ---------------------------------------------------------------------------------------------
// Identity

#[test]
fn ids_inside_equal_the_users_ids() {
    let home = project("");
    let (uid, gid) = runner_ids();
    let out = sh(&home, "id -u; id -g").success();
    assert_eq!(out.stdout, format!("{uid}\n{gid}\n"), "{out:?}");
}

#[test]
fn whoami_prints_the_users_name() {
    let home = project("");
    let out = run_cmd(&home, &["whoami"]).success();
    assert_eq!(out.stdout.trim(), runner_name(), "{out:?}");
}

#[test]
fn root_flag_is_uid_0_inside_and_files_stay_the_users_on_the_host() {
    let home = project("");
    let out = run(devenv(&home).args([
        "run",
        "--root",
        "--",
        "sh",
        "-c",
        "id -u; touch made-by-root",
    ]))
    .success();
    assert_eq!(out.stdout, "0\n", "{out:?}");
    let meta = fs_err::metadata(home.project().join("made-by-root")).unwrap();
    let (uid, gid) = runner_ids();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "owner on the host");
}

#[test]
fn not_even_root_inside_reaches_pid_1s_memory() {
    // PID 1 shares devenv's memory, and devenv runs in the host's namespaces: a process of the
    // container that could read or write PID 1's memory could make devenv do anything the user
    // can. Root inside holds every capability PID 1 holds, which is all ptrace asks otherwise.
    let home = project("");
    for root in [false, true] {
        let mut args = vec!["run"];
        if root {
            args.push("--root");
        }
        args.extend([
            "--",
            "sh",
            "-c",
            "for f in maps mem environ; do head -c 64 /proc/1/$f >/dev/null 2>&1 && echo $f; done; \
             echo checked",
        ]);
        let out = run(devenv(&home).args(&args)).success();
        assert_eq!(out.stdout, "checked\n", "root={root}: {out:?}");
    }
}

#[test]
fn the_heap_guard_of_pid_1s_window_is_live_in_the_binary_under_test() {
    // Every test of this suite runs a debug build whose allocator aborts when devenv touches
    // the heap while PID 1 runs in its memory (runtime::alloc_guard): the rule CLONE_VM rests
    // on. This proves the guard is armed: a deliberate allocation in the window aborts.
    let home = project("");
    run_cmd(&home, &["true"]).success();
    let out = run(devenv(&home)
        .env("DEVENV_TEST_ALLOC_IN_WINDOW", "1")
        .args(["run", "--", "true"]));
    assert!(
        out.stderr
            .contains("the heap was used while PID 1 runs in this process's memory"),
        "{out:?}"
    );
    assert_ne!(out.code(), Some(0), "{out:?}");
}

#[test]
fn file_created_in_the_project_is_owned_by_the_user_on_the_host() {
    let home = project("");
    sh(&home, "echo hello > created && mkdir createdir").success();
    let (uid, gid) = runner_ids();
    for name in ["created", "createdir"] {
        let meta = fs_err::metadata(home.project().join(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "owner of {name} on the host"
        );
    }
    assert_eq!(home.read("project/created"), b"hello\n");
}

// ---------------------------------------------------------------------------------------------
// Paths

#[test]
fn working_directory_inside_is_the_cwd_outside() {
    let home = project("");
    let out = run_cmd(&home, &["pwd"]).success();
    let expected = fs_err::canonicalize(home.project()).unwrap();
    assert_eq!(out.stdout.trim(), expected.display().to_string(), "{out:?}");
}

#[test]
fn working_directory_from_a_subdirectory_finds_env_toml_upward() {
    let home = project("");
    let sub = home.mkdir("project/src/deep");
    home.write("project/src/deep/here.txt", "in deep\n");
    let out = run(devenv(&home).current_dir(&sub).args([
        "run",
        "--",
        "sh",
        "-c",
        "pwd; cat here.txt; cat ../../env.toml",
    ]))
    .success();
    let expected = fs_err::canonicalize(&sub).unwrap();
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some(expected.display().to_string().as_str()),
        "{out:?}"
    );
    assert_eq!(lines.next(), Some("in deep"), "{out:?}");
    assert!(
        out.stdout.contains(base_ref()),
        "the project is mounted whole: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Root filesystem and home

#[test]
fn os_release_is_the_images() {
    let home = project("");
    let out = run_cmd(&home, &["cat", "/etc/os-release"]).success();
    assert!(out.stdout.contains(&format!("MARKER={MARKER}")), "{out:?}");
}

#[test]
fn writes_to_system_directories_are_gone_at_the_next_entry() {
    let home = project("");
    // As root inside, so the write itself cannot be refused by permissions.
    let out = run(devenv(&home).args([
        "run",
        "--root",
        "--",
        "sh",
        "-c",
        "echo x > /usr/bin/scratch && echo y > /etc/scratch && rm /etc/group && echo wrote",
    ]))
    .success();
    assert_eq!(out.stdout, "wrote\n", "{out:?}");
    let out = sh(
        &home,
        "for f in /usr/bin/scratch /etc/scratch; do test -e $f && echo still $f; done; \
         test -e /etc/group || echo group gone; echo checked",
    )
    .success();
    assert_eq!(
        out.stdout, "checked\n",
        "system changes survived the entry: {out:?}"
    );
}

#[test]
fn home_persists_between_entries_and_is_not_the_hosts_home() {
    let home = project("");
    home.write("home/bait-in-host-home", "host secret\n");
    let out = sh(
        &home,
        "echo kept > \"$HOME/persisted\" && echo \"$HOME\" && ls -a \"$HOME\"",
    )
    .success();
    assert!(
        !out.stdout.contains("bait-in-host-home"),
        "the host's home is visible inside: {out:?}"
    );
    let inside_home = out.stdout.lines().next().unwrap().to_owned();
    assert_ne!(
        inside_home,
        home.home().display().to_string(),
        "$HOME is the host's home"
    );
    let out = sh(
        &home,
        &format!(
            "cat \"$HOME/persisted\"; test -e {}/bait-in-host-home && echo host home visible; true",
            home.home().display()
        ),
    )
    .success();
    assert_eq!(out.stdout, "kept\n", "{out:?}");
    assert!(
        !home.home().join("persisted").exists(),
        "the file written to $HOME landed in the host's home"
    );
}

// ---------------------------------------------------------------------------------------------
// Exit statuses

#[test]
fn exit_status_0() {
    let home = project("");
    assert_eq!(run_cmd(&home, &["true"]).code(), Some(0));
}

#[test]
fn exit_status_1() {
    let home = project("");
    let out = run_cmd(&home, &["false"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
}

#[test]
fn exit_status_42() {
    let home = project("");
    let out = sh(&home, "exit 42");
    assert_eq!(out.code(), Some(42), "{out:?}");
}

#[test]
fn exit_status_127_when_the_command_is_not_found() {
    let home = project("");
    let out = run_cmd(&home, &["no-such-command-anywhere"]);
    assert_eq!(out.code(), Some(127), "{out:?}");
    let out = run_cmd(&home, &["/usr/bin/no-such-command"]);
    assert_eq!(out.code(), Some(127), "{out:?}");
}

#[test]
fn exit_status_126_when_the_command_is_not_executable() {
    let home = TestHome::new();
    let img = ImageBuilder::new()
        .layer(busybox_layer(MARKER))
        .layer(Layer::new().dir("usr", 0o755).dir("usr/bin", 0o755).file(
            "usr/bin/not-executable",
            "#!/bin/sh\necho ran\n",
            0o644,
        ))
        .build();
    write_env_toml(&home, "project", &push("run/noexec", &img), "");
    for cmd in ["/usr/bin/not-executable", "not-executable"] {
        let out = run_cmd(&home, &[cmd]);
        assert_eq!(out.code(), Some(126), "{cmd}: {out:?}");
        assert!(!out.stdout.contains("ran"), "{out:?}");
    }
}

#[test]
fn sigterm_to_devenv_ends_the_command_with_143() {
    let home = project("");
    // Pull first, so the wait below measures the container, not the download.
    run(devenv(&home).arg("pull")).success();
    let (child, what) =
        spawn(devenv(&home).args(["run", "--", "sh", "-c", "touch started; exec sleep 30"]));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let started = home.project().join("started");
    wait_for("the command to start", Duration::from_secs(60), || {
        started.exists()
    });
    // Let `exec sleep` replace the shell.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait(child, what);
    assert_eq!(out.code(), Some(143), "{out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn exit_status_255() {
    let home = project("");
    let out = sh(&home, "exit 255");
    assert_eq!(out.code(), Some(255), "{out:?}");
}

#[test]
fn exit_status_128_plus_n_when_the_command_is_killed_by_signal_n() {
    let home = project("");
    let out = sh(&home, "kill -KILL $$");
    assert_eq!(out.code(), Some(137), "{out:?}");
    let out = sh(&home, "kill -USR1 $$");
    assert_eq!(out.code(), Some(138), "{out:?}");
}

/// Starts `devenv run -- sh -c SCRIPT` (SCRIPT first touches `started`) and waits for it.
fn start_run(home: &TestHome, script: &str) -> (std::process::Child, String) {
    run(devenv(home).arg("pull")).success();
    let started =
        spawn(devenv(home).args(["run", "--", "sh", "-c", &format!("touch started; {script}")]));
    let flag = home.project().join("started");
    wait_for("the command to start", Duration::from_secs(60), || {
        flag.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    started
}

fn signal_devenv(
    started: (std::process::Child, String),
    sig: nix::sys::signal::Signal,
    expected: i32,
) {
    let (child, what) = started;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let t = Instant::now();
    nix::sys::signal::kill(pid, sig).unwrap();
    let out = wait(child, what);
    assert_eq!(out.code(), Some(expected), "after {sig}: {out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?} to end after {sig}",
        t.elapsed()
    );
}

#[test]
fn sigterm_to_devenv_ends_a_shell_waiting_on_its_child_with_143() {
    let home = project("");
    let started = start_run(&home, "sleep 30; echo not-killed");
    signal_devenv(started, nix::sys::signal::Signal::SIGTERM, 143);
}

#[test]
fn sigint_to_devenv_without_a_terminal_ends_the_command_with_130() {
    let home = project("");
    let started = start_run(&home, "exec sleep 30");
    signal_devenv(started, nix::sys::signal::Signal::SIGINT, 130);
}

#[test]
fn sighup_to_devenv_ends_the_command_with_129() {
    let home = project("");
    let started = start_run(&home, "exec sleep 30");
    signal_devenv(started, nix::sys::signal::Signal::SIGHUP, 129);
}

#[test]
fn stdin_reaches_the_command() {
    use std::io::Write as _;
    let home = project("");
    let mut cmd = devenv(&home);
    cmd.args(["run", "--", "sh", "-c", "cat; echo end"]);
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").unwrap();
    drop(stdin);
    let out = wait(child, what).success();
    assert_eq!(out.stdout, "line one\nline two\nend\n", "{out:?}");
}

#[test]
fn the_command_sees_only_its_own_processes() {
    let home = project("");
    // A PID namespace: a handful of processes (init, sh, ls), not the host's.
    let out = sh(&home, "ls /proc | grep -c '^[0-9][0-9]*$'").success();
    let n: u32 = out.stdout.trim().parse().unwrap();
    assert!(n <= 5, "{n} processes visible inside: {out:?}");
}

#[test]
fn hostname_is_the_project_name() {
    let home = TestHome::new();
    write_env_toml(&home, "My Project_2", base_ref(), "");
    let out = run(devenv(&home)
        .current_dir(home.root().join("My Project_2"))
        .args(["run", "--", "hostname"]))
    .success();
    assert_eq!(out.stdout, "my-project-2\n", "{out:?}");
}

#[test]
fn dash_c_runs_as_if_started_in_the_directory() {
    let home = project("");
    let sub = home.mkdir("project/sub");
    let out = run(devenv(&home)
        .current_dir("/")
        .arg("-C")
        .arg(&sub)
        .args(["run", "--", "pwd"]))
    .success();
    let expected = fs_err::canonicalize(&sub).unwrap();
    assert_eq!(out.stdout.trim(), expected.display().to_string(), "{out:?}");
}

#[test]
fn home_is_the_images_home_for_the_user_when_its_passwd_names_them() {
    let home = TestHome::new();
    let (uid, gid) = runner_ids();
    let name = runner_name();
    let img = ImageBuilder::new()
        .layer(busybox_layer(MARKER))
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file(
                    "etc/passwd",
                    format!("root:x:0:0:root:/root:/bin/sh\n{name}:x:{uid}:{gid}::/home/custom:/bin/sh\n"),
                    0o644,
                )
                .dir("home", 0o755)
                .dir("home/custom", 0o755),
        )
        .build();
    write_env_toml(&home, "project", &push("run/passwd-home", &img), "");
    let out = sh(&home, "echo $HOME; whoami; echo x > $HOME/f && echo wrote").success();
    assert_eq!(
        out.stdout,
        format!("/home/custom\n{name}\nwrote\n"),
        "{out:?}"
    );
}

#[test]
fn sigkill_to_devenv_leaves_no_process_of_the_container_behind() {
    let home = project("");
    // A command line no other test runs: `sleep 29.<pid>`.
    let needle = format!("sleep 29.{}", std::process::id());
    let (mut child, what) = start_run(&home, &format!("exec {needle}"));
    assert!(
        !processes_with(&needle).is_empty(),
        "the command is not running"
    );
    // Not `wait`: the container's processes would hold its pipes open as long as they live.
    drop((child.stdout.take(), child.stderr.take(), what));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_gone_soon(&needle, "was killed");
}

/// The processes whose command line holds `needle` end within 5 s (killed if not, then fail).
fn assert_gone_soon(needle: &str, after: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if processes_with(needle).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_with(needle);
    kill_processes(&left);
    panic!("5 s after devenv {after}, the container still runs: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Processes

#[test]
fn processes_left_running_end_with_the_run() {
    let home = project("");
    // PID 1 outlives devenv by a moment (it waits for devenv's exit to kill it): what the command
    // left in the background must still go with the container.
    let needle = format!("sleep 28.{}", std::process::id());
    run(devenv(&home).arg("pull")).success();
    // devenv's exit status alone: a container left behind would hold pipes open forever.
    let status = devenv(&home)
        .args(["run", "--", "sh", "-c", &format!("{needle} & exit 3")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert_gone_soon(&needle, "exited");
}

#[test]
fn a_command_that_leaves_a_zombie_ends() {
    let home = project("");
    let t = Instant::now();
    // After the exec, `sleep 0.1` is the child of a process that never waits for it.
    let out = sh(&home, "sleep 0.1 & exec sleep 0.5");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
}

/// Every path below `root` with its type, size, mtime and ctime (ns): what a write changes.
fn tree_state(root: &std::path::Path) -> std::collections::BTreeMap<String, (u32, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs_err::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            let key = p.strip_prefix(root).unwrap().display().to_string();
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let ctime = m.ctime() * 1_000_000_000 + m.ctime_nsec();
            out.insert(key, (m.mode() & 0o170000, m.size(), mtime, ctime));
        }
    }
    out
}

#[test]
fn a_warm_start_writes_nothing_to_the_store_or_the_project() {
    let home = project("");
    run_cmd(&home, &["true"]).success();
    let (store, project) = (home.store(), home.root().join("project"));
    let before = (tree_state(&store), tree_state(&project));
    for _ in 0..2 {
        run_cmd(&home, &["true"]).success();
        sh(&home, "echo x > /usr/scratch; cat /usr/scratch >/dev/null").success();
    }
    let after = (tree_state(&store), tree_state(&project));
    // Linux < 6.6 has no user xattrs in tmpfs: each entry then has a lock file of its own in
    // state/run/ (created and removed), and only that directory may change.
    let release = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let scratch = (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6);
    let changed: Vec<&String> = after
        .0
        .iter()
        .filter(|(k, v)| before.0.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(before.0.keys().filter(|k| !after.0.contains_key(*k)))
        .filter(|k| scratch || !k.ends_with("state/run"))
        .collect();
    assert!(changed.is_empty(), "the store changed: {changed:?}");
    assert_eq!(before.1, after.1, "the project changed");
}

#[test]
fn a_command_that_leaves_an_orphan_running_ends_with_its_own_status() {
    let home = project("");
    run(devenv(&home).arg("pull")).success();
    let t = Instant::now();
    // The background sleep outlives the command; the run ends with the command, as a
    // container does when its main process exits.
    let out = sh(&home, "sleep 61.0713 & exit 3");
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "devenv waited for the orphan: took {:?}",
        t.elapsed()
    );
    // devenv returns the status before the container's namespaces are torn down; the teardown
    // still kills the orphan right after.
    let alive = |marker: &str| {
        fs_err::read_dir("/proc").unwrap().flatten().any(|e| {
            fs_err::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    };
    // The check sees a live process at all: one of ours, on the host.
    let mut host = std::process::Command::new("sleep")
        .arg("61.0714")
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut seen = false;
    while !seen && t.elapsed() < Duration::from_secs(5) {
        seen = alive("61.0714"); // once it has exec'd
        std::thread::sleep(Duration::from_millis(10));
    }
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(seen, "a running `sleep 61.0714` is not found in /proc");
    let t = Instant::now();
    while alive("61.0713") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the orphan outlived its container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

#[test]
fn env_precedence_image_then_env_toml_then_host_allow_list() {
    let home = TestHome::new();
    let img = busybox_image(MARKER)
        .env("FROM_IMAGE=image")
        .env("OVERRIDDEN=image")
        .env("LANG=image-lang")
        .build();
    write_env_toml(
        &home,
        "project",
        &push("run/env", &img),
        "[env]\nOVERRIDDEN = \"toml\"\nFROM_TOML = \"toml\"\nLANG = \"toml-lang\"\nTERM = \"toml-term\"\n",
    );
    let out = run(devenv(&home)
        .env("SECRET_HOST_VAR", "leaked")
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("TERM", "xterm-test")
        .args(["run", "--", "env"]))
    .success();
    let vars: std::collections::BTreeMap<&str, &str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| vars.get(k).copied();
    assert_eq!(get("FROM_IMAGE"), Some("image"), "{out:?}");
    assert_eq!(
        get("OVERRIDDEN"),
        Some("toml"),
        "[env] beats the image: {out:?}"
    );
    assert_eq!(get("FROM_TOML"), Some("toml"), "{out:?}");
    assert_eq!(
        get("LANG"),
        Some("C.UTF-8"),
        "the host's LANG beats [env]: {out:?}"
    );
    assert_eq!(get("TERM"), Some("xterm-test"), "{out:?}");
    assert_eq!(get("LC_ALL"), Some("C.UTF-8"), "LC_* pass through: {out:?}");
    assert_eq!(
        get("SECRET_HOST_VAR"),
        None,
        "a host variable leaked in: {out:?}"
    );
    assert_eq!(get("DEVENV"), Some("1"), "{out:?}");
    let name = runner_name();
    assert_eq!(get("USER"), Some(name.as_str()), "{out:?}");
    assert_eq!(
        get("HOME"),
        Some(format!("/home/{name}").as_str()),
        "{out:?}"
    );
    assert_eq!(
        get("PATH"),
        Some("/usr/local/bin:/usr/bin:/bin"),
        "the image's PATH: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Network and mounts

#[test]
fn network_none_shows_only_loopback() {
    let home = project("[container]\nnetwork = \"none\"\n");
    let out = run_cmd(&home, &["cat", "/proc/net/dev"]).success();
    let ifaces: Vec<&str> = out
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out:?}");
}

#[test]
fn gpu_brings_the_hosts_driver_or_says_there_is_none() {
    // A teammate's env.toml asking for a GPU works on every machine: with the host's driver
    // where there is one, without it and a note where there is none (CI). The binds in
    // detail, with a stand-in driver: runtime::tests::container_gpu_binds_the_driver_it_is_given.
    let home = project("[container]\ngpu = true\n");
    trust(&home);
    let script = "ls /dev; ls /usr/local/nvidia/lib64 2>&1; echo \"LD=$LD_LIBRARY_PATH\"";
    let out = run_cmd(&home, &["sh", "-c", script]).success();
    if std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(out.stdout.lines().any(|l| l == "nvidiactl"), "{out:?}");
        assert!(out.stdout.contains("libcuda.so.1"), "{out:?}");
        assert!(out.stdout.contains("LD=/usr/local/nvidia/lib64"), "{out:?}");
        let smi = run_cmd(&home, &["nvidia-smi", "-L"]).success();
        assert!(smi.stdout.contains("GPU 0"), "{smi:?}");
    } else {
        assert!(
            out.stderr
                .contains("[container].gpu: no NVIDIA driver is loaded on this host"),
            "{out:?}"
        );
        assert!(
            !out.stdout.lines().any(|l| l.starts_with("nvidia")),
            "{out:?}"
        );
        assert!(out.stdout.contains("No such file"), "{out:?}");
        assert!(out.stdout.contains("LD=\n"), "{out:?}");
    }
}

#[test]
fn two_runs_at_once_in_one_project_both_succeed() {
    let home = project("");
    run(devenv(&home).arg("pull")).success();
    // Each announces itself and waits for the other: they overlap, or one of them fails.
    let script = |me: &str, other: &str| {
        format!(
            "touch {me}; i=0; while [ ! -e {other} ] && [ $i -lt 600 ]; do sleep 0.1; \
             i=$((i+1)); done; test -e {other} && echo {me} saw {other}"
        )
    };
    let a = spawn(devenv(&home).args(["run", "--", "sh", "-c", &script("a", "b")]));
    let b = spawn(devenv(&home).args(["run", "--", "sh", "-c", &script("b", "a")]));
    let a = wait(a.0, a.1).success();
    let b = wait(b.0, b.1).success();
    assert_eq!(a.stdout, "a saw b\n", "{a:?}");
    assert_eq!(b.stdout, "b saw a\n", "{b:?}");
}

#[test]
fn concurrent_first_runs_both_pull_and_succeed() {
    let home = project("");
    let a = spawn(devenv(&home).args(["run", "--", "cat", "/etc/os-release"]));
    let b = spawn(devenv(&home).args(["run", "--", "cat", "/etc/os-release"]));
    for out in [wait(a.0, a.1), wait(b.0, b.1)] {
        let out = out.success();
        assert!(out.stdout.contains(MARKER), "{out:?}");
    }
}

#[test]
fn mounts_are_visible_read_only_and_nothing_else_of_the_host() {
    let home = TestHome::new();
    home.write("shared/data.txt", "shared data\n");
    home.write("host-only/secret", "host only\n");
    let shared = home.root().join("shared");
    write_env_toml(
        &home,
        "project",
        base_ref(),
        &format!(
            "[container]\nmounts = [\"{}:/data:ro\"]\n",
            shared.display()
        ),
    );
    trust(&home);
    let host_only = home.root().join("host-only/secret");
    let script = format!(
        "cat /data/data.txt; \
         touch /data/new 2>/dev/null && echo writable; \
         test -e {} && echo host file visible; \
         test -e /usr/bin/docker-registry && echo host /usr visible; \
         grep -q '^daemon:' /etc/passwd && echo host passwd visible; \
         echo done",
        host_only.display(),
    );
    let out = sh(&home, &script).success();
    assert_eq!(out.stdout, "shared data\ndone\n", "{out:?}");
    assert!(!shared.join("new").exists());
}

#[test]
fn tilde_mounts_are_the_users_host_directory_read_write() {
    let home = project("[container]\nmounts = [\"~/.cache/models\", \"data:/data\"]\n");
    trust(&home);
    home.write("home/.cache/models/weights", "w1\n");
    home.write("project/data/input", "in\n");
    let models = home.home().join(".cache/models");
    let out = sh(
        &home,
        &format!(
            "cat {m}/weights && echo w2 > {m}/written && cat /data/input && echo out > /data/output",
            m = models.display()
        ),
    )
    .success();
    assert_eq!(out.stdout, "w1\nin\n", "{out:?}");
    assert_eq!(fs_err::read(models.join("written")).unwrap(), b"w2\n");
    assert_eq!(home.read("project/data/output"), b"out\n");
    let (uid, _) = runner_ids();
    assert_eq!(fs_err::metadata(models.join("written")).unwrap().uid(), uid);
}

#[test]
fn large_output_arrives_whole() {
    let home = project("");
    let out = sh(&home, "seq 1 300000").success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 300_000, "stderr: {}", out.stderr);
    assert_eq!(lines.last(), Some(&"300000"));
}

#[test]
fn network_host_shares_the_hosts_interfaces_and_resolver() {
    let home = project("");
    let out = sh(&home, "cat /proc/net/dev; echo --; cat /etc/resolv.conf").success();
    let (dev, resolv) = out.stdout.split_once("--\n").unwrap();
    let names = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_owned())
            .collect();
        v.sort();
        v
    };
    let host = fs_err::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(names(dev), names(&host), "{out:?}");
    let host_resolv = fs_err::read_to_string("/etc/resolv.conf").unwrap();
    assert_eq!(resolv, host_resolv, "{out:?}");
}

#[test]
fn dev_proc_sys_and_tmp_are_the_containers() {
    let home = project("");
    let script = "\
        for d in null zero random urandom tty; do test -c /dev/$d || echo no /dev/$d; done; \
        echo x > /dev/null || echo /dev/null unwritable; \
        test \"$(head -c 4 /dev/urandom | wc -c)\" = 4 || echo urandom broken; \
        for d in /dev/loop0 /dev/loop-control /dev/kmsg /dev/sda /dev/vda; do \
            test -e $d && echo host device $d; done; \
        touch /sys/devenv-test 2>/dev/null && echo sys writable; \
        test -e /proc/self/status || echo no proc; \
        test -e /tmp/left-by-last-entry && echo tmp persisted; \
        touch /tmp/left-by-last-entry || echo tmp unwritable; \
        echo done";
    let out = sh(&home, script).success();
    assert_eq!(out.stdout, "done\n", "{out:?}");
    let out = sh(&home, script).success();
    assert_eq!(out.stdout, "done\n", "second entry: {out:?}");
}

// ---------------------------------------------------------------------------------------------
// Interactive shell

/// `devenv shell` on a terminal of its own, the image pulled first, once its prompt is up.
fn shell_on_a_pty(home: &TestHome) -> PtySession {
    run(devenv(home).arg("pull")).success();
    let mut cmd = devenv(home);
    cmd.env("TERM", "dumb").arg("shell");
    let mut s = PtySession::spawn(cmd);
    s.expect("devenv:project", Duration::from_secs(60));
    s
}

#[test]
fn interactive_shell_on_a_pty() {
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    let mut s = shell_on_a_pty(&home);
    s.type_str("[ -t 0 ] && [ -t 1 ] && echo on-a-$((1+1))-terminal\n");
    s.expect("on-a-2-terminal", Duration::from_secs(20));
    s.type_str("echo marker-$((6*7))\n");
    s.expect("marker-42", Duration::from_secs(20));
    s.type_str("exit 7\n");
    let (status, output) = s.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(7), "terminal showed:\n{output}");
}

#[test]
fn ctrl_c_in_the_interactive_shell_interrupts_the_command_not_the_shell() {
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    let mut s = shell_on_a_pty(&home);
    s.type_str("sleep 30\n");
    std::thread::sleep(Duration::from_millis(500));
    s.type_str("\x03");
    // The shell gets the terminal back and tells the interrupted command's status.
    s.type_str("echo status-$?-still-$((2+3))\n");
    s.expect("status-130-still-5", Duration::from_secs(10));
    s.expect("still-5", Duration::from_secs(10));
    s.type_str("exit\n");
    let (status, output) = s.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "terminal showed:\n{output}");
}

#[test]
fn interactive_shell_sees_the_terminal_size_and_its_changes() {
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    run(devenv(&home).arg("pull")).success();
    let mut cmd = devenv(&home);
    cmd.env("TERM", "dumb").arg("shell");
    let mut s = PtySession::spawn_sized(cmd, 33, 101);
    s.expect("devenv:project", Duration::from_secs(60));
    s.type_str("echo size-$(stty size | tr ' ' x)\n");
    s.expect("size-33x101", Duration::from_secs(20));
    s.resize(44, 120);
    std::thread::sleep(Duration::from_millis(200));
    s.type_str("echo size-$(stty size | tr ' ' x)\n");
    s.expect("size-44x120", Duration::from_secs(20));
    s.type_str("exit\n");
    let (status, output) = s.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "terminal showed:\n{output}");
}

#[test]
fn closing_the_terminal_ends_the_shell_and_everything_in_it() {
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    run(devenv(&home).arg("pull")).success();
    let needle = format!("sleep 28.{}", std::process::id());
    let mut cmd = devenv(&home);
    cmd.env("TERM", "dumb").arg("shell");
    let mut s = PtySession::spawn(cmd);
    s.expect("devenv:project", Duration::from_secs(60));
    s.type_str(&format!("{needle}\n"));
    wait_for("the command in the shell", Duration::from_secs(20), || {
        !processes_with(&needle).is_empty()
    });
    let (status, output) = s.hang_up(Duration::from_secs(10));
    assert!(!status.success(), "{status}; terminal showed:\n{output}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && !processes_with(&needle).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_with(&needle);
    kill_processes(&left);
    assert!(
        left.is_empty(),
        "after the terminal closed, still running: {left:?}"
    );
}

#[test]
fn interactive_shell_defaults_to_a_shell_the_image_has() {
    // No [container].shell: the user's login shell (/bin/sh for the test user) or sh.
    let home = project("");
    let mut s = shell_on_a_pty(&home);
    s.type_str("echo marker-$((6*7))\n");
    s.expect("marker-42", Duration::from_secs(20));
    s.type_str("exit 5\n");
    let (status, output) = s.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(5), "terminal showed:\n{output}");
}

#[test]
fn shell_without_a_terminal_reads_commands_from_stdin() {
    use std::io::Write as _;
    let home = project("[container]\nshell = \"/bin/sh\"\n");
    let mut cmd = devenv(&home);
    cmd.arg("shell");
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo piped-$((3*3))\nexit 4\n").unwrap();
    drop(stdin);
    let out = wait(child, what);
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stdout.contains("piped-9"), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Layers

#[test]
fn whiteouts_and_opaque_directories_merge_as_a_container_runtime_would() {
    let home = TestHome::new();
    let lower = busybox_layer(MARKER)
        .dir("opt", 0o755)
        .file("opt/kept", "kept\n", 0o644)
        .file("opt/gone", "gone\n", 0o644)
        .dir("opt/gonedir", 0o755)
        .file("opt/gonedir/inner", "inner\n", 0o644)
        .dir("data", 0o755)
        .file("data/old", "old\n", 0o644)
        .dir("data/oldsub", 0o755)
        .file("data/oldsub/deep", "deep\n", 0o644);
    let upper = Layer::new()
        .dir("opt", 0o755)
        .whiteout("opt/gone")
        .whiteout("opt/gonedir")
        .dir("data", 0o755)
        .opaque("data")
        .file("data/new", "new\n", 0o644);
    let img = ImageBuilder::new().layer(lower).layer(upper).build();
    write_env_toml(&home, "project", &push("run/whiteout", &img), "");
    let out = sh(
        &home,
        "ls -a /opt; echo --; ls -a /data; echo --; cat /data/new",
    )
    .success();
    assert_eq!(
        out.stdout, ".\n..\nkept\n--\n.\n..\nnew\n--\nnew\n",
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn no_env_toml_is_an_error_with_a_hint() {
    let home = TestHome::new();
    let out = run_cmd(&home, &["true"]).failure(&["env.toml"]);
    assert!(out.stderr.contains("devenv init"), "no hint: {out:?}");
}

#[test]
fn offline_with_an_empty_store_is_an_error() {
    let home = project("");
    run(devenv(&home).args(["--offline", "run", "--", "true"])).failure(&[]);
}

#[test]
fn a_missing_mount_source_is_an_error_with_a_hint() {
    let home = project("[container]\nmounts = [\"/nonexistent-devenv-source:/x\"]\n");
    trust(&home);
    let out = run_cmd(&home, &["true"]).failure(&["/nonexistent-devenv-source"]);
    assert!(out.stderr.contains("hint:"), "no hint: {out:?}");
    // Said before anything was fetched or locked.
    assert!(!home.project().join("env.lock").exists(), "{out:?}");
    assert!(!home.store().join("blobs").exists(), "{out:?}");
}

#[test]
fn a_missing_mount_source_under_the_home_is_made_and_said_so() {
    // Templates mount caches such as ~/.keras, which a fresh machine does not have.
    let home = project("[container]\nmounts = [\"~/.keras\"]\n");
    trust(&home);
    let keras = home.home().join(".keras");
    let out = run_cmd(
        &home,
        &["sh", "-c", &format!("touch {}/seen", keras.display())],
    )
    .success();
    assert!(
        out.stderr.contains("created") && out.stderr.contains(".keras"),
        "{out:?}"
    );
    assert!(keras.join("seen").exists(), "{out:?}");
    let again = run_cmd(&home, &["true"]).success();
    assert!(!again.stderr.contains("created"), "{again:?}");
}

#[test]
fn an_invalid_env_toml_is_an_error_with_its_position() {
    let home = TestHome::new();
    home.write("project/env.toml", "[image]\nbse = \"x\"\n");
    let out = run_cmd(&home, &["true"]).failure(&["env.toml:2:1", "bse"]);
    assert!(out.stderr.contains("base"), "no suggestion: {out:?}");
}

#[test]
fn missing_image_is_an_error() {
    let home = TestHome::new();
    let reference = format!("{}/{}:1", common::registry(), common::unique("run/missing"));
    write_env_toml(&home, "project", &reference, "");
    run_cmd(&home, &["true"]).failure(&[]);
}
