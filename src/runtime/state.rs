//! Per-entry state under the env's state directory: `run/<name>/` holds the overlay's upper and
//! work directories, the root mount point and short links to the layers; `run/<name>.lock` is
//! held (flock) for as long as the entry lives, by `run` and by the helper it starts. A bare
//! entry's directory is made by the helper, in a tmpfs private to the container where it can,
//! so on the store's disk such an entry is its lock file alone.
//!
//! Invariants: a lock file is locked before it gets its final name and before its directory
//! exists, so an unlocked lock file or a directory without one is a dead entry's leftover and
//! the next entry removes it. A live entry's files are never touched by another.

// std::fs here on purpose: this module holds the entry locks as std files (Flock) and cleans up where a failure is only skipped.
#![allow(clippy::disallowed_methods)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::RuntimeError;
use super::fsutil::remove_tree;

/// The lock every scratch entry of an env holds shared: such an entry has no file of its own
/// on the disk, and `devenv gc` sees the env running while anyone holds this.
const SCRATCH_LOCK: &str = "scratch.lock";

/// One container entry's directories, removed when dropped.
pub struct Entry {
    pub dir: PathBuf,
    /// The entry's own lock file, removed with it; `None` for a scratch entry.
    lock_path: Option<PathBuf>,
    lock: Flock<std::fs::File>,
}

/// Whether tmpfs stores `user.*` extended attributes (Linux 6.6 and later), which an overlay
/// upper directory in a tmpfs needs; from uname(2) alone, so a warm start reads no file for it.
pub fn tmpfs_user_xattrs() -> bool {
    // SAFETY: utsname is plain data that uname(2) fills.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates the release field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    kernel_at_least(&release.to_string_lossy(), (6, 6))
}

/// "6.18.44-fc" >= (6, 6).
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

fn io_err(path: &Path, e: io::Error) -> RuntimeError {
    RuntimeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Entry {
    /// Clean up dead entries, then create and lock a fresh one with `l/<i>` linking `lowers[i]`
    /// and `upper` a fresh directory, or a link to the persistent `upper` given (removing the
    /// entry removes the link, never what it points to).
    pub fn create(
        state_dir: &Path,
        lowers: &[PathBuf],
        upper: Option<&Path>,
    ) -> Result<Entry, RuntimeError> {
        let entry = Entry::create_bare(state_dir)?;
        fs_err::create_dir(&entry.dir).map_err(|e| io_err(&entry.dir, e))?;
        entry.fill(lowers, upper)?;
        Ok(entry)
    }

    /// Clean up dead entries, then create and lock a fresh entry whose directory does not
    /// exist yet: the helper makes it and the overlay's directories, in a tmpfs over `run/`
    /// that only the container sees where it can (see `setup`), on the disk otherwise. A warm
    /// start then writes to the store's disk only the lock file's creation, rename and removal.
    /// A scratch entry: PID 1 makes its directories in a tmpfs over `run/` that only the
    /// container sees, so on the disk it is nothing but a shared lock on `run/scratch.lock`
    /// (a warm start writes nothing to the store). The lock file is made once and kept.
    pub fn scratch(state_dir: &Path) -> Result<Entry, RuntimeError> {
        let run = state_dir.join("run");
        let path = run.join(SCRATCH_LOCK);
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs_err::create_dir_all(&run).map_err(|e| io_err(&run, e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| io_err(&path, e))?;
        // Blocking: only `devenv gc` takes it exclusively, for the moment of a check.
        let lock = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| io_err(&path, io::Error::from(e)))?;
        Ok(Entry {
            dir: run.join(format!("{}-scratch", std::process::id())),
            lock_path: None,
            lock,
        })
    }

    pub fn create_bare(state_dir: &Path) -> Result<Entry, RuntimeError> {
        let run = state_dir.join("run");
        fs_err::create_dir_all(&run).map_err(|e| io_err(&run, e))?;
        clean_dead(&run);
        let mut last = None;
        for attempt in 0..8 {
            match try_create(&run, attempt) {
                Ok(entry) => return Ok(entry),
                Err(e) => last = Some(e),
            }
        }
        Err(io_err(
            &run,
            last.unwrap_or_else(|| io::Error::other("no attempt made")),
        ))
    }

    fn fill(&self, lowers: &[PathBuf], upper: Option<&Path>) -> Result<(), RuntimeError> {
        for d in ["work", "root", "l"] {
            let p = self.dir.join(d);
            fs_err::create_dir(&p).map_err(|e| io_err(&p, e))?;
        }
        let link = self.dir.join("upper");
        match upper {
            // overlayfs resolves upperdir with LOOKUP_FOLLOW: the link is followed.
            Some(u) => {
                let target = std::path::absolute(u).map_err(|e| io_err(u, e))?;
                fs_err::os::unix::fs::symlink(&target, &link).map_err(|e| io_err(&link, e))?;
            }
            None => fs_err::create_dir(&link).map_err(|e| io_err(&link, e))?,
        }
        for (i, l) in lowers.iter().enumerate() {
            let link = self.dir.join("l").join(i.to_string());
            let target = std::path::absolute(l).map_err(|e| io_err(l, e))?;
            fs_err::os::unix::fs::symlink(&target, &link).map_err(|e| io_err(&link, e))?;
        }
        Ok(())
    }

    /// The lock, for the helper to inherit so a killed `devenv` does not free a live entry.
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        self.lock.as_fd()
    }
}

fn try_create(run: &Path, attempt: u32) -> io::Result<Entry> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("{}-{nanos:08x}{attempt}", std::process::id());
    let tmp = run.join(format!(".{name}.lock.tmp"));
    let lock_path = run.join(format!("{name}.lock"));
    let f = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?
        .into_parts()
        .0;
    let lock =
        Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| io::Error::from(e))?;
    // A cleaner may have taken and unlinked the temporary before we locked it: then this fails.
    fs_err::rename(&tmp, &lock_path)?;
    let dir = run.join(&name);
    Ok(Entry {
        dir,
        lock_path: Some(lock_path),
        lock,
    })
}

impl Drop for Entry {
    fn drop(&mut self) {
        // A scratch entry left nothing on the disk; its shared lock goes with `lock`.
        let Some(lock_path) = &self.lock_path else {
            return;
        };
        // Still holding the lock: nobody else can be cleaning this entry. A bare entry's
        // directory is often not there at all (it lived in the container's tmpfs).
        if let Err(e) = remove_tree(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_file(lock_path);
    }
}

/// Remove entries whose lock nobody holds. Errors are logged, not fatal: a leftover costs
/// disk space, not correctness.
fn clean_dead(run: &Path) {
    let Ok(rd) = std::fs::read_dir(run) else {
        return;
    };
    let names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for name in &names {
        let path = run.join(name);
        if name == SCRATCH_LOCK {
            continue; // shared by every scratch entry, kept
        }
        if let Some(base) = name.strip_suffix(".lock") {
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            if let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                tracing::debug!("removing dead entry {base}");
                if let Err(e) = remove_tree(&run.join(base)) {
                    tracing::warn!("{e}");
                }
                let _ = std::fs::remove_file(&path);
            }
        } else if name.ends_with(".lock.tmp") {
            let unlocked = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .is_ok_and(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok());
            if unlocked {
                let _ = std::fs::remove_file(&path);
            }
        } else if !names.contains(&format!("{name}.lock"))
            && !run.join(format!("{name}.lock")).exists()
        {
            // A directory whose lock is gone: a cleaner died halfway.
            if let Err(e) = remove_tree(&path) {
                tracing::warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_has_links_and_is_removed_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        fs_err::create_dir(&layer).unwrap();
        let e = Entry::create(&t.path().join("state"), std::slice::from_ref(&layer), None).unwrap();
        assert_eq!(fs_err::read_link(e.dir.join("l/0")).unwrap(), layer);
        assert!(e.dir.join("upper").is_dir() && e.dir.join("work").is_dir());
        let dir = e.dir.clone();
        drop(e);
        assert!(!dir.exists());
        assert_eq!(
            fs_err::read_dir(t.path().join("state/run"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn bare_entry_is_a_lock_alone_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let e = Entry::create_bare(&state).unwrap();
        assert!(!e.dir.exists(), "the helper makes it");
        assert!(crate::store::gc::running(t.path()), "gc sees it live");
        // The helper's fallback on the disk.
        fs_err::create_dir_all(e.dir.join("upper/etc")).unwrap();
        let dir = e.dir.clone();
        drop(e);
        assert!(!dir.exists());
        assert!(!crate::store::gc::running(t.path()));
        assert_eq!(fs_err::read_dir(state.join("run")).unwrap().count(), 0);
        drop(Entry::create_bare(&state).unwrap());
        assert_eq!(fs_err::read_dir(state.join("run")).unwrap().count(), 0);
    }

    #[test]
    fn scratch_entries_share_one_lock_that_gc_sees_and_cleaning_keeps() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let a = Entry::scratch(&state).unwrap();
        let b = Entry::scratch(&state).unwrap();
        assert!(!a.dir.exists(), "PID 1 makes it, in its tmpfs");
        assert!(crate::store::gc::running(t.path()), "gc sees them live");
        drop(a);
        assert!(crate::store::gc::running(t.path()), "one is still live");
        drop(Entry::create_bare(&state).unwrap()); // cleans dead entries, not this
        drop(b);
        assert!(!crate::store::gc::running(t.path()));
        let left: Vec<_> = fs_err::read_dir(state.join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [SCRATCH_LOCK], "the lock file is kept, nothing else");
    }

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.44-fc-v657", (6, 6)));
        assert!(kernel_at_least("6.6.0", (6, 6)));
        assert!(!kernel_at_least("6.5.13-generic", (6, 6)));
        assert!(!kernel_at_least("5.15.0-91-generic", (6, 6)));
        assert!(kernel_at_least("7.0", (6, 6)));
        assert!(!kernel_at_least("garbage", (6, 6)));
    }

    #[test]
    fn live_entry_survives_cleaning_dead_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let live = Entry::create(&state, &[], None).unwrap();
        // A crashed entry: its lock file exists but nobody holds it; a locked-down work dir.
        let run = state.join("run");
        fs_err::write(run.join("dead.lock"), "").unwrap();
        fs_err::create_dir_all(run.join("dead/work/work")).unwrap();
        std::fs::set_permissions(
            run.join("dead/work/work"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
        fs_err::create_dir_all(run.join("orphan")).unwrap();
        let second = Entry::create(&state, &[], None).unwrap();
        assert!(live.dir.is_dir(), "a live entry is never cleaned");
        assert!(!run.join("dead").exists() && !run.join("dead.lock").exists());
        assert!(!run.join("orphan").exists());
        assert_ne!(live.dir, second.dir);
    }
}
