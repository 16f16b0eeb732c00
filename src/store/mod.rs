//! The content-addressed store shared by every project.
//!
//! ```text
//! blobs/sha256/<hex>     compressed blobs, verified before they become visible
//! layers/<hex>/          one unpacked layer (named by its diff_id), overlay-ready
//! images/                manifests by digest; tag → digest resolutions with their age
//! envs/<env-id>/         per project: home/, state
//! tmp/                   staging; everything enters the store by rename
//! locks/                 flock files, one per blob or layer being fetched
//! ```
//!
//! Invariants: nothing half-written is ever visible under a final name; paths come only from
//! [`Digest`]s, never from strings a registry sent.

use std::path::{Path, PathBuf};

use crate::reference::Digest;

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
    /// `$DEVENV_HOME`, else `$XDG_CACHE_HOME/devenv`, else `~/.cache/devenv`.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("DEVENV_HOME") {
            return Ok(p);
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
            fs_err::create_dir_all(root.join(d))?;
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

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
}
