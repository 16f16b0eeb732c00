//! devenv: rootless, daemonless developer environments from an `env.toml`.
//!
//! Data flows one way: `cli` → `config` / `pull` → `registry` / `store` / `unpack` / `runtime`.
//! Core modules never print; they report through [`progress::Reporter`], which `ui` implements.

pub mod build;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod env;
pub mod error;
pub mod export;
pub mod import;
pub mod lock;
pub mod platform;
pub mod preflight;
pub mod progress;
pub mod project;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod services;
pub mod store;
pub mod tools;
pub mod trust;
pub mod ui;
pub mod unpack;
pub mod user_config;

/// devenv's exit status. std's `ExitCode` cannot be read back as a number, which `main.rs`
/// hands to the C runtime itself (see there); this one can, and has the same constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode(u8);

impl ExitCode {
    pub const SUCCESS: ExitCode = ExitCode(0);
    /// An error devenv reports to the user: bad input, an unreachable registry, a full disk.
    pub const FAILURE: ExitCode = ExitCode(1);
    /// A bug in devenv: a panic, or the namespace helper breaking its own protocol.
    pub const INTERNAL: ExitCode = ExitCode(2);

    /// The status as the process exits with it.
    pub fn code(self) -> u8 {
        self.0
    }
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> ExitCode {
        ExitCode(code)
    }
}

/// The whole program: `main.rs` only calls this.
pub fn main() -> ExitCode {
    // The namespace helper must stay single-threaded: dispatch it before anything else starts.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == runtime::INIT_ARG)
    {
        return runtime::init_main();
    }
    // So must an env's supervisor, until it has made its user namespace.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == services::SUPERVISOR_ARG)
    {
        return services::supervisor::main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == doctor::PROBE_ARG)
    {
        let dir = std::env::args_os()
            .nth(2)
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        return doctor::probe_main(&dir);
    }
    // A panic is a bug: std's hook has printed where; say what it means and exit with the
    // internal code instead of unwinding out of the C runtime's main.
    match std::panic::catch_unwind(cli::main) {
        Ok(code) => code,
        Err(_) => {
            // The ui went down with the panic; an error is shown even with -q.
            #[allow(clippy::disallowed_macros)]
            {
                eprintln!(
                    "error: internal error: devenv panicked (a bug in devenv)\n\
                     hint: please report it with the command line and `devenv --version`"
                );
            }
            ExitCode::INTERNAL
        }
    }
}

/// Hints that core error types know for themselves, found anywhere along an error chain.
pub(crate) fn known_hint(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use error::Hint;
    // Each error type of ours that has hints: the first one the cause is.
    macro_rules! hint_of {
        ($($t:ty),+ $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return e.hint();
            })+
        };
    }
    hint_of!(
        registry::RegistryError,
        config::ConfigError,
        unpack::UnpackError,
        runtime::RuntimeError,
        pull::PullError,
        lock::LockError,
        build::BuildError,
        tools::recipe::RecipeError,
        export::ExportError,
        push::PushError,
        cache::CacheError,
        import::ImportError,
        services::ServiceError,
    );
    if let Some(e) = cause.downcast_ref::<std::io::Error>() {
        // io::Error hides a wrapped error from source(): look inside for ours.
        if let Some(inner) = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<registry::RegistryError>())
        {
            return inner.hint();
        }
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Some("the disk is full: free space, or move the store with DEVENV_HOME".into());
        }
    }
    None
}
