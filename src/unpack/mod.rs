//! Layer unpacking: decompression, the tar applier, whiteouts, in-root path resolution.
//!
//! [`apply_layer`] streams one layer blob once: the caller's reader (which verifies the blob's
//! digest at EOF), then gzip (multi-member) or zstd decompression, then sha256 of the tar stream
//! (the diff_id), then the applier, all on the calling thread. It reads the tar stream to its
//! very end and the compressed input to EOF, so the caller's digest check always runs.
//!
//! Each layer is unpacked alone into its own empty directory, overlay-ready: OCI whiteouts
//! become 0/0 character devices, opaque directories get `user.overlay.opaque=y` (overlay's
//! `userxattr` mode), modes are kept (setuid/setgid dropped), ownership is the user's, device
//! nodes are skipped, only `user.*` xattrs are kept.
//!
//! This is the security boundary: unpack never creates, changes or removes anything outside the
//! layer directory. Names are normalised and refused when they climb out (`plan.rs`); symlinks
//! left by earlier entries resolve inside the layer as a container sees them, enforced by the
//! kernel (`openat2(RESOLVE_IN_ROOT)`, `apply.rs`). It never calls `chown` and never uses
//! `tar::Entry::unpack`.

mod apply;
mod plan;

use std::cell::RefCell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::Digest as _;

use crate::reference::Digest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of an OCI or Docker layer media type; `None` for other media types.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("entry `{}` points outside the layer", entry.display())]
    Escape { entry: PathBuf },
    #[error("hard link `{}` to `{}`: {reason}", entry.display(), target.display())]
    Hardlink {
        entry: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("entry `{}`: {reason}", entry.display())]
    InvalidEntry { entry: PathBuf, reason: String },
    #[error("{op} `{}`", entry.display())]
    Io {
        entry: PathBuf,
        /// What we were doing, as a gerund: "creating", "writing", ….
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("opening the layer directory {}", path.display())]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The caller's reader failed (a download error, a blob digest mismatch): its error intact.
    #[error("reading the layer blob")]
    Read(#[source] io::Error),
    #[error("decompressing the layer")]
    Decompress(#[source] io::Error),
    #[error("reading the layer's tar stream")]
    Tar(#[source] io::Error),
}

impl crate::error::Hint for UnpackError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            UnpackError::Escape { .. } => "the image is malformed or hostile: this layer tries to \
                write outside itself and is refused on purpose; use another image or tag, and \
                tell its publisher"
                .into(),
            UnpackError::Hardlink { .. } => "the layer is malformed: a hard link must name a file \
                that appears earlier in the same layer"
                .into(),
            UnpackError::InvalidEntry { .. } | UnpackError::Tar(_) => {
                "the layer is not a tar archive devenv can apply; if other tools read this \
                 image, report it with the entry name"
                    .into()
            }
            UnpackError::Decompress(_) => "the blob does not decompress: it is corrupt or not \
                compressed as its media type says; pulling again fetches it anew"
                .into(),
            UnpackError::Io { op, source, .. } => return io_hint(op, source),
            UnpackError::Dest { source, .. } => return io_hint("", source),
            UnpackError::Read(_) => return None,
        })
    }
}

fn io_hint(op: &str, e: &io::Error) -> Option<String> {
    Some(match e.raw_os_error()? {
        libc::ENOSPC | libc::EDQUOT => {
            "the disk is full: free space, or point DEVENV_HOME at a larger filesystem".into()
        }
        libc::ENOSYS => "devenv needs Linux 5.8 or later (openat2, unprivileged whiteouts); in a \
            container, a seccomp profile may be blocking openat2"
            .into(),
        libc::EMFILE | libc::ENFILE => "too many open files: raise `ulimit -n`".into(),
        libc::EPERM if op == "creating whiteout" => {
            "overlay whiteouts are 0/0 character devices, which unprivileged users may create \
             from Linux 5.8 on, on a filesystem that allows them (ext4, xfs, btrfs, tmpfs): \
             upgrade the kernel or point DEVENV_HOME at such a filesystem"
                .into()
        }
        libc::EOPNOTSUPP if op == "marking opaque" => {
            "the store's filesystem has no user extended attributes, which overlay needs: \
             point DEVENV_HOME at ext4, xfs, btrfs, or tmpfs on Linux 6.6 or later"
                .into()
        }
        _ => return None,
    })
}

/// What applying a layer produced.
#[derive(Debug)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream: the layer's diff_id.
    pub diff_id: Digest,
    /// Entries created (directories, files, links, whiteouts, …; skipped entries not counted).
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Decompress `input` and apply the tar stream into the empty directory `dest`.
///
/// Reads `input` to EOF even after the archive ends. On error, `dest` holds a partial layer
/// that the caller must discard; nothing outside it was touched.
pub fn apply_layer(
    input: impl Read,
    compression: Compression,
    dest: &Path,
) -> Result<Applied, UnpackError> {
    let failure = Failure::default();
    let input = Recorded {
        inner: input,
        slot: failure.input.clone(),
    };
    let result = match compression {
        Compression::None => unpack_stream(input, dest, &failure).and_then(|(a, rest)| {
            drain(rest)?;
            Ok(a)
        }),
        Compression::Gzip => {
            let dec = flate2::read::MultiGzDecoder::new(input);
            unpack_stream(dec, dest, &failure).and_then(|(a, dec)| {
                drain(dec.into_inner())?;
                Ok(a)
            })
        }
        Compression::Zstd => zstd::stream::read::Decoder::new(input)
            .map_err(UnpackError::Decompress)
            .and_then(|dec| unpack_stream(dec, dest, &failure))
            .and_then(|(a, dec)| {
                drain(dec.finish())?;
                Ok(a)
            }),
    };
    result.map_err(|e| failure.explain(e))
}

/// Buffer between the decompressed stream and the tar parser.
const STREAM_BUFFER: usize = 256 * 1024;

/// Apply the tar stream `reader` into `dest`, hashing it whole; returns the reader, at EOF.
fn unpack_stream<R: Read>(
    reader: R,
    dest: &Path,
    failure: &Failure,
) -> Result<(Applied, R), UnpackError> {
    let mut applier = apply::Applier::new(dest)?;
    // The tar parser reads 512-byte headers: serve them from a buffer, not one decompressor
    // (or, uncompressed, one input) call each. Large content reads bypass the buffer.
    let mut hashed = Hashed {
        inner: io::BufReader::with_capacity(
            STREAM_BUFFER,
            Recorded {
                inner: reader,
                slot: failure.stream.clone(),
            },
        ),
        hasher: sha2::Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashed);
        archive.set_ignore_zeros(false);
        for entry in archive.entries().map_err(UnpackError::Tar)? {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            let (xattrs, pax_mtime) = pax(&mut entry)?;
            let path = entry.path_bytes().into_owned();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let header = entry.header();
            let info = plan::EntryInfo {
                path: &path,
                kind: header.entry_type(),
                link: link.as_deref(),
                mode: header.mode().map_err(|e| invalid(&path, e))?,
                mtime: match pax_mtime {
                    Some(t) => t,
                    None => i64::try_from(header.mtime().map_err(|e| invalid(&path, e))?)
                        .unwrap_or(i64::MAX)
                        .into(),
                },
                size: entry.size(),
                xattrs,
            };
            let op = plan::plan_entry(&info)?;
            applier.apply(op, &mut entry, &path)?;
        }
    }
    // The end-of-archive blocks and any padding after them belong to the diff_id too.
    io::copy(&mut hashed, &mut io::sink()).map_err(UnpackError::Tar)?;
    let files = applier.files;
    let bytes = applier.bytes;
    applier.finish()?;
    let applied = Applied {
        diff_id: Digest::from_sha256_bytes(&hashed.hasher.finalize()),
        files,
        bytes,
    };
    // At EOF, so the buffer is empty and nothing is lost.
    Ok((applied, hashed.inner.into_inner().inner))
}

fn invalid(path: &[u8], e: io::Error) -> UnpackError {
    UnpackError::InvalidEntry {
        entry: plan::entry_name(path),
        reason: e.to_string(),
    }
}

/// What we use of an entry's pax records: `SCHILY.xattr.*` and a precise `mtime`.
fn pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<(Vec<plan::Xattr>, Option<plan::Mtime>), UnpackError> {
    let mut out = Vec::new();
    let mut mtime = None;
    let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? else {
        return Ok((out, mtime));
    };
    for ext in exts {
        let ext = ext.map_err(UnpackError::Tar)?;
        if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            out.push(plan::Xattr {
                name: name.to_vec(),
                value: ext.value_bytes().to_vec(),
            });
        } else if ext.key_bytes() == b"mtime" {
            mtime = plan::Mtime::parse_pax(ext.value_bytes());
        }
    }
    Ok((out, mtime))
}

/// Read the compressed input to EOF: the caller's reader checks the blob digest there.
fn drain(mut rest: impl Read) -> Result<(), UnpackError> {
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(())
}

/// Where the first read error happened, kept intact. Readers deeper in the chain see only a
/// stand-in, so the error that reaches the top can be replaced by the real cause.
#[derive(Default)]
struct Failure {
    /// The caller's reader failed.
    input: Slot,
    /// The decompressor (or, uncompressed, the input through it) failed.
    stream: Slot,
}

type Slot = Rc<RefCell<Option<io::Error>>>;

impl Failure {
    /// The real cause of `e`: the input's error first, then the decompressor's.
    fn explain(&self, e: UnpackError) -> UnpackError {
        if let Some(err) = self.input.borrow_mut().take() {
            return UnpackError::Read(err);
        }
        if let Some(err) = self.stream.borrow_mut().take() {
            return UnpackError::Decompress(err);
        }
        e
    }
}

/// A reader that files its first error in `slot` and passes on a stand-in.
struct Recorded<R> {
    inner: R,
    slot: Slot,
}

impl<R: Read> Read for Recorded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let standin = io::Error::new(e.kind(), e.to_string());
                let mut slot = self.slot.borrow_mut();
                if slot.is_none() {
                    *slot = Some(e);
                }
                Err(standin)
            }
            ok => ok,
        }
    }
}

/// sha256 of everything read through it.
struct Hashed<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
