//! The content-addressed store shared by every project.
//!
//! ```text
//! blobs/sha256/<hex>     compressed blobs and configs, verified before they become visible
//! layers/<hex>/          one unpacked layer (named by its diff_id), overlay-ready
//! images/manifests/<hex> manifest and index bytes by digest
//! images/tags/<registry>/<repository>/<tag>   the digest a tag last resolved to
//! envs/<env-id>/         per project: home/, state
//! tmp/                   staging; everything enters the store by rename
//! locks/                 flock files: one per layer being fetched, so it is fetched once
//! ```
//!
//! Invariants: nothing half-written is ever visible under a final name (files and directories
//! are built in `tmp/` and renamed into place); a final name, once there, is trusted; paths come
//! only from [`Digest`]s and parsed [`ImageRef`]s, never from raw strings a registry sent.

pub mod gc;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::reference::{Digest, ImageRef};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot find a home for the store: set DEVENV_HOME, XDG_CACHE_HOME or HOME")]
    NoRoot,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$DEVENV_HOME`, else in a Slurm job node-local scratch (`$SLURM_TMPDIR`, `$TMPDIR` or
    /// `/tmp`, then `devenv-<uid>`: a cluster home is often NFS, where overlay's user xattrs
    /// do not work), else `$XDG_CACHE_HOME/devenv`, else `~/.cache/devenv`.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("DEVENV_HOME") {
            return Ok(p);
        }
        if var("SLURM_JOB_ID").is_some() {
            let scratch = var("SLURM_TMPDIR")
                .or_else(|| var("TMPDIR"))
                .unwrap_or_else(|| PathBuf::from("/tmp"));
            return Ok(scratch.join(format!("devenv-{}", nix::unistd::getuid())));
        }
        if let Some(p) = var("XDG_CACHE_HOME") {
            return Ok(p.join("devenv"));
        }
        var("HOME")
            .map(|h| h.join(".cache/devenv"))
            .ok_or(StoreError::NoRoot)
    }

    pub fn open(root: PathBuf) -> Result<Store, StoreError> {
        for d in [
            "blobs/sha256",
            "layers",
            "images/manifests",
            "images/tags",
            "envs",
            "tmp",
            "locks",
        ] {
            let dir = root.join(d);
            // One mkdir(2) each on the warm path, where all exist; create_dir_all would stat
            // each again to see that it is a directory (a file there fails at first use).
            match fs_err::create_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                _ => fs_err::create_dir_all(&dir)?,
            }
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The unpacked layer whose uncompressed content hashes to `diff_id`.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("images/manifests").join(digest.hex())
    }

    pub(crate) fn tag_path(&self, image: &ImageRef) -> Option<PathBuf> {
        let tag = image.tag.as_deref()?;
        Some(
            self.root
                .join("images/tags")
                .join(&image.registry)
                .join(&image.repository)
                .join(tag),
        )
    }

    /// A private staging directory under `tmp/`, removed on drop unless committed.
    pub fn staging_dir(&self, what: &str) -> Result<Staging, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir_in(self.root.join("tmp"))?;
        Ok(Staging {
            dir: Some(dir.keep()),
        })
    }

    /// Write `bytes` to `path` atomically: a temp file in `tmp/`, fsync'd, then renamed.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_data()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Store a verified manifest under its digest.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.manifest_path(digest);
        if path.exists() {
            Ok(())
        } else {
            self.write_atomic(&path, bytes)
        }
    }

    pub fn manifest(&self, digest: &Digest) -> Option<Vec<u8>> {
        fs_err::read(self.manifest_path(digest)).ok()
    }

    /// Store a verified blob (a config) under its digest.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        if path.exists() {
            Ok(())
        } else {
            self.write_atomic(&path, bytes)
        }
    }

    pub fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        fs_err::read(self.blob_path(digest)).ok()
    }

    /// Remember what `image`'s tag resolved to.
    pub fn set_tag(&self, image: &ImageRef, digest: &Digest) -> Result<(), StoreError> {
        match self.tag_path(image) {
            Some(path) => self.write_atomic(&path, digest.as_str().as_bytes()),
            None => Ok(()),
        }
    }

    /// What `image`'s tag last resolved to, if it was ever resolved here.
    pub fn tag(&self, image: &ImageRef) -> Option<Digest> {
        let text = fs_err::read_to_string(self.tag_path(image)?).ok()?;
        text.trim().parse().ok()
    }

    /// Take the exclusive lock named `name`, waiting for another process that holds it.
    pub fn lock(&self, name: &str) -> Result<Lock, StoreError> {
        lock_file(
            &self.root.join("locks").join(format!("{name}.lock")),
            LockMode::Exclusive,
        )
    }

    /// Take the lock named `name` shared: many holders at once, none while it is held exclusive.
    pub fn lock_shared(&self, name: &str) -> Result<Lock, StoreError> {
        lock_file(
            &self.root.join("locks").join(format!("{name}.lock")),
            LockMode::Shared,
        )
    }

    /// Keep gc away while the guard lives: what this process fetches, stages or copies out of
    /// the store is not removed under it. Take it before the first fetch and hold it until the
    /// env's record names what was fetched (gc keeps what records name). Many at once.
    pub fn keep_from_gc(&self) -> Result<GcGuard, StoreError> {
        Ok(GcGuard {
            _lock: self.lock_shared(GC_LOCK)?,
        })
    }

    /// gc's own side: no [`GcGuard`] is held while this lives.
    pub(crate) fn collecting(&self) -> Result<GcGuard, StoreError> {
        Ok(GcGuard {
            _lock: self.lock(GC_LOCK)?,
        })
    }
}

const GC_LOCK: &str = "gc";

/// While held, gc removes nothing ([`Store::keep_from_gc`]); gc holds it exclusively.
#[must_use = "gc waits only while the guard lives"]
pub struct GcGuard {
    _lock: Lock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
    /// Exclusive, or fail at once with `WouldBlock` when someone holds it.
    TryExclusive,
}

/// Lock `path` (created if missing). flock, not fcntl locks: it is per open file, so threads of
/// one process exclude each other too, and it is released when the holder dies, so a killed
/// process never wedges the store.
pub fn lock_file(path: &Path, mode: LockMode) -> Result<Lock, StoreError> {
    use nix::fcntl::{Flock, FlockArg};
    // A std file, which Flock holds; the error names the path below.
    #[allow(clippy::disallowed_methods)]
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("opening lock {}: {e}", path.display()),
            ))
        })?;
    let arg = match mode {
        LockMode::Shared => FlockArg::LockShared,
        LockMode::Exclusive => FlockArg::LockExclusive,
        LockMode::TryExclusive => FlockArg::LockExclusiveNonblock,
    };
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(Lock { _lock: lock }),
            Err((f, nix::errno::Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                let err = std::io::Error::from(errno);
                return Err(StoreError::Io(std::io::Error::new(
                    err.kind(),
                    format!("locking {}: {err}", path.display()),
                )));
            }
        }
    }
}

/// Held while a lock is taken; released on drop or process death.
pub struct Lock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// A directory being filled under `tmp/`. Dropped without [`Staging::commit`], it is removed.
pub struct Staging {
    dir: Option<PathBuf>,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new(""))
    }

    /// Rename the staged directory to `dest`. When `dest` already exists (another process
    /// committed the same content first), ours is discarded: both hold the same verified bytes.
    pub fn commit(mut self, dest: &Path) -> Result<(), StoreError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        match fs_err::rename(&dir, dest) {
            Ok(()) => Ok(()),
            Err(_) if dest.exists() => {
                remove_tree(&dir)?;
                Ok(())
            }
            Err(e) => {
                let _ = remove_tree(&dir);
                Err(e.into())
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = remove_tree(&dir);
        }
    }
}

/// Remove a file, or a tree that may hold read-only directories (layers keep 0555 dirs as the
/// image has them). Gone already is fine.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    if fs_err::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        return match fs_err::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    match fs_err::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    make_writable(path)?;
    fs_err::remove_dir_all(path)
}

fn make_writable(path: &Path) -> std::io::Result<()> {
    let meta = fs_err::symlink_metadata(path)?;
    if meta.is_dir() {
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700))?;
        }
        for entry in fs_err::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                make_writable(&entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_removed_unless_committed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().to_path_buf()).unwrap();
        let s = store.staging_dir("layer").unwrap();
        let p = s.path().to_path_buf();
        fs_err::create_dir(p.join("ro")).unwrap();
        fs_err::set_permissions(p.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        drop(s);
        assert!(!p.exists());

        let s = store.staging_dir("layer").unwrap();
        fs_err::write(s.path().join("f"), b"x").unwrap();
        let dest = store.layer_path(&Digest::of(b"x"));
        s.commit(&dest).unwrap();
        assert_eq!(fs_err::read(dest.join("f")).unwrap(), b"x");

        // A second commit of the same content is discarded, not an error.
        let s = store.staging_dir("layer").unwrap();
        let p = s.path().to_path_buf();
        s.commit(&dest).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn tags_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().to_path_buf()).unwrap();
        let image: ImageRef = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert_eq!(store.tag(&image), None);
        let d = Digest::of(b"m");
        store.set_tag(&image, &d).unwrap();
        assert_eq!(store.tag(&image), Some(d));
    }
}
