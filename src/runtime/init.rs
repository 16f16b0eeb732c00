//! The container's processes. PID 1 of the new PID namespace is cloned straight into its
//! namespaces by `devenv` itself when it has one thread, else by `devenv __init SPEC_FD ERR_FD
//! LOCK_FD` (the helper, which reads the plan from SPEC_FD and waits for PID 1, so that PID 1
//! dies with it). PID 1 builds the root, starts the command, reaps every process until the
//! command ends and then reports its status.
//!
//! Invariants: whoever clones PID 1 is single-threaded (clone(CLONE_NEWUSER) of a threaded
//! process could make only async-signal-safe calls in the child). PID 1 shares the memory of
//! the process that cloned it and leaves with `_exit`, never unwinding into its frames; the two
//! take turns on the heap (see [`start_pid1`]). ERR_FD carries one [`Message`] to `run`: the
//! command's status from PID 1, sent before its namespaces are torn down so that `devenv` need
//! not wait for the teardown, or a setup error, which PID 1 leaves in memory and the helper
//! sends on as JSON. Signals sent to `devenv` or the helper by a process are forwarded to PID 1
//! and from there to the command; those the terminal sent to the whole process group are not,
//! since the command got them too.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::ExitCode;

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
        error("`devenv __init` is internal to `devenv run` and `devenv shell`");
        return ExitCode::from(2);
    };
    if !fds.iter().all(|&fd| valid(fd))
        || spec_fd == err_fd
        || err_fd == lock_fd
        || spec_fd == lock_fd
    {
        error("`devenv __init` is internal to `devenv run` and `devenv shell`");
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

/// What `run` reads on ERR_FD: a tag byte, then the command's status as 4 bytes, little-endian
/// (from PID 1), or a setup error as JSON up to EOF (from the helper only). EOF with nothing:
/// PID 1 ended without a status; a setup error it left in memory ([`take_failure`]), or the
/// exit status of PID 1 or the helper says why.
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
    ///
    /// Makes no allocation before it has a status or EOF: PID 1 may share our heap until then
    /// (`start_pid1`), and sends nothing but a status; the JSON of an error comes from the
    /// `__init` helper, a process of its own.
    pub(super) fn read(from: OwnedFd) -> Message {
        let mut f = std::fs::File::from(from);
        let mut first = [0u8; 64];
        let mut len = 0;
        let mut buf = loop {
            if first[0] == TAG_STATUS && len >= 5 {
                let code = i32::from_le_bytes([first[1], first[2], first[3], first[4]]);
                return Message::Status(code);
            }
            match f.read(&mut first[len..]) {
                Ok(0) if len == 0 => return Message::Nothing,
                Ok(0) => break first[..len].to_vec(),
                Ok(n) if first[0] == TAG_STATUS => len += n,
                Ok(n) => break first[..len + n].to_vec(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Message::Error(RuntimeError::Helper {
                        message: format!("reading its report: {e}"),
                    });
                }
            }
        };
        if let Err(e) = f.read_to_end(&mut buf) {
            return Message::Error(RuntimeError::Helper {
                message: format!("reading its report: {e}"),
            });
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
        error(&e.to_string());
    }
}

/// The command's status, sent to `run` as soon as it is known: one write(2) from the stack
/// (PIPE_BUF makes it arrive whole), no allocation, as the reader may use the heap at once.
fn report_status(err: BorrowedFd<'_>, code: i32) {
    let c = code.to_le_bytes();
    let msg = [TAG_STATUS, c[0], c[1], c[2], c[3]];
    // SAFETY: writes `msg`, a live stack array, to an open descriptor.
    while unsafe { libc::write(err.as_raw_fd(), msg.as_ptr().cast(), msg.len()) } < 0
        && Errno::last() == Errno::EINTR
    {}
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
    let failure = Failure::default();
    let launched = block_signals().and_then(|_| {
        let take_tty = plan.spec.argv.is_empty() && foreground_tty();
        start_pid1(plan, err.as_raw_fd(), None, take_tty, None, &failure, false)
    });
    match launched {
        Ok(mut pid1) => {
            let code = pid1.supervise();
            drop(pid1);
            // PID 1 is gone, so its memory is ours alone again: pass its error on.
            if let Some(e) = take_failure(&failure) {
                report(&err, &e);
            }
            code
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
/// `err`: ERR_FD's write end, where PID 1 sends the command's status. `output`: where the
/// command's stdout and stderr go. `close_in_child`: the caller's read end of ERR_FD, which
/// PID 1 must not hold (its EOF and POLLERR say who is alive). A setup error goes into
/// `failure`, which the caller reads once PID 1 has exited. `linger`: after sending the status,
/// PID 1 waits for the caller's exit to kill it (parent-death signal) instead of exiting, for a
/// caller that exits right after the status and never waits for PID 1 (`run_last`): the
/// caller's exit then leaves their shared memory to PID 1 to unmap, and PID 1 unmaps it and
/// tears its namespaces down after the caller's exit has been reported (0.35 ms sooner).
///
/// PID 1 runs in the caller's memory (CLONE_VM, as a vfork child does, but alongside the
/// caller) on a stack of its own: nothing is copied at the clone, and none of the caller's
/// pages is copied again when either side first writes it (together a third of a millisecond
/// of every start). Both sides use one heap whose allocator believes it has one thread, so they
/// take turns: until PID 1 has sent the status or exited, the caller makes no allocation and
/// waits in [`Message::read`] or [`Pid1::supervise`]; once it has sent the status, PID 1 only
/// `_exit`s (or, with `linger`, waits to be killed). Each side has its own descriptors, signal dispositions, root and working directory
/// (no CLONE_FILES, CLONE_SIGHAND or CLONE_FS).
pub(super) fn start_pid1<'a>(
    plan: &'a Plan,
    err: RawFd,
    output: Option<BorrowedFd<'a>>,
    take_tty: bool,
    close_in_child: Option<RawFd>,
    failure: &'a Failure,
    linger: bool,
) -> Result<Pid1<'a>, RuntimeError> {
    let stack = Stack::new(PID1_STACK)?;
    let flags = setup::namespace_flags(plan);
    let body: Box<Body<'a>> = Box::new(Box::new(move || {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(fd) = close_in_child {
                // SAFETY: our copy of the caller's read end, owned by nobody in this process.
                unsafe { libc::close(fd) };
            }
            if let Some(out) = output {
                redirect_output(out);
            }
            // SAFETY: PID 1's copy of the caller's open write end, which PID 1 never closes.
            let err = unsafe { BorrowedFd::borrow_raw(err) };
            match pid1(plan, err, take_tty) {
                Ok(code) => {
                    report_status(err, code);
                    if linger {
                        // Until the parent's exit: its parent-death signal kills us, and, should
                        // that have been lost (a parent that died mid-setup, between our
                        // prctl and its exit), the pipe's read end closing wakes the poll.
                        let mut fds = [libc::pollfd {
                            fd: err.as_raw_fd(),
                            events: 0,
                            revents: 0,
                        }];
                        // SAFETY: poll(2) on one valid pollfd on our stack; no handler runs.
                        while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } <= 0
                            || fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL)
                                == 0
                        {}
                    }
                    code
                }
                Err(e) => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    SETUP_FAILED
                }
            }
        }))
        .unwrap_or(SETUP_FAILED);
        // SAFETY: _exit(2) ends PID 1 without running the caller's exit work; after a status
        // it is all PID 1 does, as the caller may be using the heap again.
        unsafe { libc::_exit(code) }
    }));
    extern "C" fn enter(body: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `body` is the Box<Body> the Pid1 handle keeps alive until PID 1 has exited.
        let body = unsafe { &mut *body.cast::<Body<'_>>() };
        body()
    }
    let body = Box::into_raw(body);
    // SAFETY: PID 1 runs `enter` on `stack`, both kept by the returned handle until PID 1 has
    // exited (Pid1's Drop waits; `leave` lets the process's exit end both); it never returns
    // into our frames. What it borrows ('a) outlives the handle. The caller has one thread.
    let pid = unsafe {
        libc::clone(
            enter,
            stack.top().cast(),
            flags.bits() | libc::CLONE_VM | libc::SIGCHLD,
            body.cast(),
        )
    };
    // SAFETY: from Box::into_raw above; PID 1, if it exists, uses it through the same pointer.
    let body = unsafe { Box::from_raw(body) };
    if pid < 0 {
        return Err(RuntimeError::user_namespace(Errno::last()));
    }
    // From here until PID 1 has sent the status or exited, this thread leaves the heap alone.
    super::alloc_guard::open();
    Ok(Pid1 {
        pid: Pid::from_raw(pid),
        reaped: false,
        linger,
        _stack: stack,
        _body: body,
    })
}

/// What PID 1 runs: the closure [`start_pid1`] makes; boxed twice for a thin pointer.
type Body<'a> = Box<dyn FnMut() -> libc::c_int + 'a>;

/// Where PID 1 leaves a setup error for its parent, which shares its memory.
pub(super) type Failure = std::sync::Mutex<Option<RuntimeError>>;

/// The error PID 1 left in `failure`, once it has exited.
pub(super) fn take_failure(failure: &Failure) -> Option<RuntimeError> {
    failure.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// PID 1, running on our memory. Dropping the handle waits for PID 1 to exit, since its stack
/// and closure are freed with the handle; [`Pid1::leave`] skips the wait where the process
/// itself exits next.
pub(super) struct Pid1<'a> {
    pid: Pid,
    reaped: bool,
    /// PID 1 waits for our exit after the status ([`start_pid1`]).
    linger: bool,
    _stack: Stack,
    _body: Box<Body<'a>>,
}

impl Pid1<'_> {
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// PID 1's exit status, 128+signal when killed.
    pub(super) fn wait(&mut self) -> Result<i32, RuntimeError> {
        let code = super::wait_for(self.pid)?;
        self.mark_reaped();
        Ok(code)
    }

    /// Wait for PID 1, forwarding signals ([`supervise`]); its exit status.
    fn supervise(&mut self) -> i32 {
        let code = supervise(self.pid, false);
        self.mark_reaped();
        code
    }

    /// PID 1 is gone, and with it every process of its PID namespace (the kernel kills and
    /// reaps them before PID 1's exit completes): our memory may be dumpable again (`pid1`
    /// made it not), so that the next PID 1 can open its own /proc files to map its ids.
    fn mark_reaped(&mut self) {
        super::alloc_guard::close();
        self.reaped = true;
        let _ = nix::sys::prctl::set_dumpable(true);
    }

    /// Done with PID 1: when it has not been waited for, it may still be tearing its
    /// namespaces down, which the caller's exit, coming next, does not wait for (`run_last`);
    /// its stack and closure are then left for that exit to take.
    pub(super) fn leave(self) {
        if !self.reaped {
            std::mem::forget(self);
        }
    }
}

impl Drop for Pid1<'_> {
    fn drop(&mut self) {
        if !self.reaped {
            if self.linger {
                // It would wait for our exit while we wait for its.
                let _ = kill(self.pid, Signal::SIGKILL);
            }
            if super::wait_for(self.pid).is_ok() {
                self.mark_reaped();
            }
        }
    }
}

/// PID 1's stack, a mapping of its own inside the memory it shares with its parent.
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

    /// The stack's top, 16-byte aligned.
    fn top(&self) -> *mut u8 {
        // SAFETY: one past the end of the mapping, which is `len` bytes long.
        let end = unsafe { self.base.as_ptr().cast::<u8>().add(self.len) };
        end.wrapping_sub(end as usize % 16)
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
    if let Ok(null) = fs_err::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null);
    }
    let _ = nix::unistd::dup2_stdout(out);
    let _ = nix::unistd::dup2_stderr(out);
}

/// A note from PID 1 or the helper, worded as `ui` words one; none with `-q`. The only places
/// in the runtime that print (clippy's disallowed-macros keeps it so).
fn note(plan: &Plan, text: &str) {
    if !plan.spec.quiet {
        #[allow(clippy::disallowed_macros)]
        {
            eprintln!("note: {text}");
        }
    }
}

/// An error from PID 1 or the helper: shown even with `-q`.
fn error(text: &str) {
    #[allow(clippy::disallowed_macros)]
    {
        eprintln!("error: {text}");
    }
}

/// Whether the process holding ERR_FD's read end (`devenv`) is gone: a pipe's write end polls
/// POLLERR once no reader is left.
fn reader_gone(err: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(err, PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|_| {
        fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
    })
}

/// PID 1: build the root, start the command, reap until it ends; the command's status.
fn pid1(plan: &Plan, err: BorrowedFd<'_>, take_tty: bool) -> Result<i32, RuntimeError> {
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
    let console = fs_err::read_link("/proc/self/fd/0").ok().filter(|p| {
        p.starts_with("/dev/") && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
    });
    let fs = setup::build_root(&mut sys, plan, console.as_deref())?;
    let accounts = matches!(fs, RootFs::Overlay { accounts: true });
    let argv = setup::finish(&mut sys, plan, accounts)?;
    if plan.force_flatten {
        note(
            plan,
            "DEVENV_FLATTEN=1; using a flattened copy of the image",
        );
    } else if let RootFs::Flattened { fs, .. } = &fs {
        note(
            plan,
            &format!("overlay unavailable on {fs}; using a flattened copy of the image"),
        );
    }
    // Ctrl-C or a kill while we were building the root: do not start the command at all.
    if let Some(sig) = pending_stop() {
        return Ok(128 + sig);
    }
    // A directory on stdin, stdout or stderr is a handle on the host's tree (openat(fd, "..")).
    for fd in 0..3 {
        if replace_directory(fd) {
            note(
                plan,
                &format!("descriptor {fd} is a directory on the host; the command gets /dev/null"),
            );
        }
    }
    // We share the memory of devenv (or the helper), a process in the host's namespaces: the
    // container's processes must not reach it through us. A root inside holds every capability
    // we hold, which is what ptrace(2) and /proc/1/mem ask of a same-uid process that is
    // dumpable; a non-dumpable one also takes CAP_SYS_PTRACE in the host's user namespace, where
    // our memory was made. Our caller makes it dumpable again once we are gone (`Pid1::wait`).
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| RuntimeError::sys("prctl(PR_SET_DUMPABLE)", e))?;
    let _ = err; // kept open (close-on-exec) until the status is sent
    let env = setup::environment(plan);
    let first_closed = 3u32.saturating_add(plan.spec.sandbox.preserve_fds);
    let spawned = if take_tty {
        let mut cmd = Command::new(&argv[0]);
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (close_range or fcntl, sigprocmask, setpgid, signal, tcsetpgrp, getpid).
        unsafe {
            cmd.pre_exec(move || {
                close_inherited(first_closed);
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
        let listen_pid = plan.spec.sandbox.listen_pid;
        spawn(&program, &argv, &env, first_closed, listen_pid).map_err(std::io::Error::from)
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
            error(&format!("{}: {what}", argv[0]));
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
///
/// The exec closes every descriptor from `first_closed` up: what devenv's parent
/// left open without close-on-exec (a directory among them is a way onto the host's whole
/// tree) must not reach the command. With `listen_pid`, `LISTEN_PID` is set to the command's
/// own pid, which only the child knows.
fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    first_closed: u32,
    listen_pid: bool,
) -> Result<Pid, Errno> {
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
    let argv = ptrs(&args);
    // "LISTEN_PID=" and room for the digits of a pid and a NUL, filled in by the child.
    let mut listen = [0u8; 11 + 12];
    listen[..11].copy_from_slice(b"LISTEN_PID=");
    let listen_at = listen.as_mut_ptr();
    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|s| s.as_ptr()).collect();
    if listen_pid {
        envp.push(listen_at.cast_const().cast());
    }
    envp.push(std::ptr::null());
    let empty = libc_sigset_empty();
    let exec_errno = AtomicI32::new(0);
    let mut stack = Stack::new(SPAWN_STACK).map_err(|_| Errno::ENOMEM)?;
    let body = Box::new(|| {
        // SAFETY: the child runs on its own stack while PID 1 is suspended (CLONE_VFORK) and
        // makes only async-signal-safe calls on data built before the clone: every pointer
        // (path, the NULL-terminated argv and envp arrays, the empty set) outlives it, and the
        // one it writes (`listen`, 23 bytes: 11 of name, at most 10 digits and a NUL) is read
        // by nobody else until the child has exec'd.
        unsafe {
            close_inherited(first_closed);
            if listen_pid {
                write_decimal(listen_at.add(11), libc::getpid() as u32);
            }
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

/// Mark every descriptor from `first` up close-on-exec, so the exec that follows closes them
/// (close_range(2) with CLOSE_RANGE_CLOEXEC, Linux 5.11; one fcntl(2) each up to the
/// descriptor limit before that). Marked rather than closed: std's spawn reports a failed exec
/// through a close-on-exec pipe of its own, which must stay open until then. Async-signal-safe:
/// for a child between fork and exec.
fn close_inherited(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2; // linux/close_range.h
    // SAFETY: changes descriptor flags only; a range with closed descriptors is no error.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) } == 0 {
        return;
    }
    // SAFETY: rlim is plain data that getrlimit(2) fills.
    let mut rlim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } == 0 {
        rlim.rlim_cur.min(1 << 20) as u32
    } else {
        1 << 16
    };
    for fd in first..limit {
        // SAFETY: F_SETFD on a descriptor number; a closed one fails with EBADF.
        unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Write `n` in decimal and a NUL at `at`: at most 11 bytes. Async-signal-safe.
///
/// # Safety
/// `at` must be valid for 11 bytes of writes.
unsafe fn write_decimal(at: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: i < len <= 10, within the 11 bytes the caller vouches for.
        unsafe { *at.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: len <= 10.
    unsafe { *at.add(len) = 0 };
}

/// When descriptor `fd` is a directory, put /dev/null in its place; whether it did.
fn replace_directory(fd: libc::c_int) -> bool {
    // SAFETY: st is plain data that fstat(2) fills; a closed fd fails with EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return false;
    }
    // SAFETY: open(2) of a constant path; dup2(2) onto the directory's number closes it.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, fd) < 0 {
            // Leave no way back to the directory: the descriptor goes, whatever it was for.
            libc::close(fd);
        }
        if null >= 0 {
            libc::close(null);
        }
    }
    true
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
    old: [Option<nix::sys::signal::SigAction>; 4],
}

const FORWARDED_BY_DEVENV: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

static HELPER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let pid = HELPER.load(std::sync::atomic::Ordering::Relaxed);
    // SI_KERNEL: the terminal sent it to the whole foreground group, the command included;
    // but a hangup goes to the session leader alone, which may be us.
    if (code != libc::SI_KERNEL || sig == libc::SIGHUP) && pid > 0 {
        // errno is shared with PID 1 (same thread-local storage): a failed kill must not
        // change it under PID 1's feet.
        let errno = Errno::last_raw();
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
        Errno::set_raw(errno);
    }
}

impl Forward {
    /// Makes no allocation: PID 1 may be using the heap meanwhile.
    pub fn install(pid: u32) -> Forward {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
        HELPER.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::SigAction(forward_handler),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only loads an atomic and calls kill(2).
        Forward {
            old: FORWARDED_BY_DEVENV.map(|sig| unsafe { sigaction(sig, &action) }.ok()),
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for (sig, prev) in FORWARDED_BY_DEVENV.iter().zip(&self.old) {
            if let Some(prev) = prev {
                // SAFETY: puts back the action that was installed before ours.
                let _ = unsafe { nix::sys::signal::sigaction(*sig, prev) };
            }
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
