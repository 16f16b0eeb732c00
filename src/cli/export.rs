//! `devenv export`: materialize the env as `devenv build` does, then write it as an OCI image.

use crate::ExitCode;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::export::{ExportOptions, Format};
use crate::progress::Reporter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum ExportFormat {
    /// An OCI image layout directory
    #[default]
    Oci,
    /// The same layout as one tar file
    OciArchive,
}

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Write the project's env as an OCI image: the base image's layers (the \
registry's blobs, same digests) and one gzip'd layer per tool layer (apt, python venv, [setup] \
steps), materializing first exactly as `devenv build` does. The image config is the base's with \
the tool layers added and an Env that is what `devenv run` gives the command, without host \
variables: the image's Env, then env.toml's [env], then the venv's bin first on PATH and \
VIRTUAL_ENV when there is a venv.\n\n\
--format oci (the default) writes an image layout directory (default ./<project>-env); \
--format oci-archive writes the same layout as one tar file (default ./<project>-env.tar). \
Other tools take it from there, e.g.:\n  \
skopeo copy oci:DIR:latest docker://registry.example.com/team/env:1\n  \
podman pull oci:DIR:latest\n\n\
Nothing is written at PATH until the image is complete; an existing non-empty PATH is an error \
unless --force."
)]
pub struct ExportArgs {
    /// Where to write the image (default ./<project>-env, or ./<project>-env.tar)
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// oci: an image layout directory; oci-archive: the same as one tar file
    #[arg(long, value_enum, default_value_t = ExportFormat::Oci)]
    pub format: ExportFormat,
    /// The name index.json gives the image (org.opencontainers.image.ref.name)
    #[arg(long, value_name = "NAME", default_value = "latest")]
    pub tag: String,
    /// Replace what is at PATH
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: ExportArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let format = match args.format {
        ExportFormat::Oci => Format::Layout,
        ExportFormat::OciArchive => Format::Archive,
    };
    let name = crate::project::Project::new(&loaded.project_dir)?.name;
    let out = match args.output {
        Some(p) => ctx.cwd.join(p),
        None => ctx.cwd.join(match format {
            Format::Layout => format!("{name}-env"),
            Format::Archive => format!("{name}-env.tar"),
        }),
    };
    // Before a build that may take minutes, not after.
    crate::export::check_target(&out, &args.tag, args.force)
        .with_context(|| format!("exporting {name}"))?;
    let store = ctx.store()?;
    let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    // gc waits while blobs are copied out of the store.
    let _gc = store.keep_from_gc()?;

    let tools = m.tool_layers();

    // What `devenv run` gives, less the host's variables and devenv's per-user ones.
    let meta = m.image_meta(&loaded);

    let opts = ExportOptions {
        base_manifest: &m.pulled.manifest,
        tools: &tools,
        meta: &meta,
        tag: &args.tag,
        format,
        force: args.force,
    };
    ctx.ui.status(
        "Exporting",
        &format!("{} to {}", m.project.name, out.display()),
    );
    let exported = crate::export::export(&store, &opts, &out, &ctx.ui)
        .with_context(|| format!("exporting {}", m.project.name))?;
    ctx.ui.status(
        "Exported",
        &format!(
            "{} ({}, {} layers, {:.1} MB)",
            out.display(),
            exported.manifest.short(),
            exported.layers,
            exported.size as f64 / 1e6
        ),
    );
    Ok(ExitCode::SUCCESS)
}
