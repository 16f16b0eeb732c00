//! env.toml: the version-1 schema, its validation, and diagnostics with file, line and column.
//! STUB — replaced by the config work (see the helper brief).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::platform::Platform;
use crate::reference::ImageRef;

pub const FILE_NAME: &str = "env.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no env.toml in {0} or any parent directory")]
    NotFound(PathBuf),
}

impl crate::error::Hint for ConfigError {
    fn hint(&self) -> Option<String> {
        Some("run `devenv init` to create one".into())
    }
}

#[derive(Clone, Debug)]
pub struct Loaded {
    /// The env.toml file.
    pub path: PathBuf,
    /// The directory holding it: the project.
    pub project_dir: PathBuf,
    pub env: EnvFile,
}

#[derive(Clone, Debug, Default)]
pub struct EnvFile {
    pub image: ImageSection,
    pub tools: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub container: Container,
}

#[derive(Clone, Debug, Default)]
pub struct ImageSection {
    pub base: Option<ImageRef>,
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default)]
pub struct Container {
    pub shell: Option<String>,
    pub network: Network,
    pub gpu: bool,
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    Host,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Host path, `~` already expanded.
    pub source: PathBuf,
    /// Path inside the container; the host path when not given.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Find env.toml in `start` or the nearest parent that has one, and load it.
pub fn find_and_load(start: &Path) -> Result<Loaded, ConfigError> {
    Err(ConfigError::NotFound(start.to_path_buf()))
}
