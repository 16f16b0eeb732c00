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
    #[arg(value_name = "REF", required_unless_present = "cache")]
    pub reference: Option<String>,
    /// Also (or only, without REF) upload each tool layer the team cache lacks
    #[arg(long)]
    pub cache: bool,
    /// Put the project's tracked files (`git ls-files`) in the image's working directory, so a
    /// cluster job runs the project's code, not only its environment
    #[arg(long, requires = "reference")]
    pub with_project: bool,
}

pub fn run(args: PushArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let target: Option<ImageRef> = match &args.reference {
        None => None,
        Some(r) => {
            let t: ImageRef = r.parse().with_context(|| format!("push target `{r}`"))?;
            if t.digest.is_some() {
                anyhow::bail!(
                    "push target `{r}` names a digest; push to a tag \
                     (REGISTRY/REPOSITORY:TAG), the digest is the registry's answer"
                );
            }
            Some(t)
        }
    };
    if ctx.offline {
        anyhow::bail!("`devenv push` sends the env to a registry; it cannot run with --offline");
    }
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    // Before the build: a missing cache setting is found in a second, not after minutes.
    let cache = match args.cache {
        false => None,
        true => Some(crate::env::required_team_cache(&loaded, "--cache")?),
    };
    let store = ctx.store()?;
    let m = crate::env::materialize(&loaded, &store, &ctx.env_options(), &ctx.ui)?;
    if let Some(cache) = &cache {
        publish_cache(cache, &store, &m, ctx)?;
    }
    let Some(target) = target else {
        return Ok(ExitCode::SUCCESS);
    };
    // gc waits while blobs are read out of the store.
    let _gc = store.keep_from_gc()?;
    let tools = m.tool_layers();
    let mut meta = m.image_meta(&loaded);
    if args.with_project
        && let Some(ws) = &mut meta.workspace
    {
        ws.files = tracked_files(&loaded.project_dir)?;
    }
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

/// The project's files git tracks, relative to the project directory.
fn tracked_files(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt as _;
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z", "--cached", "--"])
        .current_dir(dir)
        .output()
        .with_context(|| "--with-project runs `git ls-files`: is git installed?")?;
    if !out.status.success() {
        anyhow::bail!(
            "--with-project: `git ls-files` failed in {}: {}; the project's files are the ones \
             git tracks, so the project must be a git work tree",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect())
}

/// Upload the env's tool layers the team cache lacks (`push --cache`, `build --push-cache`).
pub fn publish_cache(
    cache: &crate::cache::TeamCache,
    store: &crate::store::Store,
    m: &crate::env::Env,
    ctx: &super::Context,
) -> anyhow::Result<()> {
    let _gc = store.keep_from_gc()?;
    let done = crate::cache::publish_all(cache, store, &m.tools, &ctx.ui)
        .with_context(|| format!("filling the team cache {}", cache.repo))?;
    ctx.ui.status(
        "Cached",
        &format!(
            "{} tool layers in {} ({} uploaded, {} already there)",
            m.tools.len(),
            cache.repo,
            done.uploaded,
            done.present
        ),
    );
    Ok(())
}
