//! `devenv push`: materialize the env as `devenv build` does, then send it to a registry.

use crate::ExitCode;

use anyhow::Context as _;

use crate::progress::Reporter as _;
use crate::push::Image;
use crate::reference::ImageRef;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Send the project's env to a registry as an OCI image: the same image `devenv \
export` writes (the base image's layers, one gzip'd layer per tool layer, a config with the env's \
Env, WorkingDir /workspaces/<project>, a numeric User and labels naming the base and hashing \
env.toml and env.lock), materializing first exactly as `devenv build` does.\n\n\
Blobs the registry has are skipped; base layers on the base image's own registry are mounted \
from its repository; the rest are uploaded, each verified by the registry against its digest, \
and retried from the start on 429, 5xx or a cut connection. The manifest goes last: a push that \
stops halfway leaves no tag. A second push of the same env uploads nothing (tool layers are \
byte-identical, and devenv remembers their digests, so it packs nothing either).\n\n\
Credentials are the ones pull uses ($REGISTRY_AUTH_FILE, podman's auth.json, \
~/.docker/config.json and its credential helpers), now with push access; plain HTTP only for \
loopback registries and the `insecure-registries` of config.toml.\n\n\
Prints the pushed digest and a pinned reference (REGISTRY/REPOSITORY@sha256:…) that podman, \
Kubernetes and Apptainer accept."
)]
pub struct PushArgs {
    /// Where to push: REGISTRY/REPOSITORY[:TAG] (the tag defaults to `latest`)
    #[arg(value_name = "REF")]
    pub reference: String,
}

pub fn run(args: PushArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let target: ImageRef = args
        .reference
        .parse()
        .with_context(|| format!("push target `{}`", args.reference))?;
    if target.digest.is_some() {
        anyhow::bail!(
            "push target `{}` names a digest; push to a tag (REGISTRY/REPOSITORY:TAG), the digest \
             is the registry's answer",
            args.reference
        );
    }
    if ctx.offline {
        anyhow::bail!("`devenv push` sends the env to a registry; it cannot run with --offline");
    }
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let store = ctx.store()?;
    let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    // gc waits while blobs are read out of the store.
    let _gc = store.keep_from_gc()?;
    let tools = m.tool_layers();
    let meta = m.image_meta(&loaded);
    let image = Image {
        base_image: &m.image,
        base_manifest: &m.pulled.manifest,
        tools: &tools,
        meta: &meta,
    };
    let client = crate::env::client()?;
    ctx.ui
        .status("Pushing", &format!("{} to {target}", m.project.name));
    let pushed = crate::push::push(&store, &client, &image, &target, &ctx.ui)?;
    ctx.ui.status(
        "Pushed",
        &format!(
            "{target} ({} uploaded, {:.1} MB; {} already there, {} mounted)",
            pushed.uploaded,
            pushed.uploaded_bytes as f64 / 1e6,
            pushed.skipped,
            pushed.mounted
        ),
    );
    // The one line a script wants, on stdout.
    println!("{}", pushed.pinned);
    Ok(ExitCode::SUCCESS)
}
