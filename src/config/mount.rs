//! `[container].mounts` entries: `path`, `src:dst`, `src:dst:ro`, `path:ro` (and `rw`).
//!
//! `~` and `~/x` expand with the host's `$HOME`; relative sources are relative to the project
//! directory; the target defaults to the source; after expansion both are absolute and lexically
//! normalized (no `.` or `..`). This module only computes paths: it never touches the
//! filesystem, so a missing source is the runtime's to report.

use std::path::{Component, Path, PathBuf};

use super::Mount;

/// Where relative and `~` paths in mounts are resolved from.
#[derive(Clone, Debug)]
pub struct Expansion {
    pub project_dir: PathBuf,
    /// `$HOME`; `None` when unset, which makes `~` an error.
    pub home: Option<PathBuf>,
}

impl Expansion {
    /// The project directory, and `$HOME` from the environment.
    pub fn from_env(project_dir: &Path) -> Expansion {
        Expansion {
            project_dir: project_dir.to_path_buf(),
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Parse one mount entry; the error is the reason, for a diagnostic at the entry.
pub fn parse_mount(spec: &str, exp: &Expansion) -> Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, option) = match parts.as_slice() {
        [src] => (*src, None, None),
        [src, opt] if is_option(opt) => (*src, None, Some(*opt)),
        [src, dst] => (*src, Some(*dst), None),
        [src, dst, opt] => (*src, Some(*dst), Some(*opt)),
        _ => {
            return Err(format!(
                "mount `{spec}` has too many `:`; expected path, src:dst, src:dst:ro or path:ro"
            ));
        }
    };
    let read_only = match option {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "mount `{spec}` has option `{other}`, expected ro or rw"
            ));
        }
    };
    if source.is_empty() || target.is_some_and(str::is_empty) {
        return Err(format!("mount `{spec}` has an empty path"));
    }
    let source = expand(source, exp)?;
    let source = normalize(&exp.project_dir.join(source));
    let target = match target {
        None => source.clone(),
        Some(t) => {
            let expanded = expand(t, exp)?;
            if !expanded.is_absolute() {
                return Err(format!(
                    "mount target `{t}` is not an absolute path inside the container"
                ));
            }
            normalize(&expanded)
        }
    };
    if target == Path::new("/") {
        return Err(format!(
            "mount `{spec}` would cover the container's root directory"
        ));
    }
    Ok(Mount {
        source,
        target,
        read_only,
    })
}

fn is_option(s: &str) -> bool {
    matches!(s, "ro" | "rw")
}

/// `~` → `$HOME`, `~/x` → `$HOME/x`; `~user` is not supported.
fn expand(path: &str, exp: &Expansion) -> Result<PathBuf, String> {
    let rest = match path.strip_prefix('~') {
        None => return Ok(PathBuf::from(path)),
        Some(rest) => rest,
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(format!(
            "`{path}`: only `~` and `~/…` are expanded, not `~user`"
        ));
    }
    let home = exp
        .home
        .as_ref()
        .ok_or_else(|| format!("`{path}` needs $HOME, which is not set"))?;
    Ok(home.join(rest.trim_start_matches('/')))
}

/// Remove `.` and resolve `..` lexically; `..` never climbs above `/`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expansion {
        Expansion {
            project_dir: "/work/proj".into(),
            home: Some("/home/ana".into()),
        }
    }

    fn mount(s: &str, t: &str, ro: bool) -> Mount {
        Mount {
            source: s.into(),
            target: t.into(),
            read_only: ro,
        }
    }

    #[test]
    fn mount_forms() {
        let e = exp();
        let cases = [
            ("~", mount("/home/ana", "/home/ana", false)),
            (
                "~/.cache/huggingface",
                mount(
                    "/home/ana/.cache/huggingface",
                    "/home/ana/.cache/huggingface",
                    false,
                ),
            ),
            ("/data", mount("/data", "/data", false)),
            ("/data:ro", mount("/data", "/data", true)),
            ("/data:/mnt/data", mount("/data", "/mnt/data", false)),
            ("/data:/mnt/data:ro", mount("/data", "/mnt/data", true)),
            ("/data:/mnt/data:rw", mount("/data", "/mnt/data", false)),
            ("data", mount("/work/proj/data", "/work/proj/data", false)),
            (
                "./data/../models:/models:ro",
                mount("/work/proj/models", "/models", true),
            ),
            ("../shared", mount("/work/shared", "/work/shared", false)),
            ("/x:~/x", mount("/x", "/home/ana/x", false)),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_mount(spec, &e), Ok(want), "{spec}");
        }
    }

    #[test]
    fn mount_errors_say_why() {
        let e = exp();
        let cases = [
            ("", "empty path"),
            ("/a::ro", "empty path"),
            ("/a:b", "not an absolute path"),
            ("/a:/b:rx", "option `rx`"),
            ("/a:/b:ro:x", "too many `:`"),
            ("~bob/x", "not `~user`"),
            ("/:/", "root directory"),
            ("/a:/..", "root directory"),
        ];
        for (spec, want) in cases {
            let err = parse_mount(spec, &e).expect_err(spec);
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn tilde_without_home_is_an_error() {
        let e = Expansion {
            home: None,
            ..exp()
        };
        let err = parse_mount("~/.cache", &e).expect_err("no home");
        assert!(err.contains("$HOME"), "{err}");
        assert!(parse_mount("/data", &e).is_ok());
    }
}
