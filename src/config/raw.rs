//! The file as serde reads it, and its validation into [`EnvFile`].
//!
//! Every struct denies unknown keys. Values checked after reading keep their span
//! (`toml::Spanned`) so a bad one is reported where it is written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::diagnose::Source;
use super::error::{ConfigError, DiagnosticKind as Kind};
use super::mount::{Expansion, parse_mount};
use super::{Container, EnvFile, ImageSection, Network, Packages, Setup, SetupStep, VERSION};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    image: RawImage,
    #[serde(default)]
    tools: BTreeMap<Spanned<String>, RawTool>,
    #[serde(default)]
    packages: RawPackages,
    #[serde(default)]
    setup: RawSetup,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    container: RawContainer,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, super::services::RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nodes: Option<Spanned<i64>>,
    tasks: Option<Spanned<i64>>,
    gpus: Option<Spanned<i64>>,
    time: Option<Spanned<String>>,
    partition: Option<Spanned<String>>,
}

impl RawCluster {
    fn validate(self, src: &Source<'_>) -> Result<super::Cluster, ConfigError> {
        let count =
            |v: Option<Spanned<i64>>, what: &str, min: i64| -> Result<Option<u32>, ConfigError> {
                let Some(v) = v else { return Ok(None) };
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if i64::from(n) >= min => Ok(Some(n)),
                    _ => Err(src.error(
                        v.span(),
                        Kind::Value,
                        format!("`{what}` in [cluster] must be a whole number from {min}"),
                        None,
                    )),
                }
            };
        if let Some(t) = &self.time
            && !is_slurm_time(t.get_ref())
        {
            return Err(src.error(
                t.span(),
                Kind::Value,
                format!("`time = \"{}\"` in [cluster] is not a time limit", t.get_ref()),
                Some("write minutes (\"90\"), HH:MM:SS (\"01:30:00\") or D-HH:MM:SS (\"2-00:00:00\")".into()),
            ));
        }
        if let Some(p) = &self.partition {
            non_empty(src, p, "`partition` in [cluster]")?;
            if p.get_ref()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(src.error(
                    p.span(),
                    Kind::Value,
                    "`partition` in [cluster] has spaces or control characters",
                    None,
                ));
            }
        }
        Ok(super::Cluster {
            nodes: count(self.nodes, "nodes", 1)?,
            tasks: count(self.tasks, "tasks", 1)?,
            gpus: count(self.gpus, "gpus", 0)?,
            time: self.time.map(Spanned::into_inner),
            partition: self.partition.map(Spanned::into_inner),
        })
    }
}

/// A Slurm time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S` (digits only).
pub fn is_slurm_time(t: &str) -> bool {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(digits) && parts.len() <= 3 && parts.iter().all(|p| digits(p))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    registry: Option<Spanned<String>>,
}

/// A `[tools]` value: `"2.5.1"`, or `{ version = "2.5.1", variant = "cu124" }`.
enum RawTool {
    Version(Spanned<String>),
    Table(RawToolTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolTable {
    version: Spanned<String>,
    variant: Option<Spanned<String>>,
}

impl RawTool {
    fn version(&self) -> &Spanned<String> {
        match self {
            RawTool::Version(v) | RawTool::Table(RawToolTable { version: v, .. }) => v,
        }
    }
}

impl<'de> Deserialize<'de> for RawTool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<ToolValue>::deserialize(d)?;
        let span = spanned.span();
        Ok(match spanned.into_inner() {
            ToolValue::Str(s) => RawTool::Version(Spanned::new(span, s)),
            ToolValue::Table(t) => RawTool::Table(t),
        })
    }
}

/// What a `[tools]` value holds before its span is attached. A visitor rather than
/// `#[serde(untagged)]`: untagged buffers the value and loses the spans toml attaches.
enum ToolValue {
    Str(String),
    Table(RawToolTable),
}

impl<'de> Deserialize<'de> for ToolValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ToolValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The common form; diagnose makes this "expected a string" with a hint.
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ToolValue, E> {
                Ok(ToolValue::Str(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ToolValue, A::Error> {
                RawToolTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ToolValue::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImage {
    base: Option<Spanned<String>>,
    platform: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPackages {
    #[serde(default)]
    apt: Vec<Spanned<String>>,
    #[serde(default)]
    pip: Vec<Spanned<String>>,
    requirements: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSetup {
    #[serde(default)]
    run: Vec<Spanned<toml::Value>>,
}

impl RawSetup {
    fn validate(self, src: &Source<'_>) -> Result<Setup, ConfigError> {
        let mut run = Vec::with_capacity(self.run.len());
        for item in self.run {
            let span = item.span();
            let bad = |message: String, hint: &str| {
                src.error(span.clone(), Kind::Value, message, Some(hint.into()))
            };
            let shape =
                "a [setup].run entry is a command, or { cmd = \"…\", inputs = [\"path/**\"] }";
            let step = match item.into_inner() {
                toml::Value::String(cmd) => SetupStep::cmd(cmd),
                toml::Value::Table(mut t) => {
                    let cmd = match t.remove("cmd") {
                        Some(toml::Value::String(c)) => c,
                        _ => {
                            return Err(bad(
                                "a [setup].run table needs `cmd`, a string".into(),
                                shape,
                            ));
                        }
                    };
                    let inputs = match t.remove("inputs") {
                        None => Vec::new(),
                        Some(toml::Value::Array(a)) => a
                            .into_iter()
                            .map(|v| match v {
                                toml::Value::String(s) => Ok(s),
                                _ => {
                                    Err(bad("`inputs` in [setup].run lists strings".into(), shape))
                                }
                            })
                            .collect::<Result<_, _>>()?,
                        Some(_) => {
                            return Err(bad(
                                "`inputs` in [setup].run is an array of strings".into(),
                                shape,
                            ));
                        }
                    };
                    if let Some(k) = t.keys().next() {
                        return Err(bad(
                            format!("unknown key `{k}` in a [setup].run entry"),
                            "the keys are `cmd` and `inputs`",
                        ));
                    }
                    SetupStep { cmd, inputs }
                }
                _ => {
                    return Err(bad(
                        "a [setup].run entry is a string or a table".into(),
                        shape,
                    ));
                }
            };
            if step.cmd.trim().is_empty() {
                return Err(bad("a run command in [setup] is empty".into(), shape));
            }
            for pattern in &step.inputs {
                if let Some(reason) = input_problem(pattern) {
                    return Err(bad(
                        format!("input `{pattern}` of `{}`: {reason}", step.cmd),
                        "inputs are paths or globs (`*`, `?`, `**`) relative to the project directory",
                    ));
                }
            }
            run.push(step);
        }
        Ok(Setup { run })
    }
}

/// Why `pattern` cannot name project files, if it cannot.
fn input_problem(pattern: &str) -> Option<&'static str> {
    let p = std::path::Path::new(pattern);
    if pattern.trim().is_empty() {
        Some("it is empty")
    } else if p.is_absolute() {
        Some("it is absolute")
    } else if p.components().any(|c| c == std::path::Component::ParentDir) {
        Some("it leaves the project (`..`)")
    } else {
        None
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    shell: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    gpu: Option<Spanned<toml::Value>>,
    #[serde(default)]
    mounts: Vec<Spanned<String>>,
    #[serde(default)]
    allow_syscalls: Vec<Spanned<String>>,
    ssh_agent: Option<bool>,
    git_identity: Option<bool>,
}

impl RawFile {
    pub(super) fn validate(
        self,
        src: &Source<'_>,
        exp: &Expansion,
    ) -> Result<EnvFile, ConfigError> {
        if let Some(v) = &self.version
            && *v.get_ref() != VERSION
        {
            return Err(src.error(
                v.span(),
                Kind::Version,
                format!(
                    "unsupported env.toml version {}, expected {VERSION}",
                    v.get_ref()
                ),
                Some(format!(
                    "this devenv reads version {VERSION}; a newer file needs a newer devenv"
                )),
            ));
        }
        // Sections in the order the schema lists them, so the first mistake reported is usually
        // the first in the file.
        let image = self.image.validate(src)?;
        let mut tools = BTreeMap::new();
        let mut tool_variants = BTreeMap::new();
        for (name, tool) in self.tools {
            if let RawTool::Table(RawToolTable {
                variant: Some(variant),
                ..
            }) = &tool
            {
                non_empty(
                    src,
                    variant,
                    &format!("the variant of `{}` in [tools]", name.get_ref()),
                )?;
                tool_variants.insert(name.get_ref().clone(), variant.get_ref().clone());
            }
            let version = tool.version().clone();
            if name.get_ref().trim().is_empty() {
                return Err(src.error(
                    name.span(),
                    Kind::Value,
                    "empty tool name in [tools]",
                    None,
                ));
            }
            non_empty(
                src,
                &version,
                &format!("the version of `{}` in [tools]", name.get_ref()),
            )?;
            tools.insert(name.into_inner(), version);
        }
        if image.base.is_none() {
            match tools.get("python") {
                Some(version) => {
                    super::python_base(version.get_ref()).map_err(|e| {
                        src.error(
                            version.span(),
                            Kind::ImageRef,
                            format!("`python = \"{}\"` in [tools] does not make a base image: {e}", version.get_ref()),
                            Some("a Python version is like \"3.12\" or \"3.11.9\"; or set [image].base".into()),
                        )
                    })?;
                }
                None => return Err(ConfigError::NoBase(src.file.to_path_buf())),
            }
        }
        // The shell's ports first: a conflict is reported at the second of the two.
        let shell_ports = super::services::ports(src, &self.container.ports, "[container]")?;
        let mut listeners: Vec<super::services::Listener> = shell_ports
            .iter()
            .map(|(port, span)| super::services::Listener::new("[container]", *port, span.clone()))
            .collect();
        let mut services = BTreeMap::new();
        for (name, raw) in self.services {
            let (service, listens) = raw.validate(src, &name)?;
            listeners.extend(listens);
            services.insert(service.name.clone(), service);
        }
        let network_span = self.container.network.as_ref().map(|n| n.span());
        let mut container = self.container.validate(src, exp)?;
        container.ports = shell_ports.iter().map(|(p, _)| *p).collect();
        let private_wanted = !services.is_empty() || !container.ports.is_empty();
        match (container.network, network_span) {
            (super::Network::Host, None) if private_wanted => {
                container.network = super::Network::Private;
            }
            (super::Network::Host | super::Network::None, Some(span)) if private_wanted => {
                let what = if services.is_empty() {
                    "`ports`"
                } else {
                    "[services]"
                };
                return Err(src.error(
                    span,
                    Kind::Network,
                    format!(
                        "{what} need the env's own network, not network = \"{}\"",
                        container.network
                    ),
                    Some("set network = \"private\" in [container], or leave `network` out".into()),
                ));
            }
            _ => {}
        }
        super::services::check_conflicts(src, &listeners)?;
        Ok(EnvFile {
            image,
            tools: tools
                .into_iter()
                .map(|(k, v)| (k, v.into_inner()))
                .collect(),
            tool_variants,
            packages: self.packages.validate(src)?,
            setup: self.setup.validate(src)?,
            env: validate_env(src, self.env)?,
            container,
            services,
            cluster: self.cluster.validate(src)?,
            cache: match self.cache.registry {
                None => None,
                Some(r) => Some(cache_repository(r.get_ref()).map_err(|message| {
                    src.error(
                        r.span(),
                        Kind::ImageRef,
                        message,
                        Some(
                            "a team cache is a repository: registry.example.com/team/devenv-cache"
                                .into(),
                        ),
                    )
                })?),
            },
        })
    }
}

impl RawImage {
    fn validate(self, src: &Source<'_>) -> Result<ImageSection, ConfigError> {
        let base = match self.base {
            None => None,
            Some(b) => Some(b.get_ref().parse().map_err(|e| {
                src.error(
                    b.span(),
                    Kind::ImageRef,
                    format!("{e}"),
                    Some("an image reference looks like python:3.12-slim, ghcr.io/org/app:1.0 or debian@sha256:…".into()),
                )
            })?),
        };
        let platform = match self.platform {
            None => None,
            Some(p) => Some(p.get_ref().parse().map_err(|e| {
                src.error(
                    p.span(),
                    Kind::Platform,
                    format!("{e}"),
                    Some("leave `platform` out to use this machine's".into()),
                )
            })?),
        };
        Ok(ImageSection { base, platform })
    }
}

impl RawPackages {
    fn validate(self, src: &Source<'_>) -> Result<Packages, ConfigError> {
        Ok(Packages {
            apt: list(src, self.apt, "an apt package in [packages]", apt_problem)?,
            pip: list(
                src,
                self.pip,
                "a pip requirement in [packages]",
                pip_problem,
            )?,
            requirements: match self.requirements {
                None => None,
                Some(r) => {
                    non_empty(src, &r, "`requirements` in [packages]")?;
                    let path = PathBuf::from(r.get_ref());
                    if path.is_absolute() {
                        return Err(src.error(
                            r.span(),
                            Kind::Value,
                            format!("`requirements` in [packages] is an absolute path: {}", r.get_ref()),
                            Some("write it relative to the directory of env.toml, so it works on every machine".into()),
                        ));
                    }
                    Some(path)
                }
            },
        })
    }
}

impl RawContainer {
    fn validate(self, src: &Source<'_>, exp: &Expansion) -> Result<Container, ConfigError> {
        let (gpu, gpu_devices) = match &self.gpu {
            None => (false, None),
            Some(v) => gpu_selection(src, v)?,
        };
        if let Some(shell) = &self.shell {
            non_empty(src, shell, "`shell` in [container]")?;
        }
        let network = match &self.network {
            None => Network::default(),
            Some(n) => match n.get_ref().as_str() {
                "host" => Network::Host,
                "none" => Network::None,
                "private" => Network::Private,
                other => {
                    return Err(src.error(
                        n.span(),
                        Kind::Network,
                        format!("invalid network `{other}` in [container], expected one of: host, none, private"),
                        Some("\"host\" shares this machine's network; \"none\" leaves only loopback; \"private\" is the env's own, shared with its services".into()),
                    ));
                }
            },
        };
        let mut mounts = Vec::with_capacity(self.mounts.len());
        for m in &self.mounts {
            let mount = parse_mount(m.get_ref(), exp).map_err(|reason| {
                src.error(
                    m.span(),
                    Kind::Mount,
                    format!("invalid mount in [container]: {reason}"),
                    Some("mounts are \"path\", \"path:ro\", \"src:dst\" or \"src:dst:ro\"; dst is absolute".into()),
                )
            })?;
            mounts.push(mount);
        }
        let allow_syscalls = list(
            src,
            self.allow_syscalls,
            "a name in [container].allow_syscalls",
            syscall_problem,
        )?;
        Ok(Container {
            shell: self.shell.map(Spanned::into_inner),
            network,
            ports: Vec::new(),
            gpu,
            gpu_devices,
            mounts,
            allow_syscalls,
            ssh_agent: self.ssh_agent.unwrap_or(true),
            git_identity: self.git_identity.unwrap_or(true),
        })
    }
}

fn validate_env(
    src: &Source<'_>,
    env: BTreeMap<Spanned<String>, Spanned<String>>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    validate_env_in(src, env, "[env]")
}

/// An `env` table (`[env]`, a service's `env`): names are variable names, values have no NUL.
pub(super) fn validate_env_in(
    src: &Source<'_>,
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    table: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in env {
        if !is_env_name(name.get_ref()) {
            return Err(src.error(
                name.span(),
                Kind::EnvName,
                format!(
                    "`{}` in {table} is not an environment variable name",
                    name.get_ref()
                ),
                Some("names are letters, digits and `_`, not starting with a digit".into()),
            ));
        }
        if value.get_ref().contains('\0') {
            return Err(src.error(
                value.span(),
                Kind::Value,
                format!(
                    "the value of `{}` in {table} contains a NUL character",
                    name.get_ref()
                ),
                None,
            ));
        }
        out.insert(name.into_inner(), value.into_inner());
    }
    Ok(out)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, what POSIX shells accept.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `gpu = true | false | "all" | [0, 1]`.
fn gpu_selection(
    src: &Source<'_>,
    v: &Spanned<toml::Value>,
) -> Result<(bool, Option<Vec<u32>>), ConfigError> {
    let bad = || {
        src.error(
            v.span(),
            Kind::Value,
            "`gpu` in [container] must be true, false, \"all\" or a list of GPU indices",
            Some("like `gpu = true`, or `gpu = [0, 1]` for the host's first two GPUs".into()),
        )
    };
    match v.get_ref() {
        toml::Value::Boolean(b) => Ok((*b, None)),
        toml::Value::String(s) if s == "all" => Ok((true, None)),
        toml::Value::Array(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for i in items {
                let n = i
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)?;
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            Ok((true, Some(out)))
        }
        _ => Err(bad()),
    }
}

/// A team cache repository: `host[:port]/path`, naming its registry, with no tag or digest.
pub fn cache_repository(text: &str) -> Result<crate::reference::ImageRef, String> {
    let mut r: crate::reference::ImageRef = text.parse().map_err(|e| format!("{e}"))?;
    let last = text.rsplit('/').next().unwrap_or("");
    if last.contains(':') || text.contains('@') {
        return Err(format!(
            "`{text}` names a tag or digest; the cache is a whole repository"
        ));
    }
    if !text.starts_with(&format!("{}/", r.registry)) {
        return Err(format!(
            "`{text}` does not name its registry; write host[:port]/repository"
        ));
    }
    // Parsing gives a name without a tag `latest`; a cache's tags are its keys.
    r.tag = None;
    Ok(r)
}

fn non_empty(src: &Source<'_>, value: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
    if value.get_ref().trim().is_empty() {
        return Err(src.error(value.span(), Kind::Value, format!("{what} is empty"), None));
    }
    Ok(())
}

/// List items: non-empty, and whatever `problem` finds wrong with one (a reason and a hint).
fn list(
    src: &Source<'_>,
    items: Vec<Spanned<String>>,
    what: &str,
    problem: fn(&str) -> Option<(String, String)>,
) -> Result<Vec<String>, ConfigError> {
    items
        .into_iter()
        .map(|item| {
            non_empty(src, &item, what)?;
            if let Some((reason, hint)) = problem(item.get_ref()) {
                return Err(src.error(item.span(), Kind::Value, reason, Some(hint)));
            }
            Ok(item.into_inner())
        })
        .collect()
}

fn apt_problem(name: &str) -> Option<(String, String)> {
    if name.starts_with('-') {
        Some((
            format!("`{name}` in [packages].apt is an option, not a package"),
            "apt options are not supported; list package names".into(),
        ))
    } else if name.contains(char::is_whitespace) {
        Some((
            format!("`{name}` in [packages].apt has a space"),
            "write one package per string: [\"git\", \"curl\"]".into(),
        ))
    } else {
        None
    }
}

fn syscall_problem(name: &str) -> Option<(String, String)> {
    (!crate::runtime::seccomp::is_allowable(name)).then(|| {
        let groups: Vec<&str> = crate::runtime::seccomp::GROUPS
            .iter()
            .map(|(g, _)| *g)
            .collect();
        (
            format!(
                "`{name}` in [container].allow_syscalls is not a call the seccomp profile refuses"
            ),
            format!(
                "name one of: {}, or a syscall of one of them",
                groups.join(", ")
            ),
        )
    })
}

fn pip_problem(req: &str) -> Option<(String, String)> {
    req.starts_with('-').then(|| {
        (
            format!("`{req}` in [packages].pip is a pip option, not a requirement"),
            "put pip options in a requirements file (`requirements` in [packages]) or a [setup] run command".into(),
        )
    })
}
