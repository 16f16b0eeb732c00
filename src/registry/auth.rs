//! Registry authentication: `WWW-Authenticate` challenges and where credentials come from.
//!
//! Credentials are read from Docker's `config.json` (`auths`, `credHelpers`, `credsStore`) and
//! podman's `auth.json`, in that order. A secret is only ever sent to the registry it was
//! stored for (or the token realm that registry names); it is never logged, and a broken
//! credential helper degrades to anonymous access with a note rather than failing the pull.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parse every challenge in the `WWW-Authenticate` header values, ignoring schemes we do not
/// speak and parameters we do not need. Bearer challenges come first.
pub fn parse_challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for header in headers {
        for (scheme, params) in split_challenges(header) {
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => {
                    if let Some(realm) = params.get("realm") {
                        out.push(Challenge::Bearer {
                            realm: realm.clone(),
                            service: params.get("service").cloned(),
                            scope: params.get("scope").cloned(),
                        });
                    }
                }
                "basic" => out.push(Challenge::Basic),
                _ => {}
            }
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

/// RFC 7235: `scheme param=value, param="quoted, value", other-scheme …`.
fn split_challenges(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray `=` or `"`: skip it rather than loop forever.
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch_len = header[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&header[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push((word, BTreeMap::new()));
        }
    }
    out
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in a debug log.
        write!(f, "Credentials {{ username: {:?}, .. }}", self.username)
    }
}

/// The user name docker uses for an OAuth2 refresh token ("identity token"): the password is
/// then exchanged for an access token by a POST to the token realm, never sent as basic auth.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USER
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// What a lookup found: the credentials, and a sentence about where we looked, for hints.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    pub credentials: Option<Credentials>,
    /// "credentials for ghcr.io from /home/u/.docker/config.json", or what was searched.
    pub searched: String,
}

/// Where credentials live. [`CredentialStore::from_env`] finds the files the way docker and
/// podman do; tests build one with explicit paths.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    /// Docker's `config.json`.
    pub docker_config: Option<PathBuf>,
    /// podman's `auth.json`.
    pub podman_auth: Option<PathBuf>,
    /// Where `docker-credential-*` helpers are; `None`: found on `PATH`.
    pub helper_dir: Option<PathBuf>,
}

impl CredentialStore {
    pub fn from_env() -> CredentialStore {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let docker_config = var("DOCKER_CONFIG")
            .map(|d| d.join("config.json"))
            .or_else(|| var("HOME").map(|h| h.join(".docker/config.json")));
        let podman_auth = var("REGISTRY_AUTH_FILE")
            .or_else(|| var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
        CredentialStore {
            docker_config,
            podman_auth,
            helper_dir: None,
        }
    }

    /// The credentials for `repository` on `registry` (as the image reference names it:
    /// `docker.io`, `ghcr.io`, `localhost:5000`).
    pub fn lookup(&self, registry: &str, repository: &str) -> Lookup {
        let mut notes = Vec::new();
        let mut read = Vec::new();
        for (path, is_docker) in [(&self.docker_config, true), (&self.podman_auth, false)] {
            let Some(path) = path else { continue };
            let file = match read_auth_file(path) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("{e}");
                    notes.push(e);
                    continue;
                }
            };
            read.push(path.display().to_string());
            let found = if is_docker {
                docker_lookup(
                    &file,
                    path,
                    self.helper_dir.as_deref(),
                    registry,
                    repository,
                    &mut notes,
                )
            } else {
                auths_lookup(&file.auths, registry, repository)
            };
            match found {
                Ok(Some(c)) => {
                    return Lookup {
                        credentials: Some(c),
                        searched: format!("credentials for {registry} from {}", path.display()),
                    };
                }
                Ok(None) => {}
                Err(e) => notes.push(format!("{}: {e}", path.display())),
            }
        }
        let mut searched = if !read.is_empty() {
            format!("no credentials for {registry} in {}", read.join(" or "))
        } else {
            let candidates: Vec<String> = [&self.docker_config, &self.podman_auth]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect();
            match candidates.as_slice() {
                [] => format!(
                    "no credentials for {registry}: no credential file is configured (DOCKER_CONFIG, HOME, REGISTRY_AUTH_FILE and XDG_RUNTIME_DIR are unset)"
                ),
                [one] => format!("no credentials for {registry}: {one} does not exist"),
                many => format!(
                    "no credentials for {registry}: none of {} exists",
                    many.join(", ")
                ),
            }
        };
        for n in notes {
            searched.push_str(&format!(" ({n})"));
        }
        Lookup {
            credentials: None,
            searched,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// `Ok(None)` when the file does not exist; `Err` with a message naming it when it is unreadable.
fn read_auth_file(path: &Path) -> Result<Option<AuthFile>, String> {
    let text = match fs_err::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/v2/` → `host:5000`; a key
/// with a repository path (podman allows `quay.io/org/repo`) keeps its path.
fn normalize_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = match host.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    };
    // Docker's own paths (`/v1/`, `/v2/`) are not repositories.
    let path = path.trim_matches('/');
    if path.is_empty() || path == "v1" || path == "v2" {
        host
    } else {
        format!("{host}/{path}")
    }
}

/// How much of `registry/repository` a normalised key covers; `None` if it does not apply.
fn key_specificity(key: &str, registry: &str, repository: &str) -> Option<usize> {
    let key = normalize_key(key);
    let full = format!("{registry}/{repository}");
    if key == registry {
        Some(0)
    } else if full == key || full.starts_with(&format!("{key}/")) {
        Some(key.len())
    } else {
        None
    }
}

fn best_key<'a, V>(
    map: &'a BTreeMap<String, V>,
    registry: &str,
    repository: &str,
) -> Option<(&'a String, &'a V)> {
    map.iter()
        .filter_map(|(k, v)| key_specificity(k, registry, repository).map(|s| (s, k, v)))
        .max_by_key(|(s, _, _)| *s)
        .map(|(_, k, v)| (k, v))
}

fn auths_lookup(
    auths: &BTreeMap<String, AuthEntry>,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    let Some((key, entry)) = best_key(auths, registry, repository) else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("the `auth` of `{key}` is not base64"))?;
        let raw =
            String::from_utf8(raw).map_err(|_| format!("the `auth` of `{key}` is not UTF-8"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| format!("the `auth` of `{key}` is not `user:password`"))?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials {
            username: IDENTITY_TOKEN_USER.into(),
            password: token.into(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        // `{}` entries are placeholders docker writes when a credsStore holds the secret.
        _ => Ok(None),
    }
}

fn docker_lookup(
    file: &AuthFile,
    path: &Path,
    helper_dir: Option<&Path>,
    registry: &str,
    repository: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Credentials>, String> {
    if let Some((key, helper)) = best_key(&file.cred_helpers, registry, repository) {
        return run_helper(helper, key, helper_dir)
            .map_err(|e| format!("credHelpers for {registry} in {}: {e}", path.display()));
    }
    if let Some(c) = auths_lookup(&file.auths, registry, repository)? {
        return Ok(Some(c));
    }
    if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
        let server = if registry == crate::reference::DOCKER_HUB {
            "https://index.docker.io/v1/"
        } else {
            registry
        };
        match run_helper(store, server, helper_dir) {
            Ok(c) => return Ok(c),
            Err(e) => notes.push(format!("credsStore in {}: {e}", path.display())),
        }
    }
    Ok(None)
}

/// How long a credential helper may take: one that waits for a desktop keyring's unlock
/// dialog nobody sees must not hang a pull (or a CI job) forever.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `docker-credential-<name> get`, the server on stdin, `{"Username","Secret"}` on stdout.
/// `Ok(None)` when the helper has no credentials for the server.
fn run_helper(name: &str, server: &str, dir: Option<&Path>) -> Result<Option<Credentials>, String> {
    run_helper_within(name, server, dir, HELPER_TIMEOUT)
}

fn run_helper_within(
    name: &str,
    server: &str,
    dir: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<Option<Credentials>, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("`{name}` is not a credential helper name"));
    }
    let program = format!("docker-credential-{name}");
    tracing::debug!(helper = %program, server, "asking credential helper");
    let path = dir.map_or_else(|| PathBuf::from(&program), |d| d.join(&program));
    let mut child = Command::new(&path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is fine; its answer says what happened.
        let _ = stdin.write_all(server.as_bytes());
    }
    // Waited for on a thread, so that a helper that never answers can be killed.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("running {program}: {e}"))?,
        Err(_) => {
            // The waiting thread reaps it once it is dead.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(format!(
                "{program} get gave no answer within {} s and was stopped",
                timeout.as_secs()
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = [stdout.trim(), stderr.trim()].join(" ");
        return Err(format!("{program} get: {}: {}", out.status, msg.trim()));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer = serde_json::from_str(&stdout)
        .map_err(|e| format!("{program} get answered something that is not JSON: {e}"))?;
    if a.username.is_empty() && a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        ]);
        assert_eq!(
            c,
            [Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull".into()),
            }]
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            [Challenge::Basic]
        );
        // Several challenges in one header, odd spacing, a quoted comma, an unknown scheme;
        // bearer sorts first.
        let c = parse_challenges([
            r#"Basic realm="a, b" , Negotiate, bearer realm=https://h/t , scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            c,
            [
                Challenge::Bearer {
                    realm: "https://h/t".into(),
                    service: None,
                    scope: Some("repository:a/b:pull,push".into()),
                },
                Challenge::Basic
            ]
        );
        // Garbage neither panics nor invents a challenge.
        assert!(parse_challenges(["", "=\"", "Bearer", "Bearer service=x"]).is_empty());
        assert_eq!(
            parse_challenges([r#"Bearer realm="a\"b""#]),
            [Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            }]
        );
    }

    #[test]
    fn normalizes_keys() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_key("http://localhost:5000/v2/"), "localhost:5000");
        assert_eq!(normalize_key("GHCR.io"), "ghcr.io");
        assert_eq!(normalize_key("quay.io/org/repo"), "quay.io/org/repo");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs_err::write(&p, text).unwrap();
        p
    }

    /// An executable script at `dir/name`, written by a `cp` of its own: a file this process
    /// had open for writing could still be open in a child another test thread forked
    /// meanwhile, and exec(2) of it would then fail with ETXTBSY.
    fn write_executable(dir: &Path, name: &str, text: &str) -> PathBuf {
        let src = write(dir, &format!("{name}.src"), text);
        let p = dir.join(name);
        let ok = std::process::Command::new("cp")
            .arg(&src)
            .arg(&p)
            .status()
            .unwrap();
        assert!(ok.success());
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "config.json",
            &format!(
                r#"{{"auths":{{
                  "https://index.docker.io/v1/":{{"auth":"{}"}},
                  "ghcr.io":{{"username":"gh","password":"tok"}},
                  "http://localhost:5000":{{"auth":"{}"}},
                  "quay.io":{{}},
                  "bad.example":{{"auth":"!!!"}}
                }},"HttpHeaders":{{"User-Agent":"x"}}}}"#,
                b64("hub:secret:with:colons"),
                b64("local:pw")
            ),
        );
        let store = CredentialStore {
            docker_config: Some(cfg.clone()),
            podman_auth: None,
            helper_dir: None,
        };
        let c = store
            .lookup("docker.io", "library/python")
            .credentials
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hub", "secret:with:colons")
        );
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", b64("hub:secret:with:colons"))
        );
        let c = store.lookup("ghcr.io", "org/img").credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("gh", "tok"));
        assert_eq!(
            store
                .lookup("localhost:5000", "a")
                .credentials
                .unwrap()
                .username,
            "local"
        );
        // An empty placeholder is no credentials; a port must match exactly.
        let none = store.lookup("quay.io", "a");
        assert!(none.credentials.is_none());
        assert!(
            none.searched.contains(&cfg.display().to_string()),
            "{}",
            none.searched
        );
        assert!(store.lookup("localhost:5001", "a").credentials.is_none());
        let bad = store.lookup("bad.example", "a");
        assert!(bad.credentials.is_none());
        assert!(bad.searched.contains("not base64"), "{}", bad.searched);
    }

    #[test]
    fn podman_auth_json_and_per_repository_keys() {
        let dir = tempfile::tempdir().unwrap();
        let auth = write(
            dir.path(),
            "auth.json",
            &format!(
                r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"quay.io/team/app":{{"auth":"{}"}}}}}}"#,
                b64("any:1"),
                b64("team:2")
            ),
        );
        let store = CredentialStore {
            docker_config: Some(dir.path().join("missing.json")),
            podman_auth: Some(auth),
            helper_dir: None,
        };
        assert_eq!(
            store
                .lookup("quay.io", "team/app")
                .credentials
                .unwrap()
                .username,
            "team"
        );
        assert_eq!(
            store
                .lookup("quay.io", "team/application")
                .credentials
                .unwrap()
                .username,
            "any"
        );
        let none = store.lookup("ghcr.io", "x");
        assert!(none.credentials.is_none());
        assert!(none.searched.contains("auth.json"), "{}", none.searched);
    }

    #[test]
    fn a_credential_helper_that_never_answers_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let helper = write_executable(
            dir.path(),
            "docker-credential-stuck",
            "#!/bin/sh\nexec sleep 600\n",
        );
        fs_err::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = std::time::Instant::now();
        let e = run_helper_within(
            "stuck",
            "ghcr.io",
            Some(dir.path()),
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.contains("gave no answer"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn credential_helpers_are_run_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        // A fake helper that answers only for ghcr.io and records what it was asked.
        let helper = write_executable(
            dir.path(),
            "docker-credential-fake",
            &format!(
                "#!/bin/sh\nread server\necho \"$1 $server\" >> {}/asked\n\
                 if [ \"$server\" = ghcr.io ]; then echo '{{\"ServerURL\":\"ghcr.io\",\"Username\":\"u\",\"Secret\":\"s\"}}'; \
                 else echo 'credentials not found in native keychain'; exit 1; fi\n",
                dir.path().display()
            ),
        );
        fs_err::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = write(
            dir.path(),
            "config.json",
            r#"{"credHelpers":{"ghcr.io":"fake","gcr.io":"missing-helper"},"credsStore":"fake","auths":{"docker.io":{}}}"#,
        );
        let store = CredentialStore {
            docker_config: Some(cfg),
            podman_auth: None,
            helper_dir: Some(dir.path().to_path_buf()),
        };
        let lookup = |r: &str| store.lookup(r, "x/y");
        let c = lookup("ghcr.io").credentials.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "s"));
        // credsStore answers "not found": anonymous, no error.
        assert!(lookup("docker.io").credentials.is_none());
        // A missing helper is reported in the note, not as a failure.
        let missing = lookup("gcr.io");
        assert!(missing.credentials.is_none());
        assert!(
            missing
                .searched
                .contains("docker-credential-missing-helper"),
            "{}",
            missing.searched
        );
        let asked = fs_err::read_to_string(dir.path().join("asked")).unwrap();
        assert_eq!(asked, "get ghcr.io\nget https://index.docker.io/v1/\n");
        assert!(run_helper("../evil", "x", None).is_err());
    }
}
