//! `devenv shell` and `devenv run`: materialize the env and enter it.

use crate::ExitCode;

use crate::error::HintExt as _;

use crate::progress::Reporter;
use crate::runtime;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Enter an interactive shell in the project's env: the image pinned by env.toml, \
the project mounted at its own path, a persistent home of the env's own, as yourself. Pulls the \
image first when the store lacks it."
)]
pub struct ShellArgs {
    /// Be uid 0 inside (still unprivileged on the host)
    #[arg(long)]
    pub root: bool,
    /// Pass descriptors 3 to 3+N-1 on to the shell (every other one above 2 is closed)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Run one command in the project's env and return its exit status \
(128+signal when it was killed; 127 when not found, 126 when not executable)."
)]
pub struct RunArgs {
    /// Be uid 0 inside (still unprivileged on the host)
    #[arg(long)]
    pub root: bool,
    /// Pass descriptors 3 to 3+N-1 on to the command (every other one above 2 is closed;
    /// systemd's LISTEN_FDS are passed when LISTEN_PID names devenv)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub fn shell(args: ShellArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let passed = Passed::new(args.preserve_fds, None)?;
    enter(ctx, Vec::new(), args.root, passed)
}

pub fn run(args: RunArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let listen = socket_activation(|k| std::env::var(k).ok(), std::process::id());
    let passed = Passed::new(args.preserve_fds, listen)?;
    enter(ctx, args.command, args.root, passed)
}

/// Descriptors the user hands to the command on purpose.
struct Passed {
    preserve_fds: u32,
    /// `LISTEN_FDS` and `LISTEN_FDNAMES` for the command, when they were meant for us.
    listen_env: Vec<(String, String)>,
}

impl Passed {
    fn new(preserve_fds: u32, listen: Option<Listen>) -> anyhow::Result<Passed> {
        let (listen_fds, listen_env) = match listen {
            Some(l) => (l.fds, l.env),
            None => (0, Vec::new()),
        };
        for fd in 3..3u32.saturating_add(preserve_fds) {
            // SAFETY: F_GETFD only reads a descriptor's flags; a closed one fails with EBADF.
            if unsafe { libc::fcntl(fd as i32, libc::F_GETFD) } < 0 {
                return Err(anyhow::anyhow!(
                    "--preserve-fds {preserve_fds}: descriptor {fd} is not open"
                ))
                .hint("open descriptors 3 to 3+N-1 before starting devenv (in sh: `3<file`)");
            }
        }
        Ok(Passed {
            preserve_fds: preserve_fds.max(listen_fds),
            listen_env,
        })
    }
}

/// systemd's socket activation (sd_listen_fds(3)): descriptors 3 to 3+LISTEN_FDS-1, meant for
/// the process whose pid is LISTEN_PID.
#[derive(Debug, PartialEq, Eq)]
struct Listen {
    fds: u32,
    env: Vec<(String, String)>,
}

fn socket_activation(var: impl Fn(&str) -> Option<String>, pid: u32) -> Option<Listen> {
    let for_us = var("LISTEN_PID")?.trim().parse::<u32>().ok()? == pid;
    let fds = var("LISTEN_FDS")?.trim().parse::<u32>().ok()?;
    if !for_us || fds == 0 {
        return None;
    }
    let mut env = vec![("LISTEN_FDS".to_string(), fds.to_string())];
    if let Some(names) = var("LISTEN_FDNAMES") {
        env.push(("LISTEN_FDNAMES".to_string(), names));
    }
    Some(Listen { fds, env })
}

fn enter(
    ctx: &super::Context,
    argv: Vec<String>,
    root: bool,
    passed: Passed,
) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    // Before anything runs: what env.toml asks beyond the project must be the user's choice.
    let decided = super::trust::decide(ctx, &loaded)?;
    crate::env::prepare_mounts(&decided.mounts, crate::env::home_dir().as_deref(), &ctx.ui)?;
    // Before a pull or build that may take minutes: the lock as it is (a new lock is checked
    // below), then with the image's CUDA_VERSION.
    if loaded.env.container.gpu {
        let lock = crate::lock::read(&loaded.project_dir).ok().flatten();
        crate::env::gpu_preflight(&loaded, lock.as_ref(), &[], &ctx.ui)?;
    }
    let store = ctx.store()?;
    let env = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    crate::env::gpu_preflight(
        &loaded,
        Some(&env.lock),
        &env.pulled.config.config.env,
        &ctx.ui,
    )?;
    let session = crate::env::Session {
        argv,
        root,
        // Canonical already: getcwd(3), or `-C DIR` canonicalized (`resolve_cwd`).
        cwd: ctx.cwd.clone(),
        mounts: decided.recheck(&loaded)?,
        agent: decided.agent,
        preserve_fds: passed.preserve_fds,
        listen_env: passed.listen_env,
        quiet: ctx.ui.quiet(),
    };
    let mut spec = env.session(&loaded, session, &ctx.ui);
    // The env's own network: its supervisor (started now if none runs) holds it and the
    // services; the connection kept here is this session's share of them.
    let _attached = match env.services_plan(&loaded, &store)? {
        Some(plan) => {
            let attached = crate::services::attach(&plan, &ctx.ui)?;
            if let Some(note) = crate::services::loopback_proxy_note(&spec.env) {
                ctx.ui.note(&note);
            }
            spec.pod = Some(runtime::Pod {
                join: Some(attached.join.clone()),
                etc: Some(plan.dir.join("etc")),
                service: None,
            });
            Some(attached)
        }
        None => None,
    };
    let (image, pulled, project) = (&env.image, &env.pulled, &env.project);
    if spec.argv.is_empty() {
        ctx.ui.status(
            "Entering",
            &format!("{} ({image}, {})", project.name, pulled.manifest.short()),
        );
    }
    let code = runtime::run_last(&spec)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn socket_activation_is_taken_only_when_listen_pid_names_us() {
        let env = [
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "http:https"),
        ];
        let got = socket_activation(vars(&env), 42).unwrap();
        assert_eq!(got.fds, 2);
        assert_eq!(
            got.env,
            [
                ("LISTEN_FDS".to_string(), "2".to_string()),
                ("LISTEN_FDNAMES".to_string(), "http:https".to_string())
            ]
        );
        assert_eq!(socket_activation(vars(&env), 43), None, "meant for another");
        assert_eq!(
            socket_activation(vars(&env[1..]), 42),
            None,
            "no LISTEN_PID"
        );
        let zero = [("LISTEN_PID", "42"), ("LISTEN_FDS", "0")];
        assert_eq!(socket_activation(vars(&zero), 42), None);
        let junk = [("LISTEN_PID", "42"), ("LISTEN_FDS", "x")];
        assert_eq!(socket_activation(vars(&junk), 42), None);
    }
}
