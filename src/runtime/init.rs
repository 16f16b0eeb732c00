//! The container's processes. The helper (a fork of `devenv` when it is single-threaded, else
//! `devenv __init SPEC_FD ERR_FD LOCK_FD`, which reads the plan from SPEC_FD) enters the
//! namespaces and forks PID 1 of the new PID namespace; PID 1 builds the root, forks the
//! command, reaps every process until the command ends and then reports its status. The helper
//! only waits for PID 1, so that PID 1 dies with it.
//!
//! Invariants: the helper is single-threaded (unshare(CLONE_NEWUSER) needs it, and fork is only
//! safe so); the helper and PID 1 leave with `_exit` and never unwind into the caller's frames.
//! ERR_FD carries one [`Message`] to `run`: a setup error, or the command's status; PID 1 sends
//! the status before its namespaces are torn down, so `devenv` need not wait for the teardown.
//! Signals sent to the helper by a process are forwarded to PID 1 and from there to the
//! command; those the terminal sent to the whole process group are not, since the command got
//! them too.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpgrp};

use super::RuntimeError;
use super::setup::{self, Plan, RootFs};
use super::sys::Real;

/// Exit status of the helper when setup failed; the real report is the JSON on ERR_FD.
const SETUP_FAILED: i32 = 125;

/// Signals forwarded to the command.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn waited_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(sig);
    }
    s.add(Signal::SIGCHLD);
    s
}

pub fn init_main() -> ExitCode {
    let fds: Vec<RawFd> = std::env::args()
        .skip(2)
        .filter_map(|a| a.parse().ok())
        .collect();
    // Three distinct open descriptors above stdio, or this was not started by `run`.
    let valid = |fd: RawFd| {
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed one fails with EBADF.
        fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
    };
    let [spec_fd, err_fd, lock_fd] = fds[..] else {
        eprintln!("error: `devenv __init` is internal to `devenv run` and `devenv shell`");
        return ExitCode::from(2);
    };
    if !fds.iter().all(|&fd| valid(fd))
        || spec_fd == err_fd
        || err_fd == lock_fd
        || spec_fd == lock_fd
    {
        eprintln!("error: `devenv __init` is internal to `devenv run` and `devenv shell`");
        return ExitCode::from(2);
    }
    // SAFETY: `run` passed these three descriptors open and meant only for us; each is
    // owned once, here.
    let (spec, err, lock) = unsafe {
        (
            std::fs::File::from_raw_fd(spec_fd),
            OwnedFd::from_raw_fd(err_fd),
            OwnedFd::from_raw_fd(lock_fd),
        )
    };
    // The command must not inherit them; PID 1 keeps the lock by inheritance until it ends.
    for fd in [&err, &lock] {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let plan = match read_plan(spec) {
        Ok(p) => p,
        Err(e) => {
            report(&err, &e);
            return ExitCode::from(SETUP_FAILED as u8);
        }
    };
    let code = helper(&plan, err);
    drop(lock);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn read_plan(mut spec: std::fs::File) -> Result<Plan, RuntimeError> {
    let mut buf = Vec::new();
    spec.read_to_end(&mut buf)
        .map_err(|e| RuntimeError::Helper {
            message: format!("reading the plan: {e}"),
        })?;
    serde_json::from_slice(&buf).map_err(|e| RuntimeError::Helper {
        message: format!("reading the plan: {e}"),
    })
}

/// What PID 1 (or the helper, before PID 1 exists) sends `run` on ERR_FD: a tag byte, then a
/// setup error as JSON up to EOF, or the command's status as 4 bytes, little-endian. EOF with
/// nothing: PID 1 died without a word (killed); the helper's exit status says how.
#[derive(Debug)]
pub(super) enum Message {
    Error(RuntimeError),
    Status(i32),
    Nothing,
}

const TAG_ERROR: u8 = b'E';
const TAG_STATUS: u8 = b'S';

impl Message {
    /// Read one message; a status is taken as soon as its bytes are in, without waiting for
    /// EOF (which comes only after PID 1's exit has closed its descriptors).
    pub(super) fn read(from: OwnedFd) -> Message {
        let mut f = std::fs::File::from(from);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if buf.first() == Some(&TAG_STATUS) && buf.len() >= 5 {
                let code = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
                return Message::Status(code);
            }
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Message::Error(RuntimeError::Helper {
                        message: format!("reading its report: {e}"),
                    });
                }
            }
        }
        match buf.split_first() {
            None => Message::Nothing,
            Some((&TAG_ERROR, json)) => {
                Message::Error(serde_json::from_slice(json).unwrap_or_else(|e| {
                    RuntimeError::Helper {
                        message: format!("unreadable error report: {e}"),
                    }
                }))
            }
            Some(_) => Message::Error(RuntimeError::Helper {
                message: "unreadable report".into(),
            }),
        }
    }
}

/// Write `msg` whole to ERR_FD.
fn send(err: &OwnedFd, msg: &[u8]) -> bool {
    err.try_clone()
        .is_ok_and(|fd| std::fs::File::from(fd).write_all(msg).is_ok())
}

/// Send a setup error to `run`; stderr if that is impossible.
fn report(err: &OwnedFd, e: &RuntimeError) {
    let mut msg = vec![TAG_ERROR];
    if serde_json::to_writer(&mut msg, e).is_err() || !send(err, &msg) {
        eprintln!("error: {e}");
    }
}

/// The command's status, sent to `run` as soon as it is known.
fn report_status(err: &OwnedFd, code: i32) {
    let mut msg = vec![TAG_STATUS];
    msg.extend_from_slice(&code.to_le_bytes());
    send(err, &msg);
}

/// Whether we own the terminal's foreground: then the command may get it, and it comes back to
/// our process group afterwards.
pub(super) fn foreground_tty() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|p| p == getpgrp())
}

/// Make `pgrp` the terminal's foreground process group.
pub(super) fn give_terminal(pgrp: Pid) {
    // termios(3): tcsetpgrp from a background group raises SIGTTOU unless it is ignored.
    // SAFETY: SIG_IGN installs no handler code; the old disposition is restored just after.
    let old =
        unsafe { nix::sys::signal::signal(Signal::SIGTTOU, nix::sys::signal::SigHandler::SigIgn) };
    let _ = nix::unistd::tcsetpgrp(std::io::stdin(), pgrp);
    if let Ok(old) = old {
        // SAFETY: restores the disposition we replaced above.
        let _ = unsafe { nix::sys::signal::signal(Signal::SIGTTOU, old) };
    }
}

/// The helper process: namespaces, then PID 1, then wait for it. Its status is PID 1's, which
/// is the command's; `run` reads the command's status from ERR_FD first and needs this only
/// when PID 1 died without reporting.
pub(super) fn helper(plan: &Plan, err: OwnedFd) -> i32 {
    // An interactive shell leads its own foreground group (it runs job control for its jobs);
    // a command stays in devenv's group, so Ctrl-Z stops devenv and the command as one job
    // and the user's shell can `fg` them. Either way `run` takes the terminal back after.
    let parent = nix::unistd::getppid();
    let take_tty = plan.argv.is_empty() && foreground_tty();
    // Blocked before fork so that no signal or child exit slips past the sigwaitinfo loops.
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited_set()), None) {
        report(&err, &RuntimeError::sys("blocking signals", e));
        return SETUP_FAILED;
    }
    if let Err(e) = setup::enter_namespaces(&mut Real, plan) {
        report(&err, &e);
        return SETUP_FAILED;
    }
    // A `devenv` killed with SIGKILL cannot forward anything: die with it, so no container
    // outlives it (and its entry lock frees). prctl(2): the kernel clears the parent-death
    // signal when credentials change, which entering the user namespace does, so set it here;
    // then make sure the parent did not die before it took effect.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        report(&err, &RuntimeError::sys("prctl(PR_SET_PDEATHSIG)", e));
        return SETUP_FAILED;
    }
    if nix::unistd::getppid() != parent {
        return SETUP_FAILED;
    }
    // fork(2) after unshare(CLONE_NEWPID): the child is PID 1 of the new namespace.
    // SAFETY: the helper is single-threaded, so the child's memory is consistent.
    match unsafe { fork() } {
        Err(e) => {
            report(&err, &RuntimeError::sys("fork", e));
            SETUP_FAILED
        }
        Ok(ForkResult::Child) => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match pid1(plan, &err, take_tty) {
                    Ok(code) => {
                        report_status(&err, code);
                        code
                    }
                    Err(e) => {
                        report(&err, &e);
                        SETUP_FAILED
                    }
                }
            }))
            .unwrap_or(SETUP_FAILED);
            // SAFETY: _exit(2) ends the forked child without running the parent's atexit work.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // PID 1 alone holds ERR_FD now: its EOF is PID 1's end.
            drop(err);
            supervise(child, false)
        }
    }
}

/// PID 1: build the root, start the command, reap until it ends; the command's status.
fn pid1(plan: &Plan, err: &OwnedFd, take_tty: bool) -> Result<i32, RuntimeError> {
    // The helper dying (with devenv) takes PID 1, and with it the whole PID namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| RuntimeError::sys("prctl(PR_SET_PDEATHSIG)", e))?;
    let mut sys = Real;
    // Still the host's view: /proc/self/fd/0 names the terminal's device in the host's /dev.
    let console = std::fs::read_link("/proc/self/fd/0").ok().filter(|p| {
        p.starts_with("/dev/") && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
    });
    let fs = setup::build_root(&mut sys, plan, console.as_deref())?;
    let argv = setup::finish(&mut sys, plan)?;
    if plan.force_flatten {
        eprintln!("note: DEVENV_FLATTEN=1; using a flattened copy of the image");
    } else if let RootFs::Flattened(_) = fs {
        eprintln!(
            "note: overlay unavailable on {}; using a flattened copy of the image",
            plan.store_fs
        );
    }
    // Ctrl-C or a kill while we were building the root: do not start the command at all.
    if let Some(sig) = pending_stop() {
        return Ok(128 + sig);
    }
    // After no-new-privs (finish), which an unprivileged seccomp filter needs; inherited.
    if plan.root {
        super::seccomp::ignore_unmapped_chown()
            .map_err(|errno| RuntimeError::sys("installing the chown filter (seccomp)", errno))?;
    }
    let _ = err; // kept open (close-on-exec) until the status is sent
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(setup::environment(plan));
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (sigprocmask, setpgid, signal, tcsetpgrp, getpid).
    unsafe {
        cmd.pre_exec(move || {
            let empty = libc_sigset_empty();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if take_tty {
                // setpgid(2) + tcsetpgrp(3): the command leads the terminal's foreground group,
                // so Ctrl-C, Ctrl-Z and job control reach it and not us.
                libc::setpgid(0, 0);
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            Ok(())
        })
    };
    // From here on errors are the command's, printed by us like the rest of devenv.
    match cmd.spawn() {
        Ok(child) => Ok(supervise(Pid::from_raw(child.id() as i32), true)),
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found".to_string()),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied".to_string()),
                _ => (126, e.to_string()),
            };
            eprintln!("error: {}: {what}", argv[0]);
            Ok(code)
        }
    }
}

/// A terminating signal that arrived (blocked) during setup.
fn pending_stop() -> Option<i32> {
    let mut set = libc_sigset_empty();
    // SAFETY: set is a valid sigset_t that sigpending(2) fills.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return None;
    }
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
        .into_iter()
        // SAFETY: set was filled by sigpending above.
        .find(|&sig| unsafe { libc::sigismember(&set, sig) } == 1)
}

fn libc_sigset_empty() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

/// Wait for `child`, forwarding signals, and with `reap_all` also reap every other process
/// that ends (PID 1's duty, or zombies pile up). The child's exit status, 128+signal if killed.
fn supervise(child: Pid, reap_all: bool) -> i32 {
    let set = waited_set();
    loop {
        // SAFETY: siginfo_t is plain data, filled by sigwaitinfo before we read it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // sigwaitinfo(2) on signals blocked since before fork: none is lost, no handler runs.
        // SAFETY: set and info are valid for the call.
        let sig = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if sig < 0 {
            continue; // EINTR from a stop/continue
        }
        if sig == libc::SIGCHLD {
            let target = (!reap_all).then_some(child);
            loop {
                match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return 128 + s as i32,
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } else if info.si_code != libc::SI_KERNEL {
            // Sent by a process (our parent, `kill`): pass it on. SI_KERNEL ones came from the
            // terminal to the whole foreground group, the child included.
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(child, s);
            }
        }
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `devenv` itself to the helper while it
/// runs; the previous handlers come back on drop.
pub struct Forward {
    old: Vec<(Signal, nix::sys::signal::SigAction)>,
}

static HELPER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let pid = HELPER.load(std::sync::atomic::Ordering::Relaxed);
    // SI_KERNEL: the terminal sent it to the whole foreground group, the command included;
    // but a hangup goes to the session leader alone, which may be us.
    if (code != libc::SI_KERNEL || sig == libc::SIGHUP) && pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Forward {
    pub fn install(pid: u32) -> Forward {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
        HELPER.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::SigAction(forward_handler),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            // SAFETY: the handler only loads an atomic and calls kill(2).
            if let Ok(prev) = unsafe { sigaction(sig, &action) } {
                old.push((sig, prev));
            }
        }
        Forward { old }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: puts back the action that was installed before ours.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, prev) };
        }
        HELPER.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Clear FD_CLOEXEC on `fd` in a freshly forked child.
///
/// # Safety
/// Call only between fork and exec; fcntl(2) is async-signal-safe.
pub unsafe fn inherit(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
