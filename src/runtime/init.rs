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
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp};

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

/// The helper process (`devenv __init`, where `devenv` has threads): starts PID 1 and waits for
/// it, forwarding signals. Its status is PID 1's, which is the command's; `run` reads the
/// command's status from ERR_FD first and needs this only when PID 1 died without reporting.
fn helper(plan: &Plan, err: OwnedFd) -> i32 {
    // With `devenv` gone nobody forwards anything: die with it, and PID 1 with us.
    let parent = nix::unistd::getppid();
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        return SETUP_FAILED;
    }
    let launched = block_signals().and_then(|_| {
        let take_tty = plan.argv.is_empty() && foreground_tty();
        start_pid1(plan, &err, None, take_tty, None)
    });
    match launched {
        Ok(pid1) => {
            // PID 1 alone holds ERR_FD now: its EOF is PID 1's end.
            drop(err);
            supervise(pid1, false)
        }
        Err(e) => {
            report(&err, &e);
            SETUP_FAILED
        }
    }
}

/// Block the signals PID 1 waits for, in the process that is about to clone it, so that none
/// slips past its sigwaitinfo loop; the previous mask, to restore after the clone.
pub(super) fn block_signals() -> Result<SigSet, RuntimeError> {
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited_set()), Some(&mut old))
        .map_err(|e| RuntimeError::sys("blocking signals", e))?;
    Ok(old)
}

/// Put back the mask [`block_signals`] returned.
pub(super) fn restore_signals(old: &SigSet) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None);
}

/// clone(2) PID 1 straight into new user, mount, PID, IPC and UTS namespaces (and network, for
/// `network = "none"`): no helper process in between. clone, unlike unshare, accepts
/// CLONE_NEWUSER from any process, but the child of a threaded one could only make
/// async-signal-safe calls: callers have one thread (`run` checks, `__init` is fresh).
/// `output`: where the command's stdout and stderr go. `close_in_child`: the caller's read end
/// of ERR_FD, which PID 1 must not hold (its EOF and POLLERR say who is alive).
pub(super) fn start_pid1(
    plan: &Plan,
    err: &OwnedFd,
    output: Option<BorrowedFd<'_>>,
    take_tty: bool,
    close_in_child: Option<RawFd>,
) -> Result<Pid, RuntimeError> {
    let mut stack = Stack::new(PID1_STACK)?;
    let flags = setup::namespace_flags(plan);
    let body = Box::new(|| {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(fd) = close_in_child {
                // SAFETY: our copy of the caller's read end, owned by nobody in this process.
                unsafe { libc::close(fd) };
            }
            if let Some(out) = output {
                redirect_output(out);
            }
            match pid1(plan, err, take_tty) {
                Ok(code) => {
                    report_status(err, code);
                    code
                }
                Err(e) => {
                    report(err, &e);
                    SETUP_FAILED
                }
            }
        }))
        .unwrap_or(SETUP_FAILED);
        // SAFETY: _exit(2) ends the clone without running the parent's exit work.
        unsafe { libc::_exit(code) }
    });
    // SAFETY: no CLONE_VM: the child runs on its own copy of our memory (with `stack` as its
    // stack) and never returns into our frames; the caller has a single thread.
    unsafe { nix::sched::clone(body, stack.as_mut_slice(), flags, Some(libc::SIGCHLD)) }
        .map_err(RuntimeError::user_namespace)
}

/// PID 1's stack: it runs on its own copy of our memory, on this mapping, which the parent
/// unmaps right after the clone.
const PID1_STACK: usize = 4 << 20;

struct Stack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl Stack {
    /// An anonymous mapping with a guard page at its low end.
    fn new(len: usize) -> Result<Stack, RuntimeError> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
        let size = std::num::NonZeroUsize::new(len).unwrap_or(std::num::NonZeroUsize::MIN);
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK;
        // SAFETY: a fresh private mapping that nothing else refers to.
        let base = unsafe { mmap_anonymous(None, size, prot, flags) }
            .map_err(|e| RuntimeError::sys("mapping a stack for PID 1", e))?;
        // SAFETY: the lowest page of the mapping just made; an overflow faults there.
        unsafe { mprotect(base, 4096, ProtFlags::PROT_NONE) }
            .map_err(|e| RuntimeError::sys("guarding PID 1's stack", e))?;
        Ok(Stack { base, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, ours alone while `self` lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast(), self.len) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the child has its own copy.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

/// stdin from /dev/null, stdout and stderr to `out` (a build step's log).
fn redirect_output(out: BorrowedFd<'_>) {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null);
    }
    let _ = nix::unistd::dup2_stdout(out);
    let _ = nix::unistd::dup2_stderr(out);
}

/// Whether the process holding ERR_FD's read end (`devenv`) is gone: a pipe's write end polls
/// POLLERR once no reader is left.
fn reader_gone(err: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(err.as_fd(), PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|_| {
        fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
    })
}

/// PID 1: build the root, start the command, reap until it ends; the command's status.
fn pid1(plan: &Plan, err: &OwnedFd, take_tty: bool) -> Result<i32, RuntimeError> {
    // A `devenv` killed with SIGKILL cannot forward anything: PID 1 dies with its parent, and
    // with it the whole PID namespace, so no container outlives devenv (and its entry lock
    // frees). prctl(2): the signal must be set in the child; then make sure the parent did not
    // die before it took effect (getppid says nothing across the PID namespace).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| RuntimeError::sys("prctl(PR_SET_PDEATHSIG)", e))?;
    if reader_gone(err) {
        return Ok(SETUP_FAILED);
    }
    let mut sys = Real;
    setup::map_ids(&mut sys, plan)?;
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
    let env = setup::environment(plan);
    let spawned = if take_tty {
        let mut cmd = Command::new(&argv[0]);
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (sigprocmask, setpgid, signal, tcsetpgrp, getpid).
        unsafe {
            cmd.pre_exec(|| {
                let empty = libc_sigset_empty();
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                // setpgid(2) + tcsetpgrp(3): the shell leads the terminal's foreground group,
                // so Ctrl-C, Ctrl-Z and job control reach it and not us.
                libc::setpgid(0, 0);
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                Ok(())
            })
        };
        cmd.args(&argv[1..]).env_clear().envs(env);
        cmd.spawn().map(|c| Pid::from_raw(c.id() as i32))
    } else {
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let program = setup::find_program(&argv[0], path_var.unwrap_or(""))
            .unwrap_or_else(|| argv[0].clone().into());
        spawn(&program, &argv, &env).map_err(std::io::Error::from)
    };
    // From here on errors are the command's, printed by us like the rest of devenv.
    match spawned {
        Ok(child) => Ok(supervise(child, true)),
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

/// Start `program` (a path: the caller searched PATH) with `argv` and `env`, as the child of a
/// vfork-style clone: it borrows PID 1's memory until its execve, so nothing is copied. It
/// puts SIGPIPE back to its default (Rust ignores it), empties the signal mask (PID 1 blocks
/// what it waits for) and execs; other dispositions are inherited, as exec would (`nohup devenv
/// run …` keeps SIGHUP ignored). glibc's posix_spawn does the same but also queries and resets
/// every signal's handler (128 system calls, 0.05 ms here), since a handler running in the
/// child would run on the parent's memory: PID 1 installs no handler (it waits with
/// sigwaitinfo), and the only ones it inherits, Rust's SIGSEGV/SIGBUS stack guard, answer
/// faults of the child's own making, not signals sent to it.
fn spawn(program: &Path, argv: &[String], env: &[(String, String)]) -> Result<Pid, Errno> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicI32, Ordering};
    let c = |b: &[u8]| CString::new(b).map_err(|_| Errno::EINVAL);
    let path = c(program.as_os_str().as_bytes())?;
    let args = argv
        .iter()
        .map(|a| c(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let vars = env
        .iter()
        .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (ptrs(&args), ptrs(&vars));
    let empty = libc_sigset_empty();
    let exec_errno = AtomicI32::new(0);
    let mut stack = Stack::new(SPAWN_STACK).map_err(|_| Errno::ENOMEM)?;
    let body = Box::new(|| {
        // SAFETY: the child runs on its own stack while PID 1 is suspended (CLONE_VFORK) and
        // makes only async-signal-safe calls on data built before the clone: every pointer
        // (path, the NULL-terminated argv and envp arrays, the empty set) outlives it.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            exec_errno.store(*libc::__errno_location(), Ordering::Relaxed);
            libc::_exit(127)
        }
    });
    let flags = nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK;
    // SAFETY: CLONE_VM|CLONE_VFORK is vfork(2) on a stack of the child's own: we resume only
    // once it has exec'd or exited, and it never returns into our frames.
    let pid = unsafe { nix::sched::clone(body, stack.as_mut_slice(), flags, Some(libc::SIGCHLD)) }?;
    match exec_errno.load(Ordering::Relaxed) {
        0 => Ok(pid),
        errno => {
            let _ = waitpid(pid, None);
            Err(Errno::from_raw(errno))
        }
    }
}

/// The spawning child's stack: a few frames of libc before execve.
const SPAWN_STACK: usize = 64 << 10;

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
