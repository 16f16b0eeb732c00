//! `devenv pull oci-archive:PATH[:TAG]` and `oci:DIR[:TAG]`: an image from an OCI image layout
//! (a directory, or the same as one tar file) into the store, without a registry: for
//! air-gapped clusters, CI caches, and machines with no network at all.
//!
//! Every blob is copied into the store while it is hashed and enters it only when it hashes to
//! its name; the layout's own files are never unpacked as such (an archive is read entry by
//! entry: only `index.json` and `blobs/sha256/<64 hex>` are taken, as regular files). Then the
//! image is the store's like a pulled one: manifest and config parsed with the same rules,
//! layers unpacked by the same applier, diff_ids checked, and the name given (`--as`) tagged
//! to it so env.toml can name it.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::platform::Platform;
use crate::progress::Reporter;
use crate::pull::{PullError, Pulled};
use crate::reference::{Digest, ImageRef};
use crate::registry::manifest::{self, ManifestKind};
use crate::store::{Store, StoreError};

/// Where the layout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`
    Dir { path: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`
    Archive { path: PathBuf, tag: Option<String> },
}

impl Source {
    /// `oci:…` or `oci-archive:…`; `None` for anything else (a registry reference).
    pub fn parse(s: &str) -> Option<Source> {
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            // A tag is after the last `:` of the last path component.
            let last = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last..].rfind(':') {
                Some(i) => (
                    PathBuf::from(&rest[..last + i]),
                    Some(rest[last + i + 1..].to_string()).filter(|t| !t.is_empty()),
                ),
                None => (PathBuf::from(rest), None),
            }
        };
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = split(rest);
            Some(Source::Archive { path, tag })
        } else if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split(rest);
            Some(Source::Dir { path, tag })
        } else {
            None
        }
    }

    fn tag(&self) -> Option<&str> {
        match self {
            Source::Dir { tag, .. } | Source::Archive { tag, .. } => tag.as_deref(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Source::Dir { path, .. } | Source::Archive { path, .. } => path,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },
    #[error("{}: blob {name} hashes to {actual}", path.display())]
    Corrupt {
        path: PathBuf,
        name: String,
        actual: Digest,
    },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl crate::error::Hint for ImportError {
    fn hint(&self) -> Option<String> {
        match self {
            ImportError::Layout { .. } => Some(
                "an OCI image layout has oci-layout, index.json and blobs/sha256/; `devenv \
                 export`, `skopeo copy … oci:DIR` or `oci-archive:FILE` write one"
                    .into(),
            ),
            ImportError::Corrupt { .. } => {
                Some("the layout is damaged or was tampered with; nothing of it was kept".into())
            }
            ImportError::Pull(e) => e.hint(),
            _ => None,
        }
    }
}

/// Largest `index.json` read.
const MAX_INDEX: u64 = 4 << 20;

/// Import the image `source` names into `store`, tagged as `name`.
pub fn import(
    source: &Source,
    name: &ImageRef,
    platform: &Platform,
    store: &Store,
    ui: &dyn Reporter,
) -> Result<Pulled, ImportError> {
    let path = source.path().to_path_buf();
    let layout = |message: String| ImportError::Layout {
        path: path.clone(),
        message,
    };
    let index = match source {
        Source::Dir { path, .. } => {
            let index = read_limited(&path.join("index.json"))
                .map_err(|e| layout(format!("index.json: {e}")))?;
            let blobs = path.join("blobs/sha256");
            for entry in fs_err::read_dir(&blobs).map_err(|e| layout(e.to_string()))? {
                let entry = entry?;
                let file_name = entry.file_name();
                let Some(hex) = file_name.to_str().filter(|h| is_hex64(h)) else {
                    continue;
                };
                if entry.file_type()?.is_file() {
                    let file = fs_err::File::open(entry.path())?;
                    put_verified(store, hex, file, path)?;
                }
            }
            index
        }
        Source::Archive { path, .. } => {
            let file = fs_err::File::open(path).map_err(|e| layout(e.to_string()))?;
            let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
            let mut index = None;
            for entry in archive.entries().map_err(|e| layout(e.to_string()))? {
                let mut entry = entry.map_err(|e| layout(e.to_string()))?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let entry_path = entry
                    .path()
                    .map_err(|e| layout(e.to_string()))?
                    .into_owned();
                let entry_path = entry_path
                    .strip_prefix("./")
                    .unwrap_or(&entry_path)
                    .to_path_buf();
                if entry_path == Path::new("index.json") {
                    let mut buf = Vec::new();
                    (&mut entry).take(MAX_INDEX + 1).read_to_end(&mut buf)?;
                    if buf.len() as u64 > MAX_INDEX {
                        return Err(layout("index.json is larger than 4 MiB".into()));
                    }
                    index = Some(buf);
                } else if let Ok(rest) = entry_path.strip_prefix("blobs/sha256")
                    && let Some(hex) = rest.to_str().filter(|h| is_hex64(h))
                {
                    let hex = hex.to_string();
                    put_verified(store, &hex, &mut entry, path)?;
                }
            }
            index.ok_or_else(|| layout("the archive has no index.json".into()))?
        }
    };
    let top = pick(&index, source.tag()).map_err(&layout)?;
    let name_shown = name.to_string();
    let bytes = store
        .blob(&top)
        .ok_or_else(|| layout(format!("index.json names {top}, which is not in blobs/")))?;
    let (manifest_digest, m) = match manifest::parse_manifest("", &bytes)? {
        ManifestKind::Image(m) => (top.clone(), m),
        ManifestKind::Index(i) => {
            let chosen = manifest::select_platform(&i, platform)?;
            let b = store.blob(&chosen.digest).ok_or_else(|| {
                layout(format!(
                    "the index names {}, which is not in blobs/",
                    chosen.digest
                ))
            })?;
            match manifest::parse_manifest("", &b)? {
                ManifestKind::Image(m) => {
                    store.put_manifest(&chosen.digest, &b)?;
                    (chosen.digest.clone(), m)
                }
                ManifestKind::Index(_) => {
                    return Err(PullError::NestedIndex { image: name_shown }.into());
                }
            }
        }
    };
    store.put_manifest(&top, &bytes)?;
    let config_bytes = store
        .blob(&m.config.digest)
        .ok_or_else(|| layout(format!("its config {} is not in blobs/", m.config.digest)))?;
    let config = manifest::parse_config(&config_bytes)?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != m.layers.len() {
        return Err(PullError::LayerCount {
            image: name_shown,
            layers: m.layers.len(),
            diff_ids: diff_ids.len(),
        }
        .into());
    }
    let missing: Vec<(&manifest::Descriptor, &Digest)> = m
        .layers
        .iter()
        .zip(&diff_ids)
        .filter(|(_, d)| !store.layer_path(d).exists())
        .collect();
    ui.status("Importing", &format!("{} as {name}", path.display()));
    crate::pull::fetch_layers(None, store, name, &missing, ui)?;
    let fetched = missing.len();
    let named = ImageRef {
        digest: None,
        ..name.clone()
    };
    store.set_tag(&named, &top)?;
    Ok(Pulled {
        image: name.with_digest(manifest_digest.clone()),
        resolved: top,
        manifest: manifest_digest,
        config,
        layers: diff_ids,
        fetched,
    })
}

/// The manifest `index.json` names: the one whose `ref.name` is `tag`, else the only one.
fn pick(index: &[u8], tag: Option<&str>) -> Result<Digest, String> {
    let i: manifest::Index = serde_json::from_slice(index)
        .map_err(|e| format!("index.json is not an image index: {e}"))?;
    let named: Vec<&manifest::Descriptor> = match tag {
        Some(t) => i
            .manifests
            .iter()
            .filter(|d| {
                d.annotations
                    .get(crate::export::REF_NAME)
                    .map(String::as_str)
                    == Some(t)
            })
            .collect(),
        None => i.manifests.iter().collect(),
    };
    match named.as_slice() {
        [one] => Ok(one.digest.clone()),
        [] => Err(match tag {
            Some(t) => format!("index.json has no image named `{t}`"),
            None => "index.json lists no image".into(),
        }),
        _ => Err("index.json lists several images: name one with :TAG".into()),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs_err::File::open(path)?
        .take(MAX_INDEX + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_INDEX {
        return Err(io::Error::other("larger than 4 MiB"));
    }
    Ok(buf)
}

/// Copy `from` into the store as blob `hex`, hashing as it goes; it enters the store only when
/// it hashes to its name (a blob already there is trusted, as everywhere in the store).
fn put_verified(
    store: &Store,
    hex: &str,
    mut from: impl Read,
    layout: &Path,
) -> Result<(), ImportError> {
    let digest: Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|_| io::Error::other("bad digest"))?;
    let dest = store.blob_path(&digest);
    if dest.exists() {
        return Ok(());
    }
    let mut tmp = tempfile::NamedTempFile::new_in(store.root().join("tmp"))?;
    let mut hasher = sha2::Sha256::new();
    {
        let mut out = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
    }
    let actual = Digest::from_sha256_bytes(&hasher.finalize());
    if actual != digest {
        return Err(ImportError::Corrupt {
            path: layout.to_path_buf(),
            name: hex.to_string(),
            actual,
        });
    }
    tmp.as_file().sync_data()?;
    tmp.persist(&dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_with_and_without_a_tag() {
        assert_eq!(
            Source::parse("oci-archive:/tmp/img.tar"),
            Some(Source::Archive {
                path: "/tmp/img.tar".into(),
                tag: None
            })
        );
        assert_eq!(
            Source::parse("oci:../out/env:v1"),
            Some(Source::Dir {
                path: "../out/env".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(Source::parse("python:3.12"), None);
        assert_eq!(Source::parse("docker.io/library/python:3.12"), None);
    }

    #[test]
    fn the_index_names_one_image_or_the_tag_picks_it() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('a'), "size": 1,
                 "annotations": {"org.opencontainers.image.ref.name": "v1"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('b'), "size": 1,
                 "annotations": {"org.opencontainers.image.ref.name": "v2"}},
            ]
        })
        .to_string();
        assert_eq!(
            pick(index.as_bytes(), Some("v2")).unwrap().to_string(),
            d('b')
        );
        assert!(
            pick(index.as_bytes(), None)
                .unwrap_err()
                .contains("several")
        );
        assert!(
            pick(index.as_bytes(), Some("v3"))
                .unwrap_err()
                .contains("no image named `v3`")
        );
        assert!(pick(b"not json", None).is_err());
    }
}
