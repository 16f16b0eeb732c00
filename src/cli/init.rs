//! `devenv init`: write a commented env.toml from a template.

use crate::ExitCode;

use crate::config::{self, Template};
use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Writes env.toml into the current directory (or -C DIR).\n\n\
    The file comes from a template and explains each key. When the directory has a \
    requirements.txt, [packages] requirements points at it; when it has a pyproject.toml, \
    [setup] shows how to install the project. An existing env.toml is kept unless --force is \
    given. docs/env-toml.md describes every key."
)]
pub struct InitArgs {
    /// Template to start from
    #[arg(long, short, value_enum, default_value_t = TemplateArg::Python, value_name = "NAME")]
    pub template: TemplateArg,
    /// Replace an existing env.toml
    #[arg(long)]
    pub force: bool,
}

/// The clap face of [`Template`] (core modules do not know clap).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateArg {
    /// Python 3.12 (python:3.12-slim)
    Python,
    /// TensorFlow 2.16.1 on Python 3.11
    Tensorflow,
    /// PyTorch on Python 3.12
    Pytorch,
    /// JupyterLab on Python 3.12
    Jupyter,
    /// debian:bookworm-slim and commented sections
    Blank,
}

impl From<TemplateArg> for Template {
    fn from(t: TemplateArg) -> Template {
        match t {
            TemplateArg::Python => Template::Python,
            TemplateArg::Tensorflow => Template::Tensorflow,
            TemplateArg::Pytorch => Template::Pytorch,
            TemplateArg::Jupyter => Template::Jupyter,
            TemplateArg::Blank => Template::Blank,
        }
    }
}

pub fn run(args: InitArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let created = config::create(&ctx.cwd, args.template.into(), args.force)?;
    let name = created.path.file_name().map_or_else(
        || created.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    ctx.ui.status(
        "Created",
        &format!("{name} (template {})", created.template),
    );
    if created.detected.requirements {
        ctx.ui
            .note("requirements.txt found: [packages] requirements uses it");
    }
    if created.detected.pyproject {
        ctx.ui
            .note("pyproject.toml found: [setup] shows how to install the project");
    }
    Ok(ExitCode::SUCCESS)
}
