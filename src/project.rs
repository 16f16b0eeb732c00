//! A project's env: its id in the store, its persistent home, and the environment the container
//! starts with.
//!
//! The env id is derived from the project's canonical path, so every checkout gets its own home
//! and state while sharing blobs and layers with every other project.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::reference::Digest;
use crate::store::gc::{ENV_RECORD, EnvRecord};
use crate::store::{Store, StoreError};

/// Host variables passed through to the container; everything else of the host stays out.
const HOST_ALLOW: &[&str] = &[
    "TERM",
    "LANG",
    "TZ",
    "COLORTERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    // The GPUs a scheduler (Slurm's gres) or the user gave this process.
    "CUDA_VISIBLE_DEVICES",
];

/// The user's package indexes, passed through like [`HOST_ALLOW`] for pip and uv in a shell, but
/// not into root steps: a lock resolves from the indexes devenv decided and passes explicitly
/// (`tools::index`); an extra index of the host's would change what it resolves to without
/// env.lock saying so.
const INDEX_VARS: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
];

/// Host variables passed by prefix: the locale, and what a cluster job step and MPI launchers
/// set (Slurm's task identity and resources, PMI/PMIx and Open MPI wire-up, Intel MPI/Hydra),
/// so the ranks of `srun devenv run -- CMD` each see their own.
const HOST_PREFIXES: &[&str] = &[
    "LC_", "SLURM_", "SLURMD_", "PMI_", "PMIX_", "OMPI_", "PRTE_", "I_MPI_", "HYDRA_",
];

/// The PATH a container gets when its image says none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug)]
pub struct Project {
    /// The directory holding env.toml, canonical.
    pub dir: PathBuf,
    /// The directory's name, made fit for a host name: the container's hostname and prompt.
    pub name: String,
    /// 16 hex digits of sha256 over the canonical path.
    pub id: String,
}

impl Project {
    pub fn new(dir: &Path) -> Result<Project, StoreError> {
        let dir = fs_err::canonicalize(dir)?;
        let id = crate::reference::Digest::of(dir.as_os_str().as_encoded_bytes()).hex()[..16]
            .to_string();
        let raw = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        Ok(Project {
            name: crate::runtime::host_name(&raw),
            dir,
            id,
        })
    }

    /// `envs/<id>/`: home, per-entry runtime state, and the project record.
    pub fn state_dir(&self, store: &Store) -> PathBuf {
        store.root().join("envs").join(&self.id)
    }

    /// Create the env's directories and record the project, its image and the time of this use:
    /// gc keeps what live envs' records name.
    pub fn touch(
        &self,
        store: &Store,
        image: &str,
        resolved: &Digest,
        manifest: &Digest,
    ) -> Result<PathBuf, StoreError> {
        let state = self.state_dir(store);
        let path = state.join(ENV_RECORD);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The warm path writes nothing: a record naming the same image, used within the hour,
        // is current enough for gc's "last used".
        let current = fs_err::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<EnvRecord>(&b).ok())
            .is_some_and(|r| {
                r.project == self.dir
                    && r.image == image
                    && &r.resolved == resolved
                    && &r.manifest == manifest
                    && now.saturating_sub(r.last_used) < 3600
            });
        if current && state.join("home").is_dir() {
            return Ok(state);
        }
        fs_err::create_dir_all(state.join("home"))?;
        let record = EnvRecord {
            project: self.dir.clone(),
            last_used: now,
            image: image.to_string(),
            resolved: resolved.clone(),
            manifest: manifest.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        store.write_atomic(&path, &bytes)?;
        Ok(state)
    }
}

/// The user's git identity on the host: `user.name` and `user.email` from git's global files
/// (`$XDG_CONFIG_HOME/git/config`, then `~/.gitconfig`, the later winning, as git reads them),
/// as a gitconfig of just those two keys; `None` when neither is set. Read by hand, not by
/// running git: nothing else of the host's git config (credentials, aliases, hooks) is taken.
pub fn git_identity(home: &Path, xdg_config: Option<&Path>) -> Option<String> {
    let files = [
        xdg_config
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join(".config"))
            .join("git/config"),
        home.join(".gitconfig"),
    ];
    let (mut name, mut email) = (None, None);
    for f in files {
        let Ok(text) = fs_err::read_to_string(&f) else {
            continue;
        };
        let mut in_user = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_user = line
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .eq_ignore_ascii_case("user");
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if !in_user {
                continue;
            }
            let v = gitconfig_value(v);
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(v),
                "email" => email = Some(v),
                _ => {}
            }
        }
    }
    if name.is_none() && email.is_none() {
        return None;
    }
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from(
        "# Your git identity, copied from the host by devenv at the first entry; edit freely\n\
         # (devenv never writes this file again). [container] git_identity = false: not copied.\n[user]\n",
    );
    if let Some(n) = name {
        out.push_str(&format!("\tname = {}\n", quote(&n)));
    }
    if let Some(e) = email {
        out.push_str(&format!("\temail = {}\n", quote(&e)));
    }
    Some(out)
}

/// A gitconfig value as git reads it: quotes removed, `\"`, `\\`, `\n`, `\t` unescaped, a `#`
/// or `;` outside quotes starting a comment, surrounding blanks dropped.
fn gitconfig_value(raw: &str) -> String {
    let (mut out, mut quoted, mut chars) = (String::new(), false, raw.trim().chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            },
            '#' | ';' if !quoted => break,
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

/// The environment of a step devenv runs as root in the namespace (a tool-layer build step, a
/// lock resolution): the image's `Env`, the host's allow-list (proxies, locale), then what
/// makes apt, pip and uv quiet, non-interactive and reproducible, then `extra`. The one list
/// both `build` and `lock` start from.
pub fn root_step_env(image_env: &[String], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let host_names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let mut ours: Vec<(&str, String)> = vec![
        ("HOME", "/root".into()),
        ("USER", "root".into()),
        ("LOGNAME", "root".into()),
        ("DEBIAN_FRONTEND", "noninteractive".into()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1".into()),
        ("PIP_NO_INPUT", "1".into()),
        ("PIP_ROOT_USER_ACTION", "ignore".into()),
        ("UV_PYTHON_DOWNLOADS", "never".into()),
        ("UV_NO_PROGRESS", "1".into()),
        ("DEVENV", "1".into()),
    ];
    ours.extend(extra.iter().cloned());
    container_env(
        image_env,
        &BTreeMap::new(),
        &|k| root_step_host(k, |k| std::env::var(k).ok()),
        &host_names,
        &ours,
    )
}

/// The host's `k` as a root step sees it.
fn root_step_host(k: &str, host: impl Fn(&str) -> Option<String>) -> Option<String> {
    if INDEX_VARS.contains(&k) {
        None
    } else {
        host(k)
    }
}

/// The container's environment: the image's `Env`, then env.toml's `[env]`, then the host's
/// allow-listed variables, then what devenv itself sets. Later sources win.
pub fn container_env(
    image_env: &[String],
    env_toml: &BTreeMap<String, String>,
    host: &dyn Fn(&str) -> Option<String>,
    host_names: &[String],
    ours: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    for (k, v) in env_toml {
        env.insert(k.clone(), v.clone());
    }
    let by_prefix = |k: &str| HOST_PREFIXES.iter().any(|p| k.starts_with(p));
    let allowed = |k: &str| HOST_ALLOW.contains(&k) || INDEX_VARS.contains(&k) || by_prefix(k);
    for k in HOST_ALLOW
        .iter()
        .chain(INDEX_VARS)
        .map(|s| s.to_string())
        .chain(host_names.iter().filter(|k| by_prefix(k)).cloned())
    {
        if allowed(&k)
            && let Some(v) = host(&k)
        {
            env.insert(k, v);
        }
    }
    for (k, v) in ours {
        env.insert(k.to_string(), v.clone());
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_identity_takes_only_name_and_email_later_files_winning() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        fs_err::create_dir_all(home.join(".config/git")).unwrap();
        fs_err::write(
            home.join(".config/git/config"),
            "[user]\n\tname = Old Name\n\temail = a@example.invalid\n",
        )
        .unwrap();
        fs_err::write(
            home.join(".gitconfig"),
            "[credential]\n\thelper = store\n[User]\n  name = \"Ada \\\"L\\\"\"\n[url \"x\"]\n\tname = no\n",
        )
        .unwrap();
        let text = git_identity(home, None).unwrap();
        assert!(text.contains("\tname = \"Ada \\\"L\\\"\"\n"), "{text}");
        assert!(text.contains("\temail = \"a@example.invalid\"\n"), "{text}");
        assert!(!text.contains("helper"), "{text}");
        assert_eq!(git_identity(&home.join("nobody"), None), None);
    }

    #[test]
    fn env_precedence_image_then_toml_then_host_then_ours() {
        let image = vec![
            "PATH=/img/bin".to_string(),
            "A=image".into(),
            "B=image".into(),
            "LANG=C".into(),
        ];
        let toml: BTreeMap<String, String> =
            [("B".into(), "toml".into()), ("C".into(), "toml".into())].into();
        let host = |k: &str| match k {
            "LANG" => Some("en_US.UTF-8".to_string()),
            "LC_ALL" => Some("C.UTF-8".to_string()),
            "SECRET" => Some("no".to_string()),
            _ => None,
        };
        let names = vec!["LC_ALL".to_string(), "SECRET".to_string()];
        let env = container_env(&image, &toml, &host, &names, &[("DEVENV", "1".into())]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/img/bin"));
        assert_eq!(get("A"), Some("image"));
        assert_eq!(get("B"), Some("toml"));
        assert_eq!(get("C"), Some("toml"));
        assert_eq!(get("LANG"), Some("en_US.UTF-8"));
        assert_eq!(get("LC_ALL"), Some("C.UTF-8"));
        assert_eq!(get("SECRET"), None);
        assert_eq!(get("DEVENV"), Some("1"));
    }

    #[test]
    fn a_job_steps_slurm_and_mpi_variables_come_in() {
        let vars = [
            ("SLURM_PROCID", "1"),
            ("SLURMD_NODENAME", "n1"),
            ("PMIX_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURMISH", "no"),
        ];
        let host = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let names: Vec<String> = vars.iter().map(|(n, _)| n.to_string()).collect();
        let env = container_env(&[], &BTreeMap::new(), &host, &names, &[]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (k, v) in &vars[..6] {
            assert_eq!(get(k), Some(*v), "{k}");
        }
        assert_eq!(get("SLURMISH"), None);
    }

    #[test]
    fn the_users_index_reaches_a_shell_but_not_a_root_step() {
        let host = |k: &str| (k == "PIP_INDEX_URL").then(|| "https://mirror.example/simple".into());
        let shell = container_env(&[], &BTreeMap::new(), &host, &[], &[]);
        assert!(
            shell
                .iter()
                .any(|(k, v)| k == "PIP_INDEX_URL" && v == "https://mirror.example/simple")
        );
        let step = container_env(
            &[],
            &BTreeMap::new(),
            &|k| root_step_host(k, host),
            &[],
            &[],
        );
        assert!(!step.iter().any(|(k, _)| k == "PIP_INDEX_URL"), "{step:?}");
    }

    #[test]
    fn default_path_when_image_has_none() {
        let env = container_env(&[], &BTreeMap::new(), &|_| None, &[], &[]);
        assert_eq!(env, vec![("PATH".to_string(), DEFAULT_PATH.to_string())]);
    }
}
