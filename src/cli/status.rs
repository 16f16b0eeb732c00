//! `devenv status`: what the env is, what is cached, what a `devenv shell` would still fetch.

use crate::ExitCode;
use std::io::Write;

use serde::Serialize;

use crate::project::Project;
use crate::pull::{self, PullOptions};
use crate::reference::Digest;
use crate::store::gc::disk_usage;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Show the env: its name and project, the base image with the digest it is pinned \
to, each base layer and tool layer and whether it is cached (with its size), whether env.lock is \
current with env.toml (and how it differs when not), the store's size, and what `devenv shell` \
would still pull, lock or build. Makes no network request and resolves nothing."
)]
pub struct StatusArgs {
    /// Print JSON (shape documented in docs/cli.md)
    #[arg(long)]
    pub json: bool,
}

/// The `--json` document. Field names are a stable interface: add, never rename.
#[derive(Serialize)]
pub struct Status {
    pub env: EnvInfo,
    pub image: ImageInfo,
    pub layers: Vec<LayerInfo>,
    /// The env's tool layers as last built (apt, python, each setup command), in order.
    pub tool_layers: Vec<ToolLayerInfo>,
    /// `missing`, or `present`.
    pub lock: &'static str,
    /// How env.lock differs from env.toml, one sentence each; empty when it is current.
    pub lock_drift: Vec<String>,
    /// What env.toml asks beyond the project: granted, and not (yet).
    pub trust: TrustInfo,
    /// The team cache tool layers are looked up in; null when none is set.
    pub team_cache: Option<CacheInfo>,
    pub store: StoreInfo,
    /// `[services]`: each service, its state (`stopped` when no supervisor runs; `starting`,
    /// `ready`, `exited (…)`), and its published ports as `HOST:CONTAINER`.
    pub services: Vec<ServiceInfo>,
    /// What `devenv shell` would fetch: empty when everything is cached.
    pub pending: Vec<String>,
}

#[derive(Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub image: String,
    pub state: String,
    pub ports: Vec<String>,
}

#[derive(Serialize)]
pub struct EnvInfo {
    pub name: String,
    pub id: String,
    pub project: std::path::PathBuf,
    pub env_toml: std::path::PathBuf,
}

#[derive(Serialize)]
pub struct ImageInfo {
    pub reference: String,
    pub platform: String,
    /// What the reference resolved to when last pulled; null when never pulled.
    pub resolved: Option<Digest>,
    /// The platform's image manifest; null when not in the store.
    pub manifest: Option<Digest>,
}

#[derive(Serialize)]
pub struct LayerInfo {
    pub diff_id: Digest,
    pub cached: bool,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct ToolLayerInfo {
    /// The layer's key: the hash of its parent chain and locked inputs.
    pub key: Digest,
    /// The step that makes it (`python (3 packages)`); null when only the record names it.
    pub step: Option<String>,
    pub cached: bool,
    pub bytes: u64,
    /// For a layer the store lacks: whether the team cache has it (it would be fetched, not
    /// built); null when there is no cache or it was not asked (`--offline`, unreachable).
    pub in_team_cache: Option<bool>,
}

#[derive(Serialize)]
pub struct CacheInfo {
    pub repository: String,
    /// `DEVENV_CACHE`, `config.toml` or `env.toml`.
    pub from: &'static str,
    /// Why it could not be asked, when it could not.
    pub unreachable: Option<String>,
}

/// What env.toml asks beyond the project, and what of it the user granted (trust.rs).
#[derive(Serialize)]
pub struct TrustInfo {
    pub granted: Vec<String>,
    pub not_granted: Vec<String>,
}

fn trust_info(loaded: &crate::config::Loaded) -> anyhow::Result<TrustInfo> {
    let review = crate::trust::review(&loaded.env, &loaded.project_dir)?;
    let (not_granted, granted): (Vec<_>, Vec<_>) = review
        .asked
        .iter()
        .partition(|i| review.missing.contains(i));
    Ok(TrustInfo {
        granted: granted.iter().map(ToString::to_string).collect(),
        not_granted: not_granted.iter().map(ToString::to_string).collect(),
    })
}

#[derive(Serialize)]
pub struct StoreInfo {
    pub root: std::path::PathBuf,
    pub bytes: u64,
    /// Bytes in each download cache (`devenv gc --cache-age`/`--all` prunes them).
    pub caches: std::collections::BTreeMap<&'static str, u64>,
}

pub fn run(args: StatusArgs, ctx: &super::Context) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::find_and_load(&ctx.cwd)?;
    let image = loaded.env.base_image()?;
    let store = ctx.store()?;
    let project = Project::new(&loaded.project_dir)?;
    let platform = loaded.env.platform();
    // Offline: status only looks at the store.
    let opts = PullOptions {
        platform: platform.clone(),
        offline: true,
        refresh_tag: false,
    };
    let cached = pull::pull(
        &image,
        &opts,
        &store,
        &crate::env::client,
        &crate::progress::Silent,
    )
    .ok();
    let layers: Vec<LayerInfo> = cached
        .as_ref()
        .map(|p| {
            p.layers
                .iter()
                .map(|d| {
                    let path = store.layer_path(d);
                    LayerInfo {
                        diff_id: d.clone(),
                        cached: path.exists(),
                        bytes: disk_usage(&path),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    // A lock that cannot be read is one more way it differs, not a reason to show nothing.
    let lock_drift: Vec<String> = match crate::lock::check(&loaded, &platform) {
        Ok(drift) => drift.iter().map(ToString::to_string).collect(),
        Err(e) => vec![format!("unreadable: {e}")],
    };
    // With a current lock, the layers a build would make; else those last built.
    let planned: Option<Vec<(String, Digest)>> = match crate::lock::read(&loaded.project_dir) {
        Ok(Some(lock)) if lock_drift.is_empty() => lock
            .image_for(&platform)
            .and_then(|i| i.digest)
            .and_then(|base| crate::build::planned(&loaded, &lock, &base).ok())
            .map(|steps| steps.into_iter().map(|(s, k, _)| (s.label, k)).collect()),
        _ => None,
    };
    let steps: Vec<(Option<String>, Digest)> = match planned {
        Some(p) => p.into_iter().map(|(l, k)| (Some(l), k)).collect(),
        None => crate::store::gc::tool_layers(&project.state_dir(&store))
            .into_iter()
            .map(|k| (None, k))
            .collect(),
    };
    let cache = crate::cache::configured(loaded.env.cache.as_ref())?;
    let mut team_cache = cache.as_ref().map(|(repo, origin)| CacheInfo {
        repository: repo.to_string(),
        from: origin.as_str(),
        unreachable: None,
    });
    let client = match (&cache, ctx.offline) {
        (Some((repo, origin)), false) => Some(crate::cache::TeamCache::new(repo.clone(), *origin)),
        _ => None,
    };
    let mut tool_layers = Vec::new();
    for (step, key) in steps {
        let path = store.layer_path(&key);
        let cached = path.exists();
        let in_team_cache = match (&client, &mut team_cache) {
            (Some(c), Some(info)) if !cached && info.unreachable.is_none() => match c.has(&key) {
                Ok(has) => Some(has),
                Err(e) => {
                    info.unreachable = Some(e.to_string());
                    None
                }
            },
            _ => None,
        };
        tool_layers.push(ToolLayerInfo {
            cached,
            bytes: disk_usage(&path),
            key,
            step,
            in_team_cache,
        });
    }
    let lock_present = loaded.project_dir.join(crate::lock::FILE_NAME).is_file();
    let mut pending = Vec::new();
    if cached.is_none() {
        pending.push(format!("pull {image}"));
    }
    if !lock_present {
        pending.push("lock: write env.lock".into());
    } else if !lock_drift.is_empty() {
        pending.push("lock: re-resolve what changed, then build what depends on it".into());
    } else if tool_layers.iter().any(|t| !t.cached) {
        pending.push("build the missing tool layers".into());
    }
    let status = Status {
        env: EnvInfo {
            name: project.name.clone(),
            id: project.id.clone(),
            project: project.dir.clone(),
            env_toml: loaded.path.clone(),
        },
        image: ImageInfo {
            reference: image.to_string(),
            platform: platform.to_string(),
            resolved: cached
                .as_ref()
                .map(|p| p.resolved.clone())
                .or_else(|| image.digest.clone())
                .or_else(|| store.tag(&image)),
            manifest: cached.as_ref().map(|p| p.manifest.clone()),
        },
        layers,
        tool_layers,
        lock: if lock_present { "present" } else { "missing" },
        lock_drift,
        trust: trust_info(&loaded)?,
        team_cache,
        store: StoreInfo {
            root: store.root().to_path_buf(),
            bytes: disk_usage(store.root()),
            caches: crate::store::gc::cache_sizes(&store)
                .into_iter()
                .map(|(c, b)| (c.name(), b))
                .collect(),
        },
        services: services_info(&loaded, &project.state_dir(&store).join("services")),
        pending,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let human = super::gc::human_bytes;
    writeln!(
        out,
        "env      {} ({})",
        status.env.name,
        status.env.project.display()
    )?;
    writeln!(
        out,
        "image    {} [{}]",
        status.image.reference, status.image.platform
    )?;
    match &status.image.manifest {
        Some(m) => writeln!(out, "pinned   {m}")?,
        None => writeln!(out, "pinned   not pulled yet")?,
    }
    let size = |cached: bool, bytes: u64| {
        if cached {
            human(bytes)
        } else {
            "missing".into()
        }
    };
    for l in &status.layers {
        let (id, size) = (l.diff_id.short(), size(l.cached, l.bytes));
        writeln!(out, "layer    {id}  {size}")?;
    }
    for t in &status.tool_layers {
        let (id, size) = (t.key.short(), size(t.cached, t.bytes));
        let step = t
            .step
            .as_deref()
            .map(|s| format!("  {s}"))
            .unwrap_or_default();
        let from = match t.in_team_cache {
            Some(true) => "  (from the team cache)",
            Some(false) => "  (to build: not in the team cache)",
            None => "",
        };
        writeln!(out, "tool     {id}  {size}{step}{from}")?;
    }
    match (status.lock, status.lock_drift.as_slice()) {
        ("present", []) => writeln!(out, "lock     env.lock current")?,
        ("present", drift) => {
            writeln!(out, "lock     env.lock differs from env.toml:")?;
            for d in drift {
                writeln!(out, "           {d}")?;
            }
        }
        (state, _) => writeln!(out, "lock     env.lock {state}")?,
    }
    writeln!(
        out,
        "store    {} ({})",
        status.store.root.display(),
        human(status.store.bytes)
    )?;
    for g in &status.trust.granted {
        writeln!(out, "trust    granted: {g}")?;
    }
    for g in &status.trust.not_granted {
        writeln!(out, "trust    not granted: {g} (`devenv trust` grants it)")?;
    }
    if let Some(c) = &status.team_cache {
        writeln!(out, "cache    {} (from {})", c.repository, c.from)?;
        if let Some(why) = &c.unreachable {
            writeln!(out, "           not reachable: {why}")?;
        }
    }
    let caches: Vec<String> = crate::store::gc::Cache::ALL
        .iter()
        .map(|c| format!("{} {}", c.name(), human(status.store.caches[c.name()])))
        .collect();
    writeln!(out, "caches   {}", caches.join(", "))?;
    for s in &status.services {
        let ports = if s.ports.is_empty() {
            String::new()
        } else {
            format!("  127.0.0.1:{}", s.ports.join(", 127.0.0.1:"))
        };
        writeln!(
            out,
            "service  {}  {}  ({}){ports}",
            s.name, s.state, s.image
        )?;
    }
    if status.pending.is_empty() {
        writeln!(
            out,
            "ready    nothing to fetch: `devenv shell` starts from the store"
        )?;
    } else {
        for p in &status.pending {
            writeln!(out, "pending  {p}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Each `[services]` entry with what the env's supervisor says of it (asked only when its
/// socket is there; `stopped` otherwise).
fn services_info(loaded: &crate::config::Loaded, dir: &std::path::Path) -> Vec<ServiceInfo> {
    if loaded.env.services.is_empty() {
        return Vec::new();
    }
    let running = crate::services::ask_running(dir, crate::services::Op::Status)
        .map(|r| r.services)
        .unwrap_or_default();
    loaded
        .env
        .services
        .values()
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            image: s.image.to_string(),
            state: running
                .iter()
                .find(|r| r.name == s.name)
                .map_or_else(|| "stopped".to_string(), |r| r.state.clone()),
            ports: s
                .ports
                .iter()
                .map(|p| format!("{}:{}", p.host, p.container))
                .collect(),
        })
        .collect()
}
