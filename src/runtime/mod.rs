//! The rootless container behind `devenv run` and `devenv shell`. [`run`] takes the entry's
//! lock and clones PID 1 straight into new user, mount, PID, IPC and UTS namespaces (and a
//! network namespace with only `lo` for `network = "none"`) when this process has one thread;
//! otherwise it re-executes `/proc/self/exe __init`, a fresh single-threaded helper that does
//! the same (a fork of a threaded process may only make async-signal-safe calls). PID 1 maps
//! the user's uid/gid to the same ids (or to 0), mounts an overlay of the image's layers with a
//! fresh upper directory (in a tmpfs that only the container's mount namespace sees, so a warm
//! start writes nothing to the store's disk), binds the project, home, a minimal `/dev`,
//! `/proc`, `/sys` (read-only), `/tmp`, the host's resolv.conf and hosts, pivots into it,
//! spawns the command, reaps zombies and forwards signals, and reports the command's status
//! before the namespaces are torn down ([`run_last`] returns right then).
//!
//! Invariants: nothing is mounted before `/` is made private, so no mount reaches the host; no
//! path from the image is followed outside the new root; nothing needs privileges (no setuid
//! helper, no newuidmap); system directories are fresh at every entry (overlay upper, or a fresh
//! flattened copy where overlay is refused) while home and project persist. All `unsafe` of the
//! crate lives here, each block with a `// SAFETY:` line.
//!
//! Choices worth knowing:
//! - A fresh upper directory lives in a tmpfs mounted on `state_dir/run` inside the container:
//!   nothing to create, copy up or remove on the store's disk, but what the command writes to
//!   system directories takes memory until it exits (as bubblewrap's `--tmp-overlay` and
//!   ch-run's `--write-fake`). Where tmpfs lacks user xattrs (Linux < 6.6) or overlay refuses
//!   it, the directories go on the disk as before.
//! - Where overlay is refused (EINVAL, EPERM, ENODEV) the layer chain is flattened once into
//!   `state_dir/flat/<key>` and copied fresh into each entry, so system directories still reset
//!   at every entry; that costs a copy of the image per entry. `DEVENV_FLATTEN=1` forces it.
//! - An interactive shell (empty `argv`) on a terminal leads its own foreground process group;
//!   a command stays in devenv's group, so Ctrl-Z stops devenv and the command as one job.
//!   The host terminal is bound at `/dev/console` so ttyname(3) works with the private devpts.
//! - Signals sent to devenv by a process (kill, systemd) go inward; those the terminal sends to
//!   the whole foreground group are not sent twice. A hangup is always forwarded.

mod alloc_guard;
pub mod ca;
mod fsutil;
pub mod gpu;
mod init;
pub mod seccomp;
mod setup;
mod state;
mod sys;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use init::init_main;

/// argv[1] that makes the binary the namespace helper.
pub const INIT_ARG: &str = "__init";

/// One entry into the container; also the wire form's core (`setup::Plan`), as JSON for the
/// helper.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Unpacked layer directories, base first (manifest order).
    pub lowers: Vec<PathBuf>,
    /// The env's state directory in the store (a filesystem with user xattrs): per-entry lock
    /// files go under `run/` (with the upper and work directories where they cannot live in a
    /// tmpfs: a persistent `upper`, Linux < 6.6), the flattened fallback under `flat/`.
    pub state_dir: PathBuf,
    /// Bound read-write at the same path.
    pub project_dir: PathBuf,
    /// Where the command starts: the project directory or below it.
    pub cwd: PathBuf,
    /// Host directory mounted as `$HOME`, persistent.
    pub home: PathBuf,
    /// Where `home` appears inside, e.g. `/home/alice` or `/root`.
    pub home_target: PathBuf,
    /// The final environment; HOME, USER, LOGNAME and PATH are added when missing.
    pub env: Vec<(String, String)>,
    /// Empty: an interactive shell.
    pub argv: Vec<String>,
    /// `[container].shell`; else the user's login shell if the image has it, else bash, else sh.
    pub shell: Option<String>,
    pub hostname: String,
    pub network: crate::config::Network,
    /// Map the user to uid 0 (build steps, `--root`) instead of the same uid. The namespace
    /// then holds that one id: chown to any other id succeeds without effect (see `seccomp`).
    pub root: bool,
    /// Extra host paths; each source must exist.
    pub mounts: Vec<crate::config::Mount>,
    /// A persistent upper directory (a build step's new layer): the overlay writes there and it
    /// is kept at exit. It must be on the same filesystem as `state_dir` (overlay's workdir is
    /// there), and it is never used with the flattened fallback, which would lose the writes.
    /// `None`: a fresh upper directory removed at exit.
    pub upper: Option<PathBuf>,
    /// Where the command's stdout and stderr go (stdin is then /dev/null); `None`: inherited.
    /// Not on the wire: the helper gets it as its own stdout and stderr.
    #[serde(skip)]
    pub output: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The host's NVIDIA driver to bring in (`[container].gpu`), as [`gpu::discover`] found it.
    pub gpu: Option<gpu::HostGpu>,
    /// What crosses into the container on purpose: descriptors, syscalls the profile refuses.
    pub sandbox: Sandbox,
    /// `-q`: the runtime prints no notes (errors still).
    pub quiet: bool,
    /// A container of the env's private network (`[services]`, `network = "private"`).
    pub pod: Option<Pod>,
}

/// What a container on the env's private network differs in: the namespaces it joins, the
/// `/etc/hosts` naming the services, and for a service, the user it runs as.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pod {
    /// Joined before PID 1 is cloned (so it is cloned inside them). Not on the wire: the
    /// helper is started inside them already.
    #[serde(skip)]
    pub join: Option<Join>,
    /// A directory holding `hosts` and `resolv.conf`, bound over the image's instead of the
    /// host's.
    pub etc: Option<PathBuf>,
    /// A service: runs as this user of its image, and has no project mount.
    pub service: Option<ServiceUser>,
}

/// The namespaces of an env's network, held by its supervisor (`services`).
#[derive(Clone, Debug)]
pub struct Join {
    /// The user namespace that owns the network; `None` when this process is in it already.
    pub user: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    pub net: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl Join {
    /// setns(2) into the user namespace, then the network: in a process with one thread
    /// (joining a user namespace requires it), before the clone of PID 1. Async-signal-safe
    /// (raw syscalls only): also run between fork and exec.
    pub fn enter(&self) -> Result<(), Errno> {
        if let Some(user) = &self.user {
            // SAFETY: setns(2) on a descriptor we own; it changes only this process.
            if unsafe { libc::setns(user.as_raw_fd(), libc::CLONE_NEWUSER) } < 0 {
                return Err(Errno::last());
            }
        }
        // SAFETY: as above.
        if unsafe { libc::setns(self.net.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }
}

/// The user a service runs as inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

/// The holes a user opens on purpose in what the container is kept from (docs/security.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Descriptors 3 to 3+N-1 stay open in the command (`--preserve-fds N`, systemd's
    /// `LISTEN_FDS`); every other one above 2 is closed before it starts.
    pub preserve_fds: u32,
    /// Set `LISTEN_PID` to the command's pid (socket activation: `LISTEN_FDS` was ours).
    pub listen_pid: bool,
    /// `[container].allow_syscalls`: what the seccomp profile lets through.
    pub allow_syscalls: Vec<String>,
}

/// A sysctl that, set to `value`, allows unprivileged user namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("namespace helper: {message}")]
    Helper { message: String },
    #[error("creating a user namespace: {}", errno_text(*errno))]
    UserNamespace {
        errno: i32,
        restriction: Option<Sysctl>,
    },
    #[error("{step}: {}", errno_text(*errno))]
    Sys { step: String, errno: i32 },
    #[error("mounting {what} on {}: {}", target.display(), errno_text(*errno))]
    Mount {
        what: String,
        target: PathBuf,
        errno: i32,
    },
    #[error("making the mount point {} inside the container: {}", target.display(), errno_text(*errno))]
    MountPoint { target: PathBuf, errno: i32 },
    #[error("mount source {} does not exist", path.display())]
    MountSource { path: PathBuf },
    #[error("overlay refused ({}), and flattening the image failed: {message}", errno_text(*overlay_errno))]
    Flatten { overlay_errno: i32, message: String },
    #[error("the image has {layers} layers, too many for one overlay mount")]
    TooManyLayers { layers: usize },
    #[error("working directory {} inside the container: {}", path.display(), errno_text(*errno))]
    Cwd { path: PathBuf, errno: i32 },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("overlay refused ({}), and a build step needs it to capture its changes", errno_text(*errno))]
    OverlayRequired { errno: i32 },
    /// Internal: the overlay could not go in a tmpfs; `run` retries with an entry on the disk.
    #[error("overlay in a tmpfs refused: {}", errno_text(*errno))]
    ScratchRefused { errno: i32 },
}

fn errno_text(errno: i32) -> String {
    let d = Errno::from_raw(errno).desc();
    let mut c = d.chars();
    c.next().map_or(String::new(), |f| {
        f.to_lowercase().chain(c).collect::<String>()
    })
}

impl RuntimeError {
    pub(crate) fn sys(step: impl Into<String>, errno: Errno) -> RuntimeError {
        RuntimeError::Sys {
            step: step.into(),
            errno: errno as i32,
        }
    }

    /// unshare(CLONE_NEWUSER) failed: find the sysctl that forbids it, if any.
    pub(crate) fn user_namespace(errno: Errno) -> RuntimeError {
        let read = |p: &str| fs_err::read_to_string(p).ok().map(|s| s.trim().to_string());
        let checks = [
            ("kernel.unprivileged_userns_clone", "0", "1"),
            ("user.max_user_namespaces", "0", "15000"),
            ("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),
        ];
        let restriction = checks.iter().find_map(|(name, bad, good)| {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            (read(&path).as_deref() == Some(*bad)).then(|| Sysctl {
                name: name.to_string(),
                value: good.to_string(),
            })
        });
        RuntimeError::UserNamespace {
            errno: errno as i32,
            restriction,
        }
    }
}

const OVERLAY_HINT: &str = "put the store on ext4, xfs, btrfs or tmpfs (set DEVENV_HOME), where \
                            overlay works without privileges on Linux 5.11 or later";

impl crate::error::Hint for RuntimeError {
    fn hint(&self) -> Option<String> {
        match self {
            RuntimeError::UserNamespace {
                restriction: Some(s),
                ..
            } => {
                let mut h = format!(
                    "unprivileged user namespaces are disabled by {0}; enable them with \
                     `sudo sysctl -w {0}={1}` (add it to /etc/sysctl.d/ to keep it)",
                    s.name, s.value
                );
                if s.name.contains("apparmor") {
                    h.push_str(", or give devenv an AppArmor profile with `userns,`");
                }
                Some(h)
            }
            RuntimeError::UserNamespace { errno, .. } if *errno == libc::ENOSPC => Some(
                "the limit of user namespaces is reached; raise it with \
                 `sudo sysctl -w user.max_user_namespaces=15000`"
                    .into(),
            ),
            RuntimeError::UserNamespace { .. } => Some(
                "devenv needs unprivileged user namespaces; inside a container, its seccomp \
                 profile may forbid them (docker: --security-opt seccomp=unconfined); \
                 `devenv doctor` checks the rest"
                    .into(),
            ),
            RuntimeError::Mount { what, errno, .. } if what == "proc" && *errno == libc::EPERM => {
                Some(
                    "a fresh /proc cannot be mounted where parts of /proc are hidden, as inside \
                     another container"
                        .into(),
                )
            }
            RuntimeError::Mount { what, .. } if what == "overlay" => Some(OVERLAY_HINT.into()),
            RuntimeError::Flatten { .. } | RuntimeError::OverlayRequired { .. } => {
                Some(OVERLAY_HINT.into())
            }
            RuntimeError::TooManyLayers { .. } => {
                Some("use an image with fewer layers, or fewer [setup] steps".into())
            }
            RuntimeError::MountSource { .. } => {
                Some("create it, or fix [container].mounts in env.toml".into())
            }
            _ => None,
        }
    }
}

/// Run `spec` in a new container; the command's exit status, 128+signal when it was killed.
/// Signals sent to this process (not those from the terminal) are forwarded to the command.
/// Returns once the container is gone. `DEVENV_FLATTEN=1` skips overlay for the flattened copy
/// (for filesystems where overlay mounts but misbehaves).
pub fn run(spec: &Spec) -> Result<i32, RuntimeError> {
    run_with(
        Path::new("/proc/self/exe"),
        spec,
        flatten_forced(),
        Teardown::Wait,
    )
}

/// [`run`] for the last thing a process does: returns as soon as the command's status is known.
/// Where the entry lives in the container's private tmpfs, PID 1 then waits for the caller's
/// exit to kill it (parent-death signal) and only then unmaps the memory they share and tears
/// its namespaces down (about a millisecond and a half of unmounting), after the caller's exit
/// has been reported; an entry on the disk is waited for, since its mounts still name its
/// directories.
pub fn run_last(spec: &Spec) -> Result<i32, RuntimeError> {
    run_with(
        Path::new("/proc/self/exe"),
        spec,
        flatten_forced(),
        Teardown::Leave,
    )
}

fn flatten_forced() -> bool {
    std::env::var_os("DEVENV_FLATTEN").is_some_and(|v| v == "1")
}

/// Whether `run` waits for the container's namespaces to be torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Teardown {
    Wait,
    Leave,
}

/// The exit status of `pid` (PID 1, or the `devenv __init` helper that started it), 128+signal
/// when killed.
fn wait_for(pid: Pid) -> Result<i32, RuntimeError> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(RuntimeError::Helper {
                    message: format!("waiting: {e}"),
                });
            }
        }
    }
}

/// [`run`] with a given devenv binary as the helper (tests run from another binary).
pub(crate) fn run_with(
    exe: &Path,
    spec: &Spec,
    force_flatten: bool,
    teardown: Teardown,
) -> Result<i32, RuntimeError> {
    fs_err::create_dir_all(&spec.home).map_err(|e| RuntimeError::Io {
        path: spec.home.clone(),
        message: e.to_string(),
    })?;
    // A fresh upper: PID 1 makes the entry's directories in a tmpfs private to the container,
    // so the store's disk sees nothing but a shared lock on `run/scratch.lock`. Where that is
    // refused (Linux < 6.6: tmpfs without user xattrs), an entry of its own on the disk.
    let scratch = spec.upper.is_none();
    if scratch && !force_flatten && state::tmpfs_user_xattrs() {
        let entry = state::Entry::scratch(&spec.state_dir)?;
        match launch(exe, spec, entry, force_flatten, true, teardown) {
            Err(RuntimeError::ScratchRefused { errno }) => {
                tracing::debug!("no overlay in a tmpfs: {}", errno_text(errno));
            }
            done => return done,
        }
    }
    let entry = if scratch {
        state::Entry::create_bare(&spec.state_dir)?
    } else {
        state::Entry::create(&spec.state_dir, &spec.lowers, spec.upper.as_deref())?
    };
    launch(exe, spec, entry, force_flatten, false, teardown)
}

/// One try at running `spec` in `entry`; `scratch_only`: the overlay must go in a tmpfs
/// ([`RuntimeError::ScratchRefused`] otherwise), since nothing guards an entry on the disk.
fn launch(
    exe: &Path,
    spec: &Spec,
    entry: state::Entry,
    force_flatten: bool,
    scratch_only: bool,
    teardown: Teardown,
) -> Result<i32, RuntimeError> {
    let mut plan = setup::Plan {
        force_flatten,
        scratch: spec.upper.is_none(),
        scratch_only,
        ..plan_for(spec, &entry.dir)
    };
    absolute_lowers(&mut plan)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe for errors", e))?;
    // Ours until the command ends, then the caller's again.
    let foreground = init::foreground_tty();
    // The process we start and wait for: PID 1 itself, cloned from this process when it has
    // one thread (no exec, no process in between: the cheap way), else a fresh `exe __init`
    // that clones PID 1 and waits for it (the child of a threaded process could only make
    // async-signal-safe calls). Tests pass their own `exe`, which takes the second way.
    let clone = exe == Path::new("/proc/self/exe") && single_threaded();
    // The env's private network: PID 1 is cloned inside its namespaces (the helper joins
    // them between its fork and exec).
    let join = spec.pod.as_ref().and_then(|p| p.join.as_ref());
    if clone && let Some(j) = join {
        j.enter()
            .map_err(|e| RuntimeError::sys("joining the env's network (setns)", e))?;
    }
    let mask = if clone {
        // Nothing buffered may be written twice.
        let _ = std::io::stdout().flush();
        Some(init::block_signals()?)
    } else {
        None
    };
    let failure = init::Failure::default();
    let alloc_in_window = clone && alloc_guard::test_alloc_in_window();
    // PID 1 outlives us only where we exit right after the status and its entry is in its own
    // tmpfs (one on the disk is named by the mounts being torn down: we wait for those).
    let linger = clone && teardown == Teardown::Leave && scratch_only;
    let started = if clone {
        let take_tty = plan.spec.argv.is_empty() && foreground;
        let output = spec.output.as_deref().map(AsFd::as_fd);
        let err = err_w.as_raw_fd();
        init::start_pid1(
            &plan,
            err,
            output,
            take_tty,
            Some(err_r.as_raw_fd()),
            &failure,
            linger,
        )
        .map(Child::Pid1)
    } else {
        spawn_helper(exe, &plan, spec, &err_w, entry.lock_fd()).map(Child::Helper)
    };
    // Forwarding in place before the signals that came meanwhile are let through.
    let forward = started
        .as_ref()
        .ok()
        .map(|c| init::Forward::install(c.pid().as_raw() as u32));
    if let Some(mask) = mask {
        init::restore_signals(&mask);
    }
    let mut child = started?;
    if alloc_in_window {
        // The guard's own test: this must abort a debug build (tests/run.rs).
        drop(std::hint::black_box(Box::new(0u8)));
    }
    drop(err_w);
    let message = init::Message::read(err_r);
    // PID 1 has sent the status, or exited: the heap is ours again.
    alloc_guard::close();
    let result = match message {
        init::Message::Status(code) => {
            // An entry on the disk is named by the mounts being torn down: let them go first.
            if !linger && (teardown == Teardown::Wait || entry.dir.exists()) {
                child.wait()?;
            }
            Ok(code)
        }
        init::Message::Error(e) => {
            child.wait()?;
            Err(e)
        }
        init::Message::Nothing => child
            .wait()
            .and_then(|code| init::take_failure(&failure).map_or(Ok(code), Err)),
    };
    drop(forward);
    if foreground {
        init::give_terminal(nix::unistd::getpgrp());
    }
    child.leave();
    drop(entry);
    result
}

/// The process `launch` started and waits for.
fn absolute_lowers(plan: &mut setup::Plan) -> Result<(), RuntimeError> {
    for l in &mut plan.spec.lowers {
        *l = std::path::absolute(&*l).map_err(|e| RuntimeError::Io {
            path: l.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// Bring `lo` up in this thread's network namespace.
pub fn loopback_up() -> Result<(), Errno> {
    use sys::Syscalls as _;
    sys::Real.loopback_up()
}

/// A container started in the background (a service, by a process with threads): the
/// `devenv __init` helper holding its PID 1, and the pipe PID 1 reports on.
pub struct Background {
    pid: Pid,
    err: std::os::fd::OwnedFd,
    entry: state::Entry,
}

/// Start `spec` without waiting for it: through a fresh `devenv __init` (this process may have
/// threads), joined to `spec.pod`'s network. The helper dies with the thread that called this
/// (its parent-death signal), and PID 1 and the container with it.
pub fn start(spec: &Spec) -> Result<Background, RuntimeError> {
    fs_err::create_dir_all(&spec.home).map_err(|e| RuntimeError::Io {
        path: spec.home.clone(),
        message: e.to_string(),
    })?;
    let scratch_only = state::tmpfs_user_xattrs();
    let entry = if scratch_only {
        state::Entry::scratch(&spec.state_dir)?
    } else {
        state::Entry::create_bare(&spec.state_dir)?
    };
    let mut plan = setup::Plan {
        scratch: true,
        scratch_only,
        ..plan_for(spec, &entry.dir)
    };
    absolute_lowers(&mut plan)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe for errors", e))?;
    let exe = Path::new("/proc/self/exe");
    let pid = spawn_helper(exe, &plan, spec, &err_w, entry.lock_fd())?;
    Ok(Background {
        pid,
        err: err_r,
        entry,
    })
}

impl Background {
    /// The helper's pid: a signal to it goes on to the command.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Wait for the command to end: its status (128+signal when killed), or why it never
    /// started.
    pub fn wait(self) -> Result<i32, RuntimeError> {
        let message = init::Message::read(self.err);
        let code = wait_for(self.pid)?;
        drop(self.entry);
        match message {
            init::Message::Status(c) => Ok(c),
            init::Message::Error(e) => Err(e),
            init::Message::Nothing => Ok(code),
        }
    }
}

enum Child<'a> {
    /// PID 1 itself, sharing our memory.
    Pid1(init::Pid1<'a>),
    /// `devenv __init`, which starts PID 1 and waits for it.
    Helper(Pid),
}

impl Child<'_> {
    fn pid(&self) -> Pid {
        match self {
            Child::Pid1(p) => p.pid(),
            Child::Helper(pid) => *pid,
        }
    }

    fn wait(&mut self) -> Result<i32, RuntimeError> {
        match self {
            Child::Pid1(p) => p.wait(),
            Child::Helper(pid) => wait_for(*pid),
        }
    }

    /// Done with it ([`init::Pid1::leave`]).
    fn leave(self) {
        if let Child::Pid1(p) = self {
            p.leave();
        }
    }
}

/// One thread in this process (/proc/self/stat's num_threads): fork is safe.
/// Whether this process has one thread (a fork of it may then do anything).
pub(crate) fn single_threaded() -> bool {
    let Ok(stat) = fs_err::read_to_string("/proc/self/stat") else {
        return false;
    };
    // pid (comm) state ppid ...: comm may hold spaces and parentheses; num_threads is the
    // 20th field, the 18th after comm.
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.split(' ').nth(17))
        .is_some_and(|n| n == "1")
}

/// The helper as a fresh `exe __init SPEC_FD ERR_FD LOCK_FD`, reading the plan as JSON.
fn spawn_helper(
    exe: &Path,
    plan: &setup::Plan,
    spec: &Spec,
    err_w: &std::os::fd::OwnedFd,
    lock: std::os::fd::BorrowedFd<'_>,
) -> Result<Pid, RuntimeError> {
    let json = serde_json::to_vec(plan).map_err(|e| RuntimeError::Helper {
        message: e.to_string(),
    })?;
    let (spec_r, spec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe for the plan", e))?;
    let fds = [spec_r.as_raw_fd(), err_w.as_raw_fd(), lock.as_raw_fd()];
    let mut cmd = Command::new(exe);
    cmd.arg(INIT_ARG).args(fds.iter().map(|f| f.to_string()));
    if let Some(out) = &spec.output {
        let dup = |what: &str| {
            out.try_clone().map_err(|e| RuntimeError::Helper {
                message: format!("duplicating the {what} descriptor: {e}"),
            })
        };
        cmd.stdin(std::process::Stdio::null())
            .stdout(dup("stdout")?)
            .stderr(dup("stderr")?);
    }
    // SAFETY: the closure runs between fork and exec and only calls fcntl(2).
    let join = spec.pod.as_ref().and_then(|p| p.join.clone());
    unsafe {
        cmd.pre_exec(move || {
            for fd in fds {
                init::inherit(fd)?;
            }
            if let Some(j) = &join {
                j.enter().map_err(std::io::Error::from)?;
            }
            Ok(())
        })
    };
    let child = cmd.spawn().map_err(|e| RuntimeError::Helper {
        message: format!("starting {}: {e}", exe.display()),
    })?;
    drop(spec_r);
    // A helper that died early makes this EPIPE; its report and status tell why.
    let _ = std::fs::File::from(spec_w).write_all(&json);
    // Waited for by pid (wait_for); std's handle does not reap on drop.
    Ok(Pid::from_raw(child.id() as i32))
}

/// The invoking user as the host's passwd names them: inside, the same uid gets the same name
/// (and, for an interactive shell, their login shell when the image has it).
#[derive(Clone, Debug)]
pub struct HostUser {
    pub name: String,
    pub shell: Option<String>,
}

/// Read once per process: the CLI (home path, USER) and the plan both need it.
pub fn host_user() -> &'static HostUser {
    static USER: std::sync::OnceLock<HostUser> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        let uid = nix::unistd::getuid().as_raw();
        let host = fs_err::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| fsutil::passwd_lookup(&p, uid));
        let name = host
            .as_ref()
            .map(|(n, _)| n.clone())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| format!("user{uid}"));
        let shell = host.map(|(_, s)| s).or_else(|| std::env::var("SHELL").ok());
        HostUser { name, shell }
    })
}

/// `name` as a host name: lowercase letters, digits and `-`, at most 63 characters, no `-` at
/// either end; `devenv` when nothing is left. The one rule: the project's name (hostname,
/// prompt, `DEVENV_ENV`) is made with it, and PID 1 applies it again to whatever it is given.
pub fn host_name(name: &str) -> String {
    let out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let out = out.trim_matches('-');
    if out.is_empty() {
        "devenv".into()
    } else {
        out.to_string()
    }
}

/// The paths inside the container that `spec`'s entry mounts something on, so that a build
/// step can tell the mount points the runtime made in its upper directory from what the
/// command wrote (build::clean).
pub fn mount_points(spec: &Spec) -> Vec<PathBuf> {
    let service = spec.pod.as_ref().is_some_and(|p| p.service.is_some());
    let mut points = vec!["/dev".into(), "/proc".into(), "/sys".into(), "/tmp".into()];
    if !service {
        points.splice(0..0, [spec.project_dir.clone(), spec.home_target.clone()]);
    }
    points.extend(setup::HOST_FILES.iter().map(PathBuf::from));
    points.extend(spec.mounts.iter().map(|m| m.target.clone()));
    if spec.gpu.is_some() {
        points.push(
            Path::new(gpu::LIB_DIR)
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
        );
    }
    points
}

/// Where the env's persistent home appears inside: `/root` for `--root`; else the home the
/// image's `/etc/passwd` gives `user` (read through the merged view of `lowers`, base first:
/// whiteouts hide it, symlinks stay inside the image), else `/home/<user>`.
pub fn home_target(lowers: &[PathBuf], user: &str, root: bool) -> PathBuf {
    if root {
        return PathBuf::from("/root");
    }
    image_home(lowers, user).unwrap_or_else(|| PathBuf::from("/home").join(user))
}

/// `user` (a name, `uid` or `uid:gid`) as the image's /etc/passwd knows it: uid, gid, name and
/// home. A number the image does not list gets its own number as the gid and name.
pub fn image_user(lowers: &[PathBuf], user: &str) -> Option<(ServiceUser, PathBuf)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = image_file(lowers, "/etc/passwd").unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && (f[0] == u || f[2] == u)).then(|| {
            let uid = f[2].parse::<u32>().ok()?;
            let gid = f[3].parse::<u32>().ok()?;
            Some((f[0].to_string(), uid, gid, PathBuf::from(f[5])))
        })?
    });
    let (name, uid, gid, home) = match entry {
        Some(e) => e,
        None => {
            let uid: u32 = u.parse().ok()?;
            (u.to_string(), uid, uid, PathBuf::from("/"))
        }
    };
    let gid = match g {
        None => gid,
        Some(g) => g.parse().ok().or_else(|| {
            let group = image_file(lowers, "/etc/group")?;
            group.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
            })
        })?,
    };
    Some((ServiceUser { uid, gid, name }, home))
}

fn image_file(lowers: &[PathBuf], path: &str) -> Option<String> {
    let fsutil::Merged::File(file) = fsutil::MergedView::new(lowers)?.lookup(Path::new(path))
    else {
        return None;
    };
    fs_err::read_to_string(&file).ok()
}

fn image_home(lowers: &[PathBuf], user: &str) -> Option<PathBuf> {
    let fsutil::Merged::File(passwd) =
        fsutil::MergedView::new(lowers)?.lookup(Path::new("/etc/passwd"))
    else {
        return None;
    };
    let text = fs_err::read_to_string(&passwd).ok()?;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[0] == user).then(|| PathBuf::from(f[5]))
        })
        .find(|h| h.is_absolute() && h != Path::new("/") && h != Path::new("/nonexistent"))
}

fn plan_for(spec: &Spec, entry: &Path) -> setup::Plan {
    let user = host_user();
    let mut inner = spec.clone();
    if let Some(bundle) = ca::host_bundle() {
        ca::trust(bundle, &mut inner.mounts, &mut inner.env);
    }
    let mut plan = setup::Plan {
        entry: entry.to_path_buf(),
        host_uid: nix::unistd::getuid().as_raw(),
        host_gid: nix::unistd::getgid().as_raw(),
        user_name: user.name.clone(),
        host_shell: user.shell.clone(),
        force_flatten: false,
        scratch: false,
        scratch_only: false,
        spec: inner,
    };
    plan.spec.shell = setup::shell_from_layers(&plan);
    plan
}

/// The filesystem type of `path`, by name where we know it.
fn fs_name(path: &Path) -> String {
    let Ok(st) = nix::sys::statfs::statfs(path) else {
        return "this filesystem".into();
    };
    #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
    let t = st.filesystem_type().0 as i64;
    let known: [(i64, &str); 9] = [
        (0xEF53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x0102_1994, "tmpfs"),
        (0x6969, "nfs"),
        (0x2FC1_2FC1, "zfs"),
        (0x794C_7630, "overlayfs"),
        (0x6573_5546, "fuse"),
        (0xFF53_4D42, "cifs"),
    ];
    known
        .iter()
        .find(|(m, _)| *m == t)
        .map_or_else(|| format!("filesystem type {t:#x}"), |(_, n)| n.to_string())
}

/// The `devenv` binary next to the test binary (or `DEVENV_BIN`): unit tests are no namespace
/// helper themselves, so containers in tests re-execute this one.
#[cfg(test)]
pub(crate) fn test_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DEVENV_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("devenv");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build` first, or set DEVENV_BIN",
        p.display()
    );
    p
}

#[cfg(test)]
mod home_tests {
    use super::*;

    fn layer(root: &Path, name: &str, passwd: Option<&str>) -> PathBuf {
        let l = root.join(name);
        fs_err::create_dir_all(l.join("etc")).unwrap();
        if let Some(p) = passwd {
            fs_err::write(l.join("etc/passwd"), p).unwrap();
        }
        l
    }

    #[test]
    fn home_is_the_images_passwd_entry_through_the_merged_view() {
        let t = tempfile::tempdir().unwrap();
        let base = layer(
            t.path(),
            "l0",
            Some("alice:x:1000:100::/work/alice:/bin/sh\n"),
        );
        assert_eq!(
            home_target(std::slice::from_ref(&base), "alice", false),
            Path::new("/work/alice")
        );
        assert_eq!(
            home_target(std::slice::from_ref(&base), "bob", false),
            Path::new("/home/bob")
        );
        assert_eq!(
            home_target(std::slice::from_ref(&base), "alice", true),
            Path::new("/root")
        );
        // A layer above without passwd leaves the base's in view.
        let mid = layer(t.path(), "l1", None);
        assert_eq!(
            home_target(&[base.clone(), mid.clone()], "alice", false),
            Path::new("/work/alice")
        );
    }

    #[test]
    fn a_whiteout_of_passwd_hides_the_lower_layers_entry() {
        let t = tempfile::tempdir().unwrap();
        let base = layer(
            t.path(),
            "l0",
            Some("alice:x:1000:100::/work/alice:/bin/sh\n"),
        );
        let top = layer(t.path(), "l1", None);
        // A whiteout as the store keeps it: a 0/0 character device (as fsutil's tests, this
        // needs root: scripts/test runs the unit tests as root).
        nix::sys::stat::mknod(
            &top.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        )
        .expect("mknod of a whiteout");
        assert_eq!(
            home_target(&[base, top], "alice", false),
            Path::new("/home/alice")
        );
    }

    #[test]
    fn an_absolute_symlink_in_the_image_is_not_followed_onto_the_host() {
        let t = tempfile::tempdir().unwrap();
        // The host file the naive reading reached: <root>/hostetc/passwd, named by the image
        // as an absolute link, which inside the view means the image's own /hostetc.
        let host = t.path().join("hostetc");
        fs_err::create_dir_all(&host).unwrap();
        fs_err::write(
            host.join("passwd"),
            "alice:x:1000:100::/host/secret:/bin/sh\n",
        )
        .unwrap();
        let l = t.path().join("l0");
        fs_err::create_dir_all(&l).unwrap();
        std::os::unix::fs::symlink(&host, l.join("etc")).unwrap();
        assert_eq!(home_target(&[l], "alice", false), Path::new("/home/alice"));
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;
    use crate::error::Hint;

    #[test]
    fn userns_hint_names_the_sysctl() {
        let e = RuntimeError::UserNamespace {
            errno: libc::EPERM,
            restriction: Some(Sysctl {
                name: "kernel.apparmor_restrict_unprivileged_userns".into(),
                value: "0".into(),
            }),
        };
        let h = e.hint().unwrap();
        assert!(
            h.contains("sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
            "{h}"
        );
        assert!(h.contains("AppArmor profile"), "{h}");
        assert_eq!(
            e.to_string(),
            "creating a user namespace: operation not permitted"
        );
    }

    #[test]
    fn errors_survive_the_trip_from_the_helper() {
        let e = RuntimeError::Mount {
            what: "proc".into(),
            target: "/x/proc".into(),
            errno: libc::EPERM,
        };
        let back: RuntimeError = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(
            back.to_string(),
            "mounting proc on /x/proc: operation not permitted"
        );
        assert!(back.hint().unwrap().contains("/proc"));
    }
}
