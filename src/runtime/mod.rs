//! The rootless container: a re-executed single-threaded helper that enters namespaces, mounts
//! the overlay root and execs. STUB — replaced by the runtime work (see the helper brief).

use std::path::PathBuf;
use std::process::ExitCode;

/// argv[1] that makes the binary the namespace helper.
pub const INIT_ARG: &str = "__init";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("the container runtime is not built yet")]
    Missing,
}

impl crate::error::Hint for RuntimeError {
    fn hint(&self) -> Option<String> {
        None
    }
}

pub fn init_main() -> ExitCode {
    eprintln!("error: {}", RuntimeError::Missing);
    ExitCode::from(2)
}

/// Everything the container needs; built by the CLI from env.toml, the image and the store.
#[derive(Clone, Debug)]
pub struct Spec {
    pub lowers: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub project_dir: PathBuf,
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub home_target: PathBuf,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
    pub shell: Option<String>,
    pub hostname: String,
    pub network: crate::config::Network,
    pub root: bool,
    pub mounts: Vec<crate::config::Mount>,
}

pub fn run(spec: &Spec) -> Result<i32, RuntimeError> {
    let _ = spec;
    Err(RuntimeError::Missing)
}
