//! Apply: carry out planned [`Op`]s inside one layer directory, never touching anything outside.
//!
//! Containment: every parent directory is opened with `openat2(RESOLVE_IN_ROOT)` from the layer
//! root (Linux ≥ 5.6), so the kernel resolves symlinks left by earlier entries the way a
//! container would, with the layer directory as `/`: absolute targets start at the layer root
//! and `..` stops there. The last component is then created, replaced or linked with `*at`
//! calls on that directory descriptor, none of which follows a symlink in the last component
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`,
//! `mknodat`, `unlinkat`). Nothing here takes a path string relative to the process.
//!
//! Replacement: a later entry wins over an earlier one of the same name (the old one is removed,
//! recursively and without following symlinks); a directory over a directory merges.
//!
//! Permissions: directories are created `0700` and get their final mode and mtime in
//! [`Applier::finish`], deepest first, so `0555` (or `0000`) directories can still be filled.
//! Files are created with their final mode (an `open` that creates returns a writable
//! descriptor whatever the mode), written, then stamped with their mtime.
//!
//! Speed: the descriptor of the last parent directory is cached (archives list a directory's
//! entries together); any removal drops the cache, since it may change how paths resolve.
//! Small files are written with one `write`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;

use super::UnpackError;
use super::plan::{Meta, Mtime, Op, RelPath, Xattr, entry_name};

/// Files up to this size are read whole and written with one `write`.
const SMALL_FILE: u64 = 1 << 20;
/// Chunk size for larger files.
const CHUNK: usize = 1 << 20;

/// Mode of directories created for entries whose archive lists no parent.
const IMPLICIT_DIR: Mode = Mode::from_bits_truncate(0o755);

/// Whether creating with `mode` under `umask` may lose bits (an unknown umask may).
fn umask_strips(umask: Option<u32>, mode: u32) -> bool {
    umask.is_none_or(|u| mode & u != 0)
}

/// Opens directories of the layer, resolving inside it, with a one-entry cache.
struct Resolver {
    root: OwnedFd,
    /// The process umask when it could be read; `None` means always `fchmod`.
    umask: Option<u32>,
    /// The last parent directory: its path and descriptor.
    cache: Option<(Vec<u8>, OwnedFd)>,
}

/// `openat2` flags confining resolution to the layer: symlinks resolve as if the root were `/`,
/// no magic links (`/proc/self/fd/…`), no crossing onto other mounts.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// Flags of the directory descriptors we keep: readable, so `fsetxattr` and `fchmod` work.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

impl Resolver {
    /// `path` (non-empty) opened inside the layer with `flags`.
    fn open(&self, path: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(in_root());
        // openat2(2): EAGAIN means a concurrent rename made `..` unprovable; retry.
        let mut tries = 0;
        loop {
            match nix::fcntl::openat2(self.root.as_fd(), path, how) {
                Err(Errno::EAGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// The directory `path` (parent of some entry), created with its missing ancestors.
    fn dir(&mut self, path: &[u8]) -> io::Result<BorrowedFd<'_>> {
        self.ensure(path)?;
        Ok(self.get(path))
    }

    /// Make `path` the cached directory, creating what is missing.
    fn ensure(&mut self, path: &[u8]) -> io::Result<()> {
        if path.is_empty() || matches!(&self.cache, Some((p, _)) if p == path) {
            return Ok(());
        }
        let fd = match self.open(path, dir_flags()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.make_dirs(path)?,
            Err(e) => return Err(e.into()),
        };
        self.cache = Some((path.to_vec(), fd));
        Ok(())
    }

    /// The directory `ensure` made ready for `path`.
    fn get(&self, path: &[u8]) -> BorrowedFd<'_> {
        match &self.cache {
            Some((p, fd)) if !path.is_empty() && p == path => fd.as_fd(),
            _ => self.root.as_fd(),
        }
    }

    /// Create the missing directory `path` (mode 0755), and its missing ancestors, each in
    /// the directory its parent resolved to inside the layer. Called when opening `path` gave
    /// ENOENT. A name that exists but does not resolve to a directory (a dangling symlink, a
    /// file) fails with ENOTDIR or ELOOP: we never create a symlink's target.
    fn make_dirs(&self, path: &[u8]) -> io::Result<OwnedFd> {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let pfd = if parent.is_empty() {
            None
        } else {
            Some(match self.open(parent, dir_flags()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => self.make_dirs(parent)?,
                Err(e) => return Err(e.into()),
            })
        };
        let at = pfd.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
        let created = match nix::sys::stat::mkdirat(at, name, IMPLICIT_DIR) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let fd = nix::fcntl::openat(at, name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())?;
        // The layer must not depend on the user's umask.
        if created && umask_strips(self.umask, IMPLICIT_DIR.bits()) {
            nix::sys::stat::fchmod(fd.as_fd(), IMPLICIT_DIR)?;
        }
        Ok(fd)
    }

    fn invalidate(&mut self) {
        self.cache = None;
    }
}

/// Final mode and mtime of a directory, applied at the end.
#[derive(Clone, Copy, Debug)]
struct DirMeta {
    mode: u32,
    mtime: Mtime,
}

/// Applies one layer's operations into its directory.
pub struct Applier {
    resolver: Resolver,
    /// Directories seen as entries, by path: their final mode and mtime.
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    buf: Vec<u8>,
    /// Entries created (skips not counted).
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// An error from applying one entry, before it is given the entry's name.
enum Fail {
    /// A system call on the layer failed: what we were doing, and why.
    Io(&'static str, io::Error),
    /// Reading the entry's content from the stream failed.
    Read(io::Error),
    /// A hard link target is not there or not linkable.
    Link(&'static str),
    /// A parent component is not a directory once resolved inside the layer.
    NotDir,
}

impl Fail {
    fn io(what: &'static str) -> impl Fn(Errno) -> Fail {
        move |e| Fail::Io(what, e.into())
    }

    /// Opening an entry's parent failed.
    fn parent(e: io::Error) -> Fail {
        match e.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP) => Fail::NotDir,
            _ => Fail::Io("opening the parent of", e),
        }
    }
}

type Res<T> = Result<T, Fail>;

impl Applier {
    /// Open the empty layer directory `dest`.
    pub fn new(dest: &Path) -> Result<Applier, UnpackError> {
        let root =
            nix::fcntl::open(dest, dir_flags(), Mode::empty()).map_err(|e| UnpackError::Dest {
                path: dest.to_path_buf(),
                source: e.into(),
            })?;
        Ok(Applier {
            resolver: Resolver {
                root,
                umask: read_umask(),
                cache: None,
            },
            dirs: BTreeMap::new(),
            buf: Vec::new(),
            files: 0,
            bytes: 0,
        })
    }

    /// Carry out `op`; `content` is the entry's data (read only for files).
    pub fn apply(&mut self, op: Op, content: &mut dyn Read, raw: &[u8]) -> Result<(), UnpackError> {
        let counted = !matches!(op, Op::Skip { .. });
        let target = match &op {
            Op::Hardlink { target, .. } => Some(entry_name(target.as_bytes())),
            _ => None,
        };
        let r = match op {
            Op::Mkdir { path, meta } => self.mkdir(&path, &meta),
            Op::File { path, meta, size } => self.file(&path, &meta, size, content),
            Op::Symlink {
                path,
                target,
                mtime,
            } => self.symlink(&path, &target, mtime),
            Op::Hardlink { path, target } => self.hardlink(&path, &target),
            Op::Fifo { path, meta } => self.fifo(&path, &meta),
            Op::Whiteout { path } => self.whiteout(&path),
            Op::Opaque { dir } => self.opaque(&dir),
            Op::Skip { reason } => {
                tracing::debug!(entry = %entry_name(raw).display(), reason, "skipping entry");
                Ok(())
            }
        };
        match r {
            Ok(()) => {
                self.files += u64::from(counted);
                Ok(())
            }
            Err(Fail::Io(op, source)) => Err(UnpackError::Io {
                entry: entry_name(raw),
                op,
                source,
            }),
            Err(Fail::Read(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(UnpackError::InvalidEntry {
                    entry: entry_name(raw),
                    reason: "the archive ends inside this entry's content".into(),
                })
            }
            Err(Fail::Read(e)) => Err(UnpackError::Tar(e)),
            Err(Fail::NotDir) => Err(UnpackError::InvalidEntry {
                entry: entry_name(raw),
                reason: "a parent is not a directory inside the layer (a file, a symlink loop, \
                         or a symlink leading nowhere in the layer)"
                    .into(),
            }),
            Err(Fail::Link(reason)) => Err(UnpackError::Hardlink {
                entry: entry_name(raw),
                target: target.unwrap_or_default(),
                reason,
            }),
        }
    }

    fn mkdir(&mut self, path: &RelPath, meta: &Meta) -> Res<()> {
        let Some((parent, name)) = path.split() else {
            // `./`: the layer root. Set its mode at the end, keeping u+rwx so the store can
            // still rename and remove the layer.
            set_xattrs(self.resolver.root.as_fd(), &meta.xattrs, path)?;
            self.dirs.insert(
                Vec::new(),
                DirMeta {
                    mode: meta.mode | 0o700,
                    mtime: meta.mtime,
                },
            );
            return Ok(());
        };
        let pfd = self.resolver.dir(parent).map_err(Fail::parent)?;
        // A directory over a directory merges; over anything else it replaces.
        let mkdir = || match nix::sys::stat::mkdirat(pfd, name, Mode::S_IRWXU) {
            Err(Errno::EEXIST) if is_dir(pfd, name) => Ok(()),
            r => r,
        };
        let ((), displaced) = replacing(pfd, name, mkdir, Fail::io("creating directory"))?;
        if !meta.xattrs.is_empty() {
            let fd = nix::fcntl::openat(pfd, name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(Fail::io("opening directory"))?;
            set_xattrs(fd.as_fd(), &meta.xattrs, path)?;
        }
        self.displaced(path, displaced);
        self.dirs.insert(
            path.as_bytes().to_vec(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    /// A regular file. Everything after reading the content (write, mode, mtime, xattrs,
    /// close) needs only the descriptor and the buffer, so it can move to writer threads
    /// without touching resolution, which must stay on this thread.
    fn file(&mut self, path: &RelPath, meta: &Meta, size: u64, content: &mut dyn Read) -> Res<()> {
        let (parent, name) = leaf(path)?;
        let pfd = self.resolver.dir(parent).map_err(Fail::parent)?;
        // O_EXCL: never open what is there, symlink or not; O_NOFOLLOW for good measure.
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(meta.mode);
        let create = || nix::fcntl::openat(pfd, name, flags, mode);
        let (fd, displaced) = replacing(pfd, name, create, Fail::io("creating"))?;
        self.displaced(path, displaced);
        let mut file = std::fs::File::from(fd);
        write_content(&mut file, content, size, &mut self.buf)?;
        self.bytes += size;
        // The umask may have cleared bits of the creation mode.
        if umask_strips(self.resolver.umask, meta.mode) {
            nix::sys::stat::fchmod(file.as_fd(), mode).map_err(Fail::io("setting the mode of"))?;
        }
        let t = timespec(meta.mtime);
        nix::sys::stat::futimens(file.as_fd(), &t, &t).map_err(Fail::io("setting the mtime of"))?;
        set_xattrs(file.as_fd(), &meta.xattrs, path)
    }

    fn symlink(&mut self, path: &RelPath, target: &[u8], mtime: Mtime) -> Res<()> {
        let (parent, name) = leaf(path)?;
        let pfd = self.resolver.dir(parent).map_err(Fail::parent)?;
        let create = || nix::unistd::symlinkat(target, pfd, name);
        let ((), displaced) = replacing(pfd, name, create, Fail::io("creating symlink"))?;
        let t = timespec(mtime);
        nix::sys::stat::utimensat(pfd, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(Fail::io("setting the mtime of"))?;
        self.displaced(path, displaced);
        Ok(())
    }

    /// A hard link to an entry already in this layer. The target's directory resolves inside
    /// the layer; its last component is linked as is: a symlink target gives a second name for
    /// that symlink (as `link(2)` and tar do), never the file it points to.
    fn hardlink(&mut self, path: &RelPath, target: &RelPath) -> Res<()> {
        let (tparent, tname) = target
            .split()
            .ok_or(Fail::Link("the target is the layer root"))?;
        let tfd = if tparent.is_empty() {
            None
        } else {
            match self.resolver.open(tparent, dir_flags()) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(Fail::Link("the target is not in this layer"));
                }
                Err(e) => return Err(Fail::Io("opening the target directory of", e.into())),
            }
        };
        let (parent, name) = leaf(path)?;
        self.resolver.ensure(parent).map_err(Fail::parent)?;
        let pfd = self.resolver.get(parent);
        let tdir = tfd
            .as_ref()
            .map_or(self.resolver.root.as_fd(), |f| f.as_fd());
        // linkat(2) without AT_SYMLINK_FOLLOW links a symlink itself, not its target.
        let link = || nix::unistd::linkat(tdir, tname, pfd, name, AtFlags::empty());
        let fail = |e| match e {
            Errno::ENOENT => Fail::Link("the target is not in this layer"),
            Errno::EPERM => Fail::Link("the target is a directory"),
            e => Fail::Io("creating hard link", e.into()),
        };
        let ((), displaced) = replacing(pfd, name, link, fail)?;
        self.displaced(path, displaced);
        Ok(())
    }

    fn fifo(&mut self, path: &RelPath, meta: &Meta) -> Res<()> {
        let (parent, name) = leaf(path)?;
        let pfd = self.resolver.dir(parent).map_err(Fail::parent)?;
        let mode = Mode::from_bits_truncate(meta.mode);
        let mknod = || nix::sys::stat::mknodat(pfd, name, SFlag::S_IFIFO, mode, 0);
        let ((), displaced) = replacing(pfd, name, mknod, Fail::io("creating fifo"))?;
        // fchmodat(2) follows symlinks, but `name` is the fifo just made in `pfd`.
        nix::sys::stat::fchmodat(
            pfd,
            name,
            mode,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(Fail::io("setting the mode of"))?;
        let t = timespec(meta.mtime);
        nix::sys::stat::utimensat(pfd, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(Fail::io("setting the mtime of"))?;
        self.displaced(path, displaced);
        Ok(())
    }

    /// An overlay whiteout: a 0/0 character device (unprivileged since Linux 5.8). If this
    /// layer already has something at that name, it stays: OCI whiteouts hide only lower layers.
    fn whiteout(&mut self, path: &RelPath) -> Res<()> {
        let (parent, name) = leaf(path)?;
        let pfd = self.resolver.dir(parent).map_err(Fail::parent)?;
        match nix::sys::stat::mknodat(pfd, name, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                tracing::debug!(
                    path = %entry_name(path.as_bytes()).display(),
                    "whiteout names an entry of its own layer; keeping the entry"
                );
                Ok(())
            }
            Err(e) => Err(Fail::Io("creating whiteout", e.into())),
        }
    }

    /// Mark `dir` opaque for overlay's `userxattr` mode.
    fn opaque(&mut self, dir: &RelPath) -> Res<()> {
        let fd = self.resolver.dir(dir.as_bytes()).map_err(Fail::parent)?;
        fsetxattr(fd, b"user.overlay.opaque", b"y").map_err(|e| Fail::Io("marking opaque", e))
    }

    /// Bookkeeping after an entry at `path` displaced what was there: paths may now resolve
    /// differently, and a removed directory's tree no longer needs its modes set.
    fn displaced(&mut self, path: &RelPath, what: Displaced) {
        if what == Displaced::Nothing {
            return;
        }
        self.resolver.invalidate();
        if what == Displaced::Dir {
            // Keys below `p` sort between `p/` and `p0` ('0' follows '/').
            let p = path.as_bytes();
            let below = [p, b"/"].concat()..[p, b"0"].concat();
            let gone: Vec<Vec<u8>> = self.dirs.range(below).map(|(k, _)| k.clone()).collect();
            for k in gone {
                self.dirs.remove(&k);
            }
            self.dirs.remove(p);
        }
    }

    /// Give directories their final modes and mtimes, deepest first (a directory's mode must
    /// not stop us reaching those below it, and stamping a child does not touch its parent's
    /// mtime).
    pub fn finish(self) -> Result<(), UnpackError> {
        let depth = |p: &[u8]| {
            if p.is_empty() {
                0
            } else {
                1 + p.iter().filter(|&&b| b == b'/').count()
            }
        };
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.into_iter().collect();
        // Stable: equal depths keep path order.
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(depth(p)));
        for (path, meta) in dirs {
            let fd = if path.is_empty() {
                None
            } else {
                // O_NOFOLLOW: if a later entry replaced the directory with a symlink, leave it.
                match self.resolver.open(&path, dir_flags() | OFlag::O_NOFOLLOW) {
                    Ok(fd) => Some(fd),
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                        tracing::debug!(
                            path = %entry_name(&path).display(),
                            "directory gone before its mode was set"
                        );
                        continue;
                    }
                    Err(e) => return Err(dir_err(&path, "opening directory", e)),
                }
            };
            let fd = fd
                .as_ref()
                .map_or(self.resolver.root.as_fd(), |f| f.as_fd());
            nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
                .map_err(|e| dir_err(&path, "setting the mode of", e))?;
            let t = timespec(meta.mtime);
            nix::sys::stat::futimens(fd, &t, &t)
                .map_err(|e| dir_err(&path, "setting the mtime of", e))?;
        }
        Ok(())
    }
}

/// Parent and name of a path the plan guarantees is not the root.
fn leaf(path: &RelPath) -> Res<(&[u8], &[u8])> {
    path.split().ok_or_else(|| {
        Fail::Io(
            "resolving",
            io::Error::new(io::ErrorKind::InvalidInput, "names the layer root"),
        )
    })
}

fn dir_err(path: &[u8], op: &'static str, e: Errno) -> UnpackError {
    UnpackError::Io {
        entry: entry_name(path),
        op,
        source: e.into(),
    }
}

fn timespec(t: Mtime) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nanos))
}

/// Copy exactly `size` bytes of entry content into `file`: small files with one write.
fn write_content(
    file: &mut std::fs::File,
    content: &mut dyn Read,
    size: u64,
    buf: &mut Vec<u8>,
) -> Res<()> {
    let mut left = size;
    while left > 0 {
        let n = if size <= SMALL_FILE {
            left as usize
        } else {
            left.min(CHUNK as u64) as usize
        };
        // Grow only: re-zeroing the buffer for every file would cost as much as the copy.
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let chunk = &mut buf[..n];
        content.read_exact(chunk).map_err(Fail::Read)?;
        file.write_all(chunk).map_err(|e| Fail::Io("writing", e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Set the archive's `user.*` attributes. A filesystem without user xattrs drops them with a
/// debug line (they are the image's metadata, not something overlay needs).
fn set_xattrs(fd: BorrowedFd<'_>, xattrs: &[Xattr], path: &RelPath) -> Res<()> {
    for x in xattrs {
        match fsetxattr(fd, &x.name, &x.value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => tracing::debug!(
                path = %entry_name(path.as_bytes()).display(),
                xattr = %String::from_utf8_lossy(&x.name),
                "filesystem refuses user xattrs; dropping"
            ),
            Err(e) => return Err(Fail::Io("setting an extended attribute of", e)),
        }
    }
    Ok(())
}

/// fsetxattr(2) on a borrowed descriptor, through the `xattr` crate (nix has no wrapper).
fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    struct Fd<'a>(BorrowedFd<'a>);
    impl AsRawFd for Fd<'_> {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    impl xattr::FileExt for Fd<'_> {}
    xattr::FileExt::set_xattr(&Fd(fd), std::ffi::OsStr::from_bytes(name), value)
}

/// What a new entry displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Displaced {
    Nothing,
    NonDir,
    Dir,
}

/// Run `create`; if the name is taken, remove what is there (later entries win) and run it
/// once more. `fail` turns the system call's error into ours.
fn replacing<T>(
    dir: BorrowedFd<'_>,
    name: &[u8],
    create: impl Fn() -> nix::Result<T>,
    fail: impl Fn(Errno) -> Fail,
) -> Res<(T, Displaced)> {
    match create() {
        Ok(t) => Ok((t, Displaced::Nothing)),
        Err(Errno::EEXIST) => {
            let displaced = remove_all(dir, name).map_err(|e| Fail::Io("replacing", e))?;
            Ok((create().map_err(fail)?, displaced))
        }
        Err(e) => Err(fail(e)),
    }
}

/// Whether `name` in `dir` is a directory itself (not a symlink to one).
fn is_dir(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Remove `name` in `dir`, recursively if it is a directory, never following symlinks.
fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Displaced> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(Displaced::NonDir),
        Err(Errno::ENOENT) => return Ok(Displaced::Nothing),
        // unlink(2): EISDIR on Linux for a directory (POSIX allows EPERM).
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = nix::fcntl::openat(dir, name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())?;
    // Directories of this layer are u+rwx until `finish`, so we can empty it.
    let mut children: Vec<Vec<u8>> = Vec::new();
    let mut d = nix::dir::Dir::from_fd(fd.try_clone()?)?;
    for ent in d.iter() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            children.push(n.to_vec());
        }
    }
    for child in children {
        remove_all(fd.as_fd(), &child)?;
    }
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(Displaced::Dir)
}

/// The process umask from /proc/self/status (reading it with umask(2) would change it).
fn read_umask() -> Option<u32> {
    let status = fs_err::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}
