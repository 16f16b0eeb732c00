//! env.lock: everything needed to rebuild the same env, sorted and stable.
//!
//! The entry point is [`ensure`]: read `env.lock` beside env.toml, compare each part with what
//! env.toml asks for now, re-resolve only the stale parts, and write the file (atomically) when
//! its text changed. The parts:
//!
//! - `[image]`: the reference and, per platform, the image manifest digest. A locked digest is
//!   never re-resolved: the pull goes by digest (`devenv lock --update image` moves it).
//! - `[python]`: every distribution, dependencies included, with the URL and sha256 of the exact
//!   file, resolved in a throwaway container of the base image by devenv's pinned uv
//!   (`uv pip compile --format pylock.toml --python` the image's interpreter), which lists every
//!   file of each chosen version that interpreter can install; [`tags`] keeps the one it would
//!   install (standard tag priority, from facts the interpreter reports about itself).
//! - `[apt]`: every Debian package an install would add (the requested ones and their
//!   dependencies) with its version, from `apt-get install --dry-run` after `apt-get update` in
//!   the image; requested packages the image already has keep the version `dpkg-query` reports.
//!
//! Each resolved part records `inputs`, a sha256 over what it was resolved from (image
//! reference, platform, requirements, indexes), and `requested`, the same in words for drift
//! messages. A part whose `inputs` differ is stale; a part resolved against an image digest that
//! moved is stale too. With `locked`, any staleness is an error listing it and nothing is written.
//!
//! For the build: [`Lock::python_requirements`] (the locked files in words, for the python
//! step's key), [`Lock::apt_pins`] (`name=version`); [`Lock::image_for`] (the reference pinned
//! by digest).
//!
//! Invariants: same inputs → byte-identical file (no timestamps, packages sorted); a failed
//! resolution writes nothing; env.lock is replaced by rename, never rewritten in place. This
//! module never prints: it reports through [`Reporter`].

mod file;
mod resolve;
mod tags;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Loaded};
use crate::error::Hint;
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::pull::{self, PullError, PullOptions};
use crate::reference::{Digest, ImageRef};
use crate::registry::{Client, Settings};
use crate::runtime::RuntimeError;
use crate::store::{Store, StoreError};
use crate::tools::recipe::{self, Inputs, RecipeError};

pub use file::{parse, render};

pub const FILE_NAME: &str = "env.lock";

/// The whole lock file. Same inputs → byte-identical file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub image: ImageLock,
    pub python: PythonLock,
    pub apt: AptLock,
    /// Tool layers that build byte-identical on every machine (the Python venv): layer key →
    /// the diff_id every build and every team-cache entry of that key must have.
    pub layers: std::collections::BTreeMap<Digest, Digest>,
    /// `[services.NAME]`: each service's image, pinned like `[image]`.
    pub services: std::collections::BTreeMap<String, ImageLock>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageLock {
    /// The reference env.toml names, fully qualified (`docker.io/library/python:3.11-slim`).
    pub reference: String,
    /// Platform (`linux/amd64`) → the image manifest digest for it.
    pub platforms: std::collections::BTreeMap<String, Digest>,
}

/// Every Python distribution, transitive dependencies included, resolved inside the base image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonLock {
    /// Hash of what this part was resolved from (requirements, base manifest): a mismatch means
    /// only this part needs resolving again.
    pub inputs: Option<Digest>,
    /// The base image's interpreter version (`3.11.2`) the packages were resolved for.
    pub interpreter: Option<String>,
    /// What env.toml asked for, in its words (requirements, `-r FILE`), for drift messages.
    pub requested: Vec<String>,
    pub packages: Vec<PythonPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PythonPackage {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
    /// The exact file (wheel or sdist) to install.
    pub url: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AptLock {
    pub inputs: Option<Digest>,
    /// The package names env.toml asked for (dependencies are only in `packages`).
    pub requested: Vec<String>,
    pub packages: Vec<AptPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AptPackage {
    pub name: String,
    pub version: String,
}

impl PythonLock {
    fn is_empty(&self) -> bool {
        self.inputs.is_none() && self.requested.is_empty() && self.packages.is_empty()
    }
}

impl AptLock {
    fn is_empty(&self) -> bool {
        self.inputs.is_none() && self.requested.is_empty() && self.packages.is_empty()
    }
}

impl Lock {
    /// The locked Python files in words, one line per distribution,
    /// `name @ URL --hash=sha256:HEX`, sorted: what a python build step's key covers (the step
    /// installs these exact files from the store). Empty when there are no Python packages.
    pub fn python_requirements(&self) -> String {
        let mut packages = self.python.packages.clone();
        packages.sort();
        packages
            .iter()
            .map(|p| format!("{} @ {} --hash=sha256:{}\n", p.name, p.url, p.sha256))
            .collect()
    }

    /// `name=version` for every locked apt package (dependencies included), sorted.
    pub fn apt_pins(&self) -> Vec<String> {
        let mut pins: Vec<String> = self
            .apt
            .packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        pins.sort();
        pins
    }

    /// The locked image for `platform`: the reference pinned to its manifest digest.
    pub fn image_for(&self, platform: &Platform) -> Option<ImageRef> {
        self.image.pinned(platform)
    }

    /// The locked image of service `name` for `platform`, pinned by digest.
    pub fn service_image(&self, name: &str, platform: &Platform) -> Option<ImageRef> {
        self.services.get(name)?.pinned(platform)
    }
}

impl ImageLock {
    fn pinned(&self, platform: &Platform) -> Option<ImageRef> {
        let digest = self.platforms.get(&platform.to_string())?;
        let image: ImageRef = self.reference.parse().ok()?;
        Some(image.with_digest(digest.clone()))
    }
}

/// What to move on purpose (`devenv lock --update [NAME]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Everything: the image tag is resolved again, every part re-resolved.
    All,
    /// `image`, or one Python or apt package by name; the other pins stay where they are.
    Name(String),
}

pub struct LockOptions {
    /// Fail listing what differs instead of resolving and writing (`--locked`, CI).
    pub locked: bool,
    pub update: Option<Update>,
    /// Use only the store: resolution that needs the network fails.
    pub offline: bool,
    /// The platform to lock (env.toml's `[image].platform`, else the host's).
    pub platform: Platform,
}

impl LockOptions {
    /// Options for `loaded`: its platform, nothing to update.
    pub fn new(loaded: &Loaded, locked: bool, offline: bool) -> LockOptions {
        LockOptions {
            locked,
            update: None,
            offline,
            platform: loaded.env.platform(),
        }
    }
}

/// One way env.lock differs from env.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// There is no env.lock.
    Missing,
    /// `[image]` names another reference.
    Image {
        locked: String,
        wanted: String,
    },
    /// The image is not locked for this platform.
    Platform {
        platform: String,
    },
    /// A part env.toml asks for that env.lock lacks, or one env.lock has that env.toml dropped.
    PartAdded {
        part: Part,
    },
    PartRemoved {
        part: Part,
    },
    /// A service's image: named in env.toml and not locked (for this platform), locked under
    /// another reference, or locked and no longer in env.toml (`wanted` empty).
    Service {
        name: String,
        locked: Option<String>,
        wanted: Option<String>,
    },
    /// A part whose inputs changed: entries added and removed, in env.toml's words. Both empty
    /// when what changed has no words of its own (an index URL, a requirements file's content).
    Changed {
        part: Part,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Python,
    Apt,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Python => "[python] (Python packages)",
            Part::Apt => "[apt] (Debian packages)",
        })
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing => write!(f, "there is no {FILE_NAME}"),
            Drift::Image { locked, wanted } => {
                write!(f, "[image]: env.toml names {wanted}, env.lock has {locked}")
            }
            Drift::Platform { platform } => {
                write!(f, "[image]: not locked for platform {platform}")
            }
            Drift::PartAdded { part } => write!(f, "{part}: in env.toml, not in env.lock"),
            Drift::Service {
                name,
                locked,
                wanted,
            } => match (locked, wanted) {
                (Some(l), Some(w)) if l != w => {
                    write!(f, "[services.{name}]: env.toml names {w}, env.lock has {l}")
                }
                (_, Some(_)) => write!(f, "[services.{name}]: its image is not locked"),
                (_, None) => write!(f, "[services.{name}]: in env.lock, no longer in env.toml"),
            },
            Drift::PartRemoved { part } => {
                write!(f, "{part}: in env.lock, no longer in env.toml")
            }
            Drift::Changed {
                part,
                added,
                removed,
            } => {
                if added.is_empty() && removed.is_empty() {
                    return write!(
                        f,
                        "{part}: its inputs changed (platform, package index or requirements file)"
                    );
                }
                let mut words = Vec::new();
                words.extend(added.iter().map(|a| format!("+ {a}")));
                words.extend(removed.iter().map(|r| format!("- {r}")));
                write!(f, "{part}: {}", words.join(", "))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Uv(#[from] crate::tools::uv::UvError),
    #[error(transparent)]
    Index(#[from] crate::tools::index::IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} has format version {version}; this devenv reads version {}", path.display(), file::VERSION)]
    Version { path: PathBuf, version: i64 },
    #[error("{} does not match env.toml, and --locked forbids changing it:\n{}", path.display(), list_drift(drift))]
    Drift { path: PathBuf, drift: Vec<Drift> },
    #[error("--locked and --update contradict each other")]
    LockedUpdate,
    #[error("`{name}` is neither `image` nor a package in {FILE_NAME}")]
    UnknownUpdate { name: String },
    #[error("resolving {part} needs the network, and --offline forbids it")]
    Offline { part: Part },
    #[error("the image {image} has no python3")]
    NoPython { image: String },
    #[error("the image {image} cannot make a virtual environment:\n{log}")]
    NoVenv { image: String, log: String },
    #[error("[tools] python = \"{wanted}\", but the image {image} has Python {found}")]
    PythonMismatch {
        wanted: String,
        found: String,
        image: String,
    },
    #[error("uv could not resolve the Python requirements:\n{log}")]
    Pip { log: String },
    #[error("no file of `{name}` {version} fits the image's interpreter (the index has: {})", files.join(", "))]
    NoFile {
        name: String,
        version: String,
        files: Vec<String>,
    },
    #[error("the index lists `{name}` at {url} without a sha256, so it cannot be locked")]
    Unhashed { name: String, url: String },
    #[error("`{name}` comes from {source_kind}, which cannot be locked by hash")]
    Unlockable { name: String, source_kind: String },
    #[error("the resolver's answer is unreadable: {message}")]
    Report { message: String },
    #[error("the image {image} has no apt-get")]
    NoApt { image: String },
    #[error("apt-get update failed in {image}:\n{log}")]
    AptUpdate { image: String, log: String },
    #[error("{image}'s Debian release has no package {}", names.join(", "))]
    AptUnknown { image: String, names: Vec<String> },
    #[error("apt-get could not resolve the Debian packages:\n{log}")]
    Apt { log: String },
    #[error("`{name}` in [packages].apt is not a Debian package name")]
    AptName { name: String },
    #[error("reading {}: {source}", path.display())]
    Requirements {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`requirements` {} is outside the project (it leads to {})", path.display(), real.display())]
    RequirementsOutside { path: PathBuf, real: PathBuf },
    #[error("the resolver container exited with status {status}:\n{log}")]
    Container { status: i32, log: String },
}

/// What the resolver's words say about the fix.
fn resolve_hint(log: &str) -> &'static str {
    let has = |s: &str| log.contains(s);
    if has("dns error")
        || has("Could not connect")
        || has("error sending request")
        || has("Connection refused")
        || has("Network is unreachable")
        || has("Failed to fetch")
        || has("tcp connect error")
    {
        "the package index is unreachable from the resolver: check the network (and \
         https_proxy, which is passed in); an env.lock committed earlier builds without resolving"
    } else if has("not found in the package registry")
        || has("there is no version of")
        || has("only ")
        || has("not found in the provided package locations")
    {
        "check the names and versions in [packages].pip and [tools] (the resolver's words \
         above): a version must exist, with a file for the image's Python and platform"
    } else if has("unsatisfiable") || has("conflict") {
        "the requirements contradict each other (the resolver's words above): loosen a pin in \
         [packages].pip or [tools]"
    } else {
        "check the names and versions in [packages].pip and [tools] (the resolver's words above)"
    }
}

fn list_drift(drift: &[Drift]) -> String {
    drift
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Hint for LockError {
    fn hint(&self) -> Option<String> {
        match self {
            LockError::Recipe(e) => e.hint(),
            LockError::Config(e) => e.hint(),
            LockError::Pull(e) => e.hint(),
            LockError::Runtime(e) => e.hint(),
            LockError::Uv(e) => e.hint(),
            LockError::Index(e) => e.hint(),
            LockError::Parse { .. } => {
                Some("fix the file, or delete it and run `devenv lock` to write a new one".into())
            }
            LockError::Version { .. } => {
                Some("upgrade devenv, or delete env.lock and run `devenv lock`".into())
            }
            LockError::Drift { .. } => {
                Some("run `devenv lock` and commit env.lock, or undo the change to env.toml".into())
            }
            LockError::LockedUpdate => Some("drop --locked to move pins".into()),
            LockError::UnknownUpdate { .. } => Some(
                "name `image`, a package from env.lock, or nothing to update everything".into(),
            ),
            LockError::Offline { .. } => {
                Some("run `devenv lock` once with the network, then commit env.lock".into())
            }
            LockError::NoPython { .. } => Some(
                "Python tools and [packages].pip need an image with python3: set \
                 [tools] python = \"3.12\" (python:3.12-slim) or pick another [image].base"
                    .into(),
            ),
            LockError::NoVenv { .. } => Some(
                "install the venv module in the image (Debian: the python3-venv package)".into(),
            ),
            LockError::PythonMismatch { found, .. } => Some(format!(
                "set [tools] python = \"{}\", or pick an [image].base with the Python you want",
                found.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
            )),
            LockError::Pip { log } => Some(resolve_hint(log).into()),
            LockError::NoFile { .. } => Some(
                "pick a version with a wheel for the image's Python and platform (or an sdist), \
                 or another [image].base"
                    .into(),
            ),
            LockError::Unhashed { .. } => Some(
                "the package index must publish sha256 hashes (PyPI does); use another index"
                    .into(),
            ),
            LockError::Unlockable { .. } => Some(
                "name a released version (name==1.2.3) or an archive URL instead of a \
                 directory or VCS checkout"
                    .into(),
            ),
            LockError::NoApt { .. } => {
                Some("[packages].apt needs a Debian or Ubuntu based image".into())
            }
            LockError::AptUpdate { .. } => {
                Some("check the network and the image's /etc/apt sources".into())
            }
            LockError::AptUnknown { .. } => Some(
                "check the name with `apt-cache search` on the same Debian release, or drop it \
                 from [packages].apt"
                    .into(),
            ),
            LockError::RequirementsOutside { .. } => Some(
                "keep the requirements file in the project directory, as a file, not a link out"
                    .into(),
            ),
            LockError::Requirements { .. } => {
                Some("fix `requirements` in [packages] (a path relative to env.toml)".into())
            }
            _ => None,
        }
    }
}

/// What env.toml asks for now, per part, in the form env.lock records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    reference: String,
    platform: String,
    python: Option<WantedPart>,
    apt: Option<WantedPart>,
    /// Service name → its image reference, fully qualified.
    services: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct WantedPart {
    inputs: Digest,
    requested: Vec<String>,
}

impl Wanted {
    /// `requirements` is the content of `[packages].requirements`, read by the caller.
    fn new(
        reference: &str,
        platform: &Platform,
        inputs: &Inputs,
        requirements: Option<&str>,
    ) -> Wanted {
        let platform = platform.to_string();
        let python = inputs.has_python().then(|| {
            let mut text =
                format!("devenv-lock python 1\nimage {reference}\nplatform {platform}\n");
            let mut requested = inputs.pip.clone();
            if let Some(v) = &inputs.python {
                text.push_str(&format!("python {v}\n"));
            }
            // The index by its name, not its URL: the same lock behind any mirror.
            if let Some(i) = &inputs.index {
                text.push_str(&format!("index {}\n", i.reference));
            }
            for p in &inputs.pip {
                text.push_str(&format!("pip {p}\n"));
            }
            if let (Some(path), Some(content)) = (&inputs.requirements, requirements) {
                text.push_str(&format!(
                    "requirements {}\n",
                    Digest::of(content.as_bytes())
                ));
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                requested.push(format!("-r {name}"));
            }
            WantedPart {
                inputs: Digest::of(text.as_bytes()),
                requested,
            }
        });
        let apt = (!inputs.apt.is_empty()).then(|| {
            let mut text = format!("devenv-lock apt 1\nimage {reference}\nplatform {platform}\n");
            for a in &inputs.apt {
                text.push_str(&format!("apt {a}\n"));
            }
            WantedPart {
                inputs: Digest::of(text.as_bytes()),
                requested: inputs.apt.clone(),
            }
        });
        Wanted {
            reference: reference.to_string(),
            platform,
            python,
            apt,
            services: std::collections::BTreeMap::new(),
        }
    }
}

/// Every way `lock` differs from `wanted`; empty when the lock is current.
fn drift(lock: Option<&Lock>, wanted: &Wanted) -> Vec<Drift> {
    let Some(lock) = lock else {
        return vec![Drift::Missing];
    };
    let mut out = Vec::new();
    if lock.image.reference != wanted.reference {
        out.push(Drift::Image {
            locked: lock.image.reference.clone(),
            wanted: wanted.reference.clone(),
        });
    } else if !lock.image.platforms.contains_key(&wanted.platform) {
        out.push(Drift::Platform {
            platform: wanted.platform.clone(),
        });
    }
    let parts = [
        (
            Part::Python,
            wanted.python.as_ref(),
            lock.python.inputs.as_ref(),
            &lock.python.requested,
        ),
        (
            Part::Apt,
            wanted.apt.as_ref(),
            lock.apt.inputs.as_ref(),
            &lock.apt.requested,
        ),
    ];
    for (part, want, have, have_requested) in parts {
        match (want, have) {
            (None, None) => {}
            (Some(_), None) => out.push(Drift::PartAdded { part }),
            (None, Some(_)) => out.push(Drift::PartRemoved { part }),
            (Some(w), Some(h)) if &w.inputs != h => {
                let old: BTreeSet<&String> = have_requested.iter().collect();
                let new: BTreeSet<&String> = w.requested.iter().collect();
                out.push(Drift::Changed {
                    part,
                    added: new.difference(&old).map(|s| s.to_string()).collect(),
                    removed: old.difference(&new).map(|s| s.to_string()).collect(),
                });
            }
            _ => {}
        }
    }
    for (name, reference) in &wanted.services {
        let locked = lock.services.get(name);
        let current = locked.is_some_and(|l| {
            &l.reference == reference && l.platforms.contains_key(&wanted.platform)
        });
        if !current {
            out.push(Drift::Service {
                name: name.clone(),
                locked: locked.map(|l| l.reference.clone()),
                wanted: Some(reference.clone()),
            });
        }
    }
    for (name, l) in &lock.services {
        if !wanted.services.contains_key(name) {
            out.push(Drift::Service {
                name: name.clone(),
                locked: Some(l.reference.clone()),
                wanted: None,
            });
        }
    }
    out
}

/// Read env.lock from `project_dir`; `None` when there is none.
pub fn read(project_dir: &Path) -> Result<Option<Lock>, LockError> {
    let path = project_dir.join(FILE_NAME);
    match fs_err::read_to_string(&path) {
        Ok(text) => Ok(Some(parse(&path, &text)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// What env.toml asks for now: its expanded inputs, base image, requirements file's text and
/// per-part wants.
type Asked = (recipe::Inputs, ImageRef, Option<String>, Wanted);

fn wanted_for(loaded: &Loaded, platform: &Platform) -> Result<Asked, LockError> {
    let inputs = recipe::expand(&loaded.env, &loaded.project_dir)?;
    let image = loaded.env.base_image()?;
    let requirements = match &inputs.requirements {
        Some(path) => {
            // Judged after symlinks: a requirements file that links out of the project would
            // copy a host file's contents into env.lock, which is committed.
            let project = fs_err::canonicalize(&loaded.project_dir).unwrap_or_default();
            if let Ok(real) = fs_err::canonicalize(path)
                && !real.starts_with(&project)
            {
                return Err(LockError::RequirementsOutside {
                    path: path.clone(),
                    real,
                });
            }
            Some(
                fs_err::read_to_string(path).map_err(|source| LockError::Requirements {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let mut wanted = Wanted::new(
        &image.to_string(),
        platform,
        &inputs,
        requirements.as_deref(),
    );
    wanted.services = loaded
        .env
        .services
        .iter()
        .map(|(name, s)| (name.clone(), s.image.to_string()))
        .collect();
    Ok((inputs, image, requirements, wanted))
}

/// How env.lock stands against env.toml for `platform`, resolving nothing: every way it
/// differs (`devenv status`); empty when it is current.
pub fn check(loaded: &Loaded, platform: &Platform) -> Result<Vec<Drift>, LockError> {
    let (_, _, _, wanted) = wanted_for(loaded, platform)?;
    Ok(drift(read(&loaded.project_dir)?.as_ref(), &wanted))
}

/// Make env.lock current for `loaded` and return it: read it, re-resolve only the parts that
/// are stale (or that `opts.update` names), and write it when its text changed. With
/// `opts.locked`, a stale part is [`LockError::Drift`] and nothing is resolved or written.
/// When nothing is stale this contacts no registry and runs no container.
pub fn ensure(
    loaded: &Loaded,
    store: &Store,
    opts: &LockOptions,
    ui: &dyn Reporter,
) -> Result<Lock, LockError> {
    let (inputs, image, requirements, wanted) = wanted_for(loaded, &opts.platform)?;
    let path = loaded.project_dir.join(FILE_NAME);
    let old_text = match fs_err::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let old = old_text.as_deref().map(|t| parse(&path, t)).transpose()?;
    let stale = drift(old.as_ref(), &wanted);
    if opts.locked {
        if opts.update.is_some() {
            return Err(LockError::LockedUpdate);
        }
        return match (stale.is_empty(), old) {
            (true, Some(lock)) => Ok(lock),
            _ => Err(LockError::Drift { path, drift: stale }),
        };
    }
    if let Some(Update::Name(name)) = &opts.update {
        let known = name == "image"
            || loaded.env.services.contains_key(name)
            || old.as_ref().is_some_and(|l| {
                l.python.packages.iter().any(|p| p.name == normalize(name))
                    || l.apt.packages.iter().any(|p| &p.name == name)
            });
        if !known {
            return Err(LockError::UnknownUpdate { name: name.clone() });
        }
    }
    if stale.is_empty() && opts.update.is_none() {
        // Current: no registry round trip, no container.
        return Ok(old.unwrap_or_default());
    }

    let update_all = opts.update == Some(Update::All);
    let update_name = match &opts.update {
        Some(Update::Name(n)) => Some(n.as_str()),
        _ => None,
    };
    let mut lock = old.clone().unwrap_or_default();
    // The image: by its locked digest unless the reference changed or the update names it.
    let same_reference = lock.image.reference == wanted.reference;
    let refresh = update_all || update_name == Some("image");
    let pinned = lock
        .image
        .platforms
        .get(&wanted.platform)
        .filter(|_| same_reference && !refresh)
        .cloned();
    let pull_ref = match &pinned {
        Some(d) => image.with_digest(d.clone()),
        None => image.clone(),
    };
    let pull_opts = PullOptions {
        platform: opts.platform.clone(),
        offline: opts.offline,
        refresh_tag: refresh,
    };
    let client = || Client::new(Settings::load()?);
    let _gc = store.keep_from_gc()?;
    let pulled = pull::pull(&pull_ref, &pull_opts, store, &client, ui)?;
    if !same_reference {
        lock.image.platforms.clear();
        lock.image.reference = wanted.reference.clone();
    }
    let before = lock
        .image
        .platforms
        .insert(wanted.platform.clone(), pulled.manifest.clone());
    // Parts resolved against another image digest are stale with it.
    let image_moved = !same_reference || before.is_some_and(|d| d != pulled.manifest);

    let sandbox = resolve::Sandbox {
        store,
        lowers: pulled.layer_dirs(store),
        image_env: pulled.config.config.env.clone(),
        image: wanted.reference.clone(),
    };
    let part_stale = |part: Part| {
        stale.iter().any(|d| match d {
            Drift::Missing | Drift::Platform { .. } => true,
            Drift::PartAdded { part: p } | Drift::Changed { part: p, .. } => *p == part,
            _ => false,
        })
    };

    match &wanted.apt {
        None => lock.apt = AptLock::default(),
        Some(w) => {
            let named = update_name.is_some_and(|n| lock.apt.packages.iter().any(|p| p.name == n));
            if image_moved
                || update_all
                || named
                || part_stale(Part::Apt)
                || lock.apt.inputs.is_none()
            {
                if opts.offline {
                    return Err(LockError::Offline { part: Part::Apt });
                }
                ui.status(
                    "Resolving",
                    &format!("apt packages: {}", w.requested.join(" ")),
                );
                let packages = resolve::apt(&sandbox, &w.requested)?;
                lock.apt = AptLock {
                    inputs: Some(w.inputs.clone()),
                    requested: w.requested.clone(),
                    packages,
                };
            }
        }
    }

    match &wanted.python {
        None => lock.python = PythonLock::default(),
        Some(w) => {
            let named = update_name
                .map(normalize)
                .filter(|n| lock.python.packages.iter().any(|p| &p.name == n));
            if image_moved
                || update_all
                || named.is_some()
                || part_stale(Part::Python)
                || lock.python.inputs.is_none()
            {
                if opts.offline {
                    return Err(LockError::Offline { part: Part::Python });
                }
                // `--update NAME` moves NAME alone: every other locked version is a constraint.
                let constraints: Vec<String> = match &named {
                    Some(n) if !part_stale(Part::Python) && !image_moved => lock
                        .python
                        .packages
                        .iter()
                        .filter(|p| &p.name != n)
                        .map(|p| format!("{}=={}", p.name, p.version))
                        .collect(),
                    _ => Vec::new(),
                };
                ui.status(
                    "Resolving",
                    &format!("Python packages for {}", wanted.platform),
                );
                let indexes = crate::tools::index::Indexes::load()?;
                let recipe_index = match &inputs.index {
                    Some(i) => Some(indexes.resolve(&i.reference, &i.wanted_by)?),
                    None => None,
                };
                let request = resolve::PythonRequest {
                    pip: &inputs.pip,
                    requirements: requirements.as_deref(),
                    default_index: indexes.default.as_ref().map(|(u, _)| u.as_str()),
                    index: recipe_index.as_deref(),
                    constraints: &constraints,
                };
                let uv = crate::tools::uv::ensure(store, opts.offline, ui)?;
                let resolved = resolve::python(&sandbox, &uv, &request)?;
                if let Some(want) = &inputs.python {
                    let found = &resolved.interpreter;
                    if found != want && !found.starts_with(&format!("{want}.")) {
                        return Err(LockError::PythonMismatch {
                            wanted: want.clone(),
                            found: found.clone(),
                            image: wanted.reference.clone(),
                        });
                    }
                }
                lock.python = PythonLock {
                    inputs: Some(w.inputs.clone()),
                    interpreter: Some(resolved.interpreter),
                    requested: w.requested.clone(),
                    packages: resolved.packages,
                };
            }
        }
    }

    // Each service's image, pinned like the base: by its locked digest unless its reference
    // changed or the update names it.
    lock.services
        .retain(|name, _| wanted.services.contains_key(name));
    for (name, reference) in &wanted.services {
        let refresh = update_all || update_name == Some(name.as_str());
        let entry = lock.services.entry(name.clone()).or_default();
        if &entry.reference != reference {
            entry.platforms.clear();
            entry.reference = reference.clone();
        }
        if !refresh && entry.platforms.contains_key(&wanted.platform) {
            continue;
        }
        let image = loaded.env.services[name].image.clone();
        ui.status("Resolving", &format!("service {name}: {image}"));
        let opts = PullOptions {
            refresh_tag: refresh,
            ..pull_opts.clone()
        };
        let pulled = pull::pull(&image, &opts, store, &client, ui)?;
        entry
            .platforms
            .insert(wanted.platform.clone(), pulled.manifest.clone());
    }

    let text = render(&lock);
    if old_text.as_deref() != Some(text.as_str()) {
        write_atomic(&path, &text)?;
        ui.status(
            "Locked",
            &format!(
                "{} ({} Python, {} apt packages)",
                path.display(),
                lock.python.packages.len(),
                lock.apt.packages.len()
            ),
        );
    }
    Ok(lock)
}

/// Pin `pins` (layer key → diff_id) in the lock at `path`, replacing the pins it had: written
/// only when they differ. Returns whether the file changed.
pub fn pin_layers(
    path: &Path,
    lock: &mut Lock,
    pins: std::collections::BTreeMap<Digest, Digest>,
) -> Result<bool, LockError> {
    if lock.layers == pins {
        return Ok(false);
    }
    lock.layers = pins;
    write_atomic(path, &render(lock))?;
    Ok(true)
}

/// Replace `path` by rename from a temp file beside it, so a reader sees the old or the new
/// file, never half of one.
fn write_atomic(path: &Path, text: &str) -> Result<(), LockError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".env.lock.")
        .tempfile_in(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_data()?;
    // A new file is 0600; env.lock is committed and read by others: the usual 0644.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
