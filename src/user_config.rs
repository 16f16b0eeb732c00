//! The user's `config.toml`: where it is, and its text, read once per process.
//!
//! Each part of the file belongs to the part of devenv it configures, which parses it from this
//! text with its own errors: the top-level `insecure-registries` and `[mirrors]`
//! (`registry::settings`), `[trust]` (`trust`), `[cache]` (`cache`), `[python]`
//! (`tools::index`). A missing file reads as an empty one; one that cannot be read is an error
//! naming it, for whichever part asks. `trusted.toml`, which devenv writes, sits beside it.

use std::path::PathBuf;
use std::sync::OnceLock;

/// `$XDG_CONFIG_HOME/devenv/config.toml`, else `~/.config/devenv/config.toml`; `None` with
/// neither variable set.
pub fn path() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("devenv/config.toml"))
}

/// [`path`] as messages show it.
pub fn path_text() -> String {
    path().map_or_else(
        || "$XDG_CONFIG_HOME/devenv/config.toml".into(),
        |p| p.display().to_string(),
    )
}

/// The top-level keys some part of devenv reads.
pub const KNOWN_KEYS: &[&str] = &["insecure-registries", "mirrors", "trust", "cache", "python"];

/// The top-level keys of `text` no part of devenv reads (each part ignores what is not its
/// own, so a misspelt table would otherwise go unnoticed); `Err` when `text` is not TOML.
pub fn unknown_keys(text: &str) -> Result<Vec<String>, String> {
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| e.to_string().trim().to_string())?;
    Ok(table
        .keys()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
        .cloned()
        .collect())
}

/// The file as read.
#[derive(Debug)]
pub struct File {
    pub path: PathBuf,
    pub text: String,
}

/// A file that exists but could not be read.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub message: String,
}

/// The user's config.toml; `None` when there is none (or no place for one).
pub fn read() -> Result<Option<&'static File>, &'static Unreadable> {
    static FILE: OnceLock<Result<Option<File>, Unreadable>> = OnceLock::new();
    FILE.get_or_init(|| {
        let Some(path) = path() else { return Ok(None) };
        match fs_err::read_to_string(&path) {
            Ok(text) => Ok(Some(File { path, text })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Unreadable {
                path,
                message: e.to_string(),
            }),
        }
    })
    .as_ref()
    .map(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_table_is_an_unknown_key() {
        let text = "insecure-registries = []\n[pyhton]\nindex = \"x\"\n[trust]\ngpu = true\n";
        assert_eq!(unknown_keys(text).unwrap(), ["pyhton"]);
        assert!(unknown_keys("[python\n").is_err());
    }
}
