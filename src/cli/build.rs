//! `devenv build`: lock, pull and build the env's tool layers without entering it.

use crate::ExitCode;

use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Materialize the env without entering it: write env.lock when missing or stale, \
pull the locked image, and build each missing tool layer (apt packages, Python packages into \
/opt/devenv/venv with devenv's pinned uv from the lock's files, [setup].run commands), each \
cached by its inputs and those before it. Step \
output goes to the env's build.log (and to stderr with -v).\n\n\
With a team cache set ([cache] registry in env.toml or config.toml, or DEVENV_CACHE), each \
missing layer is first looked up there by its key and, when an entry verifies, fetched instead \
of built. --push-cache then uploads every layer the cache lacks (CI fills the cache this way)."
)]
pub struct BuildArgs {
    /// After building, upload each tool layer the team cache lacks (needs write access)
    #[arg(long)]
    pub push_cache: bool,
}

pub fn run(args: BuildArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let cache = match args.push_cache {
        false => None,
        true => Some(crate::env::required_team_cache(&loaded, "--push-cache")?),
    };
    let store = ctx.store()?;
    let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    if let Some(cache) = &cache {
        super::push::publish_cache(cache, &store, &m, ctx)?;
    }
    let tools = m.tools.len();
    ctx.ui.status(
        "Built",
        &format!(
            "{} ({}, {} tool {})",
            m.project.name,
            m.pulled.manifest.short(),
            tools,
            if tools == 1 { "layer" } else { "layers" }
        ),
    );
    Ok(ExitCode::SUCCESS)
}
