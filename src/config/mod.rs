//! env.toml: the version-1 schema, its validation, and diagnostics with file, line and column.
//!
//! Loading is two passes. serde reads the text into raw structs that deny unknown keys and keep
//! the spans of values checked afterwards (`toml::Spanned`); validation then turns them into an
//! [`EnvFile`] whose image reference, platform, network, mounts and env names are already parsed.
//! Every mistake becomes a [`ConfigError::Invalid`] naming `file:line:column` and what was
//! expected. Invariants: a loaded [`EnvFile`] has a base image ([`EnvFile::base_image`] cannot
//! fail on it) and absolute, normalized mount paths. This module never prints and never touches
//! the filesystem beyond finding and reading env.toml (and, for `devenv init`, writing it).

mod diagnose;
mod error;
mod mount;
mod raw;
mod services;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::platform::Platform;
use crate::reference::ImageRef;

pub use error::{ConfigError, DiagnosticKind};
pub use mount::{Expansion, parse_mount};
pub use raw::{cache_repository, is_slurm_time};
pub use services::{READY_TIMEOUT, parse_port};
pub use template::{Created, Detected, Template, create};

pub const FILE_NAME: &str = "env.toml";

/// The schema's top-level tables, in the order the docs and templates list them.
pub const SECTIONS: [&str; 6] = ["image", "tools", "packages", "setup", "env", "container"];

/// The one schema version this devenv reads.
pub const VERSION: i64 = 1;

#[derive(Clone, Debug)]
pub struct Loaded {
    /// The env.toml file.
    pub path: PathBuf,
    /// The directory holding it: the project.
    pub project_dir: PathBuf,
    pub env: EnvFile,
}

impl Loaded {
    /// `[packages].requirements` resolved against the project directory.
    pub fn requirements_path(&self) -> Option<PathBuf> {
        self.env
            .packages
            .requirements
            .as_ref()
            .map(|r| self.project_dir.join(r))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvFile {
    pub image: ImageSection,
    /// `[tools]`: name → version, as written (recipes check names later).
    pub tools: BTreeMap<String, String>,
    /// `[tools]` entries written as `name = { version = "…", variant = "…" }`: name → variant.
    pub tool_variants: BTreeMap<String, String>,
    pub packages: Packages,
    pub setup: Setup,
    /// `[env]`: variables set inside the env; names are valid environment variable names.
    pub env: BTreeMap<String, String>,
    pub container: Container,
    /// `[cache].registry`: the team cache repository tool layers are looked up in.
    pub cache: Option<ImageRef>,
    /// `[cluster]`: what a job of this env asks a scheduler for (`devenv export --slurm/--k8s`).
    pub cluster: Cluster,
    /// `[services.NAME]`: sidecar containers on the env's private network, by name.
    pub services: BTreeMap<String, Service>,
}

/// A port published on the host's 127.0.0.1: `host` forwards to `container` inside the env's
/// network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port {
    pub host: u16,
    pub container: u16,
}

/// `[services.NAME]`: a container of another image beside the shell, reached by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub image: ImageRef,
    /// `None`: the image's entrypoint and command.
    pub command: Option<Vec<String>>,
    /// A name from the image's /etc/passwd or `uid[:gid]`; `None`: the image's `User`, else root.
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Volume>,
    pub ready: Option<Ready>,
    /// Seconds to pass `ready` (or, without one, to stay up for the first moment).
    pub ready_timeout: u32,
}

/// `"NAME:/path"`: a directory kept in the store per project, mounted at `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub target: PathBuf,
}

/// How a service says it is ready.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ready {
    /// A TCP connect to this port inside the env's network succeeds.
    Tcp(u16),
    /// This command, run in a fresh container of the service's image on the env's network,
    /// exits 0.
    Command(Vec<String>),
}

/// `[cluster]`: resources for cluster jobs; flags of `devenv export` override each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: Option<u32>,
    pub tasks: Option<u32>,
    pub gpus: Option<u32>,
    /// A time limit as Slurm writes one: `MM`, `HH:MM:SS`, `D-HH:MM`…
    pub time: Option<String>,
    pub partition: Option<String>,
}

impl EnvFile {
    /// The image the env starts from: `[image].base`, else `python:<[tools].python>-slim`.
    /// Always `Ok` for a loaded file (loading checks it); `NoBase` carries no path of its own,
    /// so it names `env.toml`.
    pub fn base_image(&self) -> Result<ImageRef, ConfigError> {
        if let Some(base) = &self.image.base {
            return Ok(base.clone());
        }
        match self.tools.get("python") {
            Some(version) => {
                python_base(version).map_err(|_| ConfigError::NoBase(FILE_NAME.into()))
            }
            None => Err(ConfigError::NoBase(FILE_NAME.into())),
        }
    }

    /// The platform to run: `[image].platform`, else this machine's.
    pub fn platform(&self) -> crate::platform::Platform {
        self.image
            .platform
            .clone()
            .unwrap_or_else(crate::platform::Platform::host)
    }

    /// Whether the base image comes from `[tools].python` rather than `[image].base`.
    pub fn base_from_python(&self) -> bool {
        self.image.base.is_none() && self.tools.contains_key("python")
    }
}

/// The base image `[tools] python = "<version>"` stands for when `[image].base` is absent.
pub fn python_base(version: &str) -> Result<ImageRef, crate::reference::ReferenceError> {
    format!("python:{version}-slim").parse()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSection {
    /// As written; `None` when the base comes from `[tools].python` (see [`EnvFile::base_image`]).
    pub base: Option<ImageRef>,
    /// `None`: the host's platform.
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packages {
    /// Debian packages, installed as root at build time.
    pub apt: Vec<String>,
    /// pip requirement specifiers.
    pub pip: Vec<String>,
    /// A requirements file, relative to the project directory, as written.
    pub requirements: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// Shell commands run at build time, in order, each a cached step.
    pub run: Vec<SetupStep>,
}

/// One `[setup].run` entry: `"cmd"`, or `{ cmd = "…", inputs = ["vendor/mylib/**"] }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupStep {
    pub cmd: String,
    /// Glob patterns of project files the command reads, relative to the project directory
    /// (`*`, `?`, `**`): their contents are part of the step's cache key.
    pub inputs: Vec<String>,
}

impl SetupStep {
    /// A step that reads no project file.
    pub fn cmd(cmd: impl Into<String>) -> SetupStep {
        SetupStep {
            cmd: cmd.into(),
            inputs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// `None`: the image's shell (the runtime's default).
    pub shell: Option<String>,
    pub network: Network,
    /// `ports`: what the shell listens on, published on the host's 127.0.0.1.
    pub ports: Vec<Port>,
    pub gpu: bool,
    /// `gpu = [0, 1]`: the host GPUs (by index) the env sees; `None` for `true` / `"all"`.
    pub gpu_devices: Option<Vec<u32>>,
    pub mounts: Vec<Mount>,
    /// Groups or syscalls the default seccomp profile lets through (`runtime::seccomp::GROUPS`).
    pub allow_syscalls: Vec<String>,
    /// `false`: never offer the user's SSH agent to this env (it comes in only when the user
    /// grants it: trust.rs).
    pub ssh_agent: bool,
    /// `false`: do not copy the user's git `user.name`/`user.email` into the env's home.
    pub git_identity: bool,
}

impl Default for Container {
    fn default() -> Container {
        Container {
            shell: None,
            network: Network::default(),
            ports: Vec::new(),
            gpu: false,
            gpu_devices: None,
            mounts: Vec::new(),
            allow_syscalls: Vec::new(),
            ssh_agent: true,
            git_identity: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Network {
    #[default]
    Host,
    None,
    /// A network namespace of the env's own, shared by the shell and its services (the
    /// default with `[services]` or `ports`).
    Private,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
            Network::Private => "private",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Host path, `~` already expanded.
    pub source: PathBuf,
    /// Path inside the container; the host path when not given.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Find env.toml in `start` or the nearest parent that has one, and load it. The search stops
/// at the filesystem root.
pub fn find_and_load(start: &Path) -> Result<Loaded, ConfigError> {
    let start = if start.is_absolute() {
        start.to_path_buf()
    } else {
        std::env::current_dir()?.join(start)
    };
    match find(&start) {
        Some(path) => load(&path),
        None => Err(ConfigError::NotFound(start)),
    }
}

/// The nearest `env.toml` at or above `start`.
pub fn find(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
}

/// Load the env.toml at `path`; its directory is the project.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = fs_err::read_to_string(path)?;
    let project_dir = project_dir_of(path)?;
    let env = parse_in(
        &display_path(path),
        &text,
        &Expansion::from_env(&project_dir),
    )?;
    Ok(Loaded {
        path: path.to_path_buf(),
        project_dir,
        env,
    })
}

/// Parse env.toml text; `file` names it in diagnostics and its directory is the project.
pub fn parse(file: &Path, text: &str) -> Result<EnvFile, ConfigError> {
    parse_in(file, text, &Expansion::from_env(&project_dir_of(file)?))
}

/// The absolute directory holding `file` (lexically: nothing is resolved on disk), so mount
/// sources relative to the project come out absolute.
fn project_dir_of(file: &Path) -> Result<PathBuf, ConfigError> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(std::path::absolute(dir)?)
}

/// Parse env.toml text with explicit mount expansion (project directory and `$HOME`).
pub fn parse_in(file: &Path, text: &str, exp: &Expansion) -> Result<EnvFile, ConfigError> {
    let src = diagnose::Source { file, text };
    let raw: raw::RawFile = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    raw.validate(&src, exp)
}

/// `path` relative to the current directory when it is below it, for shorter messages.
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests;
