//! The system calls the launcher makes to build the container, behind one trait, so the order
//! of namespace and mount steps is tested without privileges (youki's pattern): [`Real`] calls
//! the kernel, the test-only `Recorder` writes each call down as one line.
//!
//! Invariant: every `unsafe` block here carries a `// SAFETY:` line, and every syscall site a
//! one-line why. Nothing here decides policy; `setup` does.

// std::fs here on purpose: this module is the launcher's syscall layer: its callers need the raw errno, which fs-err's errors wrap away.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::fsutil;

/// What a bind mount's target must be: the kernel refuses a directory over a file and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

pub trait Syscalls {
    /// Write an existing file in one `write(2)` (the `/proc/self/*_map` files demand it).
    fn write_proc(&mut self, path: &Path, contents: &str) -> Result<(), Errno>;
    /// Create or replace an ordinary file.
    fn write_file(&mut self, path: &Path, contents: &str) -> Result<(), Errno>;
    /// An ordinary file's contents, `None` when it does not exist.
    fn read_file(&mut self, path: &Path) -> Result<Option<String>, Errno>;
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    fn chdir(&mut self, path: &Path) -> Result<(), Errno>;
    fn sethostname(&mut self, name: &str) -> Result<(), Errno>;
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno>;
    fn mkdir(&mut self, path: &Path) -> Result<(), Errno>;
    /// Whether `path`'s filesystem stores `user.*` extended attributes (overlay's `userxattr`
    /// needs them on the upper directory): set one and remove it.
    fn user_xattr(&mut self, path: &Path) -> Result<(), Errno>;
    /// `target` resolved inside `root` (symlinks cannot leave it), created as `kind` when
    /// missing; the host path to mount on.
    fn mountpoint(&mut self, root: &Path, target: &Path, kind: Kind) -> Result<PathBuf, Errno>;
    /// What `path` is on the host, `None` when it does not exist.
    fn kind_of(&mut self, path: &Path) -> Option<Kind>;
    /// The flags a remount of `path` must keep: the kernel locks them in a user namespace.
    fn locked_flags(&mut self, path: &Path) -> Result<MsFlags, Errno>;
    /// Make the mount at `path` and every mount below it read-only in one call
    /// (mount_setattr(2), Linux 5.12); ENOSYS on older kernels.
    fn readonly_tree(&mut self, path: &Path) -> Result<(), Errno>;
    /// Mount points strictly below `path`, outermost first.
    fn submounts(&mut self, path: &Path) -> Vec<PathBuf>;
    fn loopback_up(&mut self) -> Result<(), Errno>;
    fn no_new_privs(&mut self) -> Result<(), Errno>;
    /// unshare(2) `flags` for this process.
    fn unshare(&mut self, flags: nix::sched::CloneFlags) -> Result<(), Errno>;
    /// A new anonymous session keyring for this process and its children.
    fn join_session_keyring(&mut self) -> Result<(), Errno>;
    /// Install the seccomp filter for `profile`; needs no-new-privs.
    fn seccomp(&mut self, profile: &super::seccomp::Profile) -> Result<(), Errno>;
    /// Apply the layer chain (base first) into the empty directory `dest`, through a cache.
    fn flatten(&mut self, lowers: &[PathBuf], cache: &Path, dest: &Path) -> std::io::Result<()>;
}

/// The kernel.
pub struct Real;

/// The errno of an I/O error; EIO where there is none (fs-err hides it: see fsutil).
fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

impl Syscalls for Real {
    fn write_proc(&mut self, path: &Path, contents: &str) -> Result<(), Errno> {
        // user_namespaces(7): a map must be written with a single write(2).
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_errno)?;
        f.write_all(contents.as_bytes()).map_err(io_errno)
    }

    fn write_file(&mut self, path: &Path, contents: &str) -> Result<(), Errno> {
        fs_err::write(path, contents).map_err(io_errno)
    }

    fn read_file(&mut self, path: &Path) -> Result<Option<String>, Errno> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_errno(e)),
        }
    }

    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        // mount(2): every step of the root is one call; see setup for each one's reason.
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        // umount2(2) with MNT_DETACH: the old root may still be busy with our own cwd.
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        // pivot_root(2), not chroot: the old root must leave the mount namespace entirely.
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&mut self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
        // sethostname(2) only changes our new UTS namespace.
        nix::unistd::sethostname(name)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }

    fn mkdir(&mut self, path: &Path) -> Result<(), Errno> {
        std::fs::create_dir(path).map_err(io_errno)
    }

    fn user_xattr(&mut self, path: &Path) -> Result<(), Errno> {
        use std::os::unix::ffi::OsStrExt;
        let path =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        let name = c"user.devenv.probe";
        // setxattr(2) then removexattr(2): tmpfs stores user.* attributes only since Linux 6.6.
        // SAFETY: path and name are NUL-terminated and live across the call; the value is one
        // readable byte.
        if unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), c"1".as_ptr().cast(), 1, 0) } != 0
        {
            return Err(Errno::last());
        }
        // SAFETY: as above.
        if unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } != 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn mountpoint(&mut self, root: &Path, target: &Path, kind: Kind) -> Result<PathBuf, Errno> {
        fsutil::mountpoint_in_root(root, target, kind).map_err(io_errno)
    }

    fn kind_of(&mut self, path: &Path) -> Option<Kind> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.is_dir() { Kind::Dir } else { Kind::File })
    }

    fn locked_flags(&mut self, path: &Path) -> Result<MsFlags, Errno> {
        use nix::sys::statvfs::FsFlags;
        // mount_namespaces(7): a remount in a user namespace must keep nosuid/nodev/noexec and
        // the atime flags the mount already has, or it fails with EPERM (bubblewrap does this).
        let st = nix::sys::statvfs::statvfs(path)?;
        let f = st.flags();
        let pairs = [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ];
        Ok(pairs
            .iter()
            .filter(|(st, _)| f.contains(*st))
            .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
    }

    fn readonly_tree(&mut self, path: &Path) -> Result<(), Errno> {
        use std::os::unix::ffi::OsStrExt;
        /// `struct mount_attr` of <linux/mount.h> (MOUNT_ATTR_SIZE_VER0).
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        let path =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // mount_setattr(2) with AT_RECURSIVE: one call instead of a statvfs and a remount per
        // submount; it changes only the read-only bit, so the locked flags stay as they are.
        // SAFETY: path is NUL-terminated and attr a valid mount_attr of the size passed; both
        // outlive the call, which only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn submounts(&mut self, path: &Path) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        fsutil::submounts_in(&info, path)
    }

    fn loopback_up(&mut self) -> Result<(), Errno> {
        // SAFETY: plain socket(2); the result is checked before use and owned right after.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // netdevice(7): SIOCGIFFLAGS then SIOCSIFFLAGS with IFF_UP; a new netns has lo down.
        // SAFETY: req is a valid ifreq for the whole call; the kernel writes only ifr_flags.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(Errno::last());
        }
        // SAFETY: SIOCGIFFLAGS filled the ifru_flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: as above; the kernel only reads req.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn no_new_privs(&mut self) -> Result<(), Errno> {
        // prctl(2) PR_SET_NO_NEW_PRIVS: setuid binaries in the image gain nothing; inherited.
        nix::sys::prctl::set_no_new_privs()
    }

    fn unshare(&mut self, flags: nix::sched::CloneFlags) -> Result<(), Errno> {
        // unshare(2): PID 1 has one thread and its own fs struct, as CLONE_NEWUSER requires.
        nix::sched::unshare(flags)
    }

    fn join_session_keyring(&mut self) -> Result<(), Errno> {
        // keyctl(2) KEYCTL_JOIN_SESSION_KEYRING with no name: a fresh anonymous keyring,
        // as runc gives each container (the old one is no longer possessed).
        // SAFETY: a plain syscall; a null name is what the call documents for "anonymous".
        let rc = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            )
        };
        if rc < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn seccomp(&mut self, profile: &super::seccomp::Profile) -> Result<(), Errno> {
        super::seccomp::install(profile)
    }

    fn flatten(&mut self, lowers: &[PathBuf], cache: &Path, dest: &Path) -> std::io::Result<()> {
        fsutil::flatten(lowers, cache, dest)
    }
}

/// Writes every call down, answers from a few settings; for tests of the step order.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: Vec<String>,
    /// `mount` with this fstype fails with this errno.
    pub fail_fstype: Option<(&'static str, Errno)>,
    /// Paths that `kind_of` says are directories; anything else is a file.
    pub dirs: Vec<PathBuf>,
    /// Paths that `kind_of` says do not exist.
    pub missing: Vec<PathBuf>,
    /// What `read_file` answers for every path.
    pub file: Option<String>,
    /// `user_xattr` fails with this errno.
    pub fail_xattr: Option<Errno>,
    /// `readonly_tree` succeeds; otherwise it fails with ENOSYS, as before Linux 5.12.
    pub setattr: bool,
}

#[cfg(test)]
impl Recorder {
    fn log(&mut self, s: String) {
        self.calls.push(s);
    }

    /// The index of the first call starting with `prefix`; panics (a test failure) when none.
    pub fn pos(&self, prefix: &str) -> usize {
        self.calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call starting with {prefix:?} in {:#?}", self.calls))
    }
}

#[cfg(test)]
impl Syscalls for Recorder {
    fn write_proc(&mut self, path: &Path, contents: &str) -> Result<(), Errno> {
        self.log(format!("write {} {}", path.display(), contents.trim_end()));
        Ok(())
    }
    fn write_file(&mut self, path: &Path, contents: &str) -> Result<(), Errno> {
        self.log(format!("write {} {}", path.display(), contents.len()));
        Ok(())
    }
    fn read_file(&mut self, path: &Path) -> Result<Option<String>, Errno> {
        self.log(format!("read {}", path.display()));
        Ok(self.file.clone())
    }
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.log(format!(
            "mount {} {} {} {flags:?} {}",
            fstype.unwrap_or("-"),
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display(),
            data.unwrap_or("-")
        ));
        match self.fail_fstype {
            Some((t, e)) if Some(t) == fstype => Err(e),
            _ => Ok(()),
        }
    }
    fn umount(&mut self, target: &Path, _: MntFlags) -> Result<(), Errno> {
        self.log(format!("umount {}", target.display()));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.log(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ));
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> Result<(), Errno> {
        self.log(format!("chdir {}", path.display()));
        Ok(())
    }
    fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
        self.log(format!("sethostname {name}"));
        Ok(())
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno> {
        self.log(format!("symlink {} {}", target.display(), link.display()));
        Ok(())
    }
    fn mkdir(&mut self, path: &Path) -> Result<(), Errno> {
        self.log(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn user_xattr(&mut self, path: &Path) -> Result<(), Errno> {
        self.log(format!("xattr {}", path.display()));
        self.fail_xattr.map_or(Ok(()), Err)
    }
    fn mountpoint(&mut self, root: &Path, target: &Path, kind: Kind) -> Result<PathBuf, Errno> {
        let p = root.join(target.strip_prefix("/").unwrap_or(target));
        self.log(format!("mkpoint {kind:?} {}", p.display()));
        Ok(p)
    }
    fn kind_of(&mut self, path: &Path) -> Option<Kind> {
        if self.missing.iter().any(|m| m == path) {
            None
        } else if self.dirs.iter().any(|d| d == path) {
            Some(Kind::Dir)
        } else {
            Some(Kind::File)
        }
    }
    fn locked_flags(&mut self, _: &Path) -> Result<MsFlags, Errno> {
        Ok(MsFlags::MS_NOSUID)
    }
    fn readonly_tree(&mut self, path: &Path) -> Result<(), Errno> {
        self.log(format!("setattr_ro {}", path.display()));
        if self.setattr {
            Ok(())
        } else {
            Err(Errno::ENOSYS)
        }
    }
    fn submounts(&mut self, path: &Path) -> Vec<PathBuf> {
        vec![path.join("sub")]
    }
    fn loopback_up(&mut self) -> Result<(), Errno> {
        self.log("loopback_up".into());
        Ok(())
    }
    fn no_new_privs(&mut self) -> Result<(), Errno> {
        self.log("no_new_privs".into());
        Ok(())
    }
    fn unshare(&mut self, flags: nix::sched::CloneFlags) -> Result<(), Errno> {
        self.log(format!("unshare {flags:?}"));
        Ok(())
    }
    fn join_session_keyring(&mut self) -> Result<(), Errno> {
        self.log("join_session_keyring".into());
        Ok(())
    }
    fn seccomp(&mut self, profile: &super::seccomp::Profile) -> Result<(), Errno> {
        self.log(format!(
            "seccomp allow={:?} chown={}",
            profile.allow, profile.ignore_unmapped_chown
        ));
        Ok(())
    }
    fn flatten(&mut self, lowers: &[PathBuf], _: &Path, dest: &Path) -> std::io::Result<()> {
        self.log(format!("flatten {} {}", lowers.len(), dest.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoint_errors_keep_their_errno() {
        let e = Real
            .mountpoint(Path::new("/no/such/root"), Path::new("/a"), Kind::Dir)
            .unwrap_err();
        assert_eq!(e, Errno::ENOENT);
    }
}
