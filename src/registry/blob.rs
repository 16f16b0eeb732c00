//! A blob body as a verifying, resuming stream.
//!
//! Every byte handed out is hashed; at the end of the body the sha256 (and the size, when known)
//! is compared with the digest asked for. The reader never reports end-of-file before that check
//! passed: a mismatch is an `io::Error` of kind `InvalidData` wrapping
//! [`RegistryError::DigestMismatch`] or [`RegistryError::SizeMismatch`], so a consumer that stops
//! at EOF cannot mistake a corrupt blob for a good one. A body cut short is re-requested with
//! `Range: bytes=<offset>-` and continued only when the registry answers 206 for that offset.

use std::io::{self, Read};
use std::sync::Arc;

use sha2::Digest as _;

use super::transport::{parse_content_range, retryable_io};
use super::{Endpoint, Inner, RegistryError};
use crate::reference::Digest;

type Body = Box<dyn Read + Send + Sync>;

pub(super) struct BlobReader {
    inner: Arc<Inner>,
    ep: Endpoint,
    url: String,
    image: String,
    digest: Digest,
    /// The size the caller or the first answer's `Content-Length` promised.
    size: Option<u64>,
    body: Option<Body>,
    hasher: sha2::Sha256,
    offset: u64,
    /// Consecutive cuts without a byte of progress in between.
    failures: u32,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Verified,
    Failed,
}

impl BlobReader {
    /// Send the first request. Fails here (not on the first read) when the blob is missing,
    /// access is refused, or its announced size is over `max`.
    pub(super) fn open(
        inner: Arc<Inner>,
        ep: Endpoint,
        image: String,
        digest: Digest,
        size: Option<u64>,
        max: Option<u64>,
    ) -> Result<BlobReader, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{}", ep.base, ep.repository, digest.as_str());
        let mut r = BlobReader {
            inner,
            ep,
            url,
            image,
            digest,
            size,
            body: None,
            hasher: sha2::Sha256::new(),
            offset: 0,
            failures: 0,
            state: State::Reading,
        };
        let resp = r.request()?;
        let announced = resp
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(max), Some(len)) = (max, announced.or(size))
            && len > max
        {
            return Err(RegistryError::TooLarge {
                what: format!("blob {}", r.digest),
                limit: max,
            });
        }
        if let (Some(expected), Some(actual)) = (size, announced)
            && expected != actual
        {
            return Err(RegistryError::SizeMismatch {
                digest: r.digest,
                expected,
                actual,
            });
        }
        r.size = r.size.or(announced);
        r.body = Some(resp.into_reader());
        Ok(r)
    }

    /// The registry the body comes from, for messages.
    pub(super) fn registry(&self) -> &str {
        &self.ep.registry
    }

    /// GET the blob from the current offset; `Ok` only for a body that starts at that offset.
    fn request(&self) -> Result<ureq::Response, RegistryError> {
        let range;
        let headers: &[(&str, &str)] = if self.offset > 0 {
            range = format!("bytes={}-", self.offset);
            &[("Range", range.as_str())]
        } else {
            &[]
        };
        let resp = self.inner.send(&self.ep, "GET", &self.url, headers)?;
        match (resp.status(), self.offset) {
            (200, 0) => Ok(resp),
            (200, offset) => Err(RegistryError::NoResume {
                registry: self.ep.registry.clone(),
                digest: self.digest.clone(),
                offset,
            }),
            (206, offset) if offset > 0 => {
                let range = resp.header("content-range").and_then(parse_content_range);
                match range {
                    Some((start, total))
                        if start == offset
                            && (total.is_none() || self.size.is_none() || total == self.size) =>
                    {
                        Ok(resp)
                    }
                    _ => Err(RegistryError::BadResponse {
                        registry: self.ep.registry.clone(),
                        url: self.url.clone(),
                        message: format!(
                            "asked for bytes from {offset}, got Content-Range {:?}",
                            resp.header("content-range").unwrap_or("(none)")
                        ),
                    }),
                }
            }
            _ => Err(self.inner.status_error(
                &self.ep,
                resp,
                &self.url,
                super::Missing::Blob {
                    image: &self.image,
                    digest: &self.digest,
                },
            )),
        }
    }

    /// A retryable failure mid-body: wait, then ask again from the current offset.
    fn resume(&mut self, cause: io::Error) -> Result<(), RegistryError> {
        self.body = None;
        self.failures += 1;
        let policy = self.inner.retry;
        if self.failures >= policy.tries {
            return Err(RegistryError::TooManyRetries {
                url: self.url.clone(),
                tries: self.failures,
                last: cause.to_string(),
            });
        }
        let delay = policy.delay(self.failures, None);
        tracing::debug!(
            url = %self.url,
            offset = self.offset,
            "blob body cut ({cause}); resuming in {delay:?}"
        );
        std::thread::sleep(delay);
        let resp = self.request()?;
        self.body = Some(resp.into_reader());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RegistryError> {
        if let Some(expected) = self.size
            && expected != self.offset
        {
            return Err(RegistryError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.offset,
            });
        }
        let actual = Digest::from_sha256_bytes(&self.hasher.finalize_reset());
        if actual != self.digest {
            return Err(RegistryError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    fn fail(&mut self, e: RegistryError) -> io::Error {
        self.state = State::Failed;
        self.body = None;
        super::into_io(e)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} already failed", self.digest),
                ));
            }
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                return Err(self.fail(RegistryError::BadResponse {
                    registry: self.ep.registry.clone(),
                    url: self.url.clone(),
                    message: "no body to read".into(),
                }));
            };
            match body.read(buf) {
                Ok(0) => {
                    if self.size.is_some_and(|s| self.offset < s) {
                        // Closed early without an error: same as a cut.
                        let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early");
                        if let Err(e) = self.resume(cut) {
                            return Err(self.fail(e));
                        }
                        continue;
                    }
                    return match self.finish() {
                        Ok(()) => {
                            self.state = State::Verified;
                            self.body = None;
                            Ok(0)
                        }
                        Err(e) => Err(self.fail(e)),
                    };
                }
                Ok(n) => {
                    self.hasher.update(&buf[..n]);
                    self.offset += n as u64;
                    self.failures = 0;
                    if let Some(expected) = self.size.filter(|s| self.offset > *s) {
                        let e = RegistryError::SizeMismatch {
                            digest: self.digest.clone(),
                            expected,
                            actual: self.offset,
                        };
                        return Err(self.fail(e));
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if retryable_io(&e) => {
                    if let Err(e) = self.resume(e) {
                        return Err(self.fail(e));
                    }
                }
                Err(e) => {
                    let e = RegistryError::Body {
                        registry: self.ep.registry.clone(),
                        source: e,
                    };
                    return Err(self.fail(e));
                }
            }
        }
    }
}
