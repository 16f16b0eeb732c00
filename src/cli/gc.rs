//! `devenv gc` and `devenv cache ls|rm`: what the store holds, and removing what no env uses.

use crate::ExitCode;
use std::io::Write;

use crate::progress::Reporter;
use crate::reference::ImageRef;
use crate::store::gc::{self, Plan};

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Remove envs whose project directory (with its env.toml) is gone, then every \
layer, blob and manifest that no remaining env uses, then the download caches' entries \
(Python files, uv's cache, apt archives, tools) not used for --cache-age days (all of them with \
--all; builds fetch what they need again). Never removes what a running `devenv run` or \
`devenv shell` uses, and waits for pulls and builds in progress. Prints what it frees."
)]
pub struct GcArgs {
    /// Show what would be removed, with sizes; remove nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Remove download-cache entries (wheels, uv's cache, apt archives, tools) not used for
    /// DAYS days
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub cache_age: u64,
    /// Empty the download caches whatever their age
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached images, envs and layers with their sizes
    Ls {
        /// Print JSON: {"root", "images": [{"reference", "digest"}], "envs": [{"id", "project", "live", "image", "last_used"}], "layers": {"count", "bytes"}, "blobs": {"count", "bytes"}}
        #[arg(long)]
        json: bool,
    },
    /// Remove an image's layers and blobs that no live env uses
    Rm {
        /// Image references as `devenv cache ls` shows them
        #[arg(required = true)]
        images: Vec<String>,
    },
}

pub fn gc(args: GcArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let caches = if args.all {
        gc::Caches::All
    } else {
        gc::Caches::UnusedFor(std::time::Duration::from_secs(
            args.cache_age.saturating_mul(86_400),
        ))
    };
    let plan = gc::collect(&store, args.dry_run, caches)?;
    let verb = if args.dry_run { "Would free" } else { "Freed" };
    if ctx.ui.verbose() || args.dry_run {
        for p in plan.paths() {
            ctx.ui.status(
                if args.dry_run {
                    "Would remove"
                } else {
                    "Removed"
                },
                &format!("{} ({})", p.display(), human_bytes(plan.size_of(p))),
            );
        }
    }
    ctx.ui.status(verb, &summary(&plan));
    Ok(ExitCode::SUCCESS)
}

fn summary(plan: &Plan) -> String {
    let mut s = format!(
        "{} ({} envs, {} layers, {} blobs, {} manifests, {} leftovers",
        human_bytes(plan.bytes),
        plan.envs.len(),
        plan.layers.len(),
        plan.blobs.len(),
        plan.manifests.len(),
        plan.other.len()
    );
    for (cache, bytes) in plan.cache_bytes() {
        s.push_str(&format!(", {} cache {}", cache.name(), human_bytes(bytes)));
    }
    s.push(')');
    s
}

pub fn cache(cmd: CacheCommand, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    match cmd {
        CacheCommand::Ls { json } => {
            let dir_stats = |sub: &str| -> (usize, u64) {
                let entries: Vec<_> = fs_err::read_dir(store.root().join(sub))
                    .map(|r| r.flatten().collect())
                    .unwrap_or_default();
                (
                    entries.len(),
                    entries.iter().map(|e| gc::disk_usage(&e.path())).sum(),
                )
            };
            let (layers, layer_bytes) = dir_stats("layers");
            let (blobs, blob_bytes) = dir_stats("blobs/sha256");
            let images = gc::tags(&store);
            let envs = gc::envs(&store)?;
            let mut out = std::io::stdout().lock();
            if json {
                let doc = serde_json::json!({
                    "root": store.root(),
                    "images": images.iter().map(|(r, d)| serde_json::json!({"reference": r, "digest": d})).collect::<Vec<_>>(),
                    "envs": envs.iter().map(|e| serde_json::json!({
                        "id": e.id,
                        "project": e.record.as_ref().map(|r| &r.project),
                        "live": e.is_live(),
                        "image": e.record.as_ref().map(|r| &r.image),
                        "last_used": e.record.as_ref().map(|r| r.last_used),
                    })).collect::<Vec<_>>(),
                    "layers": {"count": layers, "bytes": layer_bytes},
                    "blobs": {"count": blobs, "bytes": blob_bytes},
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                writeln!(out, "store {}", store.root().display())?;
                writeln!(out, "images:")?;
                for (r, d) in &images {
                    writeln!(out, "  {r}  {}", d.short())?;
                }
                writeln!(out, "envs:")?;
                for e in &envs {
                    let project = e
                        .record
                        .as_ref()
                        .map(|r| r.project.display().to_string())
                        .unwrap_or_else(|| "?".into());
                    let state = if e.is_live() {
                        "live"
                    } else {
                        "gone (gc removes it)"
                    };
                    writeln!(out, "  {}  {project}  {state}", e.id)?;
                }
                writeln!(out, "layers: {layers} ({})", human_bytes(layer_bytes))?;
                writeln!(out, "blobs:  {blobs} ({})", human_bytes(blob_bytes))?;
            }
        }
        CacheCommand::Rm { images } => {
            for name in images {
                let image: ImageRef = name.parse()?;
                let plan = gc::remove_image(&store, &image)?;
                ctx.ui
                    .status("Removed", &format!("{image}: {}", summary(&plan)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `1.5 GiB`, `320.0 MiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
