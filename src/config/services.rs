//! `[services.NAME]` and `[container].ports`: sidecar containers of other images and the ports
//! published to the host, validated with file, line and column like the rest of env.toml.
//!
//! The env's containers share one network namespace (docs/architecture.md, "Services"): two
//! of them listening on one port cannot both work, so a port named twice (published, or a
//! `tcp:` readiness check) is refused here, at load time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::diagnose::Source;
use super::error::{ConfigError, DiagnosticKind as Kind};
use super::{Port, Ready, Service, Volume};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    image: Spanned<String>,
    command: Option<Spanned<toml::Value>>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    ready: Option<Spanned<toml::Value>>,
    ready_timeout: Option<Spanned<i64>>,
}

/// Seconds a service has to pass its readiness check when `ready_timeout` is not given.
pub const READY_TIMEOUT: u32 = 60;

/// A DNS label: what the other containers resolve the service by.
fn name_problem(name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        Some("lowercase letters, digits and `-` (a host name the other containers resolve)")
    } else if name == "localhost" {
        Some("`localhost` is every container's own name")
    } else {
        None
    }
}

/// A port as written, with where: conflicts are reported at the second.
pub(super) type Placed = (Port, std::ops::Range<usize>);

/// `"8888"` (the same port on both sides) or `"18888:8888"` (host:container).
pub fn parse_port(text: &str) -> Result<Port, String> {
    let num = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{s}` is not a port (1 to 65535)")),
        }
    };
    match text.split_once(':') {
        None => {
            let p = num(text)?;
            Ok(Port {
                host: p,
                container: p,
            })
        }
        Some((h, c)) => Ok(Port {
            host: num(h)?,
            container: num(c)?,
        }),
    }
}

const PORT_HINT: &str = "a port is \"8888\" (the same on the host) or \"18888:8888\" \
                         (host:container); published on the host's 127.0.0.1";

pub(super) fn ports(
    src: &Source<'_>,
    items: &[Spanned<String>],
    table: &str,
) -> Result<Vec<Placed>, ConfigError> {
    items
        .iter()
        .map(|p| {
            parse_port(p.get_ref())
                .map(|port| (port, p.span()))
                .map_err(|reason| {
                    src.error(
                        p.span(),
                        Kind::Value,
                        format!("invalid port in {table}: {reason}"),
                        Some(PORT_HINT.into()),
                    )
                })
        })
        .collect()
}

/// A string runs with `/bin/sh -c`; an array is the argv itself.
fn argv(
    src: &Source<'_>,
    v: &Spanned<toml::Value>,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    let bad = |m: String| src.error(v.span(), Kind::Value, m, None);
    match v.get_ref() {
        toml::Value::String(s) if !s.trim().is_empty() => {
            Ok(vec!["/bin/sh".into(), "-c".into(), s.clone()])
        }
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) if !s.contains('\0') => Ok(s.to_string()),
                _ => Err(bad(format!("{what} must list strings"))),
            })
            .collect(),
        _ => Err(src.error(
            v.span(),
            Kind::Value,
            format!("{what} must be a non-empty string (run by /bin/sh -c) or a list of strings"),
            None,
        )),
    }
}

impl RawService {
    pub(super) fn validate(
        self,
        src: &Source<'_>,
        name: &Spanned<String>,
    ) -> Result<(Service, Vec<Listener>), ConfigError> {
        let n = name.get_ref();
        if let Some(why) = name_problem(n) {
            return Err(src.error(
                name.span(),
                Kind::Value,
                format!("invalid service name `{n}`: {why}"),
                Some("like [services.db] or [services.model-server]".into()),
            ));
        }
        let table = format!("[services.{n}]");
        let image = self.image.get_ref().parse().map_err(|e| {
            src.error(
                self.image.span(),
                Kind::ImageRef,
                format!("`image` in {table}: {e}"),
                Some("an image reference looks like postgres:16, ghcr.io/org/app:1.0 or debian@sha256:…".into()),
            )
        })?;
        let command = self
            .command
            .as_ref()
            .map(|c| argv(src, c, &format!("`command` in {table}")))
            .transpose()?;
        if let Some(u) = &self.user {
            let ok = !u.get_ref().is_empty()
                && u.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
            if !ok {
                return Err(src.error(
                    u.span(),
                    Kind::Value,
                    format!("`user` in {table} is not a user name or uid[:gid]"),
                    Some("a name from the image's /etc/passwd (\"postgres\") or numbers (\"999:999\")".into()),
                ));
            }
        }
        let env = super::raw::validate_env_in(src, self.env, &table)?;
        let published = ports(src, &self.ports, &table)?;
        let mut volumes = Vec::new();
        for v in &self.volumes {
            let bad = |why: &str| {
                src.error(
                    v.span(),
                    Kind::Mount,
                    format!("invalid volume `{}` in {table}: {why}", v.get_ref()),
                    Some("a volume is \"NAME:/path/inside\"; its data is kept in the store, per project".into()),
                )
            };
            let Some((vname, target)) = v.get_ref().split_once(':') else {
                return Err(bad("no `:`"));
            };
            let name_ok = !vname.is_empty()
                && vname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !vname.starts_with('.');
            if !name_ok {
                return Err(bad("its name is letters, digits, `_`, `.` and `-`"));
            }
            let target = PathBuf::from(target);
            if !target.is_absolute()
                || target
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad("the path inside must be absolute, without `..`"));
            }
            if volumes.iter().any(|w: &Volume| w.name == vname) {
                return Err(bad("named twice"));
            }
            volumes.push(Volume {
                name: vname.to_string(),
                target,
            });
        }
        let ready = match &self.ready {
            None => None,
            Some(r) => match r.get_ref() {
                toml::Value::String(s) if s.starts_with("tcp:") => {
                    let port = parse_port(&s[4..])
                        .ok()
                        .filter(|p| p.host == p.container)
                        .ok_or_else(|| {
                            src.error(
                                r.span(),
                                Kind::Value,
                                format!("`ready = \"{s}\"` in {table}: not a port after `tcp:`"),
                                Some("like ready = \"tcp:5432\"".into()),
                            )
                        })?;
                    Some(Ready::Tcp(port.container))
                }
                _ => Some(Ready::Command(argv(
                    src,
                    r,
                    &format!("`ready` in {table}"),
                )?)),
            },
        };
        let ready_timeout = match &self.ready_timeout {
            None => READY_TIMEOUT,
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(s) if (1..=3600).contains(&s) => s,
                _ => {
                    return Err(src.error(
                        t.span(),
                        Kind::Value,
                        format!("`ready_timeout` in {table} must be seconds, from 1 to 3600"),
                        None,
                    ));
                }
            },
        };
        let mut listens: Vec<Listener> = published
            .iter()
            .map(|(port, span)| Listener::new(&table, *port, span.clone()))
            .collect();
        if let (Some(Ready::Tcp(p)), Some(r)) = (&ready, &self.ready) {
            let checked = Port {
                host: 0,
                container: *p,
            };
            listens.push(Listener::new(&table, checked, r.span()));
        }
        let service = Service {
            name: n.clone(),
            image,
            command,
            user: self.user.map(Spanned::into_inner),
            env,
            ports: published.into_iter().map(|(p, _)| p).collect(),
            volumes,
            ready,
            ready_timeout,
        };
        Ok((service, listens))
    }
}

/// Who listens on a port inside the env's network: the shell (`[container]`) or a service
/// (`[services.NAME]`); `port.host` is 0 for a port only a `tcp:` check names.
pub(super) struct Listener {
    pub owner: String,
    pub port: Port,
    pub span: std::ops::Range<usize>,
}

impl Listener {
    pub fn new(owner: &str, port: Port, span: std::ops::Range<usize>) -> Listener {
        Listener {
            owner: owner.to_string(),
            port,
            span,
        }
    }
}

/// Refuse two containers listening on one port (they share the network namespace), and one
/// host port published twice.
pub(super) fn check_conflicts(src: &Source<'_>, all: &[Listener]) -> Result<(), ConfigError> {
    for (i, l) in all.iter().enumerate() {
        for earlier in &all[..i] {
            if earlier.port.container == l.port.container && earlier.owner != l.owner {
                return Err(src.error(
                    l.span.clone(),
                    Kind::Value,
                    format!(
                        "{} and {} both listen on port {}: the env's containers share one \
                         network (like a Kubernetes pod), so only one can",
                        earlier.owner, l.owner, l.port.container
                    ),
                    Some(format!(
                        "run one on another port (its command's port option) and publish that, \
                         e.g. \"{0}:{1}\"",
                        l.port.container,
                        l.port.container.saturating_add(1)
                    )),
                ));
            }
            if l.port.host != 0 && earlier.port.host == l.port.host {
                return Err(src.error(
                    l.span.clone(),
                    Kind::Value,
                    format!("host port {} is published twice", l.port.host),
                    Some("publish it once; use \"HOST:CONTAINER\" for another host port".into()),
                ));
            }
        }
    }
    Ok(())
}
