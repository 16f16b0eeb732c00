//! devenv's entry point: the C runtime's `main`, not std's.
//!
//! std's start-up (`fn main`) makes, before the first line of ours, a dozen system calls a warm
//! `devenv run` does not need: it reads /proc/self/maps to find the main thread's stack for a
//! stack-overflow handler, maps an alternate signal stack and installs SIGSEGV and SIGBUS
//! handlers (0.07 ms of a 3 ms start). Here we do only what devenv relies on: descriptors 0-2
//! open (a closed one would be reused by the next file we open), SIGPIPE ignored (a write to a
//! closed pipe is an error, not death), stdout flushed at the end. What is given up: on a stack
//! overflow the process dies of SIGSEGV without std's one-line message, and a panic names its
//! thread `<unnamed>` instead of `main`; both only in a bug. (A test build keeps std's `main`,
//! the harness's.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    stdio_open();
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = devenv::main();
    let _ = std::io::Write::flush(&mut std::io::stdout());
    libc::c_int::from(code.code())
}

/// /dev/null on any of descriptors 0-2 that is closed, as std's start-up does.
#[cfg(not(test))]
fn stdio_open() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd; a zero timeout only polls.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            // SAFETY: a constant C string; the lowest free descriptor is the closed one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
