//! Making a finished step's upper directory reproducible before it becomes a layer: drop what
//! differs between two builds of the same inputs (bytecode, package-manager caches and lists,
//! logs, ldconfig's auxiliary cache, overlay's bookkeeping xattrs) and the mount points the
//! runtime had to create for the project and the cache mounts; then set every entry's times
//! to one fixed instant ([`EPOCH`]), so a layer is a function of its inputs alone: its tar
//! exports byte for byte alike on every machine, and the bytecode Python writes at the first
//! import (its header holds the source's mtime) is the same for every teammate.
//!
//! Invariants: only paths inside the upper directory are touched, never followed through a
//! symlink; contents (what a step installed) are never rewritten, only removed when listed here.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Removed with everything below them.
const DROP_TREES: &[&str] = &[
    "var/cache/apt",
    "root/.cache",
    "var/cache/ldconfig/aux-cache",
];
/// Emptied, the directory itself kept.
const EMPTY_DIRS: &[&str] = &["var/lib/apt/lists", "var/log", "tmp"];
/// Overlay bookkeeping that names inodes of this machine; `user.overlay.opaque` stays.
const DROP_XATTRS: &[&str] = &[
    "user.overlay.origin",
    "user.overlay.impure",
    "user.overlay.nlink",
    "user.overlay.uuid",
];

/// Clean `upper` (a step's upper directory). `mount_points` are paths inside the container
/// that the runtime may have created as mount points (the project, cache mounts); `lowers` are
/// the layers below, to tell created mount points from directories the image has.
pub fn clean_upper(upper: &Path, lowers: &[PathBuf], mount_points: &[PathBuf]) -> io::Result<()> {
    for rel in DROP_TREES {
        crate::store::remove_tree(&upper.join(rel))?;
    }
    for rel in EMPTY_DIRS {
        let dir = upper.join(rel);
        if fs_err::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            for e in fs_err::read_dir(&dir)? {
                crate::store::remove_tree(&e?.path())?;
            }
        }
    }
    for target in mount_points {
        remove_created_mount_point(upper, lowers, target)?;
    }
    walk(upper)?;
    clamp_times(upper)
}

/// The instant every tool-layer entry is stamped with: 1980-01-01T00:00:00Z, the earliest a ZIP
/// file can record, so a wheel built from layer files (`pip wheel`, zipimport) still works.
pub const EPOCH: i64 = 315_532_800;

/// Every entry below `dir`, then `dir` itself (a child's times never move its parent's), to
/// [`EPOCH`], symlinks as links (utimensat(2) with AT_SYMLINK_NOFOLLOW).
pub fn clamp_times(dir: &Path) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(EPOCH, 0);
    for e in fs_err::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            clamp_times(&e.path())?;
        } else {
            utimensat(
                nix::fcntl::AT_FDCWD,
                &e.path(),
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io::Error::from)?;
        }
    }
    utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Bytecode and overlay xattrs, everywhere.
fn walk(dir: &Path) -> io::Result<()> {
    strip_xattrs(dir);
    for e in fs_err::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        let ty = e.file_type()?;
        let name = e.file_name();
        if ty.is_dir() {
            if name == "__pycache__" {
                crate::store::remove_tree(&path)?;
            } else {
                walk(&path)?;
            }
        } else if ty.is_file() && path.extension().is_some_and(|x| x == "pyc" || x == "pyo") {
            fs_err::remove_file(&path)?;
        } else if !ty.is_symlink() {
            strip_xattrs(&path);
        }
    }
    Ok(())
}

fn strip_xattrs(path: &Path) {
    // One listxattr per entry, not a removexattr per name: absent is the common case, and a
    // python layer has tens of thousands of entries. An error leaves a harmless attribute.
    let Ok(names) = xattr::list(path) else {
        return;
    };
    for name in names {
        if DROP_XATTRS.iter().any(|d| name == std::ffi::OsStr::new(d)) {
            let _ = xattr::remove(path, &name);
        }
    }
}

/// The first component of `target` the lowers lack was created by the runtime as a mount point
/// (an empty directory chain, or an empty file): remove it from the upper directory.
fn remove_created_mount_point(upper: &Path, lowers: &[PathBuf], target: &Path) -> io::Result<()> {
    let mut rel = PathBuf::new();
    for c in target.components() {
        let Component::Normal(name) = c else { continue };
        rel.push(name);
        let in_lowers = lowers
            .iter()
            .any(|l| fs_err::symlink_metadata(l.join(&rel)).is_ok());
        if in_lowers {
            continue;
        }
        let here = upper.join(&rel);
        if only_empty(&here)? {
            crate::store::remove_tree(&here)?;
        }
        return Ok(());
    }
    Ok(())
}

/// An empty regular file, or a directory holding nothing but such directories.
fn only_empty(path: &Path) -> io::Result<bool> {
    let Ok(meta) = fs_err::symlink_metadata(path) else {
        return Ok(false);
    };
    if meta.is_file() {
        return Ok(meta.len() == 0);
    }
    if !meta.is_dir() {
        return Ok(false);
    }
    for e in fs_err::read_dir(path)? {
        if !only_empty(&e?.path())? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, data).unwrap();
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs_err::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() && !p.is_symlink() {
                    go(root, &p, out);
                }
            }
        }
        go(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn caches_logs_bytecode_and_created_mount_points_go_installed_files_stay() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        for d in ["home", "var/log", "root"] {
            fs_err::create_dir_all(lower.join(d)).unwrap();
        }
        let up = t.path().join("upper");
        write(&up, "opt/venv/lib/six.py", "x");
        write(&up, "opt/venv/lib/__pycache__/six.cpython-311.pyc", "b");
        write(&up, "opt/venv/lib/stray.pyc", "b");
        write(&up, "usr/bin/jq", "elf");
        write(&up, "var/lib/dpkg/status", "Package: jq");
        write(&up, "var/cache/apt/pkgcache.bin", "c");
        write(&up, "var/lib/apt/lists/index.example_Release", "r");
        write(&up, "var/log/dpkg.log", "2026-11-28 install jq");
        write(&up, "var/log/apt/history.log", "h");
        write(&up, "var/cache/ldconfig/aux-cache", "inodes");
        write(&up, "root/.cache/pip/http/x", "c");
        fs_err::create_dir_all(up.join("home/alice/proj")).unwrap();
        fs_err::create_dir_all(up.join("work/deep/proj")).unwrap();
        // A step that wrote into a directory the image lacks keeps it.
        write(&up, "data/model.bin", "weights");
        let lowers = vec![lower];
        let mounts = [
            PathBuf::from("/home/alice/proj"),
            PathBuf::from("/work/deep/proj"),
            PathBuf::from("/data/sub"),
        ];
        clean_upper(&up, &lowers, &mounts).unwrap();
        assert_eq!(
            listing(&up),
            [
                "data",
                "data/model.bin",
                "home",
                "opt",
                "opt/venv",
                "opt/venv/lib",
                "opt/venv/lib/six.py",
                "root",
                "usr",
                "usr/bin",
                "usr/bin/jq",
                "var",
                "var/cache",
                "var/cache/ldconfig",
                "var/lib",
                "var/lib/apt",
                "var/lib/apt/lists",
                "var/lib/dpkg",
                "var/lib/dpkg/status",
                "var/log",
            ]
            .map(String::from)
            .to_vec(),
            "the image has /home: home/alice was created for the mount, /work too"
        );
    }

    #[test]
    fn a_created_chain_goes_from_its_first_missing_component() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        fs_err::create_dir_all(&lower).unwrap();
        let up = t.path().join("upper");
        fs_err::create_dir_all(up.join("home/alice/proj")).unwrap();
        write(&up, "etc/resolv.conf", "");
        clean_upper(
            &up,
            &[lower],
            &["/home/alice/proj".into(), "/etc/resolv.conf".into()],
        )
        .unwrap();
        assert!(listing(&up).is_empty(), "{:?}", listing(&up));
    }

    /// Overlay's bookkeeping goes; `user.overlay.opaque` and other attributes stay.
    #[test]
    fn overlay_bookkeeping_xattrs_go_others_stay() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        write(&upper, "opt/x/file", "x");
        let file = upper.join("opt/x/file");
        let dir = upper.join("opt/x");
        if xattr::set(&file, "user.overlay.origin", b"o").is_err() {
            panic!(
                "{} has no user xattrs: run the unit tests on ext4, xfs or btrfs",
                t.path().display()
            );
        }
        xattr::set(&file, "user.keep", b"k").unwrap();
        xattr::set(&dir, "user.overlay.impure", b"y").unwrap();
        xattr::set(&dir, "user.overlay.opaque", b"y").unwrap();
        clean_upper(&upper, &[], &[]).unwrap();
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = xattr::list(p)
                .unwrap()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&file), ["user.keep"]);
        assert_eq!(names(&dir), ["user.overlay.opaque"]);
    }
}
