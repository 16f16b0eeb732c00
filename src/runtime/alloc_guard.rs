//! The rule PID 1's `CLONE_VM` start rests on, enforced in debug builds (the ones `cargo test`
//! and the end-to-end suite run): while PID 1 runs in devenv's memory, the thread that cloned
//! it allocates nothing, since both would use one heap whose allocator believes it has one
//! thread (see `init::start_pid1`). The global allocator of a debug build aborts with a message
//! when that thread allocates, reallocates or frees inside the window; PID 1 itself (another
//! task on the same memory, another tid) allocates freely.
//!
//! The window opens when the clone has returned in the parent ([`open`]) and closes once PID 1
//! has sent the command's status or has exited ([`close`]). A release build has the system
//! allocator and both calls are empty.

#[cfg(debug_assertions)]
mod guarded {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicI32, Ordering};

    /// The tid of the thread that must not allocate; 0: no window open.
    static WINDOW: AtomicI32 = AtomicI32::new(0);

    pub struct Guarded;

    fn check() {
        let tid = WINDOW.load(Ordering::Relaxed);
        // SAFETY: gettid(2) cannot fail.
        if tid != 0 && unsafe { libc::gettid() } == tid {
            let msg = b"devenv: internal error: the heap was used while PID 1 runs in this \
                        process's memory (runtime::alloc_guard)\n";
            // SAFETY: write(2) of a static buffer, then abort(3): no allocation on the way.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::abort();
            }
        }
    }

    // SAFETY: every call is passed to the system allocator unchanged, after a check that only
    // reads an atomic (and aborts).
    unsafe impl GlobalAlloc for Guarded {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            check();
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            check();
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            check();
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            check();
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Guarded = Guarded;

    pub fn open() {
        // SAFETY: gettid(2) cannot fail.
        WINDOW.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    }

    pub fn close() {
        WINDOW.store(0, Ordering::Relaxed);
    }
}

/// PID 1 now runs in our memory: this thread must not use the heap until [`close`].
pub fn open() {
    #[cfg(debug_assertions)]
    guarded::open();
}

/// PID 1 has sent the status or exited: the heap is ours again.
pub fn close() {
    #[cfg(debug_assertions)]
    guarded::close();
}

/// Debug builds: whether to allocate inside the window on purpose, so the end-to-end suite can
/// see the guard abort (`DEVENV_TEST_ALLOC_IN_WINDOW=1`). Read before the window opens.
pub fn test_alloc_in_window() -> bool {
    cfg!(debug_assertions) && std::env::var_os("DEVENV_TEST_ALLOC_IN_WINDOW").is_some()
}
