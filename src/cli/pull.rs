//! `devenv pull [IMAGE]`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image to pull instead of env.toml's [image].base
    pub image: Option<String>,
    /// Platform to select from a multi-platform image (os/arch[/variant]); default: the host's
    #[arg(long)]
    pub platform: Option<String>,
}

pub fn run(_args: PullArgs, _ctx: &super::Context) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`devenv pull` is not built yet")
}
