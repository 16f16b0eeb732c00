//! `devenv export`'s core: a materialized env written as an OCI image, either an image layout
//! directory or the same layout as one tar file (`oci-archive`).
//!
//! The base image's layers are the store's compressed blobs, copied byte for byte with their
//! descriptors (Docker media types renamed to their OCI equivalents, digests unchanged). Each
//! tool layer directory (overlay format) becomes a gzip'd OCI layer: a 0/0 character device
//! becomes a `.wh.<name>` file, a directory with `user.overlay.opaque=y` gets a
//! `<dir>/.wh..wh..opq` entry, files of one inode become a file and tar hardlinks to it. The
//! config is the base config edited as JSON (unknown fields survive): the tool layers' diff_ids,
//! the env's `Env`, one history entry per tool layer.
//!
//! Invariants: the same store gives the same bytes (entries sorted by path, owner 0:0, stored
//! mtimes, a gzip header without name or time, JSON with sorted keys); nothing half-written
//! ever appears at the output path (everything is staged beside it and renamed into place);
//! an existing non-empty output is replaced only when asked. This module never writes into the
//! store and never prints.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::progress::{Bar, Reporter};
use crate::reference::Digest;
use crate::registry::manifest::{self, Descriptor, ManifestKind};
use crate::store::Store;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation an image layout's index names an image by (`oci:DIR:TAG`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The gzip level of tool layers: fixed, so two exports give the same bytes.
const GZIP_LEVEL: u32 = 6;
const OPAQUE_XATTR: &str = "user.overlay.opaque";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("{} already exists and is not empty", path.display())]
    Exists { path: PathBuf },
    #[error("`{tag}` is not a valid tag")]
    BadTag { tag: String },
    #[error("the store has no manifest {digest}")]
    NoManifest { digest: Digest },
    #[error("manifest {digest} is an index, not an image manifest")]
    NotImage { digest: Digest },
    #[error("the store has no blob {digest} ({what})")]
    NoBlob { digest: Digest, what: &'static str },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("config {digest} is not a JSON object")]
    BadConfig { digest: Digest },
    #[error("tool layer {}: {source}", dir.display())]
    Layer { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl crate::error::Hint for ExportError {
    fn hint(&self) -> Option<String> {
        match self {
            ExportError::Exists { .. } => {
                Some("choose another path with -o, or pass --force to replace what is there".into())
            }
            ExportError::BadTag { .. } => Some(
                "a tag is letters, digits and `._-:/@`, like `latest` or `v1.2`, at most 128 \
                 characters"
                    .into(),
            ),
            ExportError::NoManifest { .. }
            | ExportError::NoBlob { .. }
            | ExportError::BlobSize { .. } => Some(
                "the store lacks part of the base image (removed by hand?): run `devenv cache rm \
                 IMAGE` (see `devenv cache ls`), then export again to pull it afresh"
                    .into(),
            ),
            ExportError::Registry(e) => crate::error::Hint::hint(e),
            _ => None,
        }
    }
}

/// What the image is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// An OCI image layout directory.
    #[default]
    Layout,
    /// The same layout as one tar file.
    Archive,
}

/// One tool layer: its directory in the store and the step that made it.
#[derive(Clone, Debug)]
pub struct ToolLayer {
    pub dir: PathBuf,
    /// The history entry's `created_by`: `devenv: run …`.
    pub created_by: String,
}

/// What to export.
pub struct ExportOptions<'a> {
    /// The base image's manifest digest (a platform's image manifest, not an index).
    pub base_manifest: &'a Digest,
    pub tools: &'a [ToolLayer],
    /// `Env`, `WorkingDir`, `User`, labels.
    pub meta: &'a Meta,
    pub tag: &'a str,
    pub format: Format,
    /// Replace an existing non-empty output.
    pub force: bool,
}

/// The written image.
#[derive(Debug)]
pub struct Exported {
    pub manifest: Digest,
    pub layers: usize,
    /// Bytes of blobs written.
    pub size: u64,
}

/// Write the image `opts` describes to `out`.
pub fn export(
    store: &Store,
    opts: &ExportOptions,
    out: &Path,
    ui: &dyn Reporter,
) -> Result<Exported, ExportError> {
    check_target(out, opts.tag, opts.force)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)?;
    let layout = staging.path().join("layout");
    let exported = write_layout(store, opts, &layout, ui)?;
    match opts.format {
        Format::Layout => replace(&layout, out, staging.path())?,
        Format::Archive => {
            let tar = staging.path().join("image.tar");
            write_archive(&layout, &tar)?;
            replace(&tar, out, staging.path())?;
        }
    }
    Ok(exported)
}

/// Whether `out` and `tag` are usable: a caller checks before the long work, [`export`] again.
pub fn check_target(out: &Path, tag: &str, force: bool) -> Result<(), ExportError> {
    check_tag(tag)?;
    if !is_empty_or_absent(out)? && !force {
        return Err(ExportError::Exists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// A tag as OCI's `ref.name` annotation takes it: non-empty, printable, no spaces.
fn check_tag(tag: &str) -> Result<(), ExportError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ExportError::BadTag { tag: tag.into() })
    }
}

fn is_empty_or_absent(path: &Path) -> io::Result<bool> {
    match fs_err::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => Ok(fs_err::read_dir(path)?.next().is_none()),
        Ok(_) => Ok(false),
    }
}

/// Move `staged` to `out`; what was at `out` goes aside into `staging` first (removed with it),
/// so `out` is always either the old thing or the whole new one.
fn replace(staged: &Path, out: &Path, staging: &Path) -> io::Result<()> {
    let aside = staging.join("old");
    let had_old = fs_err::symlink_metadata(out).is_ok();
    if had_old {
        fs_err::rename(out, &aside)?;
    }
    let moved = fs_err::rename(staged, out);
    if moved.is_err() && had_old {
        // Put the old one back rather than lose it with the staging directory.
        let _ = fs_err::rename(&aside, out);
    }
    moved
}

/// The base image as an exported or pushed env starts from it: its manifest, config bytes and
/// layer descriptors (in OCI's media types), each layer blob checked to be in the store whole.
pub struct Base {
    pub manifest: manifest::ImageManifest,
    pub config: Vec<u8>,
    pub layers: Vec<Value>,
}

/// Read the base image `digest` (a platform's image manifest) from the store.
pub fn read_base(store: &Store, digest: &Digest) -> Result<Base, ExportError> {
    let bytes = store
        .manifest(digest)
        .ok_or_else(|| ExportError::NoManifest {
            digest: digest.clone(),
        })?;
    let base = match manifest::parse_manifest("", &bytes)? {
        ManifestKind::Image(m) => m,
        ManifestKind::Index(_) => {
            return Err(ExportError::NotImage {
                digest: digest.clone(),
            });
        }
    };
    let config = store
        .blob(&base.config.digest)
        .ok_or_else(|| ExportError::NoBlob {
            digest: base.config.digest.clone(),
            what: "the image config",
        })?;
    let mut layers = Vec::new();
    for desc in &base.layers {
        let actual = match fs_err::metadata(store.blob_path(&desc.digest)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ExportError::NoBlob {
                    digest: desc.digest.clone(),
                    what: "a base layer",
                });
            }
            Err(e) => return Err(e.into()),
        };
        if actual != desc.size {
            return Err(ExportError::BlobSize {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual,
            });
        }
        layers.push(base_layer_descriptor(desc));
    }
    Ok(Base {
        manifest: base,
        config,
        layers,
    })
}

/// What the image says of itself beyond its layers: the same for `export` and `push`.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// The image config's `Env`, in order.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, when set.
    pub working_dir: Option<String>,
    /// `User`, numeric (`uid:gid`), when set.
    pub user: Option<String>,
    /// Added to the base's `Labels`.
    pub labels: BTreeMap<String, String>,
    /// The working directory's own layer, last.
    pub workspace: Option<Workspace>,
}

/// The config and manifest bytes of `base` with `tools` (written layers, with the steps that
/// made them) on top.
pub fn compose(
    base: &Base,
    tools: &[(WrittenLayer, &str)],
    meta: &Meta,
) -> Result<(Vec<u8>, Vec<u8>), ExportError> {
    let mut layers = base.layers.clone();
    for (w, _) in tools {
        layers.push(json!({
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": w.digest.as_str(),
            "size": w.size,
        }));
    }
    let diff_ids: Vec<Digest> = tools.iter().map(|(w, _)| w.diff_id.clone()).collect();
    let history: Vec<&str> = tools.iter().map(|(_, h)| *h).collect();
    let bad = || ExportError::BadConfig {
        digest: base.manifest.config.digest.clone(),
    };
    let config = edit_config(&base.config, &diff_ids, &meta.env, &history).ok_or_else(bad)?;
    let config = describe(&config, meta).ok_or_else(bad)?;
    let manifest = image_manifest(&Digest::of(&config), config.len() as u64, &layers);
    Ok((config, manifest))
}

/// `config` with `meta`'s `WorkingDir`, `User` and labels set.
fn describe(config: &[u8], meta: &Meta) -> Option<Vec<u8>> {
    let mut config: Value = serde_json::from_slice(config).ok()?;
    let run = config.as_object_mut()?.get_mut("config")?.as_object_mut()?;
    if let Some(w) = &meta.working_dir {
        run.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &meta.user {
        run.insert("User".into(), json!(u));
    }
    if !meta.labels.is_empty() {
        let labels = run.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        let labels = labels.as_object_mut()?;
        for (k, v) in &meta.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    serde_json::to_vec(&config).ok()
}

/// The image layout at `dir` (created).
fn write_layout(
    store: &Store,
    opts: &ExportOptions,
    dir: &Path,
    ui: &dyn Reporter,
) -> Result<Exported, ExportError> {
    let blobs = dir.join("blobs/sha256");
    fs_err::create_dir_all(&blobs)?;
    let base = read_base(store, opts.base_manifest)?;
    let mut size = 0;
    for desc in &base.manifest.layers {
        fs_err::copy(store.blob_path(&desc.digest), blobs.join(desc.digest.hex()))?;
        size += desc.size;
    }
    let mut tools = Vec::new();
    for tool in opts.tools {
        let label = tool
            .created_by
            .strip_prefix("devenv: ")
            .unwrap_or(&tool.created_by);
        let label: String = label.chars().take(40).collect();
        let written = write_tool_layer(&tool.dir, &blobs, ui, &label).map_err(|source| {
            ExportError::Layer {
                dir: tool.dir.clone(),
                source,
            }
        })?;
        size += written.size;
        tools.push((written, tool.created_by.as_str()));
    }
    let created;
    if let Some(ws) = &opts.meta.workspace {
        let mut tmp = tempfile::NamedTempFile::new_in(&blobs)?;
        let written = workspace_layer(ws, io::BufWriter::new(tmp.as_file_mut()))?;
        tmp.persist(blobs.join(written.digest.hex()))
            .map_err(|e| e.error)?;
        size += written.size;
        created = format!("devenv: workspace {}", ws.dir);
        tools.push((written, created.as_str()));
    }
    let (config, manifest) = compose(&base, &tools, opts.meta)?;
    put_blob(&blobs, &config)?;
    let manifest_digest = put_blob(&blobs, &manifest)?;
    size += (config.len() + manifest.len()) as u64;
    let index = image_index(&manifest_digest, manifest.len() as u64, opts.tag);
    fs_err::write(dir.join("index.json"), index)?;
    fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Exported {
        manifest: manifest_digest,
        layers: base.layers.len() + tools.len(),
        size,
    })
}

fn put_blob(blobs: &Path, bytes: &[u8]) -> io::Result<Digest> {
    let digest = Digest::of(bytes);
    fs_err::write(blobs.join(digest.hex()), bytes)?;
    Ok(digest)
}

/// A base layer's descriptor as the registry gave it, with the media type in OCI's words.
fn base_layer_descriptor(desc: &Descriptor) -> Value {
    let mut v = json!({
        "mediaType": oci_layer_media_type(&desc.media_type),
        "digest": desc.digest.as_str(),
        "size": desc.size,
    });
    if !desc.annotations.is_empty() {
        v["annotations"] = json!(desc.annotations);
    }
    if !desc.urls.is_empty() {
        v["urls"] = json!(desc.urls);
    }
    v
}

/// Docker's layer media types renamed to OCI's; the bytes they describe are the same.
pub fn oci_layer_media_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => LAYER_MEDIA_TYPE,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        other => other,
    }
}

/// The base config with the tool layers' diff_ids, `Env` and history entries; `None` when the
/// base config is not a JSON object.
pub fn edit_config(
    base: &[u8],
    diff_ids: &[Digest],
    env: &[(String, String)],
    history: &[&str],
) -> Option<Vec<u8>> {
    let mut config: Value = serde_json::from_slice(base).ok()?;
    let obj = config.as_object_mut()?;
    let created = obj.get("created").cloned();
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let ids = rootfs
        .as_object_mut()?
        .entry("diff_ids")
        .or_insert(json!([]));
    let ids = ids.as_array_mut()?;
    ids.extend(diff_ids.iter().map(|d| json!(d.as_str())));

    let run = obj.entry("config").or_insert_with(|| json!({}));
    if run.is_null() {
        *run = json!({});
    }
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    run.as_object_mut()?.insert("Env".into(), json!(env));

    let hist = obj.entry("history").or_insert_with(|| json!([]));
    if hist.is_null() {
        *hist = json!([]);
    }
    let hist = hist.as_array_mut()?;
    for step in history {
        let mut entry = json!({ "created_by": step, "comment": "devenv tool layer" });
        if let Some(c) = &created {
            entry["created"] = c.clone();
        }
        hist.push(entry);
    }
    serde_json::to_vec(&config).ok()
}

/// The OCI image manifest naming `config` and `layers` (descriptors).
pub fn image_manifest(config: &Digest, config_size: u64, layers: &[Value]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config.as_str(),
            "size": config_size,
        },
        "layers": layers,
    });
    m.to_string().into_bytes()
}

/// `index.json`: the one manifest, named `tag`.
pub fn image_index(manifest: &Digest, size: u64, tag: &str) -> Vec<u8> {
    let i = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest.as_str(),
            "size": size,
            "annotations": { REF_NAME: tag },
        }],
    });
    i.to_string().into_bytes()
}

/// A written tool layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenLayer {
    /// sha256 of the gzip bytes.
    pub digest: Digest,
    /// sha256 of the tar.
    pub diff_id: Digest,
    pub size: u64,
}

/// Write the layer directory `dir` as a gzip'd OCI layer tar into `blobs/<digest hex>`.
/// `ui` gets a bar named `label`, advanced by file bytes.
pub fn write_tool_layer(
    dir: &Path,
    blobs: &Path,
    ui: &dyn Reporter,
    label: &str,
) -> io::Result<WrittenLayer> {
    let ops = plan(dir)?;
    let total = ops
        .iter()
        .map(|op| match op {
            EntryOp::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let bar = ui.step_bar("Packing", "Packed", label, Some(total));
    let mut tmp = tempfile::NamedTempFile::new_in(blobs)?;
    let written = {
        let file = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write_layer(dir, &ops, file, &*bar)?
    };
    tmp.as_file().sync_data()?;
    tmp.persist(blobs.join(written.digest.hex()))
        .map_err(|e| e.error)?;
    bar.finish(written.digest.short());
    Ok(written)
}

/// The image's working directory as a layer of its own: `/workspaces/<name>` owned by the
/// image's user (`uid:gid`), so a job can write where it starts and runtimes that do not create
/// a missing `WorkingDir` (podman kube play) find it; with `files` (relative to `root`, as
/// `git ls-files` lists them) the project's tracked files in it. Deterministic like a tool layer:
/// sorted, the fixed epoch, regular files and symlinks only.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    /// `/workspaces/<name>`.
    pub dir: String,
    pub uid: u64,
    pub gid: u64,
    /// The project directory the files are read from.
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Write `ws` as a gzip'd layer into `out`.
pub fn workspace_layer(ws: &Workspace, out: impl Write) -> io::Result<WrittenLayer> {
    use std::collections::BTreeSet;
    use tar::EntryType as T;
    let epoch = crate::build::EPOCH as u64;
    let base = Path::new(ws.dir.trim_start_matches('/'));
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut files: Vec<&PathBuf> = ws.files.iter().collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.is_absolute()
            || f.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(io::Error::other(format!(
                "project file `{}` is not a plain relative path",
                f.display()
            )));
        }
        let mut p = f.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let mut tar = layer_builder(out);
    let dir_entry = |tar: &mut tar::Builder<_>, path: &Path, uid: u64, gid: u64| {
        let mut h = header(T::Directory, 0o755, epoch, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        let mut name = path.as_os_str().to_owned();
        name.push("/");
        tar.append_data(&mut h, Path::new(&name), io::empty())
    };
    let mut ancestors: Vec<&Path> = base
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    ancestors.reverse();
    for a in ancestors {
        let (uid, gid) = if a == base { (ws.uid, ws.gid) } else { (0, 0) };
        dir_entry(&mut tar, a, uid, gid)?;
    }
    // Directories and files in one sorted walk, parents before children.
    let mut entries: Vec<(PathBuf, bool)> = dirs.into_iter().map(|d| (d, true)).collect();
    entries.extend(files.into_iter().map(|f| (f.clone(), false)));
    entries.sort();
    for (rel, is_dir) in entries {
        let at = base.join(&rel);
        if is_dir {
            dir_entry(&mut tar, &at, ws.uid, ws.gid)?;
            continue;
        }
        let src = ws.root.join(&rel);
        let meta = match fs_err::symlink_metadata(&src) {
            Ok(m) => m,
            // Listed by git but deleted in the work tree: not part of what is pushed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            let target = fs_err::read_link(&src)?;
            let mut h = header(T::Symlink, 0o777, epoch, 0);
            h.set_uid(ws.uid);
            h.set_gid(ws.gid);
            tar.append_link(&mut h, &at, &target)?;
        } else if meta.is_file() {
            let mode = if meta.mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut h = header(T::Regular, mode, epoch, meta.len());
            h.set_uid(ws.uid);
            h.set_gid(ws.gid);
            let file = fs_err::File::open(&src)?;
            tar.append_data(&mut h, &at, io::Read::take(file, meta.len()))?;
        }
    }
    finish_layer(tar)
}

fn memo_path(store: &Store, key: &str) -> Option<PathBuf> {
    let ok = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| store.root().join("cache/layer-blobs").join(key))
}

/// What the tool layer with `key` (its directory's name) packed to last time, if remembered in
/// the store's `cache/layer-blobs/<key>`: a layer is a pure function of its directory, so this
/// is a fact about it (push skips packing, the lock's pin skips hashing). Only a hint: what
/// is built from it is verified where it goes.
pub fn remembered(store: &Store, key: &str) -> Option<WrittenLayer> {
    let text = fs_err::read_to_string(memo_path(store, key)?).ok()?;
    let mut lines = text.lines();
    let digest = lines.next()?.parse().ok()?;
    let diff_id = lines.next()?.parse().ok()?;
    let size = lines.next()?.parse().ok()?;
    Some(WrittenLayer {
        digest,
        diff_id,
        size,
    })
}

/// Remember what the layer with `key` packs to; a failure only costs a later repack.
pub fn remember(store: &Store, key: &str, w: &WrittenLayer) {
    let Some(path) = memo_path(store, key) else {
        return;
    };
    let text = format!("{}\n{}\n{}\n", w.digest, w.diff_id, w.size);
    if let Err(e) = store.write_atomic(&path, text.as_bytes()) {
        tracing::debug!("cannot remember layer {key}: {e}");
    }
}

/// The diff_id of `dir` as a layer: the sha256 of the tar [`layer_tar_gz`] would compress.
pub fn layer_diff_id(dir: &Path) -> io::Result<Digest> {
    let ops = plan(dir)?;
    let mut tar = tar::Builder::new(Hashing::new(io::sink()));
    for op in &ops {
        append(&mut tar, dir, op)?;
    }
    let raw = tar.into_inner()?;
    Ok(Digest::from_sha256_bytes(&raw.hasher.finalize()))
}

/// Stream `dir` as a gzip'd layer tar into `out`, hashing the tar and the gzip in one pass.
pub fn layer_tar_gz(dir: &Path, out: impl Write) -> io::Result<WrittenLayer> {
    write_layer(
        dir,
        &plan(dir)?,
        out,
        &*crate::progress::Silent.bar("", None),
    )
}

fn write_layer(
    dir: &Path,
    ops: &[EntryOp],
    out: impl Write,
    bar: &dyn Bar,
) -> io::Result<WrittenLayer> {
    let mut tar = layer_builder(out);
    for op in ops {
        append(&mut tar, dir, op)?;
        if let EntryOp::File { size, .. } = op {
            bar.inc(*size);
        }
    }
    finish_layer(tar)
}

type LayerBuilder<W> = tar::Builder<Hashing<flate2::write::GzEncoder<Hashing<W>>>>;

/// A tar writer into a gzip stream into `out`, hashing both: the one way layers are written
/// (a fixed level, a header without name, time or OS).
fn layer_builder<W: Write>(out: W) -> LayerBuilder<W> {
    let gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(Hashing::new(out), flate2::Compression::new(GZIP_LEVEL));
    tar::Builder::new(Hashing::new(gz))
}

/// End the tar and the gzip stream; the layer's digests and size.
fn finish_layer<W: Write>(tar: LayerBuilder<W>) -> io::Result<WrittenLayer> {
    let raw = tar.into_inner()?;
    let diff_id = Digest::from_sha256_bytes(&raw.hasher.finalize());
    let mut compressed = raw.inner.finish()?;
    compressed.flush()?;
    Ok(WrittenLayer {
        digest: Digest::from_sha256_bytes(&compressed.hasher.finalize()),
        diff_id,
        size: compressed.len,
    })
}

/// One tar entry of a layer, by its path relative to the layer root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    Dir {
        path: PathBuf,
        mode: u32,
        mtime: u64,
    },
    File {
        path: PathBuf,
        mode: u32,
        mtime: u64,
        size: u64,
    },
    /// A later name of an inode already written as `target`.
    Hardlink { path: PathBuf, target: PathBuf },
    Symlink {
        path: PathBuf,
        target: PathBuf,
        mtime: u64,
    },
    Fifo {
        path: PathBuf,
        mode: u32,
        mtime: u64,
    },
    /// `<parent>/.wh.<name>`: hides `name` of the layers below.
    Whiteout { path: PathBuf, mtime: u64 },
    /// `<dir>/.wh..wh..opq`: hides everything the layers below have in `dir`.
    Opaque { dir: PathBuf, mtime: u64 },
}

/// The entries of `root`'s tree, in the order written: sorted by path, so a directory comes
/// before what it holds and the first name of a hardlinked inode is the smallest.
pub fn plan(root: &Path) -> io::Result<Vec<EntryOp>> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), &mut paths)?;
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let mut ops = Vec::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for rel in paths {
        if rel
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".wh."))
        {
            // In an OCI layer that name is a whiteout: exporting it would delete, not add.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has a name that OCI reserves for whiteouts (`.wh.` prefix)",
                    rel.display()
                ),
            ));
        }
        let full = root.join(&rel);
        let meta = fs_err::symlink_metadata(&full)?;
        let ty = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        if ty.is_dir() {
            ops.push(EntryOp::Dir {
                path: rel.clone(),
                mode,
                mtime,
            });
            if is_opaque(&full) {
                ops.push(EntryOp::Opaque { dir: rel, mtime });
            }
        } else if ty.is_file() {
            if meta.nlink() > 1 {
                match inodes.entry((meta.dev(), meta.ino())) {
                    Entry::Occupied(first) => {
                        ops.push(EntryOp::Hardlink {
                            path: rel,
                            target: first.get().clone(),
                        });
                        continue;
                    }
                    Entry::Vacant(v) => {
                        v.insert(rel.clone());
                    }
                }
            }
            ops.push(EntryOp::File {
                path: rel,
                mode,
                mtime,
                size: meta.len(),
            });
        } else if ty.is_symlink() {
            let target = fs_err::read_link(&full)?;
            ops.push(EntryOp::Symlink {
                path: rel,
                target,
                mtime,
            });
        } else if ty.is_fifo() {
            ops.push(EntryOp::Fifo {
                path: rel,
                mode,
                mtime,
            });
        } else if ty.is_char_device() && meta.rdev() == 0 {
            let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let path = rel
                .with_file_name(std::ffi::OsStr::from_bytes(&wh))
                .to_path_buf();
            ops.push(EntryOp::Whiteout { path, mtime });
        } else {
            // Other devices and sockets: a build in a user namespace cannot make devices, and
            // unpacking skips them; nothing to carry.
            tracing::debug!(
                "export: skipping {} (not a file, dir or link)",
                rel.display()
            );
        }
    }
    Ok(ops)
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs_err::read_dir(root.join(rel))? {
        let e = e?;
        let child = rel.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        out.push(child.clone());
        if is_dir {
            collect(root, &child, out)?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, OPAQUE_XATTR).is_ok_and(|v| v.as_deref() == Some(b"y".as_slice()))
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, root: &Path, op: &EntryOp) -> io::Result<()> {
    use tar::EntryType as T;
    match op {
        EntryOp::Dir { path, mode, mtime } => {
            let mut h = header(T::Directory, *mode, *mtime, 0);
            let mut name = path.as_os_str().to_owned();
            name.push("/");
            tar.append_data(&mut h, Path::new(&name), io::empty())
        }
        EntryOp::File {
            path,
            mode,
            mtime,
            size,
        } => {
            let mut h = header(T::Regular, *mode, *mtime, *size);
            let file = fs_err::File::open(root.join(path))?;
            // A file that changed size since it was listed would corrupt the tar: read exactly
            // `size` bytes, and fail if fewer come.
            let mut reader = io::Read::take(file, *size);
            let mut counted = Counted {
                inner: &mut reader,
                n: 0,
            };
            tar.append_data(&mut h, path, &mut counted)?;
            if counted.n != *size {
                return Err(io::Error::other(format!(
                    "{} changed while it was read",
                    path.display()
                )));
            }
            Ok(())
        }
        EntryOp::Hardlink { path, target } => {
            let mut h = header(T::Link, 0o644, 0, 0);
            tar.append_link(&mut h, path, target)
        }
        EntryOp::Symlink {
            path,
            target,
            mtime,
        } => {
            let mut h = header(T::Symlink, 0o777, *mtime, 0);
            tar.append_link(&mut h, path, target)
        }
        EntryOp::Fifo { path, mode, mtime } => {
            let mut h = header(T::Fifo, *mode, *mtime, 0);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryOp::Whiteout { path, mtime } => {
            let mut h = header(T::Regular, 0o600, *mtime, 0);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryOp::Opaque { dir, mtime } => {
            let mut h = header(T::Regular, 0o600, *mtime, 0);
            tar.append_data(&mut h, dir.join(".wh..wh..opq"), io::empty())
        }
    }
}

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: io::Read> io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The layout at `dir` as one tar at `out`: sorted entries, owner 0:0, mtime 0.
fn write_archive(dir: &Path, out: &Path) -> io::Result<()> {
    let file = fs_err::File::create(out)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs_err::symlink_metadata(&full)?;
        if meta.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0, 0);
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            tar.append_data(&mut h, Path::new(&name), io::empty())?;
        } else {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, meta.len());
            tar.append_data(&mut h, &rel, fs_err::File::open(&full)?)?;
        }
    }
    let mut w = tar.into_inner()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests;
