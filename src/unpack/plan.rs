//! Plan: one tar entry in, one [`Op`] out, on paths already proven to stay inside the layer.
//!
//! Pure: no I/O, so every escape kind is tested here as a table. What this module guarantees is
//! lexical: a [`RelPath`] has no empty, `.` or `..` component and no NUL, so it names something
//! below the layer root *as text*. Symlinks met while resolving it are the applier's business
//! (`apply.rs`), which resolves with `RESOLVE_IN_ROOT`.
//!
//! Decisions (the issue asks to refuse what cannot be contained):
//! - Leading `/` and `./` are stripped: absolute names resolve inside the layer, as a container
//!   sees them.
//! - `..` that stays below the root is folded lexically (`a/../b` is `b`, as containerd's
//!   `Clean("/" + name)` does); `..` that would climb above the root is an [`UnpackError::Escape`],
//!   not clamped.
//! - Hard link targets are archive paths and get the same treatment.
//! - Whiteout `.wh.NAME` names NAME beside it; NAME `..` is an escape, empty or `.` is invalid.
//!   `.wh..wh..opq` marks its directory opaque; other `.wh..wh.` names (aufs metadata) are skipped.
//! - setuid and setgid bits are dropped (ownership is flattened to the user, so they would grant
//!   nothing the image meant); sticky and rwx bits are kept.
//! - Only `user.*` extended attributes are kept, and not `user.overlay.*`: overlay attributes of
//!   a layer come only from whiteout translation, never from the archive.
//! - Device nodes and pax global headers are skipped; unknown entry types are refused.
//!
//! And in the applier: a parent that does not resolve to a directory inside the layer (a
//! dangling or looping symlink, a file) is an invalid entry, since we never create a symlink's
//! target; a hard link to a symlink links the symlink itself, never what it points to.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tar::EntryType;

use super::UnpackError;

/// Prefix of an OCI whiteout file.
const WHITEOUT: &[u8] = b".wh.";
/// An OCI opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of aufs metadata entries (hard link directories and the like).
const WHITEOUT_META: &[u8] = b".wh..wh.";

/// A normalised path inside the layer: components joined by `/`, none empty, `.` or `..`,
/// no NUL. Empty means the layer root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<u8>);

/// Why a name could not become a [`RelPath`].
#[derive(Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// A `..` climbs above the layer root.
    Escape,
    /// The name contains a NUL byte.
    Nul,
    /// The name is empty.
    Empty,
}

impl RelPath {
    /// Normalise an archive name: strip leading `/` and `./`, fold `.` and `..`, refuse `..`
    /// climbing above the root.
    pub fn parse(raw: &[u8]) -> Result<RelPath, PathProblem> {
        if raw.is_empty() {
            return Err(PathProblem::Empty);
        }
        if raw.contains(&0) {
            return Err(PathProblem::Nul);
        }
        let mut out: Vec<u8> = Vec::with_capacity(raw.len());
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if out.is_empty() {
                        return Err(PathProblem::Escape);
                    }
                    let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    out.truncate(cut);
                }
                _ => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(comp);
                }
            }
        }
        Ok(RelPath(out))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parent path and last component; `None` for the root.
    pub fn split(&self) -> Option<(&[u8], &[u8])> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[][..], &self.0[..]),
        })
    }

    /// `self/name`; `name` must be one valid component.
    fn join(&self, name: &[u8]) -> RelPath {
        let mut out = self.0.clone();
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(name);
        RelPath(out)
    }

    #[cfg(test)]
    pub fn new(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).expect("valid test path")
    }
}

/// An extended attribute to set: the name without the `SCHILY.xattr.` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A modification time since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mtime {
    pub secs: i64,
    /// Always below 1e9.
    pub nanos: u32,
}

impl From<i64> for Mtime {
    fn from(secs: i64) -> Mtime {
        Mtime { secs, nanos: 0 }
    }
}

impl Mtime {
    /// A pax `mtime` record: decimal seconds, optionally signed, with an optional fraction
    /// (`1700000000.123456789`); digits past nanoseconds are dropped.
    pub fn parse_pax(raw: &[u8]) -> Option<Mtime> {
        let s = std::str::from_utf8(raw).ok()?;
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let int: i64 = int.parse().ok()?;
        let digits = &frac[..frac.len().min(9)];
        let nanos = if digits.is_empty() {
            0
        } else {
            digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
        };
        Some(match (neg, nanos) {
            (false, _) => Mtime { secs: int, nanos },
            (true, 0) => Mtime {
                secs: -int,
                nanos: 0,
            },
            (true, n) => Mtime {
                secs: -int - 1,
                nanos: 1_000_000_000 - n,
            },
        })
    }
}

/// Permissions, time and attributes of a created object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, setuid/setgid already dropped.
    pub mode: u32,
    pub mtime: Mtime,
    pub xattrs: Vec<Xattr>,
}

/// What one entry does to the layer directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create (or merge into) a directory; the root for the `./` entry.
    Mkdir {
        path: RelPath,
        meta: Meta,
    },
    /// A regular file with `size` bytes of content following in the stream.
    File {
        path: RelPath,
        meta: Meta,
        size: u64,
    },
    /// A symlink; the target text is kept as is and never followed by the applier.
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        mtime: Mtime,
    },
    /// A hard link to an entry earlier in this layer.
    Hardlink {
        path: RelPath,
        target: RelPath,
    },
    Fifo {
        path: RelPath,
        meta: Meta,
    },
    /// An overlay whiteout (0/0 character device) at `path`.
    Whiteout {
        path: RelPath,
    },
    /// Mark `dir` opaque (`user.overlay.opaque=y`).
    Opaque {
        dir: RelPath,
    },
    /// Nothing to do.
    Skip {
        reason: &'static str,
    },
}

/// What the plan needs from a tar entry.
#[derive(Debug)]
pub struct EntryInfo<'a> {
    pub path: &'a [u8],
    pub kind: EntryType,
    pub link: Option<&'a [u8]>,
    pub mode: u32,
    pub mtime: Mtime,
    pub size: u64,
    /// (name, value) pairs from `SCHILY.xattr.*` pax records.
    pub xattrs: Vec<Xattr>,
}

/// An entry's name as errors show it.
pub fn entry_name(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(raw))
}

/// Permission bits kept: rwx for all and sticky; setuid and setgid dropped.
pub const MODE_MASK: u32 = 0o1777;

/// Turn one entry into one operation.
pub fn plan_entry(e: &EntryInfo<'_>) -> Result<Op, UnpackError> {
    let entry = || entry_name(e.path);
    let invalid = |reason: &str| UnpackError::InvalidEntry {
        entry: entry(),
        reason: reason.to_string(),
    };
    let path = match RelPath::parse(e.path) {
        Ok(p) => p,
        Err(PathProblem::Escape) => return Err(UnpackError::Escape { entry: entry() }),
        Err(PathProblem::Nul) => return Err(invalid("the name contains a NUL byte")),
        Err(PathProblem::Empty) => return Err(invalid("the name is empty")),
    };

    match e.kind {
        EntryType::XGlobalHeader => {
            return Ok(Op::Skip {
                reason: "pax global header",
            });
        }
        EntryType::Char | EntryType::Block => {
            return Ok(Op::Skip {
                reason: "device node",
            });
        }
        _ => {}
    }

    let Some((parent, name)) = path.split() else {
        // The layer root itself: only a directory entry (`./`) makes sense.
        return match e.kind {
            EntryType::Directory => Ok(Op::Mkdir {
                path,
                meta: meta(e),
            }),
            _ => Err(invalid("only a directory may name the layer root")),
        };
    };

    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        let parent = RelPath(parent.to_vec());
        if name == OPAQUE {
            return Ok(Op::Opaque { dir: parent });
        }
        if name.starts_with(WHITEOUT_META) {
            return Ok(Op::Skip {
                reason: "aufs metadata",
            });
        }
        return match hidden {
            b".." => Err(UnpackError::Escape { entry: entry() }),
            b"" | b"." => Err(invalid("the whiteout names no file")),
            _ => Ok(Op::Whiteout {
                path: parent.join(hidden),
            }),
        };
    }

    Ok(match e.kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Op::File {
            path,
            meta: meta(e),
            size: e.size,
        },
        EntryType::Directory => Op::Mkdir {
            path,
            meta: meta(e),
        },
        EntryType::Fifo => Op::Fifo {
            path,
            meta: meta(e),
        },
        EntryType::Symlink => {
            let target = e.link.unwrap_or_default();
            if target.is_empty() {
                return Err(invalid("the symlink has no target"));
            }
            if target.contains(&0) {
                return Err(invalid("the symlink target contains a NUL byte"));
            }
            Op::Symlink {
                path,
                target: target.to_vec(),
                mtime: e.mtime,
            }
        }
        EntryType::Link => {
            let raw = e.link.unwrap_or_default();
            let target = match RelPath::parse(raw) {
                Ok(t) if t.is_root() => {
                    return Err(UnpackError::Hardlink {
                        entry: entry(),
                        target: entry_name(raw),
                        reason: "the target is the layer root",
                    });
                }
                Ok(t) => t,
                Err(PathProblem::Escape) => return Err(UnpackError::Escape { entry: entry() }),
                Err(PathProblem::Nul) => {
                    return Err(invalid("the link target contains a NUL byte"));
                }
                Err(PathProblem::Empty) => return Err(invalid("the hard link has no target")),
            };
            if target == path {
                return Ok(Op::Skip {
                    reason: "hard link to itself",
                });
            }
            Op::Hardlink { path, target }
        }
        other => {
            return Err(invalid(&format!(
                "unsupported entry type {:?}",
                char::from(other.as_byte())
            )));
        }
    })
}

/// Mode, time and the extended attributes we keep.
fn meta(e: &EntryInfo<'_>) -> Meta {
    let xattrs = e
        .xattrs
        .iter()
        .filter(|x| {
            let keep = x.name.starts_with(b"user.") && !x.name.starts_with(b"user.overlay.");
            if !keep {
                tracing::debug!(
                    entry = %entry_name(e.path).display(),
                    xattr = %String::from_utf8_lossy(&x.name),
                    "dropping extended attribute outside user.*"
                );
            }
            keep && !x.name.contains(&0)
        })
        .cloned()
        .collect();
    Meta {
        mode: e.mode & MODE_MASK,
        mtime: e.mtime,
        xattrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(path: &'a str, kind: EntryType, link: Option<&'a str>) -> EntryInfo<'a> {
        EntryInfo {
            path: path.as_bytes(),
            kind,
            link: link.map(str::as_bytes),
            mode: 0o644,
            mtime: 7.into(),
            size: 0,
            xattrs: Vec::new(),
        }
    }

    fn m(mode: u32) -> Meta {
        Meta {
            mode,
            mtime: 7.into(),
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn relpath_normalises_or_refuses() {
        let table: &[(&str, Result<&str, PathProblem>)] = &[
            ("a", Ok("a")),
            ("a/b/c", Ok("a/b/c")),
            ("./a/b", Ok("a/b")),
            ("/a/b", Ok("a/b")),
            ("///a//b/", Ok("a/b")),
            ("a/./b/.", Ok("a/b")),
            ("a/../b", Ok("b")),
            ("a/b/../../c", Ok("c")),
            ("a/..", Ok("")),
            (".", Ok("")),
            ("./", Ok("")),
            ("/", Ok("")),
            ("..", Err(PathProblem::Escape)),
            ("../x", Err(PathProblem::Escape)),
            ("/../x", Err(PathProblem::Escape)),
            ("./../x", Err(PathProblem::Escape)),
            ("a/../../x", Err(PathProblem::Escape)),
            ("a/b/../../../etc/passwd", Err(PathProblem::Escape)),
            ("a/\0/b", Err(PathProblem::Nul)),
            ("", Err(PathProblem::Empty)),
            ("...", Ok("...")),
            ("..a/b..", Ok("..a/b..")),
        ];
        for (raw, want) in table {
            let got = RelPath::parse(raw.as_bytes());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g.as_bytes(), w.as_bytes(), "{raw:?}"),
                (Err(g), Err(w)) => assert_eq!(&g, w, "{raw:?}"),
                (g, w) => panic!("{raw:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn relpath_split() {
        let p = RelPath::new("a/b/c");
        assert_eq!(p.split(), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(RelPath::new("a").split(), Some((&b""[..], &b"a"[..])));
        assert_eq!(RelPath::new("/").split(), None);
    }

    /// Every kind of name that climbs out of the layer is an escape, whatever the entry type.
    #[test]
    fn plan_refuses_every_lexical_escape() {
        use EntryType::*;
        let table: &[(&str, EntryType, Option<&str>)] = &[
            ("../x", Regular, None),
            ("../x", Directory, None),
            ("/../x", Regular, None),
            ("a/../../x", Regular, None),
            ("..", Directory, None),
            ("../x", Symlink, Some("y")),
            ("../x", Fifo, None),
            ("../x", Link, Some("a")),
            ("h", Link, Some("../outside")),
            ("h", Link, Some("/../outside")),
            ("h", Link, Some("a/../../outside")),
            (".wh...", Regular, None),
            ("a/.wh...", Regular, None),
            ("../.wh.x", Regular, None),
            ("../.wh..wh..opq", Regular, None),
            ("a/../../.wh.x", Regular, None),
        ];
        for (path, kind, link) in table {
            match plan_entry(&info(path, *kind, *link)) {
                Err(UnpackError::Escape { entry }) => {
                    assert_eq!(entry, PathBuf::from(path), "{path:?}")
                }
                other => panic!("{path:?} {kind:?} {link:?}: expected escape, got {other:?}"),
            }
        }
    }

    #[test]
    fn plan_maps_entries_to_ops() {
        use EntryType::*;
        let p = RelPath::new;
        let table: Vec<(EntryInfo<'_>, Op)> = vec![
            (
                info("etc/passwd", Regular, None),
                Op::File {
                    path: p("etc/passwd"),
                    meta: m(0o644),
                    size: 0,
                },
            ),
            (
                info("/abs/file", Regular, None),
                Op::File {
                    path: p("abs/file"),
                    meta: m(0o644),
                    size: 0,
                },
            ),
            (
                info("./usr/", Directory, None),
                Op::Mkdir {
                    path: p("usr"),
                    meta: m(0o644),
                },
            ),
            (
                info("./", Directory, None),
                Op::Mkdir {
                    path: p("."),
                    meta: m(0o644),
                },
            ),
            (
                info("bin/sh", Symlink, Some("/usr/bin/dash")),
                Op::Symlink {
                    path: p("bin/sh"),
                    target: b"/usr/bin/dash".to_vec(),
                    mtime: 7.into(),
                },
            ),
            (
                info("up", Symlink, Some("../../..")),
                Op::Symlink {
                    path: p("up"),
                    target: b"../../..".to_vec(),
                    mtime: 7.into(),
                },
            ),
            (
                info("a/h", Link, Some("./b/f")),
                Op::Hardlink {
                    path: p("a/h"),
                    target: p("b/f"),
                },
            ),
            (
                info("h", Link, Some("/b/f")),
                Op::Hardlink {
                    path: p("h"),
                    target: p("b/f"),
                },
            ),
            (
                info("h", Link, Some("h")),
                Op::Skip {
                    reason: "hard link to itself",
                },
            ),
            (
                info("run/p", Fifo, None),
                Op::Fifo {
                    path: p("run/p"),
                    meta: m(0o644),
                },
            ),
            (
                info("dev/null", Char, None),
                Op::Skip {
                    reason: "device node",
                },
            ),
            (
                info("dev/sda", Block, None),
                Op::Skip {
                    reason: "device node",
                },
            ),
            (
                info("pax_global_header", XGlobalHeader, None),
                Op::Skip {
                    reason: "pax global header",
                },
            ),
            (
                info("etc/.wh.hosts", Regular, None),
                Op::Whiteout {
                    path: p("etc/hosts"),
                },
            ),
            (
                info(".wh.etc", Regular, None),
                Op::Whiteout { path: p("etc") },
            ),
            (
                info("/a/.wh...x", Regular, None),
                Op::Whiteout { path: p("a/..x") },
            ),
            (
                info("etc/.wh..wh..opq", Regular, None),
                Op::Opaque { dir: p("etc") },
            ),
            (
                info(".wh..wh..opq", Regular, None),
                Op::Opaque { dir: p(".") },
            ),
            (
                info("a/.wh..wh.plnk", Directory, None),
                Op::Skip {
                    reason: "aufs metadata",
                },
            ),
            // A name that merely contains `.wh.` is an ordinary file.
            (
                info("a/x.wh.y", Regular, None),
                Op::File {
                    path: p("a/x.wh.y"),
                    meta: m(0o644),
                    size: 0,
                },
            ),
        ];
        for (e, want) in table {
            let got = plan_entry(&e).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(got, want, "{e:?}");
        }
    }

    #[test]
    fn plan_refuses_invalid_entries() {
        use EntryType::*;
        let table: &[(&str, EntryType, Option<&str>)] = &[
            ("", Regular, None),
            ("a\0b", Regular, None),
            ("./", Regular, None),
            ("/", Symlink, Some("x")),
            ("s", Symlink, Some("")),
            ("s", Symlink, None),
            ("h", Link, None),
            ("a/.wh.", Regular, None),
            ("a/.wh..", Regular, None),
            ("x", EntryType::new(b'V'), None),
        ];
        for (path, kind, link) in table {
            match plan_entry(&info(path, *kind, *link)) {
                Err(UnpackError::InvalidEntry { .. }) => {}
                other => panic!("{path:?} {kind:?}: expected invalid entry, got {other:?}"),
            }
        }
        match plan_entry(&info("h", Link, Some("./"))) {
            Err(UnpackError::Hardlink { entry, .. }) => assert_eq!(entry, PathBuf::from("h")),
            other => panic!("hard link to root: {other:?}"),
        }
    }

    #[test]
    fn pax_mtimes() {
        let t = |secs, nanos| Some(Mtime { secs, nanos });
        let table: &[(&str, Option<Mtime>)] = &[
            ("1700000000", t(1_700_000_000, 0)),
            ("1700000000.5", t(1_700_000_000, 500_000_000)),
            ("1795875143.6996013540", t(1_795_875_143, 699_601_354)),
            ("0.000000001", t(0, 1)),
            ("-1", t(-1, 0)),
            ("-1.5", t(-2, 500_000_000)),
            ("-0.25", t(-1, 750_000_000)),
            ("12.", t(12, 0)),
            ("", None),
            (".5", None),
            ("1e9", None),
            ("1.2.3", None),
            ("--1", None),
            ("99999999999999999999", None),
        ];
        for (raw, want) in table {
            assert_eq!(Mtime::parse_pax(raw.as_bytes()), *want, "{raw:?}");
        }
    }

    #[test]
    fn plan_drops_setuid_and_setgid_keeps_sticky() {
        let mut e = info("tmp", EntryType::Directory, None);
        e.mode = 0o7777;
        let Op::Mkdir { meta, .. } = plan_entry(&e).expect("plan") else {
            panic!("not a mkdir")
        };
        assert_eq!(meta.mode, 0o1777);
        let mut e = info("bin/su", EntryType::Regular, None);
        e.mode = 0o4755;
        let Op::File { meta, .. } = plan_entry(&e).expect("plan") else {
            panic!("not a file")
        };
        assert_eq!(meta.mode, 0o755);
    }

    #[test]
    fn plan_keeps_only_user_xattrs() {
        let x = |n: &str| Xattr {
            name: n.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        let mut e = info("f", EntryType::Regular, None);
        e.xattrs = vec![
            x("user.keep"),
            x("security.capability"),
            x("security.selinux"),
            x("trusted.overlay.opaque"),
            x("system.posix_acl_access"),
            x("user.overlay.opaque"),
            x("user.overlay.redirect"),
            x("user.also"),
        ];
        let Op::File { meta, .. } = plan_entry(&e).expect("plan") else {
            panic!("not a file")
        };
        assert_eq!(meta.xattrs, vec![x("user.keep"), x("user.also")]);
    }
}
