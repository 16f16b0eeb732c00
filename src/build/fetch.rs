//! The lock's Python distribution files, downloaded once into the store by sha256
//! (`cache/pip/sha256/<hex>`) and shared by every env and build: a second project pinning the
//! same wheels downloads nothing, whatever caching headers the index (or a proxy) sends, and a
//! build with everything cached needs no network for its Python step.
//!
//! Invariants: a file enters the cache only after its sha256 matched the lock, by rename from
//! `tmp/`, under a store lock per hash; a cached file is trusted by its name.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::BuildError;
use crate::lock::PythonPackage;
use crate::progress::Reporter;
use crate::store::Store;

/// A locked distribution's file in the cache, and the name pip must see it under.
pub struct Cached {
    pub path: PathBuf,
    pub file_name: String,
}

/// Make every file of `packages` present in the cache, downloading what is missing.
pub fn fetch(
    store: &Store,
    packages: &[PythonPackage],
    offline: bool,
    ui: &dyn Reporter,
) -> Result<Vec<Cached>, BuildError> {
    let dir = store.root().join("cache/pip/sha256");
    fs_err::create_dir_all(&dir)?;
    let mut agent = None;
    let mut out = Vec::new();
    for p in packages {
        let file_name = file_name(&p.url).ok_or_else(|| BuildError::Download {
            url: p.url.clone(),
            message: "the URL names no file".into(),
        })?;
        let sha = p.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BuildError::Download {
                url: p.url.clone(),
                message: format!("env.lock's sha256 `{}` is not a sha256", p.sha256),
            });
        }
        let path = dir.join(&sha);
        if !path.exists() {
            let _held = store.lock(&format!("file-{sha}"))?;
            if !path.exists() {
                if offline {
                    return Err(BuildError::Offline { file: file_name });
                }
                let agent = match &agent {
                    Some(a) => a,
                    None => agent.insert(make_agent()?),
                };
                download(store, agent, p, &sha, &path, &file_name, ui)?;
            }
        }
        out.push(Cached { path, file_name });
    }
    Ok(out)
}

fn download(
    store: &Store,
    agent: &ureq::Agent,
    p: &PythonPackage,
    sha: &str,
    dest: &std::path::Path,
    file_name: &str,
    ui: &dyn Reporter,
) -> Result<(), BuildError> {
    let failed = |message: String| BuildError::Download {
        url: p.url.clone(),
        message,
    };
    let resp = agent
        .get(&p.url)
        .call()
        .map_err(|e| failed(e.to_string()))?;
    let total = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let bar = ui.bar(file_name, total);
    let mut reader = resp.into_reader();
    let mut tmp = tempfile::NamedTempFile::new_in(store.root().join("tmp"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| failed(e.to_string()))?;
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
        return Err(BuildError::HashMismatch {
            name: p.name.clone(),
            url: p.url.clone(),
            expected: sha.to_string(),
            actual,
        });
    }
    tmp.as_file().sync_data()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    bar.finish("done");
    Ok(())
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

/// An HTTPS client trusting the system's CA bundle (where a company proxy's CA lives), through
/// `https_proxy` when set.
fn make_agent() -> Result<ureq::Agent, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = rustls_native_certs::load_native_certs() {
        roots.add_parsable_certificates(certs);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BuildError::Download {
        url: String::new(),
        message: format!("setting up TLS: {e}"),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut builder = ureq::AgentBuilder::new()
        .tls_config(Arc::new(tls))
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .user_agent(concat!("devenv/", env!("CARGO_PKG_VERSION")));
    let proxy = ["https_proxy", "HTTPS_PROXY"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(url) = proxy {
        let p = ureq::Proxy::new(&url).map_err(|e| BuildError::Download {
            url: url.clone(),
            message: format!("https_proxy: {e}"),
        })?;
        builder = builder.proxy(p);
    }
    Ok(builder.build())
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
            file_name("https://download.pytorch.org/whl/cpu/torch-2.1.0%2Bcpu-cp311-cp311-linux_x86_64.whl")
                .as_deref(),
            Some("torch-2.1.0+cpu-cp311-cp311-linux_x86_64.whl")
        );
        assert_eq!(file_name("https://h/dir/"), None);
        assert_eq!(file_name("https://h/a/%2e%2e"), None);
        assert_eq!(file_name("https://h/a/x%2Fy.whl"), None);
        assert_eq!(file_name("https://h/a/bad%zz.whl"), None);
    }
}
