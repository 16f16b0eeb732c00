//! `devenv init`. STUB — replaced by the config work.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InitArgs {}

pub fn run(_args: InitArgs, _ctx: &super::Context) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`devenv init` is not built yet")
}
