//! The errors env.toml loading can produce, and their hints.

use std::path::PathBuf;

/// What kind of mistake a diagnostic reports; tests and callers match on it instead of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiagnosticKind {
    /// Not TOML at all: an unclosed table, a duplicate key, a missing quote.
    Syntax,
    /// A key the schema does not have.
    UnknownKey,
    /// A value of the wrong TOML type (a number where a string goes).
    WrongType,
    /// `version` is not 1.
    Version,
    /// `[image].base` (or the base derived from `[tools].python`) is not an image reference.
    ImageRef,
    /// `[image].platform` is not `os/arch[/variant]`.
    Platform,
    /// `[container].network` is not `host` or `none`.
    Network,
    /// A `[container].mounts` entry that cannot be parsed or expanded.
    Mount,
    /// An `[env]` key that is not an environment variable name.
    EnvName,
    /// Any other impossible value: empty strings, options where packages go, absolute paths.
    Value,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("no env.toml in {} or any parent directory", .0.display())]
    NotFound(PathBuf),
    /// A mistake at a place in the file. `line` and `column` are 1-based; the column counts
    /// characters, not bytes.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        kind: DiagnosticKind,
        message: String,
        hint: Option<String>,
    },
    #[error("{} has no [image].base", .0.display())]
    NoBase(PathBuf),
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ConfigError {
    /// The kind of an [`ConfigError::Invalid`]; `None` for the others.
    pub fn kind(&self) -> Option<DiagnosticKind> {
        match self {
            ConfigError::Invalid { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl crate::error::Hint for ConfigError {
    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::NotFound(_) => Some("run `devenv init` to create one".into()),
            ConfigError::Invalid { hint, .. } => hint.clone(),
            ConfigError::NoBase(_) => Some(
                "set `base` under [image] (for example `base = \"python:3.12-slim\"`), \
                 or set `python = \"3.12\"` under [tools] to start from python:3.12-slim"
                    .into(),
            ),
            ConfigError::Exists(_) => {
                Some("edit it, or run `devenv init --force` to replace it".into())
            }
            ConfigError::Io(_) => None,
        }
    }
}
