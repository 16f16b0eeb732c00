//! `devenv shell` and `devenv run`: materialize the env and enter it.

use crate::ExitCode;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::error::HintExt as _;

use crate::progress::Reporter;
use crate::project::{self, Project};
use crate::pull::{self, PullOptions};
use crate::runtime::{self, Spec};

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

/// An env ready to enter: the base image pulled, env.lock current, tool layers built.
pub(super) struct Materialized {
    pub image: crate::reference::ImageRef,
    pub pulled: pull::Pulled,
    pub lock: crate::lock::Lock,
    pub project: Project,
    /// `envs/<id>/` in the store.
    pub state_dir: PathBuf,
    /// The base image's unpacked layers, in manifest order.
    pub base_dirs: Vec<PathBuf>,
    /// The tool layers on top of them, with the steps that made them.
    pub tools: Vec<crate::build::BuiltLayer>,
}

impl Materialized {
    /// Base layers, then tool layers: the container's lowers.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let tools = self.tools.iter().map(|t| t.dir.clone());
        self.base_dirs.iter().cloned().chain(tools).collect()
    }
}

/// Lock (writing env.lock when missing or stale), pull the locked image, build missing tool
/// layers. Shared by `shell`, `run` and `build`.
pub(super) fn materialize(
    ctx: &super::Context,
    loaded: &crate::config::Loaded,
) -> anyhow::Result<Materialized> {
    let store = ctx.store()?;
    // Shared gc lock from the first fetch (locking pulls the image and stages resolutions in
    // tmp/) until the env record names the image and its tool layers: gc waits meanwhile.
    let gc_lock = store.keep_from_gc()?;
    let platform = loaded.env.platform();
    let lock_opts = crate::lock::LockOptions::new(loaded, ctx.locked, ctx.offline);
    let lock = crate::lock::ensure(loaded, &store, &lock_opts, &ctx.ui)
        .with_context(|| format!("locking {}", loaded.path.display()))?;
    let image = match lock.image_for(&platform) {
        Some(pinned) => pinned,
        None => loaded.env.base_image()?,
    };
    let opts = PullOptions {
        platform,
        offline: ctx.offline,
        refresh_tag: false,
    };
    let pulled = pull::pull(&image, &opts, &store, &super::pull::client, &ctx.ui)
        .with_context(|| format!("pulling {image}"))?;
    let project = Project::new(&loaded.project_dir)?;
    // The record names the image as env.toml does; the digests pin what it resolved to.
    let state_dir = project.touch(
        &store,
        &loaded.env.base_image()?.to_string(),
        &pulled.resolved,
        &pulled.manifest,
    )?;
    let build_opts = crate::build::BuildOptions {
        echo: ctx.ui.verbose(),
        offline: ctx.offline,
    };
    let tools = crate::build::build(
        loaded,
        &project,
        &pulled,
        &lock,
        &store,
        &build_opts,
        &ctx.ui,
    )
    .with_context(|| format!("building the tool layers of {}", loaded.path.display()))?;
    drop(gc_lock);
    Ok(Materialized {
        image,
        base_dirs: pulled.layer_dirs(&store),
        pulled,
        lock,
        project,
        state_dir,
        tools,
    })
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
    prepare_mounts(&decided.mounts, home_dir().as_deref(), &ctx.ui)?;
    let m = materialize(ctx, &loaded)?;
    let mut mounts = decided.recheck(&loaded)?;
    let lowers = m.lowers();
    let Materialized {
        image,
        pulled,
        lock,
        project,
        state_dir,
        ..
    } = m;

    let user = runtime::host_user().name.clone();
    let home_target = runtime::home_target(&lowers, &user, root);
    let image_env = pulled.config.config.env.clone();
    let host_names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let login = if root {
        "root".to_string()
    } else {
        user.clone()
    };
    let ours = [
        ("HOME", home_target.display().to_string()),
        ("USER", login.clone()),
        ("LOGNAME", login),
        ("DEVENV", "1".to_string()),
        ("DEVENV_ENV", project.name.clone()),
        // Debian's bash.bashrc replaces PS1 but shows $debian_chroot: both say where one is.
        ("debian_chroot", format!("devenv:{}", project.name)),
        ("PS1", format!("(devenv:{}) \\u@\\h:\\w\\$ ", project.name)),
    ];
    let mut env = project::container_env(
        &image_env,
        &loaded.env.env,
        &|k| std::env::var(k).ok(),
        &host_names,
        &ours,
    );
    crate::build::activate_venv(&lock, &mut env);
    let listen_pid = !passed.listen_env.is_empty();
    env.extend(passed.listen_env);
    if let Some(sock) = decided.agent {
        // In the container's own /tmp (a tmpfs of PID 1's): the socket, nothing else of its
        // host directory.
        mounts.push(crate::config::Mount {
            source: sock,
            target: PathBuf::from(AGENT_SOCK),
            read_only: false,
        });
        env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
        env.push(("SSH_AUTH_SOCK".into(), AGENT_SOCK.into()));
    }
    if loaded.env.container.git_identity {
        copy_git_identity(&state_dir.join("home"));
    }

    let gpu = if loaded.env.container.gpu {
        let found = runtime::gpu::discover();
        if found.is_none() {
            ctx.ui.note(
                "[container].gpu: no NVIDIA driver is loaded on this host (no /dev/nvidiactl); \
                 starting without a GPU",
            );
        }
        found
    } else {
        None
    };
    let spec = Spec {
        lowers,
        state_dir: state_dir.join("state"),
        project_dir: project.dir.clone(),
        // Canonical already: getcwd(3), or `-C DIR` canonicalized (`resolve_cwd`).
        cwd: ctx.cwd.clone(),
        home: state_dir.join("home"),
        home_target,
        env,
        argv,
        shell: loaded.env.container.shell.clone(),
        hostname: project.name.clone(),
        network: loaded.env.container.network,
        root,
        mounts,
        upper: None,
        output: None,
        gpu,
        sandbox: runtime::Sandbox {
            preserve_fds: passed.preserve_fds,
            listen_pid,
            allow_syscalls: loaded.env.container.allow_syscalls.clone(),
        },
        quiet: ctx.ui.quiet(),
    };
    if spec.argv.is_empty() {
        ctx.ui.status(
            "Entering",
            &format!("{} ({image}, {})", project.name, pulled.manifest.short()),
        );
    }
    let code = runtime::run_last(&spec)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Where the user's SSH agent appears inside, when granted (trust.rs).
const AGENT_SOCK: &str = "/tmp/.devenv-ssh-agent.sock";

/// The host's git `user.name`/`user.email` into the env home's `.gitconfig`, when that file
/// does not exist yet: commits inside carry the user's identity, and what the user changes
/// inside stays (devenv writes the file once).
fn copy_git_identity(env_home: &Path) {
    let file = env_home.join(".gitconfig");
    if fs_err::symlink_metadata(&file).is_ok() {
        return;
    }
    let Some(home) = home_dir() else { return };
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(text) = project::git_identity(&home, xdg.as_deref())
        && let Err(e) = fs_err::create_dir_all(env_home).and_then(|()| fs_err::write(&file, text))
    {
        tracing::debug!("copying the git identity: {e}");
    }
}

/// `$HOME` on the host, as `~` in env.toml expands.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Check `[container].mounts` before anything is pulled or built: a missing source under the
/// user's home (a cache such as `~/.keras`, which templates mount and a fresh machine lacks)
/// is made, and said so; any other missing source is an error now rather than after the build.
fn prepare_mounts(
    mounts: &[crate::config::Mount],
    home: Option<&Path>,
    ui: &crate::ui::Ui,
) -> anyhow::Result<()> {
    for m in mounts {
        if fs_err::symlink_metadata(&m.source).is_ok() {
            continue;
        }
        let under_home = home.is_some_and(|h| m.source.starts_with(h) && m.source != h);
        if !under_home {
            return Err(runtime::RuntimeError::MountSource {
                path: m.source.clone(),
            }
            .into());
        }
        fs_err::create_dir_all(&m.source)
            .with_context(|| "making a [container].mounts source".to_string())?;
        ui.note(&format!(
            "created {} for [container].mounts (it did not exist)",
            m.source.display()
        ));
    }
    Ok(())
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
