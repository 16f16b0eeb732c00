//! Pull: registry → store.
//!
//! Resolve the reference (a tag through the registry, a digest never), pick the platform from an
//! index, fetch and verify manifest and config, then stream each missing layer once through
//! sha256, decompression and the tar applier, and commit blob and layer by rename. Layers are
//! fetched in parallel, each under a store lock, so two processes pulling one image download
//! every blob once. Nothing is trusted until it sits under its final name; a killed pull leaves
//! only staging directories that nothing reads.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Hint;
use crate::platform::Platform;
use crate::progress::{Bar, Reporter};
use crate::reference::{Digest, ImageRef};
use crate::registry::manifest::{self, Descriptor, ImageConfig, ManifestKind};
use crate::registry::{Client, RegistryError};
use crate::store::{Store, StoreError};
use crate::unpack::{self, Compression, UnpackError};

/// Configs are small JSON documents; anything this big is not one.
const MAX_CONFIG: u64 = 16 << 20;
/// Layers fetched at once: enough to overlap network and disk, few enough for small machines.
const PARALLEL_LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] Box<RegistryError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{image}: layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: Digest,
        source: UnpackError,
    },
    #[error("{image}: layer {layer}: {source}")]
    Download {
        image: String,
        layer: Digest,
        source: Box<RegistryError>,
    },
    #[error("{image}: layer {layer}: content hashes to {actual}, the image config says {expected}")]
    DiffIdMismatch {
        image: String,
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{image}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error(
        "{image}: layer {layer} has media type `{media_type}`, which is not a layer type devenv can unpack"
    )]
    LayerMediaType {
        image: String,
        layer: Digest,
        media_type: String,
    },
    #[error("{image}: the image index points to another index")]
    NestedIndex { image: String },
    #[error("{image} is not in the store and --offline forbids fetching it")]
    Offline { image: String },
}

impl From<RegistryError> for PullError {
    fn from(e: RegistryError) -> Self {
        PullError::Registry(Box::new(e))
    }
}

impl Hint for PullError {
    fn hint(&self) -> Option<String> {
        match self {
            // Transparent and wrapping variants: the inner error knows its fix.
            PullError::Registry(e) | PullError::Download { source: e, .. } => e.hint(),
            PullError::Unpack { source, .. } => source.hint(),
            PullError::Offline { .. } => Some("run once without --offline to fetch it".into()),
            PullError::DiffIdMismatch { .. } | PullError::LayerCount { .. } => {
                Some("the image is corrupt or was tampered with; nothing was kept".into())
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub platform: Platform,
    /// Never contact a registry; fail if the store lacks something.
    pub offline: bool,
    /// Re-resolve a tag even when the store knows what it pointed to (`devenv pull` does; a
    /// warm `devenv run` does not).
    pub refresh_tag: bool,
}

/// An image whose layers are all unpacked in the store.
#[derive(Debug)]
pub struct Pulled {
    /// The reference pinned to the platform's image manifest digest.
    pub image: ImageRef,
    /// The digest the reference resolved to (an index's digest for multi-platform images).
    pub resolved: Digest,
    pub manifest: Digest,
    pub config: ImageConfig,
    /// diff_ids, base first.
    pub layers: Vec<Digest>,
    /// Layers this call fetched (0 when everything was cached).
    pub fetched: usize,
}

impl Pulled {
    pub fn layer_dirs(&self, store: &Store) -> Vec<PathBuf> {
        self.layers.iter().map(|d| store.layer_path(d)).collect()
    }
}

/// Make sure `image` is complete in the store, fetching what is missing.
pub fn pull(
    image: &ImageRef,
    opts: &PullOptions,
    store: &Store,
    client: &dyn Fn() -> Result<Client, RegistryError>,
    ui: &dyn Reporter,
) -> Result<Pulled, PullError> {
    let name = image.to_string();
    // The fast path: a pinned digest or a known tag whose manifest, config and layers are all
    // here is used without a registry round trip.
    let known = match &image.digest {
        Some(d) => Some(d.clone()),
        None if opts.refresh_tag && !opts.offline => None,
        None => store.tag(image),
    };
    if let Some(digest) = &known
        && let Some(pulled) = from_store(image, digest, &opts.platform, store)?
    {
        return Ok(pulled);
    }
    if opts.offline {
        return Err(PullError::Offline { image: name });
    }

    let client = client()?;
    ui.status("Pulling", &name);
    let top = match &known {
        Some(d) => fetch_manifest(&client, store, image, d.as_str())?,
        None => fetch_manifest(&client, store, image, &image.reference())?,
    };
    let resolved = top.0.clone();
    let (manifest_digest, manifest) = match top.1 {
        ManifestKind::Image(m) => (resolved.clone(), m),
        ManifestKind::Index(index) => {
            let chosen = manifest::select_platform(&index, &opts.platform)?;
            match fetch_manifest(&client, store, image, chosen.digest.as_str())? {
                (d, ManifestKind::Image(m)) => (d, m),
                (_, ManifestKind::Index(_)) => return Err(PullError::NestedIndex { image: name }),
            }
        }
    };
    let config_bytes = match store.blob(&manifest.config.digest) {
        Some(b) => b,
        None => {
            let b = client.fetch_blob(image, &manifest.config.digest, MAX_CONFIG)?;
            store.put_blob(&manifest.config.digest, &b)?;
            b
        }
    };
    let config = manifest::parse_config(&config_bytes)?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(PullError::LayerCount {
            image: name,
            layers: manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }

    let missing: Vec<(&Descriptor, &Digest)> = manifest
        .layers
        .iter()
        .zip(&diff_ids)
        .filter(|(_, diff_id)| !store.layer_path(diff_id).exists())
        .collect();
    fetch_layers(Some(&client), store, image, &missing, ui)?;
    let fetched = missing.len();
    if image.digest.is_none() {
        store.set_tag(image, &resolved)?;
    }
    Ok(Pulled {
        image: image.with_digest(manifest_digest.clone()),
        resolved,
        manifest: manifest_digest,
        config,
        layers: diff_ids,
        fetched,
    })
}

/// The image from the store alone, if every piece is there.
fn from_store(
    image: &ImageRef,
    digest: &Digest,
    platform: &Platform,
    store: &Store,
) -> Result<Option<Pulled>, PullError> {
    let Some(bytes) = store.manifest(digest) else {
        return Ok(None);
    };
    let (manifest_digest, manifest) = match manifest::parse_manifest("", &bytes)? {
        ManifestKind::Image(m) => (digest.clone(), m),
        ManifestKind::Index(index) => {
            let chosen = manifest::select_platform(&index, platform)?;
            let Some(bytes) = store.manifest(&chosen.digest) else {
                return Ok(None);
            };
            match manifest::parse_manifest("", &bytes)? {
                ManifestKind::Image(m) => (chosen.digest.clone(), m),
                ManifestKind::Index(_) => return Ok(None),
            }
        }
    };
    let Some(config_bytes) = store.blob(&manifest.config.digest) else {
        return Ok(None);
    };
    let Ok(config) = manifest::parse_config(&config_bytes) else {
        return Ok(None);
    };
    let layers = config.rootfs.diff_ids.clone();
    if layers.len() != manifest.layers.len() || !layers.iter().all(|d| store.layer_path(d).exists())
    {
        return Ok(None);
    }
    Ok(Some(Pulled {
        image: image.with_digest(manifest_digest.clone()),
        resolved: digest.clone(),
        manifest: manifest_digest,
        config,
        layers,
        fetched: 0,
    }))
}

/// Fetch (or read from the store) a manifest, verified, and parse it.
fn fetch_manifest(
    client: &Client,
    store: &Store,
    image: &ImageRef,
    reference: &str,
) -> Result<(Digest, ManifestKind), PullError> {
    if let Ok(d) = reference.parse::<Digest>()
        && let Some(bytes) = store.manifest(&d)
    {
        return Ok((d, manifest::parse_manifest("", &bytes)?));
    }
    let fetched = client.fetch_manifest(image, reference)?;
    let kind = manifest::parse_manifest(&fetched.media_type, &fetched.bytes)?;
    store.put_manifest(&fetched.digest, &fetched.bytes)?;
    Ok((fetched.digest, kind))
}

/// Fetch the missing layers, a few at a time; the first error stops the rest.
pub(crate) fn fetch_layers(
    client: Option<&Client>,
    store: &Store,
    image: &ImageRef,
    missing: &[(&Descriptor, &Digest)],
    ui: &dyn Reporter,
) -> Result<(), PullError> {
    let next = Mutex::new(missing.iter());
    let failed: Mutex<Option<PullError>> = Mutex::new(None);
    let total = ui.total_bar(missing.iter().map(|(d, _)| d.size).sum());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_LAYERS.min(missing.len()) {
            scope.spawn(|| {
                loop {
                    if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some((desc, diff_id)) =
                        next.lock().ok().and_then(|mut it| it.next().copied())
                    else {
                        return;
                    };
                    if let Err(e) = fetch_layer(client, store, image, desc, diff_id, ui, &*total) {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    total.finish("");
    match failed.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// One layer: download (or reuse the local blob), verify, unpack, commit.
fn fetch_layer(
    client: Option<&Client>,
    store: &Store,
    image: &ImageRef,
    desc: &Descriptor,
    diff_id: &Digest,
    ui: &dyn Reporter,
    total: &dyn Bar,
) -> Result<(), PullError> {
    let name = image.to_string();
    let dest = store.layer_path(diff_id);
    // Another process may be fetching the same layer: wait for it, then find it done.
    let _lock = store.lock(&format!("layer-{}", diff_id.hex()))?;
    if dest.exists() {
        return Ok(());
    }
    let compression = Compression::from_media_type(&desc.media_type).ok_or_else(|| {
        PullError::LayerMediaType {
            image: name.clone(),
            layer: desc.digest.clone(),
            media_type: desc.media_type.clone(),
        }
    })?;
    let staging = store.staging_dir("layer")?;
    // tempdir makes 0700; a layer's root is an ordinary 0755 directory unless the tar says otherwise.
    fs_err::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(StoreError::from)?;
    let blob_dest = store.blob_path(&desc.digest);
    let bar = ui.bar(desc.digest.short(), Some(desc.size));
    let layer_error = |e: LayerError| match e {
        LayerError::Input(e) => PullError::Download {
            image: name.clone(),
            layer: desc.digest.clone(),
            source: Box::new(RegistryError::from_io(e, &image.registry)),
        },
        LayerError::Unpack(source) => PullError::Unpack {
            image: name.clone(),
            layer: desc.digest.clone(),
            source,
        },
    };

    let applied = if blob_dest.exists() {
        // The compressed blob was verified when it entered the store; unpack from it.
        let file = fs_err::File::open(&blob_dest).map_err(StoreError::from)?;
        apply(file, compression, staging.path(), &Pair(&*bar, total)).map_err(layer_error)?
    } else {
        let Some(client) = client else {
            // A local import: every blob was put in the store, verified, before this.
            return Err(PullError::Store(StoreError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {} is not in the store", desc.digest),
            ))));
        };
        let body = client.open_blob(image, &desc.digest, Some(desc.size))?;
        let blob_tmp =
            tempfile::NamedTempFile::new_in(store.root().join("tmp")).map_err(StoreError::from)?;
        let mut copy = io::BufWriter::with_capacity(1 << 20, blob_tmp.as_file());
        let applied = apply(
            Tee {
                inner: body,
                copy: &mut copy,
            },
            compression,
            staging.path(),
            &Pair(&*bar, total),
        )
        .map_err(layer_error)?;
        copy.flush().map_err(StoreError::from)?;
        drop(copy);
        blob_tmp.as_file().sync_data().map_err(StoreError::from)?;
        // The blob reader verified the digest at its end, which apply_layer reads to.
        blob_tmp
            .persist(&blob_dest)
            .map_err(|e| StoreError::Io(e.error))?;
        applied
    };
    if &applied.diff_id != diff_id {
        return Err(PullError::DiffIdMismatch {
            image: name,
            layer: desc.digest.clone(),
            expected: diff_id.clone(),
            actual: applied.diff_id,
        });
    }
    staging.commit(&dest)?;
    bar.finish(&format!("{} files", applied.files));
    Ok(())
}

enum LayerError {
    /// Reading the blob failed: the network, a cut body, a digest mismatch.
    Input(io::Error),
    /// The blob's contents were refused or could not be written.
    Unpack(UnpackError),
}

/// Unpack `input` into `rootfs`. Errors from reading the input are told apart from errors in
/// the layer, whatever the decompressor and tar reader wrapped them in.
fn apply(
    input: impl Read,
    compression: Compression,
    rootfs: &Path,
    bar: &dyn Bar,
) -> Result<unpack::Applied, LayerError> {
    let mut watched = Watched {
        inner: input,
        bar,
        error: None,
    };
    match unpack::apply_layer(&mut watched, compression, rootfs) {
        Ok(applied) => Ok(applied),
        Err(e) => Err(match watched.error.take() {
            Some(source) => LayerError::Input(source),
            None => LayerError::Unpack(e),
        }),
    }
}

/// A layer's own bar and the pull's total, advanced together.
struct Pair<'a>(&'a dyn Bar, &'a dyn Bar);

impl Bar for Pair<'_> {
    fn inc(&self, n: u64) {
        self.0.inc(n);
        self.1.inc(n);
    }
    fn finish(&self, message: &str) {
        self.0.finish(message);
    }
}

/// Copies what is read to a second writer: the compressed blob is kept as it streams by.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Reports bytes read to a progress bar and keeps the first read error for the caller.
struct Watched<'a, R> {
    inner: R,
    bar: &'a dyn Bar,
    error: Option<io::Error>,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bar.inc(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                Err(copy)
            }
        }
    }
}
