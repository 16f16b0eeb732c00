//! `devenv trust`, and the check `shell` and `run` make before anything else: what env.toml
//! asks for beyond the project is started only once the user has granted it (trust.rs).

use crate::ExitCode;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::config::{Loaded, Mount};
use crate::error::HintExt as _;
use crate::progress::Reporter as _;
use crate::trust::{self, Grants, Reach};

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Grant this project what its env.toml asks for beyond the project directory: host \
paths outside it in [container].mounts (judged after symlinks), gpu, allow_syscalls. The grant is \
kept in your config directory (trusted.toml), never in the repository, per project and item: an \
env.toml that later asks for anything else is asked about again. [trust] in config.toml grants \
paths or the GPU for every project; --trust (or DEVENV_TRUST=1) grants for one run only (CI)."
)]
pub struct TrustArgs {
    /// Forget what was granted to this project
    #[arg(long)]
    pub revoke: bool,
}

pub fn run(args: TrustArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let path = grants_file()?;
    let mut grants = Grants::load(&path)?;
    let project = canonical(&loaded.project_dir);
    if args.revoke {
        if grants.revoke(&project) {
            grants.save(&path)?;
            ctx.ui
                .status("Revoked", &format!("every grant to {}", project.display()));
        } else {
            ctx.ui.status(
                "Revoked",
                &format!("nothing: {} had no grant", project.display()),
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let missing = trust::review(&loaded.env, &loaded.project_dir)?.missing;
    if missing.is_empty() {
        ctx.ui.status(
            "Trusted",
            &format!("{}: nothing more to grant", project.display()),
        );
        return Ok(ExitCode::SUCCESS);
    }
    grants.grant(&project, &missing);
    grants.save(&path)?;
    for item in &missing {
        ctx.ui.status("Granted", &item.to_string());
    }
    Ok(ExitCode::SUCCESS)
}

fn grants_file() -> anyhow::Result<std::path::PathBuf> {
    trust::grants_path().ok_or_else(|| {
        anyhow::anyhow!("no config directory: neither XDG_CONFIG_HOME nor HOME is set")
    })
}

fn canonical(dir: &Path) -> std::path::PathBuf {
    fs_err::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// What a run may reach, as decided: the mounts to make (sources resolved as they were
/// judged), and the grant to hold the env to after the build.
pub(super) struct Decided {
    pub mounts: Vec<Mount>,
    /// The user's SSH agent socket, when offered and granted.
    pub agent: Option<std::path::PathBuf>,
    allowed: Vec<Reach>,
}

/// Decide before anything is pulled, built or run: nothing asked beyond the project passes;
/// so does what the user granted (trusted.toml, config.toml's `[trust]`, `--trust` for this
/// run). Anything else is asked about at a terminal (y/N) and refused elsewhere.
pub(super) fn decide(ctx: &super::Context, loaded: &Loaded) -> anyhow::Result<Decided> {
    let review = trust::review(&loaded.env, &loaded.project_dir)?;
    // The agent is devenv's offer, not env.toml's request: without a grant the env starts
    // without it, and a note says how to bring it in.
    let agent_in = ctx.trust || review.agent_granted();
    if review.agent.is_some() && !agent_in {
        ctx.ui.note(
            "your SSH agent is not in the env: `devenv trust` brings it in for this project \
             (`ssh_agent = true` under [trust] in config.toml: for every project)",
        );
    }
    let trust::Review {
        asked,
        missing,
        mounts,
        agent,
        project,
    } = review;
    let agent = agent.filter(|_| agent_in);
    let missing: Vec<Reach> = missing
        .into_iter()
        .filter(|i| *i != Reach::SshAgent)
        .collect();
    let decided = |allowed| Decided {
        mounts,
        agent,
        allowed,
    };
    if missing.is_empty() {
        return Ok(decided(asked));
    }
    let list: String = missing.iter().map(|i| format!("\n  - {i}")).collect();
    if ctx.trust {
        ctx.ui.note(&format!(
            "--trust: granting for this run what {} asks beyond the project:{list}",
            loaded.path.display()
        ));
        return Ok(decided(asked));
    }
    let asking = format!(
        "{} asks for reach beyond the project that you have not granted:{list}",
        loaded.path.display()
    );
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let mut err = std::io::stderr().lock();
        write!(
            err,
            "{asking}\nAllow this for {}? [y/N] ",
            project.display()
        )?;
        err.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
            let path = grants_file()?;
            let mut grants = Grants::load(&path)?;
            grants.grant(&project, &missing);
            grants.save(&path)?;
            ctx.ui.status(
                "Granted",
                &format!("{} (kept in {})", project.display(), path.display()),
            );
            return Ok(decided(asked));
        }
        return Err(anyhow::anyhow!("not granted; nothing was started"))
            .hint("`devenv trust` grants it later; edit env.toml to ask for less");
    }
    Err(anyhow::anyhow!("{asking}")).hint(format!(
        "grant it with `devenv trust` (in {}), or for this run only with --trust \
         (DEVENV_TRUST=1), as CI does",
        project.display()
    ))
}

impl Decided {
    /// After the build: env.toml's reach must still be what was decided (a build step runs
    /// the repository's commands with the project writable, and could swap a mount source
    /// for a symlink out of it). The mounts, resolved again.
    pub(super) fn recheck(&self, loaded: &Loaded) -> anyhow::Result<Vec<Mount>> {
        let (asked, mounts) = trust::asked(&loaded.env, &loaded.project_dir);
        if let Some(new) = asked.iter().find(|i| !self.allowed.contains(i)) {
            anyhow::bail!(
                "{} asks for reach that changed during the build: {new}",
                loaded.path.display()
            );
        }
        Ok(mounts)
    }
}
