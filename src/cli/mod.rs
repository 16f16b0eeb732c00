//! Argument definitions and one thin file per command. Each command builds options and calls
//! one core function; only here do errors become `anyhow` with context.

mod build;
mod doctor;
mod export;
mod fast;
mod gc;
mod init;
mod lock;
mod pull;
pub(crate) mod push;
mod run;
mod services;
mod status;
mod trust;

use crate::ExitCode;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::store::Store;
use crate::ui::{Ui, Verbosity};

/// The variables devenv reads (`devenv --help`; docs/cli.md has the whole list).
const ENVIRONMENT: &str = "\
Environment:
  DEVENV_HOME          the store (default $XDG_CACHE_HOME/devenv, else ~/.cache/devenv)
  DEVENV_LOG           log filter, e.g. debug (as -v)
  DOCKER_CONFIG        registry credentials (config.json: auths, credHelpers, credsStore)
  REGISTRY_AUTH_FILE   podman-style auth.json
  SSL_CERT_FILE        extra CA certificates for registries, and the bundle containers trust
  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
                       proxies for registries and downloads (either case; passed into containers)
  UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL
                       the Python package index (else [python] index in config.toml, else
                       the build's default); also passed into shell and run
  NO_COLOR             no colour
  DEVENV_FLATTEN=1     a flattened copy of the image instead of overlay
  DEVENV_TRUST=1       as --trust: grant env.toml's reach beyond the project for this run

Docs: docs/cli.md, docs/env-toml.md, docs/env-lock.md in the source tree.";

#[derive(Parser, Debug)]
#[command(
    name = "devenv",
    version,
    about = "Rootless, daemonless developer environments from env.toml",
    after_long_help = ENVIRONMENT
)]
#[command(propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    /// Run as if started in DIR
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Print nothing but errors (and the command's own output)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print debug logs (also DEVENV_LOG=debug)
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Plain status lines instead of progress bars
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Use only what is cached; never contact a registry
    #[arg(long, global = true)]
    pub offline: bool,
    /// Fail instead of changing env.lock (CI): a drifted or missing lock is an error
    #[arg(long, global = true)]
    pub locked: bool,
    /// Grant for this run what env.toml asks beyond the project (also DEVENV_TRUST=1; CI)
    #[arg(long, global = true)]
    pub trust: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(about = "Write a commented env.toml for a new project")]
    Init(init::InitArgs),
    #[command(about = "Fetch the env's image (or IMAGE) into the store")]
    Pull(pull::PullArgs),
    #[command(about = "Enter an interactive shell in the env")]
    Shell(run::ShellArgs),
    #[command(about = "Run a command in the env; its exit status is devenv's")]
    Run(run::RunArgs),
    #[command(about = "Resolve env.toml and write env.lock (--update moves pins)")]
    Lock(lock::LockArgs),
    #[command(about = "Lock, pull and build the env's tool layers without entering it")]
    Build(build::BuildArgs),
    #[command(about = "Write the env (base and tool layers) as an OCI image")]
    Export(export::ExportArgs),
    #[command(about = "Send the env (base and tool layers) to a registry as an OCI image")]
    Push(push::PushArgs),
    #[command(about = "Start the env's services and keep them running without a shell")]
    Up(services::UpArgs),
    #[command(about = "Stop the env's services")]
    Down(services::DownArgs),
    #[command(about = "Print a service's output (-f: follow it)")]
    Logs(services::LogsArgs),
    #[command(about = "Show the env, what is cached and what would be fetched")]
    Status(status::StatusArgs),
    #[command(about = "Grant this project what its env.toml asks beyond the project directory")]
    Trust(trust::TrustArgs),
    #[command(about = "Remove envs whose project is gone and what no env uses")]
    Gc(gc::GcArgs),
    /// Look at the store, remove one image
    #[command(subcommand)]
    Cache(gc::CacheCommand),
    #[command(
        about = "Check user namespaces, overlay, disk, registry and GPU; say how to fix what fails"
    )]
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        long_about = "Print a completion script for SHELL to stdout. For example:\n  \
bash: devenv completions bash > ~/.local/share/bash-completion/completions/devenv\n  \
zsh:  devenv completions zsh > ~/.zfunc/_devenv   (with fpath+=~/.zfunc before compinit)\n  \
fish: devenv completions fish > ~/.config/fish/completions/devenv.fish"
    )]
    Completions { shell: clap_complete::Shell },
}

/// What every command gets: where it runs, the store, and the UI.
pub struct Context {
    pub cwd: PathBuf,
    pub ui: Ui,
    pub offline: bool,
    /// `--locked`: env.lock must already match env.toml; never write it.
    pub locked: bool,
    /// `--trust` or DEVENV_TRUST=1: what env.toml asks beyond the project, granted for this run.
    pub trust: bool,
}

impl Context {
    pub fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(Store::default_root()?)?)
    }

    /// The global flags [`crate::env::materialize`] heeds.
    pub fn env_options(&self) -> crate::env::Options {
        crate::env::Options {
            locked: self.locked,
            offline: self.offline,
        }
    }
}

pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = fast::parse(&args).unwrap_or_else(|| Cli::parse_from(args));
    init_logging(cli.verbose);
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let ui = Ui::new(verbosity, !cli.no_progress);
    let cwd = match resolve_cwd(cli.directory.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            ui.error(&crate::error::render(&e));
            return ExitCode::from(1);
        }
    };
    let ctx = Context {
        cwd,
        ui,
        offline: cli.offline,
        locked: cli.locked,
        trust: cli.trust || std::env::var_os("DEVENV_TRUST").is_some_and(|v| v == "1"),
    };
    let result = match cli.command {
        Command::Init(args) => init::run(args, &ctx),
        Command::Pull(args) => pull::run(args, &ctx),
        Command::Shell(args) => run::shell(args, &ctx),
        Command::Run(args) => run::run(args, &ctx),
        Command::Build(args) => build::run(args, &ctx),
        Command::Export(args) => export::run(args, &ctx),
        Command::Push(args) => push::run(args, &ctx),
        Command::Doctor(args) => doctor::run(args, &ctx),
        Command::Lock(args) => lock::run(args, &ctx),
        Command::Status(args) => status::run(args, &ctx),
        Command::Up(args) => services::up(args, &ctx),
        Command::Down(args) => services::down(args, &ctx),
        Command::Logs(args) => services::logs(args, &ctx),
        Command::Trust(args) => trust::run(args, &ctx),
        Command::Gc(args) => gc::gc(args, &ctx),
        Command::Cache(cmd) => gc::cache(cmd, &ctx),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "devenv", &mut script);
            match std::io::stdout().write_all(&script) {
                // A closed pipe (`| head`) is the reader's choice, not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    };
    match result {
        Ok(code) => code,
        // A reader that closed our stdout (`devenv status --json | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            ctx.ui.error(&crate::error::render(&e));
            if crate::error::is_internal(&e) {
                ExitCode::INTERNAL
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn resolve_cwd(dir: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(match dir {
        Some(d) => fs_err::canonicalize(cwd.join(d))?,
        None => cwd,
    })
}

fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("DEVENV_LOG") {
        Ok(f) => EnvFilter::new(f),
        Err(_) if verbose => EnvFilter::new("devenv=debug"),
        // No subscriber at all: tracing's macros then cost nothing, and a warm start does not
        // build a filter it would never use.
        Err(_) => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
