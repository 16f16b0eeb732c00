//! The distribution client: auth (anonymous, bearer, basic), manifests, blobs, retries, mirrors.
//!
//! The protocol is written by hand on blocking `ureq` behind this narrow API: `oci-client` is
//! async (tokio) and cannot hand a blob body to our synchronous, streaming unpacker.
//!
//! Invariants: every byte returned is verified against the digest it was asked for (manifests
//! before they are returned, blobs before the reader reports end-of-file); a response body is
//! never read past a fixed limit into memory; credentials go only to the registry they belong to
//! and its token realm, never across a redirect to another host, and are never logged. Plain
//! HTTP is used only for loopback registries and the ones the user lists as insecure.

mod auth;
mod blob;
pub mod manifest;
pub mod settings;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod transport;
pub mod upload;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use auth::{CredentialStore, Credentials};
pub use manifest::{
    Descriptor, ImageConfig, ImageManifest, Index, ManifestKind, parse_config, parse_manifest,
    select_platform,
};
pub use settings::{Mirror, Settings};
pub use transport::{ProxyConfig, RetryPolicy};

use crate::platform::Platform;
use crate::reference::{Digest, ImageRef};
use auth::{Challenge, Lookup};
use transport::{Agents, UrlParts};

/// Manifests larger than this are refused (the distribution spec's suggested limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Token answers larger than this are refused.
const MAX_TOKEN_SIZE: u64 = 1 << 20;
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{image}: not found in the registry")]
    NotFound { image: String },
    #[error("{image}: blob {digest} not found in the registry")]
    BlobNotFound { image: String, digest: Digest },
    #[error("{registry}: authentication {} for {repository} (401 unauthorized)", if *had_credentials { "failed" } else { "required" })]
    Unauthorized {
        registry: String,
        repository: String,
        had_credentials: bool,
        /// Where credentials came from, or what was searched.
        searched: String,
    },
    #[error("{registry} denied access to {repository} (403 forbidden)")]
    Denied {
        registry: String,
        repository: String,
    },
    #[error("cannot reach {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("TLS connection to {registry} failed")]
    Tls {
        registry: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{registry} answered HTTP {status} for {url}{detail}")]
    Http {
        registry: String,
        status: u16,
        url: String,
        /// `: <the registry's own error message>`, or empty.
        detail: String,
    },
    #[error("content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is {actual} bytes long, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("manifest type `{media_type}` is not supported")]
    UnsupportedMediaType { media_type: String },
    #[error(
        "no image for {wanted} in the index; it has {}",
        list_or_none(available)
    )]
    PlatformMissing {
        wanted: Platform,
        available: Vec<String>,
    },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("{url}: giving up after {tries} tries: {last}")]
    TooManyRetries {
        url: String,
        tries: u32,
        last: String,
    },
    #[error("{registry} sent blob {digest} from the start instead of resuming at byte {offset}")]
    NoResume {
        registry: String,
        digest: Digest,
        offset: u64,
    },
    #[error("reading an answer from {registry}")]
    Body {
        registry: String,
        #[source]
        source: io::Error,
    },
    #[error("{registry} sent an invalid answer to {url}: {message}")]
    BadResponse {
        registry: String,
        url: String,
        message: String,
    },
    #[error("invalid {what}: {message}")]
    InvalidDocument { what: String, message: String },
    #[error("{}: {message}", path.display())]
    Settings { path: PathBuf, message: String },
    #[error("CA certificates {}: {message}", path.display())]
    CaFile { path: PathBuf, message: String },
    #[error("invalid proxy in {variable}: {message}")]
    Proxy { variable: String, message: String },
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "no platform-specific images".into()
    } else {
        v.join(", ")
    }
}

impl crate::error::Hint for RegistryError {
    fn hint(&self) -> Option<String> {
        let settings = crate::user_config::path_text;
        use RegistryError::*;
        Some(match self {
            NotFound { .. } | BlobNotFound { .. } => "check the image name and tag; a name without a registry means docker.io, and one without a `/` means docker.io/library/…".into(),
            Unauthorized { registry, had_credentials: true, searched, .. } => format!(
                "the registry refused the credentials ({searched}); log in again with `docker login {registry}` or `podman login {registry}`"
            ),
            Unauthorized { registry, searched, .. } => format!(
                "{searched}; if the image is private, log in with `docker login {registry}` (stored in ~/.docker/config.json) or `podman login {registry}`; registries also answer this way for repositories that do not exist, so check the name"
            ),
            Denied { registry, repository } => format!(
                "the credentials used for {registry} may not pull {repository}; check the account's permissions and the image name"
            ),
            Unreachable { registry, .. } => format!(
                "is a registry running at {registry}? check the name, the network, and the proxy settings (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)"
            ),
            Tls { registry, .. } => format!(
                "if {registry} uses a private CA, point SSL_CERT_FILE at its PEM bundle; if it serves plain HTTP, list it in `insecure-registries` in {}",
                settings()
            ),
            Http { status, .. } if *status >= 500 => {
                "the registry is failing; try again later".into()
            }
            Http { .. } | BadResponse { .. } | NoResume { .. } | Body { .. } => return None,
            DigestMismatch { .. } | SizeMismatch { .. } => "the registry (or something between it and us) served content that does not match its digest; nothing was kept, try again, and report it to the registry's owner if it persists".into(),
            UnsupportedMediaType { media_type } if media_type.contains("manifest.v1") => "Docker schema 1 images are deprecated and unsupported; re-push the image with a current tool (for example `skopeo copy` or `docker push`)".into(),
            UnsupportedMediaType { .. } => "devenv reads OCI and Docker schema 2 images and indexes".into(),
            PlatformMissing { available, .. } if !available.is_empty() => format!(
                "set `platform` under [image] in env.toml to one of {}, or use an image built for this machine",
                available.join(", ")
            ),
            PlatformMissing { .. } => "use an image built for this machine".into(),
            TooLarge { .. } => "this is not an image devenv can use; check the reference".into(),
            TooManyRetries { .. } => "the registry or the network is overloaded; try again later".into(),
            InvalidDocument { .. } => "the image is malformed; ask its publisher to rebuild it".into(),
            Settings { .. } => "fix or remove the file; the expected keys are `insecure-registries = [\"host:port\"]` and a `[mirrors]` table of registry = [\"mirror:port\"]".into(),
            CaFile { .. } => "SSL_CERT_FILE must name a readable PEM file of CA certificates; unset it to use only the system's".into(),
            Proxy { .. } => "a proxy is written like http://proxy.example:3128".into(),
        })
    }
}

/// Wrap a registry error in an `io::Error` for readers; callers get it back with
/// [`RegistryError::from_io`] or `err.get_ref()?.downcast_ref::<RegistryError>()`.
fn into_io(e: RegistryError) -> io::Error {
    let kind = match e {
        RegistryError::DigestMismatch { .. }
        | RegistryError::SizeMismatch { .. }
        | RegistryError::NoResume { .. }
        | RegistryError::BadResponse { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl RegistryError {
    /// The registry error inside an error from a blob reader, if there is one.
    pub fn from_io_ref(e: &io::Error) -> Option<&RegistryError> {
        e.get_ref()?.downcast_ref::<RegistryError>()
    }

    /// Unwrap a blob reader's error into a registry error; plain I/O errors are `Body` errors
    /// of `registry`.
    pub fn from_io(e: io::Error, registry: &str) -> RegistryError {
        let body = |source| RegistryError::Body {
            registry: registry.into(),
            source,
        };
        if Self::from_io_ref(&e).is_none() {
            return body(e);
        }
        let kind = e.kind();
        match e
            .into_inner()
            .map(|inner| inner.downcast::<RegistryError>())
        {
            Some(Ok(r)) => *r,
            Some(Err(other)) => body(io::Error::new(kind, other)),
            None => body(io::Error::from(kind)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// One of [`manifest::ACCEPTED`]: the `Content-Type`, or what the body says when that was
    /// generic.
    pub media_type: String,
    pub digest: Digest,
}

/// A registry client. Cheap to share between threads (`&Client`); tokens and credential lookups
/// are cached for its lifetime; a clone shares them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    agents: Agents,
    credentials: CredentialStore,
    retry: RetryPolicy,
    /// (endpoint base URL, token scopes) → `Authorization` value that worked.
    auth: Mutex<HashMap<(String, String), String>>,
    lookups: Mutex<HashMap<(String, String), Lookup>>,
}

/// Where requests for one image go: a mirror or the origin registry.
#[derive(Clone, Debug)]
struct Endpoint {
    /// As the user names it, for credentials and messages: `docker.io`, `mirror.lan:5000`.
    registry: String,
    /// `https://registry-1.docker.io`, `http://127.0.0.1:5000`.
    base: String,
    repository: String,
    /// Push access asked for (`pull,push` in the token scope), and the repositories a blob
    /// may be mounted from (`pull` on each).
    push: bool,
    mount_from: Vec<String>,
}

impl Endpoint {
    /// The token scopes this endpoint's requests need.
    fn scopes(&self) -> Vec<String> {
        let access = if self.push { "pull,push" } else { "pull" };
        let mut scopes = vec![format!("repository:{}:{access}", self.repository)];
        for from in &self.mount_from {
            if *from != self.repository {
                scopes.push(format!("repository:{from}:pull"));
            }
        }
        scopes
    }

    /// The key a working `Authorization` is cached under: a pull token does not push.
    fn auth_key(&self) -> (String, String) {
        (self.base.clone(), self.scopes().join(" "))
    }
}

/// What a 404 means, for the message.
enum Missing<'a> {
    Manifest { image: &'a str },
    Blob { image: &'a str, digest: &'a Digest },
    Other,
}

impl Client {
    /// A client with credentials, proxies and CA roots found the usual way (see the module
    /// docs of `auth` and `transport`).
    pub fn new(settings: Settings) -> Result<Client, RegistryError> {
        Client::with_parts(
            settings,
            CredentialStore::from_env(),
            ProxyConfig::from_env(),
            RetryPolicy::default(),
        )
    }

    /// A client with everything given explicitly (tests, `devenv doctor`).
    pub fn with_parts(
        settings: Settings,
        credentials: CredentialStore,
        proxies: ProxyConfig,
        retry: RetryPolicy,
    ) -> Result<Client, RegistryError> {
        let agents = Agents::new(proxies, transport::tls_config()?)?;
        Ok(Client {
            inner: Arc::new(Inner {
                settings,
                agents,
                credentials,
                retry,
                auth: Mutex::new(HashMap::new()),
                lookups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Check that `registry` answers the distribution API (`GET /v2/`); 401 counts as alive.
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let image = ImageRef {
            registry: registry.into(),
            repository: String::new(),
            tag: None,
            digest: None,
        };
        let ep = self.inner.origin(&image);
        let url = format!("{}/v2/", ep.base);
        let resp = self.inner.with_retries(&ep.registry, &url, || {
            self.inner.exchange("GET", &url, &[], None, None)
        })?;
        match resp.status() {
            200..=299 | 401 => Ok(()),
            _ => Err(self.inner.status_error(&ep, resp, &url, Missing::Other)),
        }
    }

    /// Fetch the manifest `reference` (a tag or a digest) of `image`, trying mirrors first.
    pub fn fetch_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<Fetched, RegistryError> {
        self.inner.each_endpoint(image, |ep| {
            self.inner.fetch_manifest_from(ep, image, reference)
        })
    }

    /// Fetch a small blob (a config) into memory, verified against `digest`; bodies over `max`
    /// bytes are refused.
    pub fn fetch_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut reader = self.open(image, digest, None, Some(max))?;
        let registry = reader.registry().to_string();
        let mut buf = Vec::new();
        (&mut reader)
            .take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| RegistryError::from_io(e, &registry))?;
        if buf.len() as u64 > max {
            return Err(RegistryError::TooLarge {
                what: format!("blob {digest}"),
                limit: max,
            });
        }
        Ok(buf)
    }

    /// Open a blob as a stream that is verified against `digest` (and `size`) before it reports
    /// end-of-file, resuming by `Range` when the connection breaks.
    pub fn open_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, RegistryError> {
        Ok(Box::new(self.open(image, digest, size, None)?))
    }

    fn open(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: Option<u64>,
        max: Option<u64>,
    ) -> Result<blob::BlobReader, RegistryError> {
        self.inner.each_endpoint(image, |ep| {
            blob::BlobReader::open(
                self.inner.clone(),
                ep.clone(),
                image.to_string(),
                digest.clone(),
                size,
                max,
            )
        })
    }
}

impl Inner {
    /// Run `f` against each mirror of the image's registry, then the origin; the first success
    /// wins, and the origin's error is the one reported.
    fn each_endpoint<T>(
        &self,
        image: &ImageRef,
        mut f: impl FnMut(&Endpoint) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        if let Some(mirrors) = self.settings.mirrors.get(&image.registry) {
            for m in mirrors {
                let ep = Endpoint {
                    registry: m.host.clone(),
                    base: format!("{}://{}", self.scheme(&m.host, m.plain_http), m.host),
                    repository: image.repository.clone(),
                    push: false,
                    mount_from: Vec::new(),
                };
                match f(&ep) {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        tracing::warn!(mirror = %m.host, "mirror failed, trying the next: {e}")
                    }
                }
            }
        }
        f(&self.origin(image))
    }

    fn origin(&self, image: &ImageRef) -> Endpoint {
        let host = image.api_host();
        Endpoint {
            registry: image.registry.clone(),
            base: format!("{}://{host}", self.scheme(&image.registry, None)),
            repository: image.repository.clone(),
            push: false,
            mount_from: Vec::new(),
        }
    }

    fn scheme(&self, registry: &str, explicit_plain: Option<bool>) -> &'static str {
        let loopback = ImageRef {
            registry: registry.into(),
            repository: String::new(),
            tag: None,
            digest: None,
        }
        .is_loopback();
        let plain = explicit_plain.unwrap_or(loopback || self.settings.is_insecure(registry));
        if plain { "http" } else { "https" }
    }

    /// One exchange, following redirects hop by hop. `Ok` for any HTTP status; `Err` only for
    /// transport failures. `auth` is sent only to the origin of `url`, never after a redirect
    /// to another origin.
    fn exchange(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        auth: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<ureq::Response, Box<ureq::Transport>> {
        let origin = UrlParts::parse(url).map(|p| p.origin());
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let mut req = self.agents.for_url(&url).request(method, &url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            let same_origin = UrlParts::parse(&url).map(|p| p.origin()) == origin;
            if let (Some(a), true) = (auth, same_origin) {
                req = req.set("Authorization", a);
            }
            let shown = url.split('?').next().unwrap_or("");
            let sent = match body {
                Some(b) => req.send_bytes(b),
                None => req.call(),
            };
            let resp = match sent {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    tracing::debug!(method, url = shown, "request failed: {t}");
                    return Err(Box::new(t));
                }
            };
            let status = resp.status();
            tracing::debug!(method, url = shown, status, "request");
            if !matches!(status, 301 | 302 | 303 | 307 | 308) || hops >= MAX_REDIRECTS {
                return Ok(resp);
            }
            let Some(next) = resp
                .header("location")
                .and_then(|l| transport::join_location(&url, l))
            else {
                return Ok(resp);
            };
            hops += 1;
            url = next;
        }
    }

    /// [`Inner::exchange`] again on 429, 5xx and network failures, with backoff.
    fn with_retries(
        &self,
        registry: &str,
        url: &str,
        mut f: impl FnMut() -> Result<ureq::Response, Box<ureq::Transport>>,
    ) -> Result<ureq::Response, RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.tries;
            let delay = match f() {
                Ok(resp) if transport::retryable_status(resp.status()) => {
                    let status = resp.status();
                    if last {
                        return Err(RegistryError::TooManyRetries {
                            url: url.into(),
                            tries: attempt,
                            last: format!("HTTP {status}"),
                        });
                    }
                    let after = transport::parse_retry_after(resp.header("retry-after"));
                    self.retry.delay(attempt, after)
                }
                Ok(resp) => return Ok(resp),
                Err(t) if !last && transport::retryable_transport(&t) => {
                    self.retry.delay(attempt, None)
                }
                Err(t) => return Err(transport_error(registry, t)),
            };
            tracing::debug!(url, attempt, "retrying in {delay:?}");
            std::thread::sleep(delay);
        }
    }

    /// A request to `ep`, authenticating when challenged: cached `Authorization` first, then
    /// the challenge's bearer token or basic credentials. Returns any status but 401.
    fn send(
        &self,
        ep: &Endpoint,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::Response, RegistryError> {
        self.send_body(ep, method, url, headers, None)
    }

    /// [`Inner::send`] with a request body (a manifest).
    fn send_body(
        &self,
        ep: &Endpoint,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ureq::Response, RegistryError> {
        let key = ep.auth_key();
        let cached = lock(&self.auth).get(&key).cloned();
        let resp = self.with_retries(&ep.registry, url, || {
            self.exchange(method, url, headers, cached.as_deref(), body)
        })?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenges = auth::parse_challenges(resp.all("www-authenticate"));
        let lookup = self.lookup(ep);
        let unauthorized = || RegistryError::Unauthorized {
            registry: ep.registry.clone(),
            repository: ep.repository.clone(),
            had_credentials: lookup.credentials.is_some(),
            searched: lookup.searched.clone(),
        };
        let header = match challenges.first() {
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.fetch_token(ep, realm, service.as_deref(), &lookup)?
            }
            Some(Challenge::Basic) => match &lookup.credentials {
                Some(c) => c.basic_header(),
                None => return Err(unauthorized()),
            },
            None => return Err(unauthorized()),
        };
        if cached.as_ref() == Some(&header) {
            // The same credentials were just refused.
            lock(&self.auth).remove(&key);
            return Err(unauthorized());
        }
        lock(&self.auth).insert(key.clone(), header.clone());
        let resp = self.with_retries(&ep.registry, url, || {
            self.exchange(method, url, headers, Some(&header), body)
        })?;
        if resp.status() == 401 {
            lock(&self.auth).remove(&key);
            return Err(unauthorized());
        }
        Ok(resp)
    }

    fn lookup(&self, ep: &Endpoint) -> Lookup {
        let key = (ep.registry.clone(), ep.repository.clone());
        if let Some(l) = lock(&self.lookups).get(&key) {
            return l.clone();
        }
        // Outside the lock: a credential helper may take a while.
        let l = self.credentials.lookup(&ep.registry, &ep.repository);
        lock(&self.lookups).insert(key, l.clone());
        l
    }

    /// The bearer token dance: GET the realm with service and scope, basic credentials if any.
    fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        lookup: &Lookup,
    ) -> Result<String, RegistryError> {
        let bad = |message: String| RegistryError::BadResponse {
            registry: ep.registry.clone(),
            url: realm.into(),
            message,
        };
        let Some(parts) = UrlParts::parse(realm) else {
            return Err(bad("the token realm is not an http(s) URL".into()));
        };
        let realm_host = parts.authority.to_string();
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str(&format!("service={}&", query_escape(s)));
        }
        let scopes = ep.scopes();
        let query: Vec<String> = scopes
            .iter()
            .map(|s| format!("scope={}", query_escape(s)))
            .collect();
        url.push_str(&query.join("&"));
        let scope = scopes.join(" ");
        // Credentials travel in the clear only where the user chose plain HTTP for the registry.
        let realm_plain = !parts.scheme.eq_ignore_ascii_case("https");
        let registry_plain = ep.base.starts_with("http://");
        let credentials = match &lookup.credentials {
            Some(_) if realm_plain && !registry_plain => {
                tracing::warn!(realm, "not sending credentials to a plain-HTTP token realm");
                None
            }
            c => c.as_ref(),
        };
        let resp = match credentials {
            // An identity token is a refresh token: OAuth2's form POST to the realm.
            Some(c) if c.is_identity_token() => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "devenv"),
                    ("refresh_token", c.password.as_str()),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                self.with_retries(&realm_host, realm, || {
                    let resp = match self.agents.for_url(realm).post(realm).send_form(&form) {
                        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                        Err(ureq::Error::Transport(t)) => return Err(Box::new(t)),
                    };
                    tracing::debug!(
                        method = "POST",
                        url = realm,
                        status = resp.status(),
                        "request"
                    );
                    Ok(resp)
                })?
            }
            c => {
                let basic = c.map(|c| c.basic_header());
                self.with_retries(&realm_host, &url, || {
                    self.exchange("GET", &url, &[], basic.as_deref(), None)
                })?
            }
        };
        match resp.status() {
            200 => {}
            401 | 403 => {
                return Err(RegistryError::Unauthorized {
                    registry: ep.registry.clone(),
                    repository: ep.repository.clone(),
                    had_credentials: credentials.is_some(),
                    searched: lookup.searched.clone(),
                });
            }
            _ => return Err(self.status_error(ep, resp, realm, Missing::Other)),
        }
        let body = read_limited(resp, MAX_TOKEN_SIZE, &realm_host, "token answer")?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the token answer is not JSON: {e}")))?;
        let token = t
            .token
            .filter(|t| !t.is_empty())
            .or(t.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| bad("the token answer has neither `token` nor `access_token`".into()))?;
        Ok(format!("Bearer {token}"))
    }

    /// The error for a response that is not what we asked for.
    fn status_error(
        &self,
        ep: &Endpoint,
        resp: ureq::Response,
        url: &str,
        missing: Missing<'_>,
    ) -> RegistryError {
        let status = resp.status();
        match (status, missing) {
            (404, Missing::Manifest { image }) => {
                return RegistryError::NotFound {
                    image: image.into(),
                };
            }
            (404, Missing::Blob { image, digest }) => {
                return RegistryError::BlobNotFound {
                    image: image.into(),
                    digest: digest.clone(),
                };
            }
            (401, _) => {
                let lookup = self.lookup(ep);
                return RegistryError::Unauthorized {
                    registry: ep.registry.clone(),
                    repository: ep.repository.clone(),
                    had_credentials: lookup.credentials.is_some(),
                    searched: lookup.searched,
                };
            }
            (403, _) => {
                return RegistryError::Denied {
                    registry: ep.registry.clone(),
                    repository: ep.repository.clone(),
                };
            }
            _ => {}
        }
        let detail = read_limited(resp, 64 << 10, &ep.registry, "error answer")
            .ok()
            .and_then(|b| error_message(&b))
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        RegistryError::Http {
            registry: ep.registry.clone(),
            status,
            url: url.split('?').next().unwrap_or("").into(),
            detail,
        }
    }

    fn fetch_manifest_from(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        reference: &str,
    ) -> Result<Fetched, RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", ep.base, ep.repository);
        let accept = manifest::ACCEPTED.join(", ");
        let shown = format!("{}/{}:{reference}", image.registry, image.repository)
            .replace(":sha256:", "@sha256:");
        let mut attempt = 0;
        let (content_type, header_digest, bytes) = loop {
            attempt += 1;
            let resp = self.send(ep, "GET", &url, &[("Accept", &accept)])?;
            if resp.status() != 200 {
                return Err(self.status_error(ep, resp, &url, Missing::Manifest { image: &shown }));
            }
            let content_type =
                manifest::bare_media_type(resp.header("content-type").unwrap_or("")).to_string();
            let header_digest = resp.header("docker-content-digest").map(str::to_string);
            match read_limited(resp, MAX_MANIFEST_SIZE, &ep.registry, "manifest") {
                Ok(b) => break (content_type, header_digest, b),
                Err(RegistryError::Body { source, .. })
                    if attempt < self.retry.tries && transport::retryable_io(&source) =>
                {
                    std::thread::sleep(self.retry.delay(attempt, None));
                }
                Err(e) => return Err(e),
            }
        };
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            match h.trim().parse::<Digest>() {
                Ok(expected) if expected != digest => {
                    return Err(RegistryError::DigestMismatch {
                        expected,
                        actual: digest,
                    });
                }
                Ok(_) => {}
                Err(_) => tracing::debug!("ignoring a malformed Docker-Content-Digest: {h}"),
            }
        }
        let media_type = if manifest::is_generic_media_type(&content_type) {
            manifest::sniff_media_type(&bytes).unwrap_or(content_type)
        } else {
            content_type
        };
        if !manifest::ACCEPTED.contains(&media_type.as_str()) {
            return Err(RegistryError::UnsupportedMediaType { media_type });
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }
}

/// Read a whole body, refusing one over `limit` bytes (by `Content-Length` before reading, and
/// by counting while reading).
fn read_limited(
    resp: ureq::Response,
    limit: u64,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what: what.into(),
        limit,
    };
    if resp
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| RegistryError::Body {
            registry: registry.into(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(buf)
}

/// The first message of a distribution-spec error body: `{"errors":[{"code","message"}]}`.
fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Errors = serde_json::from_slice(body).ok()?;
    let first = e.errors.into_iter().next()?;
    let msg = match (first.code.is_empty(), first.message.is_empty()) {
        (false, false) => format!("{} ({})", first.message, first.code),
        (true, false) => first.message,
        (false, true) => first.code,
        (true, true) => return None,
    };
    // Registry text goes into a terminal: keep it short and printable.
    Some(msg.chars().filter(|c| !c.is_control()).take(300).collect())
}

fn transport_error(registry: &str, t: Box<ureq::Transport>) -> RegistryError {
    if transport::is_tls(t.as_ref()) {
        RegistryError::Tls {
            registry: registry.into(),
            source: t,
        }
    } else {
        RegistryError::Unreachable {
            registry: registry.into(),
            source: t,
        }
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A poisoned cache is still a valid cache: every write leaves it consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
