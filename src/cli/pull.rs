//! `devenv pull [IMAGE]`: fetch an image into the store without entering it.

use crate::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use crate::platform::Platform;
use crate::progress::Reporter;
use crate::pull::{self, PullOptions};
use crate::reference::ImageRef;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Fetch the env's base image (or IMAGE) into the shared store: resolve the tag, \
verify manifest, config and every layer by digest, and unpack the layers. Layers already in the \
store are not fetched again.\n\n\
IMAGE may also be an OCI image layout on this machine, for air-gapped clusters, CI caches and \
machines without a network: oci:DIR[:TAG] (a layout directory) or oci-archive:FILE[:TAG] (the \
same as one tar file, as `devenv export --format oci-archive` and `skopeo copy … \
oci-archive:FILE` write it). Every blob is verified against its digest as it is copied in; the \
image is then tagged in the store as --as NAME (default localhost/<file name>:<TAG or latest>), \
which env.toml's [image].base can name."
)]
pub struct PullArgs {
    /// Image to pull instead of env.toml's [image].base (e.g. python:3.11-slim, localhost:5000/app:1,
    /// oci-archive:image.tar, oci:DIR:TAG)
    pub image: Option<String>,
    /// With oci:/oci-archive:, the name to give the image in the store (REGISTRY/REPO:TAG)
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    /// Platform to select from a multi-platform image (os/arch[/variant]); default: env.toml's, else the host's
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
}

pub fn run(args: PullArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    if let Some(source) = args.image.as_deref().and_then(crate::import::Source::parse) {
        return import(&args, &source, ctx);
    }
    if args.name.is_some() {
        anyhow::bail!("--as names an image imported from oci:DIR or oci-archive:FILE");
    }
    let (image, env_platform) = match &args.image {
        Some(s) => (s.parse::<ImageRef>()?, None),
        None => {
            let loaded = crate::config::find_and_load(&ctx.cwd)?;
            (loaded.env.base_image()?, loaded.env.image.platform.clone())
        }
    };
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => env_platform.unwrap_or_else(Platform::host),
    };
    let store = ctx.store()?;
    let opts = PullOptions {
        platform,
        offline: ctx.offline,
        refresh_tag: true,
    };
    let started = Instant::now();
    let _gc = store.keep_from_gc()?;
    let pulled = pull::pull(&image, &opts, &store, &crate::env::client, &ctx.ui)
        .with_context(|| format!("pulling {image}"))?;
    let what = match pulled.fetched {
        0 => "all layers cached".to_string(),
        n => format!("{n} of {} layers fetched", pulled.layers.len()),
    };
    ctx.ui.status(
        "Pulled",
        &format!(
            "{image} ({}, {what}, {:.1}s)",
            pulled.manifest.short(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// `devenv pull oci:DIR[:TAG]` / `oci-archive:FILE[:TAG]`.
fn import(
    args: &PullArgs,
    source: &crate::import::Source,
    ctx: &super::Context,
) -> anyhow::Result<ExitCode> {
    use crate::import::Source;
    let name = match &args.name {
        Some(n) => n
            .parse::<ImageRef>()
            .with_context(|| format!("--as `{n}`"))?,
        None => {
            let (path, tag) = match source {
                Source::Dir { path, tag } | Source::Archive { path, tag } => (path, tag),
            };
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let stem: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!(
                "localhost/{}:{}",
                stem.trim_matches('-'),
                tag.as_deref().unwrap_or("latest")
            )
            .parse::<ImageRef>()
            .context("naming the imported image: give it one with --as REGISTRY/REPO:TAG")?
        }
    };
    if name.digest.is_some() {
        anyhow::bail!("--as `{name}` names a digest; give a tag (REGISTRY/REPO:TAG)");
    }
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    let store = ctx.store()?;
    let _gc = store.keep_from_gc()?;
    let started = Instant::now();
    let imported = crate::import::import(source, &name, &platform, &store, &ctx.ui)
        .with_context(|| format!("importing {}", args.image.as_deref().unwrap_or("")))?;
    ctx.ui.status(
        "Imported",
        &format!(
            "{name} ({}, {} of {} layers unpacked, {:.1}s)",
            imported.manifest.short(),
            imported.fetched,
            imported.layers.len(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether `image`'s registry answers with the configured credentials (for `devenv doctor`).
pub(super) fn check_registry(image: &ImageRef) -> crate::doctor::Check {
    use crate::doctor::{Check, Status};
    let result =
        crate::env::client().and_then(|c| c.fetch_manifest(image, &image.reference()).map(|_| ()));
    match result {
        Ok(()) => Check {
            name: "registry",
            status: Status::Ok,
            detail: format!("{image} is reachable"),
            fix: None,
        },
        Err(e) => Check {
            name: "registry",
            status: Status::Fail,
            detail: format!("{image}: {e}"),
            fix: Some(
                crate::error::Hint::hint(&e)
                    .unwrap_or_else(|| "check the reference and the registry".into()),
            ),
        },
    }
}
