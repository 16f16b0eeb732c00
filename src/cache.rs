//! The team cache: tool layers shared through a registry repository the team already has,
//! looked up by their build key before a step runs (the narinfo pattern of Nix binary caches).
//!
//! ```text
//! REPO:key-<key hex>   an OCI image manifest, artifactType application/vnd.devenv.layer.v1
//!   config             application/vnd.devenv.layer.config.v1+json: the key and its inputs
//!   layers[0]          the tool layer, application/vnd.oci.image.layer.v1.tar+gzip
//! ```
//!
//! Where the cache is: `DEVENV_CACHE` (empty or `off`: none), else `[cache] registry` in the
//! user's config.toml, else `[cache] registry` in env.toml: the user's setting wins.
//!
//! Invariants: a cache makes an env faster, never different. An entry is used only when its
//! manifest, config and blob verify against their digests, its config names the key asked for,
//! its one layer unpacks (with the same hostile-input rules as any pulled layer) to the diff_id
//! the config states, and, where env.lock pins that key, to the pinned diff_id; anything else is
//! refused with a note and the step is built. An unreachable or failing cache is a note, never
//! an error. A layer enters the store only whole, by rename, under the build's lock for its key.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::export::{self, WrittenLayer};
use crate::progress::Reporter;
use crate::reference::{Digest, ImageRef};
use crate::registry::{Client, RegistryError, manifest::ImageManifest};
use crate::store::Store;

pub const ARTIFACT_TYPE: &str = "application/vnd.devenv.layer.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.devenv.layer.config.v1+json";
/// An entry's config is small; anything bigger is not ours.
const MAX_CONFIG: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("DEVENV_CACHE `{value}`: {message}")]
    Variable { value: String, message: String },
    #[error("{}: [cache] registry: {message}", path.display())]
    UserConfig {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("its entry {} was refused: {why}", short_tag(tag))]
    Refused { tag: String, why: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("setting up the registry client: {0}")]
    Client(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl crate::error::Hint for CacheError {
    fn hint(&self) -> Option<String> {
        match self {
            CacheError::Variable { .. } | CacheError::UserConfig { .. } => Some(
                "a team cache is a repository like registry.example.com/team/devenv-cache; \
                 DEVENV_CACHE=off turns it off"
                    .into(),
            ),
            CacheError::Registry(e) => crate::error::Hint::hint(e),
            _ => None,
        }
    }
}

/// Where the setting came from, for messages and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Variable,
    UserConfig,
    EnvToml,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Variable => "DEVENV_CACHE",
            Origin::UserConfig => "config.toml",
            Origin::EnvToml => "env.toml",
        }
    }
}

/// The team cache repository in effect, if any.
pub fn configured(env_toml: Option<&ImageRef>) -> Result<Option<(ImageRef, Origin)>, CacheError> {
    if let Some(v) = std::env::var_os("DEVENV_CACHE") {
        let value = v.to_string_lossy().into_owned();
        if value.is_empty() || value == "off" {
            return Ok(None);
        }
        let repo =
            crate::config::cache_repository(&value).map_err(|message| CacheError::Variable {
                value: value.clone(),
                message,
            })?;
        return Ok(Some((repo, Origin::Variable)));
    }
    match crate::user_config::read() {
        Ok(Some(f)) => match user_setting(&f.text, &f.path)? {
            UserSetting::Unset => {}
            UserSetting::Off => return Ok(None),
            UserSetting::Repo(repo) => return Ok(Some((repo, Origin::UserConfig))),
        },
        Ok(None) => {}
        Err(e) => {
            return Err(CacheError::UserConfig {
                path: e.path.clone(),
                message: e.message.clone(),
            });
        }
    }
    Ok(env_toml.map(|r| (r.clone(), Origin::EnvToml)))
}

enum UserSetting {
    Unset,
    /// `registry = ""` or `"off"`: no cache, whatever env.toml says.
    Off,
    Repo(ImageRef),
}

/// `[cache] registry` of the user's config.toml.
fn user_setting(text: &str, path: &Path) -> Result<UserSetting, CacheError> {
    let err = |message: String| CacheError::UserConfig {
        path: path.to_path_buf(),
        message,
    };
    // The file's syntax is the registry settings' to report; a table that does not parse here
    // is ours.
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(UserSetting::Unset);
    };
    let Some(registry) = table.get("cache").and_then(|c| c.get("registry")) else {
        return Ok(UserSetting::Unset);
    };
    let Some(value) = registry.as_str() else {
        return Err(err("expected a string".into()));
    };
    if value.is_empty() || value == "off" {
        return Ok(UserSetting::Off);
    }
    crate::config::cache_repository(value)
        .map(UserSetting::Repo)
        .map_err(err)
}

/// What an entry's config records: the key and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryConfig {
    pub key: Digest,
    pub parent: Digest,
    pub kind: String,
    /// The step's locked inputs, as hashed into the key.
    pub inputs: String,
    pub diff_id: Digest,
    /// The devenv that built it.
    pub devenv: String,
}

/// A team cache: a repository and a client for it.
pub struct TeamCache {
    pub repo: ImageRef,
    pub origin: Origin,
    /// Made at the first request: a warm start, with every layer in the store, loads no TLS
    /// roots for it.
    client: std::sync::OnceLock<Result<Client, String>>,
}

impl std::fmt::Debug for TeamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeamCache({})", self.repo)
    }
}

/// An entry found for a key, checked as far as it can be before its blob is fetched.
#[derive(Debug)]
pub struct Entry {
    pub tag: String,
    pub config: EntryConfig,
    pub layer: crate::registry::Descriptor,
}

impl TeamCache {
    pub fn new(repo: ImageRef, origin: Origin) -> TeamCache {
        TeamCache {
            repo,
            origin,
            client: std::sync::OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&Client, CacheError> {
        self.client
            .get_or_init(|| crate::env::client().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| CacheError::Client(e.clone()))
    }

    /// The tag an entry for `key` has.
    pub fn tag(key: &Digest) -> String {
        format!("key-{}", key.hex())
    }

    fn at(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            ..self.repo.clone()
        }
    }

    /// Whether the cache has an entry for `key` (`HEAD`; nothing verified).
    pub fn has(&self, key: &Digest) -> Result<bool, CacheError> {
        let tag = Self::tag(key);
        Ok(self
            .client()?
            .manifest_digest(&self.at(&tag), &tag)?
            .is_some())
    }

    /// The entry for `key`, if the cache has one: manifest and config fetched, verified and
    /// checked against the key.
    pub fn lookup(&self, key: &Digest) -> Result<Option<Entry>, CacheError> {
        let tag = Self::tag(key);
        let at = self.at(&tag);
        let fetched = match self.client()?.fetch_manifest(&at, &tag) {
            Ok(f) => f,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let refuse = |why: String| CacheError::Refused {
            tag: tag.clone(),
            why,
        };
        let m: ImageManifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| refuse(format!("the manifest is not an image manifest: {e}")))?;
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(refuse(format!(
                "its config is `{}`, not a devenv layer entry",
                m.config.media_type
            )));
        }
        let [layer] = m.layers.as_slice() else {
            return Err(refuse(format!(
                "it has {} layers, an entry has one",
                m.layers.len()
            )));
        };
        if layer.media_type != export::LAYER_MEDIA_TYPE {
            return Err(refuse(format!(
                "its layer is `{}`, expected {}",
                layer.media_type,
                export::LAYER_MEDIA_TYPE
            )));
        }
        let bytes = self
            .client()?
            .fetch_blob(&at, &m.config.digest, MAX_CONFIG)?;
        let config: EntryConfig = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(format!("its config does not parse: {e}")))?;
        if config.key != *key {
            return Err(refuse(format!(
                "it records key {}, not the key it is tagged with",
                config.key
            )));
        }
        Ok(Some(Entry {
            tag,
            config,
            layer: layer.clone(),
        }))
    }

    /// Fetch `entry`'s layer, verify it and move it to `dest` (`layers/<key>`); `pin` is the
    /// diff_id env.lock pins for the key. Returns what it packs to, for push's memo.
    pub fn install(
        &self,
        store: &Store,
        entry: &Entry,
        pin: Option<&Digest>,
        dest: &Path,
        ui: &dyn Reporter,
    ) -> Result<WrittenLayer, CacheError> {
        let refuse = |why: String| CacheError::Refused {
            tag: entry.tag.clone(),
            why,
        };
        if let Some(pin) = pin
            && *pin != entry.config.diff_id
        {
            return Err(refuse(format!(
                "it holds layer {}, but env.lock pins {pin}",
                entry.config.diff_id
            )));
        }
        let at = self.at(&entry.tag);
        let staging = store.staging_dir("cache")?;
        fs_err::set_permissions(
            staging.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let body = self
            .client()?
            .open_blob(&at, &entry.layer.digest, Some(entry.layer.size))?;
        let bar = ui.bar(entry.layer.digest.short(), Some(entry.layer.size));
        let applied = crate::unpack::apply_layer(
            Counted {
                inner: body,
                bar: &*bar,
            },
            crate::unpack::Compression::Gzip,
            staging.path(),
        )
        .map_err(|e| refuse(format!("its layer does not unpack: {}", chain(&e))))?;
        if applied.diff_id != entry.config.diff_id {
            return Err(refuse(format!(
                "its layer unpacks to {}, its config says {}",
                applied.diff_id, entry.config.diff_id
            )));
        }
        // What the tar said, to the second; the directories unpacking touched, back to it.
        crate::build::clamp_times(staging.path())?;
        staging.commit(dest)?;
        bar.finish("from the team cache");
        Ok(WrittenLayer {
            digest: entry.layer.digest.clone(),
            diff_id: applied.diff_id,
            size: entry.layer.size,
        })
    }

    /// Upload tool layer `t` as an entry, unless the cache has one. Returns whether anything
    /// was uploaded.
    pub fn publish(
        &self,
        store: &Store,
        t: &crate::build::BuiltLayer,
        ui: &dyn Reporter,
    ) -> Result<bool, CacheError> {
        let tag = Self::tag(&t.key);
        let at = self.at(&tag);
        if self.client()?.manifest_digest(&at, &tag)?.is_some() {
            return Ok(false);
        }
        let (written, packed) = match crate::push::pack(store, &t.dir, ui) {
            Ok(p) => p,
            Err(e) => return Err(io::Error::other(e.to_string()).into()),
        };
        let config = EntryConfig {
            key: t.key.clone(),
            parent: t.parent.clone(),
            kind: t.step.kind.as_str().to_string(),
            inputs: t.step.inputs.clone(),
            diff_id: written.diff_id.clone(),
            devenv: env!("CARGO_PKG_VERSION").to_string(),
        };
        if !self.client()?.has_blob(&at, &written.digest)? {
            let path = packed.to_path_buf();
            let bar = ui.step_bar(
                "Caching",
                "Cached",
                written.digest.short(),
                Some(written.size),
            );
            self.client()?.upload_blob(
                &at,
                &written.digest,
                written.size,
                &|| {
                    let f = fs_err::File::open(&path)?;
                    Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
                },
                &*bar,
            )?;
            bar.finish(written.digest.short());
        }
        let config_bytes = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config_digest = Digest::of(&config_bytes);
        if !self.client()?.has_blob(&at, &config_digest)? {
            let silent = crate::progress::Silent.bar("", None);
            self.client()?.upload_blob(
                &at,
                &config_digest,
                config_bytes.len() as u64,
                &|| Ok(Box::new(io::Cursor::new(config_bytes.clone()))),
                &*silent,
            )?;
        }
        let manifest = entry_manifest(&config_digest, config_bytes.len() as u64, &written, &config);
        self.client()?
            .put_manifest(&at, &tag, export::MANIFEST_MEDIA_TYPE, &manifest)?;
        Ok(true)
    }
}

/// An entry's manifest: OCI 1.1's artifact form (an `artifactType`, a config of our own type),
/// which registries without 1.1 support store as an ordinary image manifest.
fn entry_manifest(config: &Digest, size: u64, layer: &WrittenLayer, c: &EntryConfig) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": export::MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config.as_str(),
            "size": size,
        },
        "layers": [{
            "mediaType": export::LAYER_MEDIA_TYPE,
            "digest": layer.digest.as_str(),
            "size": layer.size,
        }],
        "annotations": {
            "dev.devenv.key": c.key.as_str(),
            "dev.devenv.kind": c.kind,
        },
    })
    .to_string()
    .into_bytes()
}

/// `key-52f57870e5ca`: enough of a tag to tell entries apart in a message.
fn short_tag(tag: &str) -> &str {
    tag.get(..16).unwrap_or(tag)
}

/// An error and its causes, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.ends_with(&msg) {
            out.push_str(&format!(": {msg}"));
        }
        cause = c.source();
    }
    out
}

/// Advances a bar by the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    bar: &'a dyn crate::progress::Bar,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// What [`publish_all`] did.
#[derive(Debug, Default)]
pub struct Published {
    pub uploaded: usize,
    pub present: usize,
}

/// Publish every tool layer of an env to `cache`, each unless the cache has it.
pub fn publish_all(
    cache: &TeamCache,
    store: &Store,
    tools: &[crate::build::BuiltLayer],
    ui: &dyn Reporter,
) -> Result<Published, CacheError> {
    let mut done = Published::default();
    for t in tools {
        if cache.publish(store, t, ui)? {
            ui.status("Cached", &format!("{} in {}", t.step.label, cache.repo));
            done.uploaded += 1;
        } else {
            done.present += 1;
        }
    }
    Ok(done)
}
