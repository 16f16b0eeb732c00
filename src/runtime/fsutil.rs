//! Filesystem work of the launcher that is not a mount: paths resolved inside the new root,
//! the flattened-copy fallback, tree removal, and the passwd/group entries for the user.
//!
//! Invariant: a path taken from the image is resolved with its symlinks kept inside the root,
//! so an image symlink (`/home -> /etc`) can never make us create or mount anything on the host.

// std::fs here on purpose: this module returns raw errnos to the launcher (`sys::io_errno`), which fs-err's errors wrap away, and reads layers where a failure only means "ask the mounted overlay".
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use super::sys::Kind;

/// Symlinks followed in one resolution before giving up, as the kernel's ELOOP limit.
const MAX_HOPS: usize = 40;

/// `target` (absolute, as seen inside) resolved under `root` with every symlink read as if
/// `root` were `/`; missing directories are created, the last component as `kind`. A symlink
/// in the last place is replaced, since we are about to mount over it anyway. Uses `std::fs`,
/// not fs-err, because the caller needs the errno; its error names the target.
pub fn mountpoint_in_root(root: &Path, target: &Path, kind: Kind) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(target);
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let host = root.join(&next);
        let last = pending.is_empty();
        let want = if last { kind } else { Kind::Dir };
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && !last => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let link = std::fs::read_link(&host)?;
                if link.is_absolute() {
                    cur = PathBuf::new();
                }
                for c in components(&link).into_iter().rev() {
                    pending.push_front(c);
                }
                continue;
            }
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::remove_file(&host)?;
                create(&host, want)?;
            }
            Ok(m) => match (want, m.is_dir()) {
                (Kind::Dir, false) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                (Kind::File, true) => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
                _ => {}
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(&host, want)?,
            Err(e) => return Err(e),
        }
        cur = next;
    }
    Ok(root.join(cur))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn create(path: &Path, kind: Kind) -> io::Result<()> {
    match kind {
        Kind::Dir => std::fs::create_dir(path),
        Kind::File => std::fs::File::create(path).map(drop),
    }
}

/// What a path is in the merged view that overlayfs makes of `lowers` (layer directories, base
/// first), read from the layers themselves, before any overlay is mounted.
#[derive(Debug, PartialEq, Eq)]
pub enum Merged {
    /// A regular file: the topmost layer's copy.
    File(PathBuf),
    Dir,
    Missing,
    /// Something this reading does not model (a device, an `x`-marked directory of overlay's
    /// xattr whiteouts, a symlink loop, an unreadable layer): ask the mounted overlay instead.
    Unknown,
}

/// The merged view that overlayfs makes of layer directories, read from the layers themselves.
pub struct MergedView {
    /// The layers' roots that take part, top first: down to the first one marked opaque.
    roots: Vec<PathBuf>,
}

impl MergedView {
    /// The view of `lowers` (base first); `None` where a layer root's opaque mark is unreadable.
    pub fn new(lowers: &[PathBuf]) -> Option<MergedView> {
        let mut roots = Vec::new();
        for l in lowers.iter().rev() {
            roots.push(l.clone());
            if opaque(l)? {
                break;
            }
        }
        Some(MergedView { roots })
    }

    /// `path` (absolute, as seen inside) as overlayfs resolves it: the topmost layer that has a
    /// name decides; a whiteout (a 0/0 character device) hides it; a directory merges with the
    /// same directory in the layers below ([`merge_dir`]); symlinks are followed inside the
    /// view, as if the merged root were `/`. Reads only.
    pub fn lookup(&self, path: &Path) -> Merged {
        let mut dirs = self.roots.clone();
        let mut pending: VecDeque<OsString> = components(path);
        // The resolved path so far, walked again from the root after `..` or a symlink.
        let mut cur: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                cur.pop();
            } else {
                match step(&dirs, &c, pending.is_empty()) {
                    Step::Done(m) => return m,
                    Step::Dir(next) => {
                        cur.push(c);
                        dirs = next;
                        continue;
                    }
                    Step::Link(target) => {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Merged::Unknown;
                        }
                        if target.is_absolute() {
                            cur.clear();
                        }
                        for t in components(&target).into_iter().rev() {
                            pending.push_front(t);
                        }
                    }
                }
            }
            for p in cur.drain(..).rev() {
                pending.push_front(p);
            }
            dirs = self.roots.clone();
        }
        Merged::Dir
    }
}

/// Where one component of a lookup leads.
enum Step {
    Done(Merged),
    /// A directory to go on in: the layer directories it merges.
    Dir(Vec<PathBuf>),
    Link(PathBuf),
}

/// `name` in the merged directory made of `dirs` (top first); `last`: it ends the path.
fn step(dirs: &[PathBuf], name: &OsString, last: bool) -> Step {
    let found = dirs.iter().enumerate().find_map(|(i, d)| {
        let p = d.join(name);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            m => Some((i, p, m)),
        }
    });
    let (i, p, m) = match found {
        None => return Step::Done(Merged::Missing),
        Some((_, _, Err(_))) => return Step::Done(Merged::Unknown),
        Some((i, p, Ok(m))) => (i, p, m),
    };
    let t = m.file_type();
    if t.is_char_device() && m.rdev() == 0 {
        Step::Done(Merged::Missing)
    } else if t.is_file() {
        Step::Done(if last {
            Merged::File(p)
        } else {
            Merged::Missing
        })
    } else if t.is_symlink() {
        std::fs::read_link(&p).map_or(Step::Done(Merged::Unknown), Step::Link)
    } else if !t.is_dir() {
        Step::Done(Merged::Unknown)
    } else {
        match merge_dir(p, &dirs[i + 1..], name) {
            None => Step::Done(Merged::Unknown),
            Some(_) if last => Step::Done(Merged::Dir),
            Some(next) => Step::Dir(next),
        }
    }
}

/// The layer directories a merged directory is made of, top first: `top`, then `name` in each
/// of the directories `below` while it is a directory there, down to the first marked opaque;
/// a file or whiteout there hides the rest. `None` where an opaque mark is unreadable.
fn merge_dir(top: PathBuf, below: &[PathBuf], name: &OsString) -> Option<Vec<PathBuf>> {
    let mut stop = opaque(&top)?;
    let mut dirs = vec![top];
    for d in below {
        if stop {
            break;
        }
        let p = d.join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                stop = opaque(&p)?;
                dirs.push(p);
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    Some(dirs)
}

/// Whether overlay takes `dir` as opaque: `Some(true)` for `user.overlay.opaque=y`, `None` for
/// the `x` of a directory holding xattr whiteouts (not modelled) or an unreadable attribute.
fn opaque(dir: &Path) -> Option<bool> {
    match xattr::get(dir, "user.overlay.opaque") {
        Ok(None) => Some(false),
        Ok(Some(v)) if v == b"y" => Some(true),
        Ok(Some(_)) => None,
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Some(false),
        Err(_) => None,
    }
}

/// Mount points strictly below `path` in a `/proc/self/mountinfo` text, outermost first.
pub fn submounts_in(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .filter(|m| m != path && m.starts_with(path))
        .collect();
    out.sort_by_key(|p| p.components().count());
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|t| u8::from_str_radix(t, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove a tree we own even where it holds directories without write or search permission
/// (overlay's `work/work` is mode 000), or a file. Missing is fine.
pub use crate::store::remove_tree;

/// An overlay whiteout: a character device 0/0.
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Whether a layer directory carries `user.overlay.opaque=y`.
fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: path is NUL-terminated, buf outlives the call and its length is passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Apply one overlay-ready layer onto `dst` as overlayfs would show it: whiteouts delete,
/// opaque directories hide what is below, everything else replaces. Hardlinks become copies;
/// device nodes other than whiteouts, fifos and sockets are skipped.
pub fn apply_layer(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs_err::read_dir(src)? {
        let entry = entry?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let m = fs_err::symlink_metadata(&s)?;
        let ft = m.file_type();
        if is_whiteout(&m) {
            remove_tree(&d)?;
        } else if ft.is_dir() {
            let keep =
                matches!(std::fs::symlink_metadata(&d), Ok(dm) if dm.is_dir()) && !is_opaque(&s);
            if !keep {
                remove_tree(&d)?;
                fs_err::create_dir(&d)?;
            }
            // Writable while we fill it; the layer's mode afterwards.
            fs_err::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
            apply_layer(&s, &d)?;
            fs_err::set_permissions(&d, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
        } else if ft.is_file() {
            remove_tree(&d)?;
            fs_err::copy(&s, &d)?;
        } else if ft.is_symlink() {
            remove_tree(&d)?;
            fs_err::os::unix::fs::symlink(fs_err::read_link(&s)?, &d)?;
        }
    }
    Ok(())
}

/// The layer chain (base first) flattened once into `cache/<key>`, then copied fresh into the
/// empty directory `dest`, so writes to system directories never outlive the entry.
pub fn flatten(lowers: &[PathBuf], cache: &Path, dest: &Path) -> io::Result<()> {
    let mut h = sha2::Sha256::new();
    for l in lowers {
        h.update(l.as_os_str().as_bytes());
        h.update([0]);
    }
    let key = hex::encode(&h.finalize()[..12]);
    let done = cache.join(&key);
    if !done.is_dir() {
        fs_err::create_dir_all(cache)?;
        // Every builder is PID 1 of its own namespace: the entry's name tells them apart.
        let unique = dest
            .parent()
            .and_then(Path::file_name)
            .map_or_else(|| "entry".into(), |n| n.to_string_lossy().into_owned());
        let tmp = cache.join(format!(".tmp-{key}-{unique}"));
        remove_tree(&tmp)?;
        fs_err::create_dir(&tmp)?;
        for l in lowers {
            apply_layer(l, &tmp)?;
        }
        // Another entry may have finished the same copy first; either one is right.
        if std::fs::rename(&tmp, &done).is_err() && done.is_dir() {
            remove_tree(&tmp)?;
        }
    }
    apply_layer(&done, dest)
}

/// Who the command runs as, for `/etc/passwd` and `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// `passwd` with a line for `user` appended when no line has its uid; `None` when unchanged.
pub fn passwd_with(passwd: &str, user: &User) -> Option<String> {
    let has = passwd
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&user.uid.to_string()));
    if has {
        return None;
    }
    let mut out = passwd.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "{}:x:{}:{}::{}:{}\n",
        user.name, user.uid, user.gid, user.home, user.shell
    ));
    Some(out)
}

/// `group` with a group named after `user` appended when no line has its gid.
pub fn group_with(group: &str, user: &User) -> Option<String> {
    let has = group
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&user.gid.to_string()));
    if has {
        return None;
    }
    let mut out = group.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{}:x:{}:\n", user.name, user.gid));
    Some(out)
}

/// The name and login shell of `uid` in a host `/etc/passwd` text.
pub fn passwd_lookup(passwd: &str, uid: u32) -> Option<(String, String)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[2] == uid.to_string()).then(|| (f[0].to_string(), f[6].to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base: /bin -> usr/bin, usr/bin/{bash,zsh}, etc/{passwd,group}, /x -> /etc, a loop;
    /// top: a newer etc/passwd, a whiteout over usr/bin/zsh, an opaque usr/share.
    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let (base, top) = (t.path().join("base"), t.path().join("top"));
        for d in ["usr/bin", "etc", "usr/share/doc"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        for f in [
            "usr/bin/bash",
            "usr/bin/zsh",
            "etc/group",
            "usr/share/doc/x",
        ] {
            std::fs::write(base.join(f), "").unwrap();
        }
        std::fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("x")).unwrap();
        std::os::unix::fs::symlink("loop", base.join("loop")).unwrap();
        for d in ["etc", "usr/bin", "usr/share"] {
            std::fs::create_dir_all(top.join(d)).unwrap();
        }
        std::fs::write(top.join("etc/passwd"), "top\n").unwrap();
        nix::sys::stat::mknod(
            &top.join("usr/bin/zsh"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        )
        .expect("mknod of a whiteout");
        xattr::set(top.join("usr/share"), "user.overlay.opaque", b"y").unwrap();
        (t, vec![base, top])
    }

    #[test]
    fn merged_view_reads_the_layers_as_overlay_shows_them() {
        let (_t, l) = layers();
        let view = MergedView::new(&l).unwrap();
        let look = |p: &str| view.lookup(Path::new(p));
        assert_eq!(look("/etc/passwd"), Merged::File(l[1].join("etc/passwd")));
        assert_eq!(
            look("/etc/group"),
            Merged::File(l[0].join("etc/group")),
            "merged /etc"
        );
        assert_eq!(look("/bin/bash"), Merged::File(l[0].join("usr/bin/bash")));
        assert_eq!(look("/bin/zsh"), Merged::Missing, "a whiteout hides it");
        assert_eq!(
            look("/usr/share/doc/x"),
            Merged::Missing,
            "an opaque directory hides it"
        );
        assert_eq!(
            look("/x/passwd"),
            Merged::File(l[1].join("etc/passwd")),
            "inside the view"
        );
        assert_eq!(
            look("/etc/../bin/bash"),
            Merged::File(l[0].join("usr/bin/bash"))
        );
        assert_eq!(
            look("/../../etc/group"),
            Merged::File(l[0].join("etc/group"))
        );
        assert_eq!(look("/usr/bin"), Merged::Dir);
        assert_eq!(look("/etc/passwd/x"), Merged::Missing);
        assert_eq!(look("/nope/passwd"), Merged::Missing);
        assert_eq!(look("/loop/x"), Merged::Unknown);
    }

    fn user() -> User {
        User {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn passwd_appends_missing_user() {
        let out = passwd_with("root:x:0:0:root:/root:/bin/sh", &user()).unwrap();
        assert_eq!(
            out,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
        );
    }

    #[test]
    fn passwd_keeps_existing_uid() {
        assert_eq!(
            passwd_with("node:x:1000:1000::/home/node:/bin/sh\n", &user()),
            None
        );
    }

    #[test]
    fn group_appends_missing_gid() {
        assert_eq!(
            group_with("root:x:0:\n", &user()).unwrap(),
            "root:x:0:\nalice:x:1000:\n"
        );
        assert_eq!(group_with("staff:x:1000:\n", &user()), None);
    }

    #[test]
    fn host_passwd_lookup_by_uid() {
        let p = "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001:,,,:/home/bob:/usr/bin/zsh\n";
        assert_eq!(
            passwd_lookup(p, 1001),
            Some(("bob".into(), "/usr/bin/zsh".into()))
        );
        assert_eq!(passwd_lookup(p, 7), None);
    }

    #[test]
    fn submounts_sorted_and_unescaped() {
        let info = "22 1 0:21 / /sys rw - sysfs sysfs rw\n\
                    30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                    31 22 0:7 / /sys/kernel/a\\040b rw - x x rw\n\
                    40 1 0:5 / /sysx rw - x x rw\n";
        assert_eq!(
            submounts_in(info, Path::new("/sys")),
            vec![
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/kernel/a b")
            ]
        );
    }

    #[test]
    fn mountpoint_symlink_cannot_escape_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        fs_err::create_dir_all(&root).unwrap();
        fs_err::create_dir_all(&outside).unwrap();
        // An image symlink pointing at a host path must resolve inside the root.
        std::os::unix::fs::symlink(&outside, root.join("home")).unwrap();
        let p = mountpoint_in_root(&root, Path::new("/home/alice/proj"), Kind::Dir).unwrap();
        assert!(p.starts_with(&root), "{p:?}");
        assert!(p.is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Relative symlinks and `..` climbing above the root stay inside too.
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let q = mountpoint_in_root(&root, Path::new("/up/etc/hosts"), Kind::File).unwrap();
        assert_eq!(q, root.join("etc/hosts"));
        assert!(q.is_file());
    }

    #[test]
    fn mountpoint_replaces_final_symlink_and_checks_kind() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs_err::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/run/stub.conf", root.join("etc/resolv.conf")).unwrap();
        let p = mountpoint_in_root(root, Path::new("/etc/resolv.conf"), Kind::File).unwrap();
        assert!(fs_err::symlink_metadata(&p).unwrap().is_file());
        let e = mountpoint_in_root(root, Path::new("/etc"), Kind::File).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
    }

    #[test]
    fn mountpoint_symlink_loop_is_eloop() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", t.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", t.path().join("b")).unwrap();
        let e = mountpoint_in_root(t.path(), Path::new("/a/x"), Kind::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn flatten_applies_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, dest) = (t.path().join("l0"), t.path().join("l1"), t.path().join("d"));
        for d in [&l0, &l1, &dest] {
            fs_err::create_dir_all(d).unwrap();
        }
        fs_err::create_dir_all(l0.join("etc")).unwrap();
        fs_err::write(l0.join("etc/os-release"), "base").unwrap();
        fs_err::write(l0.join("etc/gone"), "x").unwrap();
        fs_err::create_dir_all(l0.join("opq")).unwrap();
        fs_err::write(l0.join("opq/hidden"), "x").unwrap();
        fs_err::create_dir_all(l1.join("etc")).unwrap();
        fs_err::write(l1.join("etc/os-release"), "top").unwrap();
        fs_err::create_dir_all(l1.join("opq")).unwrap();
        fs_err::write(l1.join("opq/kept"), "y").unwrap();
        let whiteout = nix::sys::stat::mknod(
            &l1.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        );
        let opaque = xattr_set(&l1.join("opq"), "user.overlay.opaque", b"y");
        flatten(&[l0, l1], &t.path().join("cache"), &dest).unwrap();
        assert_eq!(
            fs_err::read_to_string(dest.join("etc/os-release")).unwrap(),
            "top"
        );
        assert!(dest.join("opq/kept").exists());
        // mknod and user xattrs need privileges or filesystem support; check what we could make.
        if whiteout.is_ok() {
            assert!(!dest.join("etc/gone").exists());
        }
        if opaque {
            assert!(!dest.join("opq/hidden").exists());
        }
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) -> bool {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated; value's pointer and length match.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        rc == 0
    }
}
