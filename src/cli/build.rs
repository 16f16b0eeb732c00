//! `devenv build`: lock, pull and build the env's tool layers without entering it.

use crate::ExitCode;

use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Materialize the env without entering it: write env.lock when missing or stale, \
pull the locked image, and build each missing tool layer (apt packages, Python packages into \
/opt/devenv/venv with devenv's pinned uv from the lock's files, [setup].run commands), each \
cached by its inputs and those before it. Step \
output goes to the env's build.log (and to stderr with -v)."
)]
pub struct BuildArgs {}

pub fn run(_args: BuildArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let m = crate::env::materialize(&loaded, &ctx.store()?, &ctx.env_options(), &ctx.ui)?;
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
