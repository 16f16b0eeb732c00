//! Applying real archives into real temporary directories. Nothing here needs root; run the
//! test binary as an ordinary user too (see the module report) to prove whiteouts and user
//! xattrs work unprivileged.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

/// Builds archives entry by entry, writing names raw so `..` and friends get through.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// One entry; names longer than 100 bytes go through a pax header.
    fn entry(
        &mut self,
        kind: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Tar {
        self.entry_pax(kind, name, link, mode, data, &[])
    }

    fn entry_pax(
        &mut self,
        kind: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        data: &[u8],
        extra: &[(&str, &[u8])],
    ) -> &mut Tar {
        let mut pax: Vec<(&str, &[u8])> = extra.to_vec();
        if name.len() > 100 {
            pax.push(("path", name.as_bytes()));
        }
        if link.len() > 100 {
            pax.push(("linkpath", link.as_bytes()));
        }
        if !pax.is_empty() {
            self.pax(&pax);
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = 1 + k.len() + 1 + v.len() + 1; // " k=v\n"
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..11].copy_from_slice(b"PaxHeader/x");
        h.set_cksum();
        self.b.append(&h, &body[..]).expect("append pax");
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
        self.entry(EntryType::Directory, name, "", mode, b"")
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        self.entry(EntryType::Regular, name, "", 0o644, data)
    }
    fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Tar {
        self.entry(EntryType::Regular, name, "", mode, data)
    }
    fn sym(&mut self, name: &str, target: &str) -> &mut Tar {
        self.entry(EntryType::Symlink, name, target, 0o777, b"")
    }
    fn link(&mut self, name: &str, target: &str) -> &mut Tar {
        self.entry(EntryType::Link, name, target, 0o644, b"")
    }

    fn bytes(&mut self) -> Vec<u8> {
        let mut b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.finish().expect("finish");
        b.into_inner().expect("into_inner")
    }
}

/// A temporary tree: `dest/` (the layer) and `bait/` beside it, which must never change.
/// Everything in the temporary directory but `dest` is snapshotted and must stay as it was.
struct Scene {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    bait: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        let bait = tmp.path().join("bait");
        fs_err::create_dir(&dest).expect("dest");
        fs_err::create_dir(&bait).expect("bait");
        fs_err::write(bait.join("file"), b"bait").expect("bait file");
        fs_err::create_dir(bait.join("dir")).expect("bait dir");
        fs_err::write(bait.join("dir/inner"), b"inner").expect("bait inner");
        let before = snapshot(tmp.path(), &dest);
        Scene {
            tmp,
            dest,
            bait,
            before,
        }
    }

    fn apply(&self, tar: &[u8]) -> Result<Applied, UnpackError> {
        apply_layer(tar, Compression::None, &self.dest)
    }

    /// The bait's absolute path, as a host-absolute symlink target or entry name would say it.
    fn bait_abs(&self) -> &str {
        self.bait.to_str().expect("utf-8 temp path")
    }

    #[track_caller]
    fn assert_bait_untouched(&self) {
        assert_eq!(
            snapshot(self.tmp.path(), &self.dest),
            self.before,
            "something outside the layer changed"
        );
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }
}

/// Everything observable about a tree (type, mode, links, mtime, content, xattr names).
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == skip {
            continue;
        }
        let md = fs_err::symlink_metadata(&p).expect("lstat");
        let content = if md.is_file() {
            String::from_utf8_lossy(&fs_err::read(&p).expect("read")).into_owned()
        } else {
            String::new()
        };
        out.insert(
            p.clone(),
            format!(
                "mode={:o} nlink={} mtime={} ino={} {content}",
                md.mode(),
                md.nlink(),
                md.mtime(),
                md.ino()
            ),
        );
        if md.is_dir() {
            for e in fs_err::read_dir(&p).expect("readdir") {
                stack.push(e.expect("dirent").path());
            }
        }
    }
    out
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; buf has buf.len() writable bytes.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn mode(p: &Path) -> u32 {
    fs_err::symlink_metadata(p)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

fn read(p: &Path) -> Vec<u8> {
    fs_err::read(p).expect("read")
}

fn is_whiteout(p: &Path) -> bool {
    let md = fs_err::symlink_metadata(p).expect("lstat");
    md.file_type().is_char_device() && md.rdev() == 0
}

#[track_caller]
fn expect_escape(r: Result<Applied, UnpackError>, entry: &str) {
    match r {
        Err(UnpackError::Escape { entry: e }) => assert_eq!(e, PathBuf::from(entry)),
        other => panic!("expected an escape error for {entry:?}, got {other:?}"),
    }
}

// ---- escapes -------------------------------------------------------------------------------

#[test]
fn unpack_rejects_dotdot_entry() {
    for name in [
        "../bait/x",
        "../bait/file",
        "./../bait/file",
        "a/../../bait/file",
    ] {
        let s = Scene::new();
        let tar = Tar::new().file("ok", b"1").file(name, b"evil").bytes();
        expect_escape(s.apply(&tar), name);
        s.assert_bait_untouched();
    }
    let s = Scene::new();
    let tar = Tar::new().dir("../bait/", 0o777).bytes();
    expect_escape(s.apply(&tar), "../bait/");
    s.assert_bait_untouched();
}

#[test]
fn unpack_resolves_absolute_names_inside() {
    let s = Scene::new();
    let abs = format!("{}/file", s.bait_abs());
    let tar = Tar::new()
        .file(&abs, b"evil")
        .file("/etc/abs", b"x")
        .bytes();
    s.apply(&tar).expect("apply");
    s.assert_bait_untouched();
    assert_eq!(read(&s.p(abs.trim_start_matches('/'))), b"evil");
    assert_eq!(read(&s.p("etc/abs")), b"x");
}

#[test]
fn unpack_resolves_symlink_parents_inside() {
    let s = Scene::new();
    let tar = Tar::new()
        .sym("root", "/")
        .sym("up", "../..")
        .sym("a", "b")
        .sym("b", "c")
        .sym("c", "../../../..")
        .file("root/etc/x", b"1")
        .file("up/y", b"2")
        .file("a/z", b"3")
        .bytes();
    s.apply(&tar).expect("apply");
    s.assert_bait_untouched();
    assert_eq!(read(&s.p("etc/x")), b"1");
    assert_eq!(read(&s.p("y")), b"2");
    assert_eq!(read(&s.p("z")), b"3");
    // The symlinks themselves are kept, target text and all.
    assert_eq!(
        fs_err::read_link(s.p("root")).expect("readlink"),
        Path::new("/")
    );
    assert_eq!(
        fs_err::read_link(s.p("c")).expect("readlink"),
        Path::new("../../../..")
    );
}

#[test]
fn unpack_rejects_symlink_escape() {
    // Symlinks aimed at the bait resolve inside the layer, where nothing is: refused.
    let s = Scene::new();
    let abs = s.bait_abs().to_string();
    for (link, target) in [
        ("abs", abs.as_str()),
        ("rel", "../bait"),
        ("deep", "../../../../../../.."),
    ] {
        let entry = format!("{link}/file");
        let tar = Tar::new().sym(link, target).file(&entry, b"evil").bytes();
        let r = apply_layer(&tar[..], Compression::None, &s.dest);
        if link == "deep" {
            // `..` stops at the layer root: this is just `./file`.
            r.expect("deep climb lands in the root");
            assert_eq!(read(&s.p("file")), b"evil");
        } else {
            match r {
                Err(UnpackError::InvalidEntry { entry: e, .. }) => {
                    assert_eq!(e, PathBuf::from(&entry))
                }
                other => panic!("{link} -> {target}: {other:?}"),
            }
        }
        s.assert_bait_untouched();
    }
}

#[test]
fn unpack_symlink_escape_through_directory_of_bait() {
    // A symlink to a host directory that exists, reached through a chain and a later mkdir.
    let s = Scene::new();
    let dir = format!("{}/dir", s.bait_abs());
    let tar = Tar::new()
        .sym("x", &dir)
        .sym("y", "x")
        .dir(&format!("{}/", dir.trim_start_matches('/')), 0o755)
        .file("y/inner", b"evil")
        .file("y/new", b"evil")
        .dir("y/sub", 0o700)
        .bytes();
    s.apply(&tar).expect("apply");
    s.assert_bait_untouched();
    let inside = s.p(dir.trim_start_matches('/'));
    assert_eq!(read(&inside.join("inner")), b"evil");
    assert!(inside.join("sub").is_dir());
}

#[test]
fn unpack_replaces_symlink_instead_of_following_it() {
    let s = Scene::new();
    let file = format!("{}/file", s.bait_abs());
    let tar = Tar::new()
        .sym("f", &file)
        .file_mode("f", b"new", 0o600)
        .sym("d", s.bait_abs())
        .dir("d", 0o700)
        .sym("l", "../bait/file")
        .entry(EntryType::Fifo, "l", "", 0o600, b"")
        .sym("s", &file)
        .sym("s", "/elsewhere")
        .bytes();
    s.apply(&tar).expect("apply");
    s.assert_bait_untouched();
    assert_eq!(read(&s.p("f")), b"new");
    assert!(fs_err::symlink_metadata(s.p("d")).expect("lstat").is_dir());
    assert_eq!(mode(&s.p("d")), 0o700);
    assert!(
        fs_err::symlink_metadata(s.p("l"))
            .expect("lstat")
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs_err::read_link(s.p("s")).expect("readlink"),
        Path::new("/elsewhere")
    );
}

#[test]
fn unpack_rejects_hardlink_escape() {
    for target in ["../bait/file", "/../bait/file", "a/../../bait/file"] {
        let s = Scene::new();
        let tar = Tar::new().file("a/ok", b"").link("h", target).bytes();
        expect_escape(s.apply(&tar), "h");
        s.assert_bait_untouched();
    }
    // Through a symlinked directory: resolves inside the layer, where the target is missing.
    let s = Scene::new();
    let tar = Tar::new()
        .sym("d", s.bait_abs())
        .sym("r", "../bait")
        .link("h", "d/file")
        .bytes();
    match s.apply(&tar) {
        Err(UnpackError::Hardlink { entry, target, .. }) => {
            assert_eq!(entry, PathBuf::from("h"));
            assert_eq!(target, PathBuf::from("d/file"));
        }
        other => panic!("{other:?}"),
    }
    let tar = Tar::new().sym("r", "../bait").link("h2", "r/file").bytes();
    assert!(matches!(s.apply(&tar), Err(UnpackError::Hardlink { .. })));
    s.assert_bait_untouched();
}

#[test]
fn unpack_hardlink_to_symlink_links_the_symlink() {
    let s = Scene::new();
    let file = format!("{}/file", s.bait_abs());
    let tar = Tar::new()
        .sym("s", &file)
        .sym("t", "../bait/file")
        .link("h", "s")
        .link("i", "t")
        .bytes();
    s.apply(&tar).expect("apply");
    // bait/file keeps one link: no name in the layer shares its inode.
    s.assert_bait_untouched();
    for (h, orig) in [("h", "s"), ("i", "t")] {
        let md = fs_err::symlink_metadata(s.p(h)).expect("lstat");
        assert!(md.file_type().is_symlink());
        assert_eq!(
            md.ino(),
            fs_err::symlink_metadata(s.p(orig)).expect("lstat").ino()
        );
    }
}

#[test]
fn unpack_rejects_whiteout_escape() {
    for name in [
        ".wh...",
        "a/.wh...",
        "../.wh.file",
        "../bait/.wh.file",
        "../.wh..wh..opq",
    ] {
        let s = Scene::new();
        let tar = Tar::new().file(name, b"").bytes();
        expect_escape(s.apply(&tar), name);
        s.assert_bait_untouched();
    }
    // Through symlinks: resolved inside the layer.
    let s = Scene::new();
    let tar = Tar::new()
        .sym("w", "/")
        .sym("v", "../..")
        .file("w/.wh.file", b"")
        .file("v/.wh.other", b"")
        .file("w/.wh..wh..opq", b"")
        .bytes();
    s.apply(&tar).expect("apply");
    s.assert_bait_untouched();
    assert!(is_whiteout(&s.p("file")));
    assert!(is_whiteout(&s.p("other")));
    assert_eq!(
        lgetxattr(&s.dest, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // A symlink to the bait itself is dangling inside the layer: refused.
    let s = Scene::new();
    let tar = Tar::new()
        .sym("b", s.bait_abs())
        .file("b/.wh.file", b"")
        .bytes();
    assert!(matches!(
        s.apply(&tar),
        Err(UnpackError::InvalidEntry { .. })
    ));
    let tar = Tar::new()
        .sym("o", s.bait_abs())
        .file("o/.wh..wh..opq", b"")
        .bytes();
    assert!(s.apply(&tar).is_err());
    s.assert_bait_untouched();
    assert_eq!(lgetxattr(&s.bait, "user.overlay.opaque"), None);
}

/// Random archives from names and targets built to climb out: whatever each one does, nothing
/// outside the layer changes, and nothing panics.
#[test]
fn unpack_random_hostile_archives_stay_inside() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // Mostly names that can meet the symlinks; now and then one that climbs on its own.
    let comps = [
        "a",
        "b",
        "c",
        "a",
        "b",
        "c",
        ".",
        "bait",
        "file",
        "dir",
        ".wh.a",
        ".wh.file",
        ".wh..wh..opq",
    ];
    for round in 0..300 {
        let s = Scene::new();
        let bait = s.bait_abs().to_string();
        let targets = [
            "/".to_string(),
            "..".to_string(),
            "../..".to_string(),
            "../bait".to_string(),
            bait.clone(),
            format!("{bait}/dir"),
            format!("{bait}/file"),
            "a".to_string(),
            "a/b".to_string(),
            "/a".to_string(),
            "b/../..".to_string(),
            "a".to_string(),
        ];
        let mut names: Vec<String> = Vec::new();
        let mut t = Tar::new();
        for _ in 0..(1 + rand(14)) {
            let mut name = [String::new(), "/".into(), "./".into()][rand(3)].clone();
            if rand(6) == 0 {
                name.push_str(bait.trim_start_matches('/'));
                name.push('/');
            }
            let parts: Vec<&str> = (0..(1 + rand(4)))
                .map(|_| match rand(60) {
                    0 => "..",
                    1 => ".wh...",
                    _ => comps[rand(comps.len())],
                })
                .collect();
            name.push_str(&parts.join("/"));
            let target = targets[rand(targets.len())].clone();
            match rand(7) {
                0 | 1 => t.file_mode(&name, b"evil", [0o644, 0o444, 0o000][rand(3)]),
                2 => t.dir(&name, [0o755, 0o555, 0o000, 0o700][rand(4)]),
                3 | 4 => t.sym(&name, &target),
                5 => {
                    let to = if names.is_empty() || rand(3) == 0 {
                        target
                    } else {
                        names[rand(names.len())].clone()
                    };
                    t.link(&name, &to)
                }
                _ => t.entry(EntryType::Fifo, &name, "", 0o644, b""),
            };
            names.push(name);
        }
        let r = s.apply(&t.bytes());
        s.assert_bait_untouched();
        // Refusals are the planned kinds, naming an entry; never a stray system error.
        assert!(
            matches!(
                r,
                Ok(_)
                    | Err(UnpackError::Escape { .. })
                    | Err(UnpackError::Hardlink { .. })
                    | Err(UnpackError::InvalidEntry { .. })
            ),
            "round {round}: {r:?}"
        );
        // Let the temporary directory go, whatever modes the archive left.
        let mut stack = vec![s.dest.clone()];
        while let Some(p) = stack.pop() {
            let md = fs_err::symlink_metadata(&p).expect("lstat");
            if md.is_dir() {
                fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
                for e in fs_err::read_dir(&p).expect("readdir") {
                    stack.push(e.expect("dirent").path());
                }
            }
        }
    }
}

// ---- overlay form --------------------------------------------------------------------------

#[test]
fn unpack_whiteouts_and_opaque_dirs() {
    let s = Scene::new();
    let tar = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.hosts", b"")
        .file(".wh.gone", b"")
        .file("deep/er/.wh.x", b"")
        .dir("usr/", 0o755)
        .file("usr/.wh..wh..opq", b"")
        .file("usr/kept", b"k")
        .file("new/.wh..wh..opq", b"")
        .file("var/.wh..wh.plnk", b"")
        // Same-layer file and whiteout: the file stays (whiteouts hide lower layers only).
        .file("etc/both", b"b")
        .file("etc/.wh.both", b"")
        .bytes();
    let applied = s.apply(&tar).expect("apply");
    for w in ["etc/hosts", "gone", "deep/er/x"] {
        assert!(is_whiteout(&s.p(w)), "{w} is not a whiteout");
    }
    assert_eq!(
        lgetxattr(&s.p("usr"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        lgetxattr(&s.p("new"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(lgetxattr(&s.p("etc"), "user.overlay.opaque"), None);
    assert_eq!(read(&s.p("usr/kept")), b"k");
    assert_eq!(read(&s.p("etc/both")), b"b");
    assert!(!s.p("var/.wh..wh.plnk").exists());
    assert!(!s.p("etc/.wh.hosts").exists());
    assert_eq!(applied.files, 10);
    // Parents the archive does not list are 0755 whatever the umask.
    assert_eq!(mode(&s.p("deep")), 0o755);
    assert_eq!(mode(&s.p("deep/er")), 0o755);
}

#[test]
fn unpack_read_only_dirs_with_contents() {
    let s = Scene::new();
    let tar = Tar::new()
        .dir("ro/", 0o555)
        .file_mode("ro/f", b"data", 0o444)
        .dir("ro/sub/", 0o555)
        .file_mode("ro/sub/g", b"g", 0o400)
        .dir("none/", 0o000)
        .file("none/h", b"h")
        .dir("ro/sub2/", 0o500)
        .file("ro/sub2/late", b"late")
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(mode(&s.p("ro")), 0o555);
    assert_eq!(mode(&s.p("ro/sub")), 0o555);
    assert_eq!(mode(&s.p("ro/sub2")), 0o500);
    assert_eq!(mode(&s.p("ro/f")), 0o444);
    assert_eq!(mode(&s.p("ro/sub/g")), 0o400);
    assert_eq!(mode(&s.p("none")), 0o000);
    assert_eq!(read(&s.p("ro/f")), b"data");
    // Let the temp dir go.
    for d in ["ro", "ro/sub", "ro/sub2", "none"] {
        fs_err::set_permissions(s.p(d), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    assert_eq!(read(&s.p("ro/sub/g")), b"g");
    assert_eq!(read(&s.p("none/h")), b"h");
}

#[test]
fn unpack_keeps_modes_and_mtimes_drops_setuid() {
    let s = Scene::new();
    let tar = Tar::new()
        .dir("bin/", 0o755)
        .file_mode("bin/su", b"su", 0o4755)
        .file_mode("bin/wall", b"w", 0o2755)
        .dir("tmp/", 0o1777)
        .file_mode("tmp/odd", b"o", 0o672)
        .entry(EntryType::Fifo, "run/fifo", "", 0o620, b"")
        .sym("bin/sh", "/usr/bin/dash")
        .file("bin/later", b"changes bin's mtime until the end")
        .entry_pax(
            EntryType::Directory,
            "precise/",
            "",
            0o755,
            b"",
            &[("mtime", b"1600000000.25")],
        )
        .entry_pax(
            EntryType::Regular,
            "precise/f",
            "",
            0o644,
            b"",
            &[("mtime", b"1500000000.000000125")],
        )
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(mode(&s.p("bin/su")), 0o755);
    assert_eq!(mode(&s.p("bin/wall")), 0o755);
    assert_eq!(mode(&s.p("tmp")), 0o1777);
    assert_eq!(mode(&s.p("tmp/odd")), 0o672);
    assert_eq!(mode(&s.p("run/fifo")), 0o620);
    for p in ["bin", "bin/su", "tmp", "tmp/odd", "bin/sh", "run/fifo"] {
        let md = fs_err::symlink_metadata(s.p(p)).expect("lstat");
        assert_eq!(md.mtime(), 1_600_000_000, "{p}");
    }
    assert_eq!(
        fs_err::read_link(s.p("bin/sh")).expect("readlink"),
        Path::new("/usr/bin/dash")
    );
}

#[test]
fn unpack_skips_device_nodes() {
    let s = Scene::new();
    let tar = Tar::new()
        .entry(EntryType::Char, "dev/null", "", 0o666, b"")
        .entry(EntryType::Block, "dev/sda", "", 0o660, b"")
        .file("after", b"a")
        .bytes();
    let applied = s.apply(&tar).expect("apply");
    assert!(!s.p("dev/null").exists());
    assert!(!s.p("dev/sda").exists());
    assert_eq!(read(&s.p("after")), b"a");
    assert_eq!(applied.files, 1);
}

#[test]
fn unpack_hardlinks_inside() {
    let s = Scene::new();
    let tar = Tar::new()
        .file_mode("usr/bin/python3.11", b"elf", 0o755)
        .link("usr/bin/python3", "usr/bin/python3.11")
        .link("/usr/bin/python", "./usr/bin/python3.11")
        .link("usr/bin/python3.11", "usr/bin/python3.11")
        .bytes();
    s.apply(&tar).expect("apply");
    let a = fs_err::metadata(s.p("usr/bin/python3.11")).expect("stat");
    let b = fs_err::metadata(s.p("usr/bin/python3")).expect("stat");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 3);
    assert_eq!(read(&s.p("usr/bin/python")), b"elf");

    let s = Scene::new();
    let tar = Tar::new().link("h", "missing").bytes();
    match s.apply(&tar) {
        Err(UnpackError::Hardlink { entry, target, .. }) => {
            assert_eq!(entry, PathBuf::from("h"));
            assert_eq!(target, PathBuf::from("missing"));
        }
        other => panic!("{other:?}"),
    }
    let tar = Tar::new().dir("d", 0o755).link("h", "d").bytes();
    assert!(matches!(s.apply(&tar), Err(UnpackError::Hardlink { .. })));
}

#[test]
fn unpack_later_entry_wins() {
    let s = Scene::new();
    let tar = Tar::new()
        .file("f", b"old")
        .file("f", b"new")
        .dir("d/", 0o755)
        .file("d/child", b"c")
        .dir("d/", 0o700)
        .file("x/y/z", b"z")
        .file("x", b"now a file")
        .dir("g/", 0o755)
        .file("g", b"g")
        .dir("g/", 0o750)
        .file("g/again", b"a")
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(read(&s.p("f")), b"new");
    assert_eq!(read(&s.p("d/child")), b"c");
    assert_eq!(mode(&s.p("d")), 0o700);
    assert_eq!(read(&s.p("x")), b"now a file");
    assert_eq!(mode(&s.p("g")), 0o750);
    assert_eq!(read(&s.p("g/again")), b"a");
}

#[test]
fn unpack_replaced_directory_forgets_its_modes() {
    let s = Scene::new();
    let tar = Tar::new()
        .dir("p/", 0o755)
        .dir("p/q/", 0o500)
        .dir("p0/", 0o700)
        .dir("p.d/", 0o710)
        .dir("p/q/r/", 0o711)
        .sym("p", "elsewhere")
        .dir("p/", 0o750)
        .file("p/q/r/x", b"x")
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(mode(&s.p("p")), 0o750);
    // Recreated implicitly: the removed tree's modes do not come back.
    assert_eq!(mode(&s.p("p/q")), 0o755);
    assert_eq!(mode(&s.p("p/q/r")), 0o755);
    assert_eq!(mode(&s.p("p0")), 0o700);
    assert_eq!(mode(&s.p("p.d")), 0o710);
}

#[test]
fn unpack_file_under_a_file_is_refused() {
    let s = Scene::new();
    let tar = Tar::new().file("f", b"").file("f/g", b"").bytes();
    match s.apply(&tar) {
        Err(UnpackError::InvalidEntry { entry, .. }) => assert_eq!(entry, PathBuf::from("f/g")),
        other => panic!("{other:?}"),
    }
    let tar = Tar::new().sym("loop", "loop").file("loop/x", b"").bytes();
    assert!(matches!(
        s.apply(&tar),
        Err(UnpackError::InvalidEntry { .. })
    ));
}

#[test]
fn unpack_long_names() {
    let s = Scene::new();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let long_target = format!("/{long_dir}/{}", "t".repeat(130));
    let tar = Tar::new()
        .file(&long_file, b"pax")
        .sym("s", &long_target)
        .link("h", &long_file)
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(read(&s.p(&long_file)), b"pax");
    assert_eq!(
        fs_err::read_link(s.p("s")).expect("readlink"),
        Path::new(&long_target)
    );
    assert_eq!(read(&s.p("h")), b"pax");

    // GNU long names, as tar::Builder writes them.
    let s = Scene::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, &long_file, &b"gnu"[..])
        .expect("append");
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "gs", &long_target)
        .expect("append link");
    let tar = b.into_inner().expect("tar");
    s.apply(&tar).expect("apply");
    assert_eq!(read(&s.p(&long_file)), b"gnu");
    assert_eq!(
        fs_err::read_link(s.p("gs")).expect("readlink"),
        Path::new(&long_target)
    );
}

#[test]
fn unpack_keeps_user_xattrs_only() {
    let s = Scene::new();
    let tar = Tar::new()
        .entry_pax(
            EntryType::Regular,
            "f",
            "",
            0o644,
            b"x",
            &[
                ("SCHILY.xattr.user.mime_type", b"text/plain"),
                ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ],
        )
        .entry_pax(
            EntryType::Directory,
            "d",
            "",
            0o555,
            b"",
            &[("SCHILY.xattr.user.dir", b"1")],
        )
        .bytes();
    s.apply(&tar).expect("apply");
    assert_eq!(
        lgetxattr(&s.p("f"), "user.mime_type").as_deref(),
        Some(&b"text/plain"[..])
    );
    assert_eq!(lgetxattr(&s.p("f"), "security.capability"), None);
    assert_eq!(lgetxattr(&s.p("f"), "user.overlay.opaque"), None);
    assert_eq!(lgetxattr(&s.p("d"), "user.dir").as_deref(), Some(&b"1"[..]));
    fs_err::set_permissions(s.p("d"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

// ---- streams -------------------------------------------------------------------------------

fn sample_tar() -> Vec<u8> {
    let mut t = Tar::new();
    t.dir("etc/", 0o755).file("etc/os-release", b"ID=test\n");
    for i in 0..50 {
        t.file(
            &format!("usr/share/f{i}"),
            &vec![b'a' + (i % 26) as u8; 1000 * i],
        );
    }
    t.file("big", &vec![7u8; 3 << 20]);
    let mut tar = t.bytes();
    // Padding to a 10 KiB record, as tar(1) writes: part of the stream, so part of the diff_id.
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    tar
}

/// Counts what the applier pulled from the caller's reader.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn check_stream(compressed: &[u8], compression: Compression, tar: &[u8]) {
    let s = Scene::new();
    let mut input = Counting {
        inner: compressed,
        n: 0,
    };
    let applied = apply_layer(&mut input, compression, &s.dest).expect("apply");
    assert_eq!(applied.diff_id, Digest::of(tar), "{compression:?}");
    assert_eq!(
        input.n,
        compressed.len() as u64,
        "{compression:?}: input not drained"
    );
    assert_eq!(read(&s.p("etc/os-release")), b"ID=test\n");
    assert_eq!(read(&s.p("big")).len(), 3 << 20);
    assert_eq!(applied.files, 53);
    assert_eq!(
        applied.bytes,
        8 + (0..50).map(|i| 1000 * i).sum::<u64>() + (3 << 20)
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn unpack_uncompressed_diff_id_is_sha256_of_tar() {
    let tar = sample_tar();
    check_stream(&tar, Compression::None, &tar);
}

#[test]
fn unpack_gzip_single_and_multi_member() {
    let tar = sample_tar();
    check_stream(&gzip(&tar), Compression::Gzip, &tar);
    // Members split mid-header and mid-file, as pigz and concatenated blobs produce.
    let mut multi = Vec::new();
    for part in [&tar[..700], &tar[700..5000], &tar[5000..]] {
        multi.extend(gzip(part));
    }
    check_stream(&multi, Compression::Gzip, &tar);
}

#[test]
fn unpack_zstd() {
    let tar = sample_tar();
    check_stream(
        &zstd::encode_all(&tar[..], 3).expect("zstd"),
        Compression::Zstd,
        &tar,
    );
    // Two frames.
    let mut multi = zstd::encode_all(&tar[..4096], 1).expect("zstd");
    multi.extend(zstd::encode_all(&tar[4096..], 1).expect("zstd"));
    check_stream(&multi, Compression::Zstd, &tar);
}

#[test]
fn unpack_truncated_or_corrupt_input_is_an_error() {
    let tar = sample_tar();
    let gz = gzip(&tar);
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    let mut corrupt_gz = gz.clone();
    for b in &mut corrupt_gz[100..140] {
        *b ^= 0x5a;
    }
    let mut corrupt_zst = zst.clone();
    for b in &mut corrupt_zst[100..140] {
        *b ^= 0x5a;
    }
    let cases: Vec<(&str, Vec<u8>, Compression)> = vec![
        (
            "gzip truncated",
            gz[..gz.len() / 2].to_vec(),
            Compression::Gzip,
        ),
        (
            "gzip missing trailer",
            gz[..gz.len() - 4].to_vec(),
            Compression::Gzip,
        ),
        ("gzip corrupt", corrupt_gz, Compression::Gzip),
        (
            "gzip garbage",
            b"not gzip at all".to_vec(),
            Compression::Gzip,
        ),
        (
            "zstd truncated",
            zst[..zst.len() / 2].to_vec(),
            Compression::Zstd,
        ),
        ("zstd corrupt", corrupt_zst, Compression::Zstd),
        (
            "tar truncated",
            tar[..tar.len() / 3].to_vec(),
            Compression::None,
        ),
        ("tar garbage", vec![0x41; 2048], Compression::None),
    ];
    for (what, data, compression) in cases {
        let s = Scene::new();
        let r = apply_layer(&data[..], compression, &s.dest);
        assert!(r.is_err(), "{what}: {r:?}");
        // Flipped bits may decode to garbage the tar parser refuses before the checksum
        // catches them; a stream that is not compressed at all fails in the decompressor.
        if what == "gzip garbage" {
            assert!(
                matches!(r, Err(UnpackError::Decompress(_))),
                "{what}: {r:?}"
            );
        }
    }
}

#[test]
fn unpack_truncated_content_names_the_entry() {
    let tar = Tar::new().file("a", b"1").file("big", &[9u8; 4096]).bytes();
    let s = Scene::new();
    match s.apply(&tar[..512 * 4]) {
        Err(UnpackError::InvalidEntry { entry, .. }) => assert_eq!(entry, PathBuf::from("big")),
        other => panic!("{other:?}"),
    }
}

/// A tar stream cut exactly between entries reads as a shorter archive (tar has no length);
/// the diff_id differs, which is what the caller checks against the image config.
#[test]
fn unpack_truncated_between_entries_changes_diff_id() {
    let tar = Tar::new().file("a", b"1").file("b", b"2").bytes();
    let s = Scene::new();
    let cut = &tar[..1024];
    let applied = s.apply(cut).expect("apply");
    assert_eq!(applied.diff_id, Digest::of(cut));
    assert_ne!(applied.diff_id, Digest::of(&tar));
}

/// The caller's reader fails (say, the blob digest mismatches at EOF): its error comes back
/// intact, whichever stage was reading.
#[test]
fn unpack_passes_input_errors_through() {
    #[derive(Debug)]
    struct Mismatch;
    impl std::fmt::Display for Mismatch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("digest mismatch")
        }
    }
    impl std::error::Error for Mismatch {}

    struct FailAtEof<'a>(&'a [u8]);
    impl Read for FailAtEof<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other(Mismatch)),
                n => Ok(n),
            }
        }
    }

    let tar = sample_tar();
    let gz = gzip(&tar);
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    for (data, c) in [
        (&tar, Compression::None),
        (&gz, Compression::Gzip),
        (&zst, Compression::Zstd),
    ] {
        let s = Scene::new();
        match apply_layer(FailAtEof(data), c, &s.dest) {
            Err(UnpackError::Read(e)) => {
                assert!(
                    e.get_ref().is_some_and(|i| i.is::<Mismatch>()),
                    "{c:?}: {e:?}"
                );
            }
            other => panic!("{c:?}: {other:?}"),
        }
    }
}

#[test]
fn dest_must_exist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = apply_layer(
        &Tar::new().bytes()[..],
        Compression::None,
        &tmp.path().join("nope"),
    );
    assert!(matches!(r, Err(UnpackError::Dest { .. })), "{r:?}");
}

#[test]
fn media_types() {
    use Compression::*;
    let table = [
        ("application/vnd.oci.image.layer.v1.tar", Some(None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            Some(None),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(Gzip),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Some(Zstd),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(Gzip),
        ),
        ("application/vnd.docker.image.rootfs.diff.tar", Some(None)),
        ("application/vnd.oci.image.config.v1+json", Option::None),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
    ];
    for (mt, want) in table {
        assert_eq!(Compression::from_media_type(mt), want, "{mt}");
    }
}

#[test]
fn errors_name_the_entry_and_hint() {
    use crate::error::Hint;
    let e = UnpackError::Escape {
        entry: "../etc/passwd".into(),
    };
    assert_eq!(
        e.to_string(),
        "entry `../etc/passwd` points outside the layer"
    );
    assert!(e.hint().is_some());
    let e = UnpackError::Io {
        entry: "etc/.wh.x".into(),
        op: "creating whiteout",
        source: io::Error::from_raw_os_error(libc::EPERM),
    };
    assert_eq!(e.to_string(), "creating whiteout `etc/.wh.x`");
    assert!(e.hint().is_some_and(|h| h.contains("5.8")));
}
