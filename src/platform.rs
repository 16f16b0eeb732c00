//! Platforms as image indexes name them: `linux/amd64`, `linux/arm64/v8`.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid platform `{0}`: expected os/arch or os/arch/variant, like linux/amd64 or linux/arm64/v8"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// The platform this binary runs on, in OCI's words (Go's GOOS/GOARCH).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        let variant = match architecture {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
        }
    }

    /// Whether an index entry for `candidate` serves this platform. A missing variant on either
    /// side matches (arm64 images often omit `v8`).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(PlatformError(s.into()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches(&"linux/arm64/v8".parse().unwrap()));
        assert!(!p.matches(&"linux/amd64".parse().unwrap()));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
