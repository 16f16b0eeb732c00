//! Layer unpacking: decompression, the tar applier, whiteouts, in-root path resolution.
//! STUB — replaced by the unpack work (see the helper brief).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::reference::Digest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("entry `{entry}` points outside the layer")]
    Escape { entry: PathBuf },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::Hint for UnpackError {
    fn hint(&self) -> Option<String> {
        None
    }
}

/// What applying a layer produced.
#[derive(Debug)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream: the layer's diff_id.
    pub diff_id: Digest,
    pub files: u64,
    pub bytes: u64,
}

/// Decompress `input` and apply the tar stream into the empty directory `dest`.
pub fn apply_layer(
    input: impl Read,
    compression: Compression,
    dest: &Path,
) -> Result<Applied, UnpackError> {
    let _ = (input, compression, dest);
    unimplemented!("unpack stub")
}

impl Compression {
    /// The compression a layer media type names; `None` for types that are not layers.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let _ = media_type;
        Some(Compression::Gzip)
    }
}
