//! User settings for registries, from the user's config.toml ([`crate::user_config`]):
//!
//! ```toml
//! insecure-registries = ["registry.lan:5000"]   # plain HTTP
//! [mirrors]
//! "docker.io" = ["mirror.example:5000"]         # tried in order, then the origin
//! ```
//!
//! A missing file means defaults; a file that does not parse is an error naming it. Keys this
//! module does not know are left for other parts of devenv (logged, not refused).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::RegistryError;
use crate::reference::{DOCKER_HUB, host_of};

/// User settings from `$XDG_CONFIG_HOME/devenv/config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Registry (as image references name it: `docker.io`) → mirrors to try first, in order.
    pub mirrors: BTreeMap<String, Vec<Mirror>>,
}

/// One mirror: `host[:port]`, and whether it was written with an explicit scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub host: String,
    /// `Some(true)` for `http://…`, `Some(false)` for `https://…`, `None` when written bare.
    pub plain_http: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    mirrors: BTreeMap<String, Vec<String>>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

impl Settings {
    pub fn load() -> Result<Settings, RegistryError> {
        match crate::user_config::read() {
            Ok(Some(f)) => Settings::parse(&f.text, &f.path),
            Ok(None) => Ok(Settings::default()),
            Err(e) => Err(RegistryError::Settings {
                path: e.path.clone(),
                message: e.message.clone(),
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Settings, RegistryError> {
        let err = |message: String| RegistryError::Settings {
            path: path.to_path_buf(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string().trim().to_string()))?;
        for key in file.other.keys() {
            tracing::debug!("{}: `{key}` is not a registry setting", path.display());
        }
        let check_host = |what: &str, h: &str| -> Result<(), RegistryError> {
            let ok = !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if ok {
                Ok(())
            } else {
                Err(err(format!(
                    "{what} `{h}` is not a registry host (expected host or host:port, no path)"
                )))
            }
        };
        for h in &file.insecure_registries {
            check_host("insecure-registries entry", h)?;
        }
        let mut mirrors = BTreeMap::new();
        for (registry, list) in file.mirrors {
            let registry = canonical_registry(&registry);
            check_host("mirrors key", &registry)?;
            let mut out = Vec::new();
            for m in list {
                let (plain_http, host) = if let Some(h) = m.strip_prefix("http://") {
                    (Some(true), h)
                } else if let Some(h) = m.strip_prefix("https://") {
                    (Some(false), h)
                } else {
                    (None, m.as_str())
                };
                let host = host.trim_end_matches('/');
                check_host(&format!("mirror of {registry}"), host)?;
                out.push(Mirror {
                    host: host.to_ascii_lowercase(),
                    plain_http,
                });
            }
            mirrors.insert(registry, out);
        }
        Ok(Settings {
            insecure: file.insecure_registries,
            mirrors,
        })
    }

    /// Whether `registry` (`host` or `host:port`) is to be spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        self.insecure.iter().any(|i| {
            let i = i.to_ascii_lowercase();
            i == registry || (!i.contains(':') && i == host_of(&registry))
        })
    }
}

fn canonical_registry(r: &str) -> String {
    match r.trim().to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_schema() {
        let s = Settings::parse(
            r#"
            insecure-registries = ["reg.lan:5000", "plain.lan"]
            [mirrors]
            "index.docker.io" = ["mirror.example:5000", "http://m2.lan/"]
            [ui]
            color = false
            "#,
            Path::new("/c.toml"),
        )
        .unwrap();
        assert!(s.is_insecure("reg.lan:5000"));
        assert!(!s.is_insecure("reg.lan:5001"));
        assert!(s.is_insecure("plain.lan:8080"));
        assert!(!s.is_insecure("ghcr.io"));
        assert_eq!(
            s.mirrors["docker.io"],
            [
                Mirror {
                    host: "mirror.example:5000".into(),
                    plain_http: None
                },
                Mirror {
                    host: "m2.lan".into(),
                    plain_http: Some(true)
                }
            ]
        );
    }

    #[test]
    fn an_empty_file_is_defaults_and_a_bad_one_names_itself() {
        let path = Path::new("/c/config.toml");
        assert_eq!(Settings::parse("", path).unwrap(), Settings::default());
        let e = Settings::parse("insecure-registries = \"reg:5000\"\n", path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/c/config.toml"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        let msg = Settings::parse(
            "[mirrors]\n\"docker.io\" = [\"https://m.example/v2/path\"]\n",
            path,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("no path"), "{msg}");
    }
}
