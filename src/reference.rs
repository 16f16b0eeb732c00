//! Image references and digests, parsed the way Docker parses them.
//!
//! `python:3.11-slim` means `docker.io/library/python:3.11-slim`; a first path component with a
//! `.` or `:`, or `localhost`, is a registry host. Store paths are built only from [`Digest`],
//! whose hex part is checked here, so no string from a registry answer reaches a path unchecked.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical name and the host its API lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference `{reference}`: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("invalid digest `{0}`: expected sha256: followed by 64 lowercase hex digits")]
    Digest(String),
}

/// A content digest. Only sha256 is accepted: it is what every registry serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn from_sha256_bytes(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256_bytes(&sha2::Sha256::digest(data))
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:0123456789ab`, for messages.
    pub fn short(&self) -> &str {
        &self.0[..("sha256:".len() + 12)]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ReferenceError::Digest(s.into()))?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(ReferenceError::Digest(s.into()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A fully qualified image reference: registry, repository, and a tag and/or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `localhost:5000`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/python`, `org/team/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The tag or digest to ask the registry for; a digest wins over a tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host the distribution API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Registries on loopback speak plain HTTP unless told otherwise.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1"
    }

    /// The same image pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

/// `host:port` → `host`, keeping bracketed IPv6 literals whole.
pub fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map(|(h, _)| &registry[..=h.len()])
            .unwrap_or(registry);
    }
    registry.split(':').next().unwrap_or(registry)
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: input.into(),
            reason: reason.into(),
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if input.len() > 4096 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace or control characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (input, None),
        };
        // A tag is after the last `:` that comes after the last `/` (a port's `:` precedes a `/`).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(invalid(
                    "a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if registry
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
        {
            return Err(invalid(
                "the registry host has characters a host name cannot have",
            ));
        }
        if path.is_empty() {
            return Err(invalid("the repository name is missing"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(invalid(
                    "each part of a repository name is lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
                ));
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn short_names_are_docker_hub_library() {
        let r = parse("python:3.11-slim");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag.as_deref(), Some("3.11-slim"));
        assert_eq!(r.to_string(), "docker.io/library/python:3.11-slim");
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn default_tag_is_latest_unless_digest() {
        assert_eq!(parse("ubuntu").tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("ubuntu@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), d);
        let r = parse(&format!("ubuntu:22.04@{d}"));
        assert_eq!(r.tag.as_deref(), Some("22.04"));
        assert_eq!(r.reference(), d);
    }

    #[test]
    fn registries_with_ports_and_localhost() {
        let r = parse("localhost:5000/team/app:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "team/app", Some("v1"))
        );
        assert!(r.is_loopback());
        let r = parse("127.0.0.1:5000/app");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert!(r.is_loopback());
        let r = parse("localhost/app");
        assert_eq!(r.registry, "localhost");
        let r = parse("ghcr.io/org/img");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("ghcr.io", "org/img")
        );
        assert!(!r.is_loopback());
        let r = parse("user/app");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "user/app")
        );
        assert_eq!(
            parse("index.docker.io/library/busybox").registry,
            "docker.io"
        );
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "Python:3",
            "python:",
            "python:-x",
            "python@sha256:abc",
            "a b",
            "/python",
            "python/",
            "py..thon",
            "docker.io/",
            "python@md5:0123",
            "ex ample.com/a",
            "a//b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn path_components() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0ab9"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a___b", "a._b", ".a"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn digest_checks_hex() {
        assert!("sha256:ABCD".parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "A".repeat(64))
                .parse::<Digest>()
                .is_err()
        );
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.short(), "sha256:e3b0c44298fc");
    }
}
