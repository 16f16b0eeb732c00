//! Runnable images and projects for `devenv run`/`shell` tests: a base layer made of the host's
//! static busybox (so images need no libc), an env.toml naming an image on the shared registry,
//! a pseudo-terminal session for `devenv shell`, and a mount without user xattrs for doctor.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TestHome;
use super::image::{BuiltImage, ImageBuilder, Layer};
use super::registry::Client;

/// The busybox applets linked into `bin/` of [`busybox_layer`].
pub const APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "id", "echo", "touch", "sleep", "ps", "kill", "hostname", "whoami",
    "env", "mkdir", "rm", "stat", "grep", "true", "false", "test", "[", "printf", "pwd", "wc",
    "head", "tail", "chmod", "readlink", "ln", "uname", "cut", "tr", "sed", "sort", "mv", "cp",
    "find", "xargs", "seq", "tty", "stty", "mount", "df", "date", "dd", "usleep",
];

/// The static busybox from busybox-static (`scripts/test` installs it).
pub fn busybox_bytes() -> Vec<u8> {
    let p = Path::new("/bin/busybox");
    fs_err::read(p).unwrap_or_else(|e| {
        panic!("{e}: the tests need busybox-static; run scripts/test as root, which installs it")
    })
}

/// A root filesystem layer: `bin/busybox` with [`APPLETS`] as symlinks, the usual top-level
/// directories, `etc/passwd` and `etc/group` with root only, and `etc/os-release` carrying
/// `MARKER=<marker>`, so a test can tell this image from the host.
pub fn busybox_layer(marker: &str) -> Layer {
    let mut l = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", busybox_bytes(), 0o755);
    for a in APPLETS {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    for d in [
        "dev",
        "proc",
        "sys",
        "home",
        "var",
        "run",
        "usr",
        "usr/bin",
        "usr/local",
    ] {
        l = l.dir(d, 0o755);
    }
    l.dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("etc", 0o755)
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/group", "root:x:0:\n", 0o644)
        .file(
            "etc/os-release",
            format!("NAME=\"devenv test image\"\nID=devenvtest\nMARKER={marker}\n"),
            0o644,
        )
}

/// An image of just [`busybox_layer`].
pub fn busybox_image(marker: &str) -> ImageBuilder {
    ImageBuilder::new().layer(busybox_layer(marker))
}

/// Pushes `image` to the shared registry under a unique name; returns its reference.
pub fn push(name: &str, image: &BuiltImage) -> String {
    Client::shared().push(&super::unique(name), "1", image)
}

/// Writes `<dir>/env.toml` (dir relative to the test home's root, e.g. `project`) naming
/// `reference`, followed by `extra` (more sections), owned by the test user.
pub fn write_env_toml(home: &TestHome, dir: &str, reference: &str, extra: &str) -> PathBuf {
    home.write(
        format!("{dir}/env.toml"),
        format!("[image]\nbase = \"{reference}\"\n{extra}"),
    )
}

/// The test user's name, as `whoami` inside should print it.
pub fn runner_name() -> String {
    let (uid, _) = super::runner_ids();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .expect("reading the passwd database")
        .map(|u| u.name)
        .unwrap_or_else(|| panic!("uid {uid} has no passwd entry"))
}

/// Polls `cond` every 20 ms until it holds, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command running on a pseudo-terminal (its stdin, stdout and stderr, and its controlling
/// terminal), with everything it writes collected on a thread.
pub struct PtySession {
    /// Shared with the reader thread, which drops its reference when `stop` is set.
    master: Arc<std::fs::File>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    child: std::process::Child,
}

impl PtySession {
    /// Spawns `cmd` on a new pty; the slave is given to the test user, as a login's would be.
    pub fn spawn(cmd: Command) -> PtySession {
        PtySession::spawn_sized(cmd, 24, 80)
    }

    /// [`PtySession::spawn`] on a terminal of `rows` × `cols`.
    pub fn spawn_sized(mut cmd: Command, rows: u16, cols: u16) -> PtySession {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        // openpty(3) does not set close-on-exec: a master leaked into the child would keep the
        // terminal alive after the session closes it, and a leaked slave would too.
        for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("setting close-on-exec on the pty");
        }
        let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).expect("ttyname of the pty");
        if super::is_root() {
            let (uid, gid) = super::runner_ids();
            nix::unistd::chown(
                &slave_path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .expect("chown of the pty slave");
        }
        let slave: OwnedFd = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs before exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawning on the pty");
        drop(cmd); // closes our copies of the slave, so reading the master ends with the child
        let master = Arc::new(std::fs::File::from(pty.master));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (r, out, halt) = (master.clone(), output.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            let mut buf = [0u8; 4096];
            while !halt.load(Ordering::SeqCst) {
                let mut fds = [nix::poll::PollFd::new(
                    r.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
                // EIO once the last slave descriptor closes: the session is over.
                match (&*r).read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        PtySession {
            master,
            stop,
            output,
            reader: Some(reader),
            child,
        }
    }

    /// Resizes the terminal, as a terminal emulator does (the kernel sends SIGWINCH to its
    /// foreground process group).
    pub fn resize(&mut self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the fd is our open master.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// The pid of the spawned command.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes the terminal, as closing a terminal window does (the kernel hangs up the
    /// session); returns the status and output once the command ended (killed after
    /// `timeout`).
    pub fn hang_up(&mut self, timeout: Duration) -> (ExitStatus, String) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // The last reference to the master: dropping it closes the terminal.
        self.master = Arc::new(fs_err::File::open("/dev/null").unwrap().into_file());
        self.wait(timeout)
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Types `s` as a user would.
    pub fn type_str(&mut self, s: &str) {
        self.master
            .write_all(s.as_bytes())
            .expect("writing to the pty");
    }

    /// Waits until the output contains `needle`.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.output().contains(needle) {
                return;
            }
            if start.elapsed() > timeout || self.child.try_wait().ok().flatten().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                if self.output().contains(needle) {
                    return;
                }
                panic!(
                    "expected {needle:?} on the terminal within {timeout:?}; it showed:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the command to end (killing it after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the pty child") {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the command on the pty did not end within {timeout:?}; it showed:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends when every slave descriptor is closed; a leftover holder would keep it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take().filter(|r| r.is_finished()) {
            let _ = r.join();
        }
        (status, self.output())
    }
}

impl Drop for PtySession {
    /// Kills what is left of the session (a failed test must not leave a shell behind): the
    /// command if it still runs, and every process still in its session.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in session_members(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The pids of the processes in session `sid`.
pub fn session_members(sid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs_err::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs_err::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let session = rest
            .split_whitespace()
            .nth(3)
            .and_then(|s| s.parse::<u32>().ok());
        if session == Some(sid) {
            out.push(pid);
        }
    }
    out
}

/// Host processes whose command line contains `needle`, as `pid: cmdline`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = fs_err::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = fs_err::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{name}: {cmd}"));
            }
        }
    }
    out
}

/// SIGKILLs the processes [`processes_with`] lists (test cleanup after a failed check).
pub fn kill_processes(listed: &[String]) {
    for p in listed {
        if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A directory on a filesystem without user xattrs (ramfs: in every kernel, no xattrs at all),
/// owned by the test user; unmounted on drop. Root only: panics otherwise, saying so.
///
/// vfat would do too, but many kernels (this CI's included) are built without it.
pub struct NoXattrMount {
    pub dir: PathBuf,
}

impl NoXattrMount {
    pub fn new(home: &TestHome) -> NoXattrMount {
        assert!(
            super::is_root(),
            "this test mounts a filesystem without user xattrs and needs root; run scripts/test \
             as root (it is not skipped)"
        );
        let dir = home.mkdir("noxattr");
        let status = Command::new(super::tool("mount"))
            .args(["-t", "ramfs", "-o", "mode=0755", "ramfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t ramfs {} failed: {status}",
            dir.display()
        );
        let m = NoXattrMount { dir };
        home.chown(&m.dir);
        m
    }
}

impl Drop for NoXattrMount {
    fn drop(&mut self) {
        let _ = Command::new(super::tool("umount"))
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
