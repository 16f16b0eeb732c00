//! Garbage collection: remove envs whose project is gone, then every layer, blob and manifest
//! no live env references, then the download caches builds keep (wheels, uv's cache, apt's
//! archives, unpinned tools) that were not used for a while ([`Caches`]).
//!
//! Safety against concurrent work: gc holds the store's `gc` lock exclusively while it plans
//! and deletes; pulls and env entries hold it shared from the first fetch until their env record
//! is written, so gc never sees a half-registered env or deletes under a pull. A running
//! container keeps its env live through its per-entry lock even when the project is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LockMode, Store, StoreError, lock_file};
use crate::reference::Digest;
use crate::registry::manifest::{self, ManifestKind};

/// `envs/<id>/env.json`: what an env is and what it uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvRecord {
    /// The project directory (where env.toml is).
    pub project: PathBuf,
    /// Seconds since the epoch of the last `devenv shell`/`run`.
    pub last_used: u64,
    /// The image reference env.toml names.
    pub image: String,
    /// The digest that reference resolved to (an index for multi-platform images).
    pub resolved: Digest,
    /// The platform's image manifest.
    pub manifest: Digest,
}

pub const ENV_RECORD: &str = "env.json";

/// `envs/<id>/services.json`: the images of the env's `[services]`, as [`EnvRecord`]s.
pub const SERVICE_IMAGES: &str = "services.json";

/// `envs/<id>/tool-layers.json`: the keys (`sha256:…`) of the env's tool layers, in order, so
/// gc keeps them as it keeps the base image's layers (written by `build`).
pub const TOOL_LAYERS: &str = "tool-layers.json";

/// One env in the store, with its record when it has a readable one.
#[derive(Debug)]
pub struct EnvEntry {
    pub id: String,
    pub dir: PathBuf,
    pub record: Option<EnvRecord>,
}

impl EnvEntry {
    /// Live: its project still has an env.toml, or a container of it is running.
    pub fn is_live(&self) -> bool {
        let project_there = self
            .record
            .as_ref()
            .is_some_and(|r| r.project.join("env.toml").is_file());
        project_there || running(&self.dir)
    }
}

/// The keys of the tool layers last built for the env at `env_dir`, in order; none when the
/// list is missing or unreadable.
pub fn tool_layers(env_dir: &Path) -> Vec<Digest> {
    fs_err::read(env_dir.join(TOOL_LAYERS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Whether a container of the env is running: the runtime keeps `state/run/<entry>.lock`
/// flocked for the life of each entry.
pub fn running(env_dir: &Path) -> bool {
    let Ok(entries) = fs_err::read_dir(env_dir.join("state/run")) else {
        return false;
    };
    entries.flatten().any(|e| {
        let lock = e.path();
        lock.extension().is_some_and(|x| x == "lock")
            && lock_file(&lock, LockMode::TryExclusive).is_err()
    })
}

pub fn envs(store: &Store) -> Result<Vec<EnvEntry>, StoreError> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(store.root().join("envs"))? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let dir = e.path();
        let record = fs_err::read(dir.join(ENV_RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(EnvEntry {
            id: e.file_name().to_string_lossy().into_owned(),
            dir,
            record,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// What an image manifest keeps alive.
#[derive(Debug, Default)]
pub struct Roots {
    pub manifests: BTreeSet<Digest>,
    pub blobs: BTreeSet<Digest>,
    pub layers: BTreeSet<Digest>,
}

impl Roots {
    /// Add what an env uses: its image, and the tool layers built for it.
    pub fn add_env(&mut self, store: &Store, env: &EnvEntry) {
        if let Some(r) = &env.record {
            self.add(store, r);
        }
        let services: Vec<EnvRecord> = fs_err::read(env.dir.join(SERVICE_IMAGES))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for r in &services {
            self.add(store, r);
        }
        self.layers.extend(tool_layers(&env.dir));
    }

    /// Add `record`'s image: its manifests, config and layer blobs, and unpacked layers.
    pub fn add(&mut self, store: &Store, record: &EnvRecord) {
        self.manifests.insert(record.resolved.clone());
        self.manifests.insert(record.manifest.clone());
        let Some(bytes) = store.manifest(&record.manifest) else {
            return;
        };
        let Ok(ManifestKind::Image(m)) = manifest::parse_manifest("", &bytes) else {
            return;
        };
        self.blobs.insert(m.config.digest.clone());
        self.blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
        if let Some(config) = store
            .blob(&m.config.digest)
            .and_then(|b| manifest::parse_config(&b).ok())
        {
            self.layers.extend(config.rootfs.diff_ids);
        }
    }
}

/// What a collection removes.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    pub envs: Vec<PathBuf>,
    pub layers: Vec<PathBuf>,
    pub blobs: Vec<PathBuf>,
    pub manifests: Vec<PathBuf>,
    pub other: Vec<PathBuf>,
    /// Cache entries, each with the cache it is in.
    pub caches: Vec<(Cache, PathBuf)>,
    /// Bytes the removal frees (apparent sizes).
    pub bytes: u64,
    /// Each removed path's size, measured before the removal.
    pub sizes: std::collections::BTreeMap<PathBuf, u64>,
}

/// The download caches of builds: nothing refers to them, they only save fetching again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// `cache/pip/sha256/`: Python files by sha256.
    Pip,
    /// `cache/uv/cache/`: uv's cache (index pages, metadata, unpacked wheels).
    Uv,
    /// `cache/apt/`: apt's downloaded archives.
    Apt,
    /// `tools/`: tools of versions devenv no longer pins.
    Tools,
}

impl Cache {
    pub const ALL: [Cache; 4] = [Cache::Pip, Cache::Uv, Cache::Apt, Cache::Tools];

    pub fn name(self) -> &'static str {
        match self {
            Cache::Pip => "pip",
            Cache::Uv => "uv",
            Cache::Apt => "apt",
            Cache::Tools => "tools",
        }
    }

    /// Its directory in the store.
    pub fn dir(self, store: &Store) -> PathBuf {
        store.root().join(match self {
            Cache::Pip => "cache/pip/sha256",
            Cache::Uv => "cache/uv/cache",
            Cache::Apt => "cache/apt",
            Cache::Tools => "tools",
        })
    }

    /// The entries gc removes one by one, each as its own unit: a file of pip's or apt's
    /// cache, a tool's directory (the pinned uv too: a build fetches it again, verified).
    /// uv's cache is one unit: its entries point at each other (index pages at unpacked
    /// archives), so it goes whole or not at all.
    fn units(self, store: &Store) -> Vec<PathBuf> {
        let dir = self.dir(store);
        if self == Cache::Uv {
            return vec![dir].into_iter().filter(|d| d.exists()).collect();
        }
        let mut out: Vec<PathBuf> = fs_err::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // apt's lock and partial/ are apt's own bookkeeping.
        out.retain(|p| {
            self != Cache::Apt || !matches!(p.file_name(), Some(n) if n == "lock" || n == "partial")
        });
        out.sort();
        out
    }
}

/// Which cache entries a collection removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caches {
    /// Those not used (read or written) for this long: the newest access or modification
    /// time of the entry's files.
    UnusedFor(std::time::Duration),
    All,
}

impl Caches {
    /// What `devenv gc` removes without being told: entries unused for 30 days.
    pub const DEFAULT: Caches = Caches::UnusedFor(std::time::Duration::from_secs(30 * 86_400));
}

/// The bytes each cache holds now.
pub fn cache_sizes(store: &Store) -> Vec<(Cache, u64)> {
    Cache::ALL
        .iter()
        .map(|&c| (c, c.units(store).iter().map(|u| disk_usage(u)).sum()))
        .collect()
}

/// The latest access or modification time of `path`, or for a directory, of the files below
/// it (a directory's own times move when it is listed or made, which is no use of its files);
/// an empty directory's own.
fn last_used(path: &Path) -> std::time::SystemTime {
    let Ok(meta) = fs_err::symlink_metadata(path) else {
        return std::time::SystemTime::UNIX_EPOCH;
    };
    let own = [meta.accessed(), meta.modified()]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    if !meta.is_dir() {
        return own;
    }
    fs_err::read_dir(path)
        .map(|r| r.flatten().map(|e| last_used(&e.path())).max())
        .ok()
        .flatten()
        .unwrap_or(own)
}

fn stale_caches(store: &Store, which: Caches) -> Vec<(Cache, PathBuf)> {
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    for c in Cache::ALL {
        for unit in c.units(store) {
            let remove = match which {
                Caches::All => true,
                Caches::UnusedFor(age) => now
                    .duration_since(last_used(&unit))
                    .is_ok_and(|idle| idle >= age),
            };
            if remove {
                out.push((c, unit));
            }
        }
    }
    out
}

impl Plan {
    /// Everything the plan removes.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.envs,
            &self.layers,
            &self.blobs,
            &self.manifests,
            &self.other,
        ]
        .into_iter()
        .flatten()
        .chain(self.caches.iter().map(|(_, p)| p))
    }

    /// Bytes freed per cache, for caches with something removed.
    pub fn cache_bytes(&self) -> Vec<(Cache, u64)> {
        let mut out: Vec<(Cache, u64)> = Vec::new();
        for (c, p) in &self.caches {
            let b = self.size_of(p);
            match out.iter_mut().find(|(k, _)| k == c) {
                Some((_, total)) => *total += b,
                None => out.push((*c, b)),
            }
        }
        out
    }

    /// What removing `path` frees (0 for a path not in the plan).
    pub fn size_of(&self, path: &Path) -> u64 {
        self.sizes.get(path).copied().unwrap_or(0)
    }

    /// Size the removal frees, and then the removal (unless `dry_run`).
    fn carry_out(&mut self, dry_run: bool) -> Result<(), StoreError> {
        self.sizes = self.paths().map(|p| (p.clone(), disk_usage(p))).collect();
        self.bytes = self.sizes.values().sum();
        if !dry_run {
            for p in self.paths() {
                super::remove_tree(p)?;
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.envs.is_empty()
            && self.layers.is_empty()
            && self.blobs.is_empty()
            && self.manifests.is_empty()
            && self.other.is_empty()
            && self.caches.is_empty()
    }
}

/// Collect: plan under the exclusive gc lock and, unless `dry_run`, remove. Builds hold the
/// lock shared while they use the caches, so no cache entry goes while a build reads it.
pub fn collect(store: &Store, dry_run: bool, caches: Caches) -> Result<Plan, StoreError> {
    let _gc = store.collecting()?;
    let mut plan = Plan::default();
    let mut roots = Roots::default();
    for env in envs(store)? {
        if env.is_live() {
            roots.add_env(store, &env);
        } else {
            plan.envs.push(env.dir);
        }
    }
    let unreferenced = |dir: &Path, keep: &BTreeSet<Digest>| -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            match format!("sha256:{name}").parse::<Digest>() {
                Ok(d) if keep.contains(&d) => {}
                _ => out.push(e.path()),
            }
        }
        out.sort();
        Ok(out)
    };
    plan.layers = unreferenced(&store.root().join("layers"), &roots.layers)?;
    plan.blobs = unreferenced(&store.root().join("blobs/sha256"), &roots.blobs)?;
    plan.manifests = unreferenced(&store.root().join("images/manifests"), &roots.manifests)?;
    // With the gc lock held no pull is staging anything: all of tmp/ is leftovers.
    for e in fs_err::read_dir(store.root().join("tmp"))? {
        plan.other.push(e?.path());
    }
    plan.caches = stale_caches(store, caches);
    plan.carry_out(dry_run)?;
    if !dry_run {
        remove_dangling_tags(store)?;
    }
    Ok(plan)
}

/// Tags whose manifest is gone only cost a registry round trip; remove them.
fn remove_dangling_tags(store: &Store) -> Result<(), StoreError> {
    fn walk(store: &Store, dir: &Path) -> Result<(), StoreError> {
        for e in fs_err::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                walk(store, &path)?;
                let _ = fs_err::remove_dir(&path); // only succeeds when empty
            } else {
                let target = fs_err::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<Digest>().ok());
                if target.is_none_or(|d| store.manifest(&d).is_none()) {
                    fs_err::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
    walk(store, &store.root().join("images/tags"))
}

/// Apparent size of a file or tree (symlinks not followed).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs_err::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = fs_err::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| disk_usage(&e.path())).sum()
}

/// The store's images: every tag it resolved, with what it points to.
pub fn tags(store: &Store) -> Vec<(String, Digest)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Digest)>) {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if path.is_dir() {
                let p = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                walk(&path, &p, out);
            } else if let Some(d) = fs_err::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                out.push((format!("{prefix}:{name}"), d));
            }
        }
    }
    let mut out = Vec::new();
    walk(&store.root().join("images/tags"), "", &mut out);
    out.sort();
    out
}

/// Remove one image: its tag, and its manifests, configs, blobs and layers that no live env
/// uses. Returns what was removed.
pub fn remove_image(store: &Store, image: &crate::reference::ImageRef) -> Result<Plan, StoreError> {
    let _gc = store.collecting()?;
    let mut plan = Plan::default();
    let top = match &image.digest {
        Some(d) => Some(d.clone()),
        None => store.tag(image),
    };
    let Some(top) = top else { return Ok(plan) };
    let mut mine = Roots::default();
    let mut manifests = vec![top.clone()];
    if let Some(bytes) = store.manifest(&top)
        && let Ok(ManifestKind::Index(index)) = manifest::parse_manifest("", &bytes)
    {
        manifests.extend(index.manifests.iter().map(|d| d.digest.clone()));
    }
    for m in manifests {
        mine.add(
            store,
            &EnvRecord {
                project: PathBuf::new(),
                last_used: 0,
                image: String::new(),
                resolved: top.clone(),
                manifest: m,
            },
        );
    }
    let mut live = Roots::default();
    for env in envs(store)? {
        if env.is_live() {
            live.add_env(store, &env);
        }
    }
    fn unused(
        mine: &BTreeSet<Digest>,
        live: &BTreeSet<Digest>,
        path: impl Fn(&Digest) -> PathBuf,
    ) -> Vec<PathBuf> {
        mine.difference(live)
            .map(path)
            .filter(|p| p.exists())
            .collect()
    }
    plan.layers = unused(&mine.layers, &live.layers, |d| store.layer_path(d));
    plan.blobs = unused(&mine.blobs, &live.blobs, |d| store.blob_path(d));
    plan.manifests = unused(&mine.manifests, &live.manifests, |d| store.manifest_path(d));
    plan.carry_out(false)?;
    // A live env still using the image keeps its tag too: `devenv --offline run` must go on
    // resolving it from the store.
    if !live.manifests.contains(&top)
        && let Some(tag) = store.tag_path(image)
    {
        let _ = fs_err::remove_file(tag);
    }
    remove_dangling_tags(store)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    /// A store holding one image (manifest, config, one layer) and an env using it.
    fn image(store: &Store, name: &str, project: &Path) -> (EnvRecord, Digest) {
        let diff_id = digest(&format!("{name}-layer"));
        let layer_blob = digest(&format!("{name}-blob"));
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [diff_id]}});
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = Digest::of(&config_bytes);
        store.put_blob(&config_digest, &config_bytes).unwrap();
        store.put_blob(&layer_blob, b"x").unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_blob, "size": 1}],
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = Digest::of(&manifest_bytes);
        store
            .put_manifest(&manifest_digest, &manifest_bytes)
            .unwrap();
        fs_err::create_dir_all(store.layer_path(&diff_id).join("etc")).unwrap();
        let record = EnvRecord {
            project: project.to_path_buf(),
            last_used: 0,
            image: name.into(),
            resolved: manifest_digest.clone(),
            manifest: manifest_digest,
        };
        let env_dir = store.root().join("envs").join(name);
        fs_err::create_dir_all(env_dir.join("home")).unwrap();
        fs_err::write(
            env_dir.join(ENV_RECORD),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        (record, diff_id)
    }

    #[test]
    fn gc_removes_envs_of_gone_projects_and_what_only_they_used() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().join("store")).unwrap();
        let live = root.path().join("live");
        fs_err::create_dir_all(&live).unwrap();
        fs_err::write(live.join("env.toml"), "").unwrap();
        let (_, kept_layer) = image(&store, "a", &live);
        let (_, gone_layer) = image(&store, "b", &root.path().join("deleted"));
        fs_err::create_dir_all(store.root().join("tmp/layer-leftover")).unwrap();

        let dry = collect(&store, true, Caches::DEFAULT).unwrap();
        assert_eq!(dry.envs, vec![store.root().join("envs/b")]);
        assert_eq!(dry.layers, vec![store.layer_path(&gone_layer)]);
        assert_eq!(
            dry.blobs.len(),
            2,
            "config and layer blob of b: {:?}",
            dry.blobs
        );
        assert_eq!(dry.manifests.len(), 1);
        assert_eq!(dry.other.len(), 1);
        assert!(
            store.layer_path(&gone_layer).exists(),
            "dry run removes nothing"
        );

        let plan = collect(&store, false, Caches::DEFAULT).unwrap();
        assert!(plan.bytes > 0);
        assert!(!store.layer_path(&gone_layer).exists());
        assert!(!store.root().join("envs/b").exists());
        assert!(store.layer_path(&kept_layer).exists());
        assert!(store.root().join("envs/a/home").exists());
        assert!(
            collect(&store, false, Caches::DEFAULT).unwrap().is_empty(),
            "a second gc finds nothing"
        );
    }

    #[test]
    fn a_running_env_is_live_without_its_project() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path().join("store")).unwrap();
        let (_, layer) = image(&store, "a", &root.path().join("deleted"));
        let run = store.root().join("envs/a/state/run");
        fs_err::create_dir_all(run.join("1")).unwrap();
        let held = lock_file(&run.join("1.lock"), LockMode::Exclusive).unwrap();
        assert!(
            collect(&store, false, Caches::DEFAULT)
                .unwrap()
                .envs
                .is_empty()
        );
        assert!(store.layer_path(&layer).exists());
        drop(held);
        assert_eq!(
            collect(&store, false, Caches::DEFAULT).unwrap().envs.len(),
            1
        );
        assert!(!store.layer_path(&layer).exists());
    }
}
