//! `devenv push`'s core: the env as an OCI image in a registry, by devenv's own client.
//!
//! The image is the one `devenv export` writes (the same [`export::compose`]): base layers
//! as the registry gave them, one gzip'd layer per tool layer, the config with `Env`,
//! `WorkingDir`, a numeric `User` and labels. Every blob is first asked for (`HEAD`): what the
//! registry has is skipped; a base layer on the base's own registry is mounted from the base's
//! repository; the rest is uploaded, each as one verified `PUT`. The manifest goes last, so a
//! push cut anywhere leaves no tag naming an incomplete image.
//!
//! A tool layer's blob is a pure function of its directory, and export.rs remembers what each
//! packed to ([`export::remembered`]): a second push of the same env asks the registry for the
//! digest and packs nothing.
//!
//! Invariants: nothing in the store is changed but that memo and temporary files in `tmp/`;
//! the registry gets only blobs whose digest was computed from the bytes sent.

use std::io;
use std::path::{Path, PathBuf};

use crate::export::{self, Base, ExportError, Meta, ToolLayer, WrittenLayer};
use crate::progress::Reporter;
use crate::reference::{Digest, ImageRef};
use crate::registry::{Client, RegistryError, upload::Mounted};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    #[error("pushing to {target}: {source}")]
    Registry {
        target: String,
        #[source]
        source: RegistryError,
    },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("tool layer {}: {source}", dir.display())]
    Layer { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl crate::error::Hint for PushError {
    fn hint(&self) -> Option<String> {
        match self {
            PushError::Registry {
                source:
                    RegistryError::Unauthorized {
                        registry, searched, ..
                    },
                ..
            } => Some(format!(
                "pushing needs credentials with write access ({searched}); log in with `podman \
                 login {registry}` or `docker login {registry}`, or set REGISTRY_AUTH_FILE"
            )),
            PushError::Registry {
                source:
                    RegistryError::Denied {
                        registry,
                        repository,
                    },
                ..
            } => Some(format!(
                "the credentials used for {registry} may not push to {repository}; check the \
                 account's permissions and the repository name"
            )),
            PushError::Registry { source, .. } => crate::error::Hint::hint(source),
            PushError::Export(e) => crate::error::Hint::hint(e),
            _ => None,
        }
    }
}

/// What [`push`] sends.
pub struct Image<'a> {
    /// The base image as pulled (registry and repository: where base blobs may be mounted
    /// from).
    pub base_image: &'a ImageRef,
    pub base_manifest: &'a Digest,
    pub tools: &'a [ToolLayer],
    pub meta: &'a Meta,
}

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    pub digest: Digest,
    /// `registry/repository@sha256:…`: what `podman run`, Kubernetes and Apptainer take.
    pub pinned: String,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub mounted: usize,
    pub skipped: usize,
}

/// One blob to send.
struct Blob {
    digest: Digest,
    size: u64,
    label: String,
    source: Source,
}

enum Source {
    /// A file in the store (a base layer).
    File(PathBuf),
    /// A tool layer the registry has (its remembered digest answered `HEAD`): nothing packed.
    There,
    /// Packed into a temporary file (a tool layer, the workspace).
    Packed(tempfile::TempPath),
    Bytes(Vec<u8>),
}

/// Push `image` to `target` (a tag; `latest` when it has none).
pub fn push(
    store: &Store,
    client: &Client,
    image: &Image,
    target: &ImageRef,
    ui: &dyn Reporter,
) -> Result<Pushed, PushError> {
    let reg = |source: RegistryError| PushError::Registry {
        target: target.to_string(),
        source,
    };
    let base = export::read_base(store, image.base_manifest)?;
    let mut blobs = base_blobs(store, &base);
    let mut tools = Vec::new();
    for tool in image.tools {
        // What the layer packs to is remembered; when the registry has that blob, nothing is
        // packed and the blob is not asked for again below.
        let known = export::remembered(store, &layer_key(&tool.dir));
        let there = match &known {
            Some(w) => client.has_blob(target, &w.digest).map_err(reg)?,
            None => false,
        };
        let (written, source) = match known {
            Some(w) if there => (w, Source::There),
            _ => {
                let (w, path) = pack(store, &tool.dir, ui)?;
                (w, Source::Packed(path))
            }
        };
        blobs.push(Blob {
            digest: written.digest.clone(),
            size: written.size,
            label: short_label(&tool.created_by),
            source,
        });
        tools.push((written, tool.created_by.as_str()));
    }
    let created;
    if let Some(ws) = &image.meta.workspace {
        let tmp = tempfile::NamedTempFile::new_in(store.root().join("tmp"))?;
        let written =
            export::workspace_layer(ws, io::BufWriter::new(tmp.as_file())).map_err(|source| {
                PushError::Layer {
                    dir: ws.root.clone(),
                    source,
                }
            })?;
        blobs.push(Blob {
            digest: written.digest.clone(),
            size: written.size,
            label: format!("workspace ({} files)", ws.files.len()),
            source: Source::Packed(tmp.into_temp_path()),
        });
        created = format!("devenv: workspace {}", ws.dir);
        tools.push((written, created.as_str()));
    }
    let (config, manifest) = export::compose(&base, &tools, image.meta)?;
    blobs.push(Blob {
        digest: Digest::of(&config),
        size: config.len() as u64,
        label: "config".into(),
        source: Source::Bytes(config),
    });

    let same_registry = image.base_image.registry == target.registry;
    let mut pushed = Pushed {
        digest: Digest::of(&manifest),
        pinned: String::new(),
        uploaded: 0,
        uploaded_bytes: 0,
        mounted: 0,
        skipped: 0,
    };
    for blob in blobs {
        if matches!(blob.source, Source::There)
            || client.has_blob(target, &blob.digest).map_err(reg)?
        {
            pushed.skipped += 1;
            continue;
        }
        if same_registry
            && matches!(blob.source, Source::File(_))
            && client
                .mount_blob(target, &blob.digest, &image.base_image.repository)
                .map_err(reg)?
                == Mounted::Yes
        {
            pushed.mounted += 1;
            continue;
        }
        // A packed layer's file lives until its upload is done.
        let mut _keep = None;
        let open: Opener = match blob.source {
            Source::File(p) => file_opener(p),
            Source::Bytes(b) => Box::new(move || Ok(Box::new(io::Cursor::new(b.clone())))),
            Source::Packed(p) => {
                let opener = file_opener(p.to_path_buf());
                _keep = Some(p);
                opener
            }
            // Counted as there above.
            Source::There => continue,
        };
        let bar = ui.step_bar("Pushing", "Pushed", &blob.label, Some(blob.size));
        client
            .upload_blob(target, &blob.digest, blob.size, &*open, &*bar)
            .map_err(reg)?;
        bar.finish(blob.digest.short());
        pushed.uploaded += 1;
        pushed.uploaded_bytes += blob.size;
    }
    let reference = target.tag.clone().unwrap_or_else(|| "latest".into());
    let digest = client
        .put_manifest(target, &reference, export::MANIFEST_MEDIA_TYPE, &manifest)
        .map_err(reg)?;
    pushed.pinned = format!("{}/{}@{digest}", target.registry, target.repository);
    pushed.digest = digest;
    Ok(pushed)
}

type Opener = Box<dyn Fn() -> io::Result<Box<dyn io::Read + Send>>>;

fn file_opener(path: PathBuf) -> Opener {
    Box::new(move || {
        let f = fs_err::File::open(&path)?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    })
}

fn base_blobs(store: &Store, base: &Base) -> Vec<Blob> {
    base.manifest
        .layers
        .iter()
        .map(|d| Blob {
            digest: d.digest.clone(),
            size: d.size,
            label: d.digest.short().to_string(),
            source: Source::File(store.blob_path(&d.digest)),
        })
        .collect()
}

fn short_label(created_by: &str) -> String {
    let label = created_by.strip_prefix("devenv: ").unwrap_or(created_by);
    label.chars().take(40).collect()
}

/// A tool layer's key: its directory's name in `layers/`.
fn layer_key(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Pack `dir` into a temporary file in the store's `tmp/`, remembering what it packed to.
pub fn pack(
    store: &Store,
    dir: &Path,
    ui: &dyn Reporter,
) -> Result<(WrittenLayer, tempfile::TempPath), PushError> {
    let tmp = tempfile::NamedTempFile::new_in(store.root().join("tmp"))?;
    let label = format!("layer {}", &layer_key(dir)[..12.min(layer_key(dir).len())]);
    let bar = ui.step_bar("Packing", "Packed", &label, None);
    let written = export::layer_tar_gz(dir, io::BufWriter::with_capacity(1 << 20, tmp.as_file()))
        .map_err(|source| PushError::Layer {
        dir: dir.to_path_buf(),
        source,
    })?;
    bar.finish(written.digest.short());
    export::remember(store, &layer_key(dir), &written);
    Ok((written, tmp.into_temp_path()))
}
