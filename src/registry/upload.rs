//! The push half of the distribution API: blob existence (`HEAD`), cross-repository mounts,
//! monolithic uploads (`POST` a session, `PUT` the bytes with `?digest=`), manifests (`PUT`).
//!
//! Invariants: a push goes to the origin registry only, never to a pull mirror; a token asked
//! for here carries `pull,push` on the target (and `pull` on a mount source), cached apart
//! from pull tokens; an upload that fails in a retryable way (429, 5xx, a cut connection) is
//! started again from a fresh session, so the registry either verified the whole blob against
//! its digest or holds nothing under that digest. Bodies are streamed from the caller's file,
//! never read into memory whole (manifests excepted).

use std::io::Read;

use super::transport::{self, UrlParts};
use super::{Endpoint, Missing, RegistryError};
use crate::progress::Bar;
use crate::reference::{Digest, ImageRef};

/// What a mount attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// The registry linked the blob from the other repository: nothing to upload.
    Yes,
    /// It could not (another registry's policy, no access to the source): upload it.
    No,
}

impl super::Client {
    /// Whether `target`'s repository holds blob `digest` (of `size` bytes, when the registry
    /// says).
    pub fn has_blob(&self, target: &ImageRef, digest: &Digest) -> Result<bool, RegistryError> {
        let ep = self.push_endpoint(target, &[]);
        let url = format!("{}/v2/{}/blobs/{digest}", ep.base, ep.repository);
        let resp = self.inner.send(&ep, "HEAD", &url, &[])?;
        match resp.status() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.inner.status_error(&ep, resp, &url, Missing::Other)),
        }
    }

    /// Ask the registry to link blob `digest` from repository `from` (on the same registry)
    /// into `target`'s (distribution spec, end-11).
    pub fn mount_blob(
        &self,
        target: &ImageRef,
        digest: &Digest,
        from: &str,
    ) -> Result<Mounted, RegistryError> {
        let ep = self.push_endpoint(target, &[from.to_string()]);
        let url = format!(
            "{}/v2/{}/blobs/uploads/?mount={digest}&from={}",
            ep.base,
            ep.repository,
            super::query_escape(from)
        );
        let resp = self.inner.send_body(&ep, "POST", &url, &[], Some(&[]))?;
        tracing::debug!(%digest, from, status = resp.status(), "blob mount");
        match resp.status() {
            201 => Ok(Mounted::Yes),
            // A session was opened instead; leave it to expire (a DELETE is optional).
            202 => Ok(Mounted::No),
            _ => Err(self.inner.status_error(&ep, resp, &url, Missing::Other)),
        }
    }

    /// Upload blob `digest` of `size` bytes, read from what `open` returns (called again for
    /// each try), advancing `bar` by bytes sent.
    pub fn upload_blob(
        &self,
        target: &ImageRef,
        digest: &Digest,
        size: u64,
        open: &dyn Fn() -> std::io::Result<Box<dyn Read + Send>>,
        bar: &dyn Bar,
    ) -> Result<(), RegistryError> {
        let ep = self.push_endpoint(target, &[]);
        let start = format!("{}/v2/{}/blobs/uploads/", ep.base, ep.repository);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.inner.retry.tries;
            let resp = self.inner.send_body(&ep, "POST", &start, &[], Some(&[]))?;
            if resp.status() != 202 {
                return Err(self.inner.status_error(&ep, resp, &start, Missing::Other));
            }
            let location = resp
                .header("location")
                .and_then(|l| transport::join_location(&start, l))
                .ok_or_else(|| RegistryError::BadResponse {
                    registry: ep.registry.clone(),
                    url: start.clone(),
                    message: "the upload answer has no usable Location".into(),
                })?;
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={digest}");
            let body = open().map_err(|source| RegistryError::Body {
                registry: ep.registry.clone(),
                source,
            })?;
            let counted = Counted { inner: body, bar };
            let retry_after;
            match self.put_stream(&ep, &url, size, counted) {
                Ok(resp) if resp.status() == 201 => return Ok(()),
                Ok(resp) if transport::retryable_status(resp.status()) && !last => {
                    retry_after = transport::parse_retry_after(resp.header("retry-after"));
                    tracing::debug!(status = resp.status(), attempt, "blob upload refused");
                }
                Ok(resp) if transport::retryable_status(resp.status()) => {
                    return Err(RegistryError::TooManyRetries {
                        url: start,
                        tries: attempt,
                        last: format!("HTTP {}", resp.status()),
                    });
                }
                Ok(resp) => {
                    return Err(self.inner.status_error(&ep, resp, &start, Missing::Other));
                }
                Err(t) if !last && transport::retryable_transport(&t) => {
                    retry_after = None;
                    tracing::debug!(attempt, "blob upload cut: {t}");
                }
                Err(t) => return Err(super::transport_error(&ep.registry, t)),
            }
            std::thread::sleep(self.inner.retry.delay(attempt, retry_after));
        }
    }

    /// `PUT` manifest `bytes` of `media_type` as `reference` (a tag or its digest); returns
    /// the digest the registry stored it under, checked against the bytes.
    pub fn put_manifest(
        &self,
        target: &ImageRef,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let ep = self.push_endpoint(target, &[]);
        let url = format!("{}/v2/{}/manifests/{reference}", ep.base, ep.repository);
        let resp = self.inner.send_body(
            &ep,
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Some(bytes),
        )?;
        if resp.status() != 201 && resp.status() != 200 {
            return Err(self.inner.status_error(&ep, resp, &url, Missing::Other));
        }
        let digest = Digest::of(bytes);
        if let Some(h) = resp.header("docker-content-digest")
            && let Ok(said) = h.trim().parse::<Digest>()
            && said != digest
        {
            return Err(RegistryError::DigestMismatch {
                expected: digest,
                actual: said,
            });
        }
        Ok(digest)
    }

    /// The digest of manifest `reference` in `target`'s repository, when it is there (`HEAD`,
    /// no body read): the team cache's lookup. Mirrors are not asked.
    pub fn manifest_digest(
        &self,
        target: &ImageRef,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let ep = self.inner.origin(target);
        let url = format!("{}/v2/{}/manifests/{reference}", ep.base, ep.repository);
        let accept = super::manifest::ACCEPTED.join(", ");
        let resp = self.inner.send(&ep, "HEAD", &url, &[("Accept", &accept)])?;
        match resp.status() {
            200 => Ok(resp
                .header("docker-content-digest")
                .and_then(|h| h.trim().parse().ok())),
            404 => Ok(None),
            _ => Err(self.inner.status_error(&ep, resp, &url, Missing::Other)),
        }
    }

    fn push_endpoint(&self, target: &ImageRef, mount_from: &[String]) -> Endpoint {
        let mut ep = self.inner.origin(target);
        ep.push = true;
        ep.mount_from = mount_from.to_vec();
        ep
    }

    /// One `PUT` of a streamed body with the `Authorization` the session's `POST` earned; the
    /// upload URL is the registry's, so credentials go only where it is the same origin.
    fn put_stream(
        &self,
        ep: &Endpoint,
        url: &str,
        size: u64,
        body: impl Read,
    ) -> Result<ureq::Response, Box<ureq::Transport>> {
        let auth = super::lock(&self.inner.auth).get(&ep.auth_key()).cloned();
        let same_origin = UrlParts::parse(url).map(|p| p.origin())
            == UrlParts::parse(&ep.base).map(|p| p.origin());
        let mut req = self
            .inner
            .agents
            .for_url(url)
            .put(url)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &size.to_string());
        if let (Some(a), true) = (auth.as_deref(), same_origin) {
            req = req.set("Authorization", a);
        }
        match req.send(body) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                tracing::debug!(method = "PUT", status = r.status(), "blob upload");
                Ok(r)
            }
            Err(ureq::Error::Transport(t)) => Err(Box::new(t)),
        }
    }
}

/// Advances a bar by the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    bar: &'a dyn Bar,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
