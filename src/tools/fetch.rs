//! The lock's Python distribution files, downloaded once into the store by sha256
//! (`cache/pip/sha256/<hex>`) and shared by every env and build: a second project pinning the
//! same wheels downloads nothing, whatever caching headers the index (or a proxy) sends, and a
//! build with everything cached needs no network for its Python step. Missing files download
//! in parallel (a few connections, as uv and pip's successors do), each verified as it streams.
//!
//! Invariants: a file enters the cache only after its sha256 matched the lock, by rename from
//! `tmp/`, under a store lock per hash; a cached file is trusted by its name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::progress::Reporter;
use crate::registry::transport::Agents;
use crate::store::{Store, StoreError};

/// One file to have: what it is called in messages, where it is, its sha256 (hex).
pub struct Wanted<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub sha256: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("{name}: {url} has sha256 {actual}, env.lock says {expected}")]
    HashMismatch {
        name: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{file} is not in the store and --offline forbids downloading it")]
    Offline { file: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl crate::error::Hint for FetchError {
    fn hint(&self) -> Option<String> {
        match self {
            FetchError::Download { .. } => Some(
                "check the network (and https_proxy); files already downloaded stay in the store"
                    .into(),
            ),
            FetchError::HashMismatch { .. } => Some(
                "the index serves different bytes than were locked; nothing was installed. If \
                 the change is expected, run `devenv lock --update NAME`"
                    .into(),
            ),
            FetchError::Offline { .. } => Some("run once without --offline to fetch it".into()),
            _ => None,
        }
    }
}

/// Downloads at once.
const PARALLEL: usize = 6;

/// A locked distribution's file in the cache, and the name pip must see it under.
pub struct Cached {
    pub path: PathBuf,
    pub file_name: String,
}

/// Make every file of `packages` present in the cache, downloading what is missing (several
/// at once). The result is in `packages`' order.
pub fn fetch(
    store: &Store,
    packages: &[Wanted<'_>],
    offline: bool,
    ui: &dyn Reporter,
) -> Result<Vec<Cached>, FetchError> {
    let dir = store.root().join("cache/pip/sha256");
    fs_err::create_dir_all(&dir)?;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for p in packages {
        let file_name = file_name(p.url).ok_or_else(|| FetchError::Download {
            url: p.url.to_string(),
            message: "the URL names no file".into(),
        })?;
        let sha = p.sha256.to_ascii_lowercase();
        if !is_sha256(&sha) {
            return Err(FetchError::Download {
                url: p.url.to_string(),
                message: format!("env.lock's sha256 `{}` is not a sha256", p.sha256),
            });
        }
        let path = dir.join(&sha);
        if !path.exists() {
            if offline {
                return Err(FetchError::Offline { file: file_name });
            }
            missing.push((p, sha, path.clone(), file_name.clone()));
        } else {
            // Used now: `devenv gc` keeps what was used lately (its modification time, since
            // access times are not kept on every mount).
            let _ = fs_err::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        out.push(Cached { path, file_name });
    }
    if !missing.is_empty() {
        let agents = agents()?;
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<FetchError>> = Mutex::new(None);
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((p, sha, path, file_name)) = missing.get(i) else {
                    return;
                };
                if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let result = fetch_one(store, &agents, p, sha, path, file_name, ui);
                if let Err(e) = result
                    && let Ok(mut slot) = failed.lock()
                {
                    slot.get_or_insert(e);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(missing.len()) {
                s.spawn(work);
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or(None) {
            return Err(e);
        }
    }
    Ok(out)
}

/// One missing file, under the store's lock for its hash (another process may be fetching it).
fn fetch_one(
    store: &Store,
    agents: &Agents,
    p: &Wanted<'_>,
    sha: &str,
    path: &Path,
    file_name: &str,
    ui: &dyn Reporter,
) -> Result<(), FetchError> {
    let _held = store.lock(&format!("file-{sha}"))?;
    if path.exists() {
        return Ok(());
    }
    match download_verified(store, agents, p.url, sha, path, file_name, ui)? {
        Verified::Stored => Ok(()),
        Verified::Mismatch { actual } => Err(FetchError::HashMismatch {
            name: p.name.to_string(),
            url: p.url.to_string(),
            expected: sha.to_string(),
            actual,
        }),
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How a download that completed ended.
pub enum Verified {
    /// The bytes hashed to the sha256 asked for and now lie at the destination.
    Stored,
    /// They did not; nothing was stored.
    Mismatch { actual: String },
}

/// Stream `url` into a temp file in the store's `tmp/`, hashing as it goes; rename it to `dest`
/// only when it hashes to `sha`. Network failures are
/// [`FetchError::Download`].
pub fn download_verified(
    store: &Store,
    agents: &Agents,
    url: &str,
    sha: &str,
    dest: &Path,
    label: &str,
    ui: &dyn Reporter,
) -> Result<Verified, FetchError> {
    let failed = |message: String| FetchError::Download {
        url: url.to_string(),
        message,
    };
    let resp = agents
        .for_url(url)
        .get(url)
        .call()
        .map_err(|e| failed(http_message(url, &e)))?;
    let total = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let bar = ui.bar(label, total);
    let mut reader = resp.into_reader();
    let mut tmp = tempfile::NamedTempFile::new_in(store.root().join("tmp"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                bar.finish("failed");
                return Err(failed(e.to_string()));
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    let actual = hex::encode(hasher.finalize());
    if actual != sha {
        bar.finish("failed");
        return Ok(Verified::Mismatch { actual });
    }
    tmp.as_file().sync_data()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    bar.finish("done");
    Ok(Verified::Stored)
}

/// A ureq error without the URL it starts with (the message names the URL already).
pub fn http_message(url: &str, e: &ureq::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix(url).and_then(|t| t.strip_prefix(": ")) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// The URL's last path segment, percent-decoded (`torch-2.1.0%2Bcpu-…whl`), when it is a
/// plain file name.
pub fn file_name(url: &str) -> Option<String> {
    let path = url.split(['#', '?']).next()?;
    let last = path.rsplit('/').next()?;
    let bytes = last.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    plain.then_some(name)
}

/// The HTTP clients downloads go through: the registry client's transport (the system's CA
/// bundle plus `SSL_CERT_FILE`; `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` by scheme, `NO_PROXY`
/// and loopback direct), following redirects.
pub fn agents() -> Result<Agents, FetchError> {
    use crate::registry::transport::{ProxyConfig, tls_config};
    let failed = |e: crate::registry::RegistryError| FetchError::Download {
        url: String::new(),
        message: e.to_string(),
    };
    Agents::following_redirects(ProxyConfig::from_env(), tls_config().map_err(failed)?)
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_urls() {
        assert_eq!(
            file_name("https://h/packages/ab/six-1.16.0-py2.py3-none-any.whl#sha256=00").as_deref(),
            Some("six-1.16.0-py2.py3-none-any.whl")
        );
        assert_eq!(
            file_name(
                "https://index.example/whl/cpu/torch-2.1.0%2Bcpu-cp311-cp311-linux_x86_64.whl"
            )
            .as_deref(),
            Some("torch-2.1.0+cpu-cp311-cp311-linux_x86_64.whl")
        );
        assert_eq!(file_name("https://h/dir/"), None);
        assert_eq!(file_name("https://h/a/%2e%2e"), None);
        assert_eq!(file_name("https://h/a/x%2Fy.whl"), None);
        assert_eq!(file_name("https://h/a/bad%zz.whl"), None);
    }
}
