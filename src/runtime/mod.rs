//! The rootless container: a re-executed single-threaded helper that enters namespaces, mounts
//! the overlay root and execs. STUB — replaced by the runtime work (see the helper brief).

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
