//! What a project's env.toml may reach on the host beyond the project, decided by the user
//! (docs/security.md, "Trust"). A cloned repository is someone else's: its env.toml can ask
//! for host directories, the GPU, or a weaker seccomp profile, and none of that is granted by
//! the repository itself. [`asked`] names each such item of reach; [`Grants`] are the user's
//! decisions, kept in the user's own config directory (never in the repository), per project
//! path and item; the user's `config.toml` can grant items for every project ([`Policy`]).
//!
//! Invariants: a path is judged after symlinks (a mount source `data` that links to `/` is
//! the host's `/`), and the runtime then mounts the resolved path, not the link; an item is
//! granted only by its exact text, so a repository that asks for something else asks again.
//! This module decides; it never prompts or prints (the command layer does).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{EnvFile, Mount};

/// One thing env.toml asks for beyond the project directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// A host path outside the project, as resolved (through `via`, a symlink, when it was one).
    Mount {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
        via: Option<PathBuf>,
    },
    /// `[container].gpu`: the host's NVIDIA devices and driver.
    Gpu,
    /// `[container].allow_syscalls`: calls the seccomp profile refuses, let through.
    Syscalls(Vec<String>),
    /// The user's SSH agent (`SSH_AUTH_SOCK`): offered by devenv, never asked for by env.toml.
    SshAgent,
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reach::Mount {
                source,
                target,
                read_only,
                via,
            } => {
                let mode = if *read_only {
                    "read-only"
                } else {
                    "read-write"
                };
                write!(
                    f,
                    "mount {} at {} ({mode})",
                    source.display(),
                    target.display()
                )?;
                if let Some(link) = via {
                    write!(f, ", through the symlink {}", link.display())?;
                }
                Ok(())
            }
            Reach::Gpu => f.write_str("gpu: the host's NVIDIA devices and driver libraries"),
            Reach::SshAgent => f.write_str(
                "ssh-agent: your SSH agent (SSH_AUTH_SOCK), so the env can use your keys",
            ),
            Reach::Syscalls(names) => write!(
                f,
                "allow_syscalls: let {} through the seccomp profile",
                names.join(", ")
            ),
        }
    }
}

impl Reach {
    /// The text a grant is kept under: the item as shown, so any change asks again.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

/// The items of reach `env` asks for, and its mounts with every source resolved (what the
/// runtime must mount: the path judged here, not a link that could change afterwards).
pub fn asked(env: &EnvFile, project_dir: &Path) -> (Vec<Reach>, Vec<Mount>) {
    // Judged only where there is something to judge: no path resolution on the start of an
    // env without mounts.
    let project = if env.container.mounts.is_empty() {
        project_dir.to_path_buf()
    } else {
        fs_err::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into())
    };
    let mut items = Vec::new();
    let mut mounts = Vec::new();
    for m in &env.container.mounts {
        // A source that does not exist yet (a cache under ~ that shell makes) is judged as
        // written: it is absolute and normalized already.
        let resolved = fs_err::canonicalize(&m.source).unwrap_or_else(|_| m.source.clone());
        if !resolved.starts_with(&project) {
            items.push(Reach::Mount {
                source: resolved.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                via: (resolved != m.source).then(|| m.source.clone()),
            });
        }
        mounts.push(Mount {
            source: resolved,
            ..m.clone()
        });
    }
    if env.container.gpu {
        items.push(Reach::Gpu);
    }
    if !env.container.allow_syscalls.is_empty() {
        let mut names = env.container.allow_syscalls.clone();
        names.sort();
        names.dedup();
        items.push(Reach::Syscalls(names));
    }
    (items, mounts)
}

/// `[trust]` in the user's `config.toml`: reach every project may have without asking.
///
/// ```toml
/// [trust]
/// mounts = ["~/.cache/huggingface", "/data/datasets"]   # these paths and everything below
/// gpu = true
/// ssh_agent = true                                      # the SSH agent in every env
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mounts: Vec<PathBuf>,
    pub gpu: bool,
    pub ssh_agent: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mounts: Vec<String>,
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    ssh_agent: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

impl Policy {
    /// From the `[trust]` table of `text` (the user's config.toml); `~` is `home`.
    pub fn parse(text: &str, path: &Path, home: Option<&Path>) -> Result<Policy, TrustError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            trust: RawPolicy,
            #[serde(flatten)]
            _other: std::collections::BTreeMap<String, toml::Value>,
        }
        let file: File = toml::from_str(text).map_err(|e| TrustError::File {
            path: path.into(),
            message: e.to_string().trim().to_string(),
        })?;
        let mut mounts = Vec::new();
        for m in file.trust.mounts {
            let p = match (m.strip_prefix('~'), home) {
                (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with('/') => {
                    h.join(rest.trim_start_matches('/'))
                }
                _ => PathBuf::from(&m),
            };
            if !p.is_absolute() {
                return Err(TrustError::File {
                    path: path.into(),
                    message: format!("[trust] mounts entry `{m}` is not an absolute path or ~/…"),
                });
            }
            mounts.push(fs_err::canonicalize(&p).unwrap_or(p));
        }
        Ok(Policy {
            mounts,
            gpu: file.trust.gpu,
            ssh_agent: file.trust.ssh_agent,
        })
    }

    fn grants(&self, item: &Reach) -> bool {
        match item {
            Reach::Mount { source, .. } => self.mounts.iter().any(|m| source.starts_with(m)),
            Reach::Gpu => self.gpu,
            Reach::SshAgent => self.ssh_agent,
            Reach::Syscalls(_) => false,
        }
    }
}

/// The user's per-project decisions: `$XDG_CONFIG_HOME/devenv/trusted.toml`, written by devenv.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default, rename = "project")]
    pub projects: Vec<ProjectGrant>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectGrant {
    /// The project directory, canonical.
    pub path: PathBuf,
    /// Each granted item, as [`Reach::key`] writes it.
    pub reach: BTreeSet<String>,
}

impl Grants {
    pub fn load(path: &Path) -> Result<Grants, TrustError> {
        match fs_err::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| TrustError::File {
                path: path.into(),
                message: e.to_string().trim().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Grants::default()),
            Err(e) => Err(TrustError::File {
                path: path.into(),
                message: e.to_string(),
            }),
        }
    }

    /// Write the file whole, by rename: a crash leaves the old one.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        let io = |e: std::io::Error| TrustError::File {
            path: path.into(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(io)?;
        }
        let text = format!(
            "# What devenv may reach on this machine for each project, granted by you with\n\
             # `devenv trust` or at its prompt. Remove an entry (or `devenv trust --revoke`) to be\n\
             # asked again.\n\n{}",
            toml::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?
        );
        let tmp = path.with_extension(format!("toml.{}", std::process::id()));
        fs_err::write(&tmp, text).map_err(io)?;
        fs_err::rename(&tmp, path).map_err(io)
    }

    /// What is granted to `project`.
    pub fn of(&self, project: &Path) -> BTreeSet<String> {
        self.projects
            .iter()
            .filter(|g| g.path == project)
            .flat_map(|g| g.reach.iter().cloned())
            .collect()
    }

    /// Grant `items` to `project`, on top of what it has.
    pub fn grant(&mut self, project: &Path, items: &[Reach]) {
        let keys = items.iter().map(Reach::key);
        match self.projects.iter_mut().find(|g| g.path == project) {
            Some(g) => g.reach.extend(keys),
            None => self.projects.push(ProjectGrant {
                path: project.to_path_buf(),
                reach: keys.collect(),
            }),
        }
    }

    /// Forget every grant to `project`; whether there was one.
    pub fn revoke(&mut self, project: &Path) -> bool {
        let before = self.projects.len();
        self.projects.retain(|g| g.path != project);
        self.projects.len() != before
    }
}

/// The grants file: `$XDG_CONFIG_HOME/devenv/trusted.toml`, else `~/.config/devenv/…`.
pub fn grants_path() -> Option<PathBuf> {
    crate::user_config::path().map(|p| p.with_file_name("trusted.toml"))
}

/// The user's `[trust]` policy from config.toml; none when there is no file.
pub fn load_policy() -> Result<Policy, TrustError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match crate::user_config::read() {
        Ok(Some(f)) => Policy::parse(&f.text, &f.path, home.as_deref()),
        Ok(None) => Ok(Policy::default()),
        Err(e) => Err(TrustError::File {
            path: e.path.clone(),
            message: e.message.clone(),
        }),
    }
}

/// The user's SSH agent socket, when devenv offers it to `env`: `SSH_AUTH_SOCK` names a
/// socket and env.toml does not say `ssh_agent = false`.
pub fn agent_offered(env: &EnvFile) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    if !env.container.ssh_agent {
        return None;
    }
    let sock = PathBuf::from(std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty())?);
    let real = fs_err::canonicalize(&sock).ok()?;
    fs_err::metadata(&real)
        .is_ok_and(|m| m.file_type().is_socket())
        .then_some(real)
}

/// What a project's env asks beyond the project and what of it is not granted yet: the one
/// reading of env.toml, the grants file and the policy that `shell`/`run`, `devenv trust` and
/// `devenv status` share.
#[derive(Debug, Default)]
pub struct Review {
    /// Every item, the offered SSH agent last.
    pub asked: Vec<Reach>,
    /// The items neither a grant nor the policy covers.
    pub missing: Vec<Reach>,
    /// The mounts with their sources resolved (what the runtime must mount).
    pub mounts: Vec<Mount>,
    /// The SSH agent's socket, when devenv offers it ([`agent_offered`]).
    pub agent: Option<PathBuf>,
    /// The project directory, canonical.
    pub project: PathBuf,
}

impl Review {
    /// Whether the offered agent is granted.
    pub fn agent_granted(&self) -> bool {
        self.agent.is_some() && !self.missing.contains(&Reach::SshAgent)
    }
}

/// Read `env`'s reach and the user's decisions about it. Reads no file when env.toml asks for
/// nothing and no agent is offered (the start of most envs).
pub fn review(env: &EnvFile, project_dir: &Path) -> Result<Review, TrustError> {
    let (mut asked, mounts) = asked(env, project_dir);
    let agent = agent_offered(env);
    if agent.is_some() {
        asked.push(Reach::SshAgent);
    }
    if asked.is_empty() {
        return Ok(Review {
            mounts,
            project: project_dir.to_path_buf(),
            ..Review::default()
        });
    }
    let project = fs_err::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
    let granted = match grants_path() {
        Some(p) => Grants::load(&p)?.of(&project),
        None => BTreeSet::new(),
    };
    let missing = ungranted(&asked, &load_policy()?, &granted);
    Ok(Review {
        asked,
        missing,
        mounts,
        agent,
        project,
    })
}

/// The items of `asked` that neither the policy nor `granted` covers.
pub fn ungranted(asked: &[Reach], policy: &Policy, granted: &BTreeSet<String>) -> Vec<Reach> {
    asked
        .iter()
        .filter(|i| !policy.grants(i) && !granted.contains(&i.key()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Container;

    fn env_with(mounts: Vec<Mount>) -> EnvFile {
        EnvFile {
            container: Container {
                mounts,
                ..Container::default()
            },
            ..EnvFile::default()
        }
    }

    fn mount(source: &Path, target: &str) -> Mount {
        Mount {
            source: source.to_path_buf(),
            target: target.into(),
            read_only: false,
        }
    }

    #[test]
    fn paths_inside_the_project_are_no_reach_and_symlinks_out_of_it_are() {
        let t = tempfile::tempdir().unwrap();
        let project = t.path().join("proj");
        let outside = t.path().join("elsewhere");
        fs_err::create_dir_all(project.join("data")).unwrap();
        fs_err::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, project.join("link")).unwrap();
        let env = env_with(vec![
            mount(&project.join("data"), "/data"),
            mount(&project.join("link"), "/link"),
            mount(&outside, "/out"),
        ]);
        let (items, mounts) = asked(&env, &project);
        let outside = fs_err::canonicalize(&outside).unwrap();
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(
            items[0].to_string(),
            format!(
                "mount {} at /link (read-write), through the symlink {}",
                outside.display(),
                project.join("link").display()
            )
        );
        // The runtime mounts what was judged: the resolved path, not the link.
        assert_eq!(mounts[1].source, outside);
        assert!(items.iter().all(|i| !i.to_string().contains("/data ")));
    }

    #[test]
    fn a_grant_covers_its_exact_item_and_the_policy_covers_paths_below_it() {
        let t = tempfile::tempdir().unwrap();
        let a = Reach::Mount {
            source: t.path().join("a"),
            target: "/a".into(),
            read_only: true,
            via: None,
        };
        let b = Reach::Mount {
            source: t.path().join("b/sub"),
            target: "/b".into(),
            read_only: false,
            via: None,
        };
        let mut grants = Grants::default();
        let project = Path::new("/p");
        grants.grant(project, std::slice::from_ref(&a));
        let asked = [a.clone(), b.clone(), Reach::Gpu];
        assert_eq!(
            ungranted(&asked, &Policy::default(), &grants.of(project)),
            [b.clone(), Reach::Gpu]
        );
        assert_eq!(
            ungranted(&asked, &Policy::default(), &grants.of(Path::new("/other"))).len(),
            3,
            "grants are per project"
        );
        let policy = Policy {
            mounts: vec![t.path().join("b")],
            gpu: true,
            ssh_agent: false,
        };
        assert!(ungranted(&asked, &policy, &grants.of(project)).is_empty());
        // The same mount read-write is another item.
        let a_rw = Reach::Mount {
            source: t.path().join("a"),
            target: "/a".into(),
            read_only: false,
            via: None,
        };
        assert_eq!(
            ungranted(std::slice::from_ref(&a_rw), &policy, &grants.of(project)),
            [a_rw]
        );
        assert!(grants.revoke(project) && grants.of(project).is_empty());
    }

    #[test]
    fn grants_round_trip_through_their_file_and_the_policy_parses_tilde() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("devenv/trusted.toml");
        let mut g = Grants::default();
        g.grant(Path::new("/p"), &[Reach::Gpu]);
        g.save(&path).unwrap();
        assert_eq!(Grants::load(&path).unwrap(), g);
        assert_eq!(
            Grants::load(&t.path().join("none")).unwrap(),
            Grants::default()
        );
        let p = Policy::parse(
            "insecure-registries = []\n[trust]\nmounts = [\"~/.cache/hf\"]\ngpu = true\n",
            Path::new("config.toml"),
            Some(Path::new("/home/u")),
        )
        .unwrap();
        assert_eq!(p.mounts, [PathBuf::from("/home/u/.cache/hf")]);
        assert!(p.gpu);
        let err = Policy::parse("[trust]\nmount = []\n", Path::new("c.toml"), None).unwrap_err();
        assert!(err.to_string().contains("unknown field `mount`"), "{err}");
    }
}
