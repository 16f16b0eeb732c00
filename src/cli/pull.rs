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
store are not fetched again."
)]
pub struct PullArgs {
    /// Image to pull instead of env.toml's [image].base (e.g. python:3.11-slim, localhost:5000/app:1)
    pub image: Option<String>,
    /// Platform to select from a multi-platform image (os/arch[/variant]); default: env.toml's, else the host's
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
}

pub fn run(args: PullArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
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
