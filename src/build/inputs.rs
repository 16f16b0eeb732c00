//! The project files a `[setup].run` step names as its `inputs`, hashed into the step's key, so
//! that `pip install ./vendor/mylib` is built again when `vendor/mylib` changes.
//!
//! Patterns are relative to the project directory: `*` and `?` match within one path
//! component, `**` matches any number of components (none included). A pattern without a
//! wildcard names a file, or a directory and everything below it.
//!
//! Invariant: nothing outside the project directory is read. A match that is a symlink is
//! hashed as the link (its target's text), never followed; a directory on the way to a match
//! that resolves outside the project is an error.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::BuildError;

/// The digest text of `patterns`' matches in `project`: one line per file, sorted by path,
/// `<path> <kind> <mode> <sha256>`; a pattern that matches nothing is an error, since it is
/// almost always a typo.
pub fn describe(project: &Path, patterns: &[String]) -> Result<String, BuildError> {
    let root = fs_err::canonicalize(project)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let parts: Vec<&str> = Path::new(pattern)
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let before = files.len();
        // Walk only from the literal part of the pattern.
        let literal = parts.iter().take_while(|p| !is_glob(p)).count();
        let start: PathBuf = parts[..literal].iter().collect();
        let rest = &parts[literal..];
        let dir = root.join(&start);
        inside(&root, &dir, pattern)?;
        if rest.is_empty() {
            walk_all(&root, &start, &mut files)?;
        } else {
            walk(&root, &start, rest, &mut files)?;
        }
        if files.len() == before {
            return Err(BuildError::Inputs {
                pattern: pattern.clone(),
                message: "matches no file in the project".into(),
            });
        }
    }
    files.sort();
    files.dedup();
    let mut out = String::new();
    for rel in files {
        let path = root.join(&rel);
        let meta = fs_err::symlink_metadata(&path)?;
        use std::os::unix::fs::PermissionsExt as _;
        let (kind, bytes) = if meta.file_type().is_symlink() {
            let target = fs_err::read_link(&path)?;
            ("link", target.into_os_string().into_encoded_bytes())
        } else {
            ("file", fs_err::read(&path)?)
        };
        let mode = meta.permissions().mode() & 0o7777;
        let hash = hex::encode(Sha256::digest(&bytes));
        out.push_str(&format!("{} {kind} {mode:o} {hash}\n", rel.display()));
    }
    Ok(out)
}

fn is_glob(part: &str) -> bool {
    part.contains(['*', '?', '['])
}

/// `dir` (a directory we are about to read) must be inside `root` once symlinks are resolved.
fn inside(root: &Path, dir: &Path, pattern: &str) -> Result<(), BuildError> {
    match fs_err::canonicalize(dir) {
        Ok(real) if !real.starts_with(root) => Err(BuildError::Inputs {
            pattern: pattern.into(),
            message: format!(
                "{} leads outside the project (to {})",
                dir.strip_prefix(root).unwrap_or(dir).display(),
                real.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Every file below `rel` (or `rel` itself, when it is a file or a link).
fn walk_all(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let path = root.join(rel);
    let Ok(meta) = fs_err::symlink_metadata(&path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        out.push(rel.to_path_buf());
        return Ok(());
    }
    for e in fs_err::read_dir(&path)? {
        let e = e?;
        walk_all(root, &rel.join(e.file_name()), out)?;
    }
    Ok(())
}

/// The files below `rel` that the remaining pattern components `rest` match.
fn walk(root: &Path, rel: &Path, rest: &[&str], out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let Some((first, tail)) = rest.split_first() else {
        let meta = fs_err::symlink_metadata(root.join(rel));
        if meta.is_ok_and(|m| !m.is_dir()) {
            out.push(rel.to_path_buf());
        }
        return Ok(());
    };
    let path = root.join(rel);
    // Never through a symlinked directory: what it points to is not the project's to name.
    if !fs_err::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    if *first == "**" && tail.is_empty() {
        // A trailing `**`: everything below.
        return walk_all(root, rel, out);
    }
    if *first == "**" {
        // None of the components, or one more and `**` again.
        walk(root, rel, tail, out)?;
        for e in fs_err::read_dir(&path)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                walk(root, &rel.join(e.file_name()), rest, out)?;
            }
        }
        return Ok(());
    }
    for e in fs_err::read_dir(&path)? {
        let e = e?;
        let name = e.file_name();
        if let Some(n) = name.to_str()
            && matches(first.as_bytes(), n.as_bytes())
        {
            walk(root, &rel.join(&name), tail, out)?;
        }
    }
    Ok(())
}

/// Whether `name` matches the one-component pattern `pat` (`*`, `?`, literal bytes).
fn matches(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, c) in [
            ("vendor/mylib/setup.py", "setup()"),
            ("vendor/mylib/pkg/__init__.py", ""),
            ("vendor/mylib/pkg/core.py", "x = 1"),
            ("vendor/other/README", "other"),
            ("requirements.txt", "numpy\n"),
        ] {
            let p = t.path().join(p);
            fs_err::create_dir_all(p.parent().unwrap()).unwrap();
            fs_err::write(p, c).unwrap();
        }
        t
    }

    fn paths(text: &str) -> Vec<&str> {
        text.lines().map(|l| l.split(' ').next().unwrap()).collect()
    }

    #[test]
    fn globs_match_like_a_shell_with_double_star() {
        let t = project();
        let d = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            describe(t.path(), &p).unwrap()
        };
        let all = [
            "vendor/mylib/pkg/__init__.py",
            "vendor/mylib/pkg/core.py",
            "vendor/mylib/setup.py",
        ];
        assert_eq!(paths(&d(&["vendor/mylib/**"])), all);
        assert_eq!(
            paths(&d(&["vendor/mylib"])),
            all,
            "a directory: all below it"
        );
        assert_eq!(paths(&d(&["vendor/*/README"])), ["vendor/other/README"]);
        assert_eq!(paths(&d(&["**/*.py"])), all);
        assert_eq!(
            paths(&d(&["vendor/mylib/pkg/c?re.py"])),
            ["vendor/mylib/pkg/core.py"]
        );
        assert_eq!(
            paths(&d(&["requirements.txt", "requirements.txt"])),
            ["requirements.txt"]
        );
        assert!(
            describe(t.path(), &["nothing/**".into()]).is_err(),
            "a typo is an error"
        );
    }

    #[test]
    fn the_text_changes_with_contents_and_modes_only() {
        let t = project();
        let p = vec!["vendor/mylib/**".to_string()];
        let before = describe(t.path(), &p).unwrap();
        assert_eq!(before, describe(t.path(), &p).unwrap());
        let core = t.path().join("vendor/mylib/pkg/core.py");
        fs_err::write(&core, "x = 2").unwrap();
        let changed = describe(t.path(), &p).unwrap();
        assert_ne!(before, changed);
        use std::os::unix::fs::PermissionsExt as _;
        fs_err::set_permissions(&core, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(changed, describe(t.path(), &p).unwrap());
    }

    #[test]
    fn inputs_never_reach_outside_the_project_through_a_symlink() {
        let t = project();
        let outside = tempfile::tempdir().unwrap();
        fs_err::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("data")).unwrap();
        let err = describe(t.path(), &["data/**".into()]).unwrap_err();
        assert!(
            err.to_string().contains("leads outside the project"),
            "{err}"
        );
        // Matched by a glob from inside: the link is hashed as a link, not followed.
        let text = describe(t.path(), &["*".into()]).unwrap();
        assert!(text.contains("data link "), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
