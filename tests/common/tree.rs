//! A directory tree as data, to assert what a layer in the store (or a bait directory) holds:
//! paths, types, permission bits, file contents, symlink targets, whiteouts and the opaque
//! xattr. Ownership is checked separately ([`Tree::assert_owned_by`]).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        opaque: bool,
    },
    File {
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    /// An overlay whiteout: a character device 0/0.
    Whiteout,
    /// Anything else (other devices, fifos, sockets): described, never expected.
    Other(String),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir { mode, opaque } => {
                write!(f, "dir {mode:04o}{}", if *opaque { " opaque" } else { "" })
            }
            Node::File { mode, data } => match std::str::from_utf8(data) {
                Ok(s) if data.len() <= 200 => write!(f, "file {mode:04o} {s:?}"),
                _ => write!(f, "file {mode:04o} <{} bytes>", data.len()),
            },
            Node::Symlink { target } => write!(f, "symlink -> {target}"),
            Node::Whiteout => write!(f, "whiteout"),
            Node::Other(s) => write!(f, "other: {s}"),
        }
    }
}

/// Relative path (`a/b`, no leading `./`) → node; the root itself is not an entry.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Tree(pub BTreeMap<String, Node>);

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tree {\n")?;
        for (p, n) in &self.0 {
            writeln!(f, "  {p}: {n:?}")?;
        }
        f.write_str("}")
    }
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Tree {
        self.0.insert(
            path.into(),
            Node::Dir {
                mode,
                opaque: false,
            },
        );
        self
    }
    pub fn opaque_dir(mut self, path: &str, mode: u32) -> Tree {
        self.0.insert(path.into(), Node::Dir { mode, opaque: true });
        self
    }
    pub fn file(mut self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Tree {
        self.0.insert(
            path.into(),
            Node::File {
                mode,
                data: data.as_ref().to_vec(),
            },
        );
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Tree {
        self.0.insert(
            path.into(),
            Node::Symlink {
                target: target.into(),
            },
        );
        self
    }
    pub fn whiteout(mut self, path: &str) -> Tree {
        self.0.insert(path.into(), Node::Whiteout);
        self
    }

    /// Reads `root` recursively without following symlinks.
    pub fn read(root: &Path) -> Tree {
        let mut t = Tree::new();
        walk(root, root, &mut t.0);
        t
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.0.get(path)
    }

    /// Panics unless every entry under `root` (and `root`) belongs to `uid`:`gid`.
    #[track_caller]
    pub fn assert_owned_by(root: &Path, uid: u32, gid: u32) {
        let mut bad = Vec::new();
        owned(root, uid, gid, &mut bad);
        assert!(
            bad.is_empty(),
            "entries under {} not owned by {uid}:{gid}: {bad:#?}",
            root.display()
        );
    }
}

fn owned(p: &Path, uid: u32, gid: u32, bad: &mut Vec<String>) {
    let meta = fs_err::symlink_metadata(p).unwrap();
    if meta.uid() != uid || meta.gid() != gid {
        bad.push(format!("{} ({}:{})", p.display(), meta.uid(), meta.gid()));
    }
    if meta.is_dir() {
        for e in fs_err::read_dir(p).unwrap() {
            owned(&e.unwrap().path(), uid, gid, bad);
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let meta = fs_err::symlink_metadata(&p).unwrap();
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let node = if ft.is_dir() {
            Node::Dir {
                mode,
                opaque: xattr(&p, "user.overlay.opaque").as_deref() == Some(b"y".as_slice()),
            }
        } else if ft.is_file() {
            Node::File {
                mode,
                data: fs_err::read(&p).unwrap(),
            }
        } else if ft.is_symlink() {
            Node::Symlink {
                target: fs_err::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if ft.is_char_device() && meta.rdev() == 0 {
            Node::Whiteout
        } else {
            Node::Other(format!("{ft:?} rdev {:#x} mode {mode:o}", meta.rdev()))
        };
        let recurse = ft.is_dir();
        out.insert(rel, node);
        if recurse {
            walk(root, &p, out);
        }
    }
}

/// The value of extended attribute `name` on `path` (not following symlinks), if set.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and outlive the call; buf is writable for its
    // length, which is what we pass.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}
