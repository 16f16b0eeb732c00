//! Resolution inside the base image: a throwaway container (root in the namespace, host network)
//! runs the image's own tools and leaves its answers in a host directory mounted at
//! `/devenv-out`. Scripts take no text from env.toml: requirements go through files, package
//! names are checked first. What the tools print is parsed here by pure functions, tested as
//! tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{AptPackage, LockError, PythonPackage, normalize};
use crate::config::{Mount, Network};
use crate::runtime::{self, Spec};
use crate::store::Store;

/// Where the host directory with the scripts' inputs and outputs appears inside.
const OUT: &str = "/devenv-out";
/// The shared pip cache, so wheels read while resolving are not fetched again by the build.
const PIP_CACHE: &str = "/devenv-cache/pip";
/// Where the host's CA bundle appears inside (for TLS-intercepting proxies the host trusts).
const HOST_CA: &str = "/devenv-host-ca.crt";

/// The host's CA bundle: `PIP_CERT` or `SSL_CERT_FILE` when set, else the usual places. pip
/// trusts only its own bundle by default, so a host behind an intercepting proxy (whose CA is in
/// the host store, not in the image's) would see every index as self-signed.
pub(super) fn host_ca_bundle() -> Option<PathBuf> {
    let from_env = ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"]
        .iter()
        .filter_map(|k| std::env::var_os(k).map(PathBuf::from));
    let usual = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from);
    from_env
        .chain(usual)
        .filter_map(|p| fs_err::canonicalize(p).ok())
        .find(|p| p.is_file())
}

// Exit statuses the scripts use for the failures they recognise.
const NO_PYTHON: i32 = 90;
const NO_VENV: i32 = 91;
const PIP_FAILED: i32 = 92;
const NO_APT: i32 = 93;
const APT_UPDATE_FAILED: i32 = 94;
const APT_FAILED: i32 = 95;

/// The image to resolve in.
pub(super) struct Sandbox<'a> {
    pub store: &'a Store,
    /// The base image's layer directories, base first.
    pub lowers: Vec<PathBuf>,
    /// The image config's `Env`.
    pub image_env: Vec<String>,
    /// For messages.
    pub image: String,
}

/// What a script left behind.
struct Ran {
    status: i32,
    /// Keeps the output directory until the answers are read.
    staging: crate::store::Staging,
}

impl Ran {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.staging.path().join("out").join(name)).unwrap_or_default()
    }
}

impl Sandbox<'_> {
    /// Run `script` under `/bin/sh` with `files` written to `/devenv-out` first.
    fn run(&self, script: &str, files: &[(&str, &str)]) -> Result<Ran, LockError> {
        let staging = self.store.staging_dir("resolve")?;
        let dir = staging.path().to_path_buf();
        for d in ["out", "state", "home", "work"] {
            fs_err::create_dir_all(dir.join(d))?;
        }
        for (name, content) in files {
            fs_err::write(dir.join("out").join(name), content)?;
        }
        let cache = self.store.root().join("cache/pip");
        fs_err::create_dir_all(&cache)?;
        let ca = host_ca_bundle();
        let ca_env = ca.as_ref().map(|_| HOST_CA.to_string());
        let ours = [
            ("HOME", "/root".to_string()),
            ("USER", "root".to_string()),
            ("PIP_CACHE_DIR", PIP_CACHE.to_string()),
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1".to_string()),
            ("PIP_NO_INPUT", "1".to_string()),
            ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
            ("DEBIAN_FRONTEND", "noninteractive".to_string()),
        ];
        let ca_vars = ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"];
        let ours: Vec<(&str, String)> = ours
            .into_iter()
            .chain(
                ca_env
                    .iter()
                    .flat_map(|c| ca_vars.iter().map(|k| (*k, c.clone()))),
            )
            .collect();
        let host_names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        let env = crate::project::container_env(
            &self.image_env,
            &BTreeMap::new(),
            &|k| std::env::var(k).ok(),
            &host_names,
            &ours,
        );
        let spec = Spec {
            lowers: self.lowers.clone(),
            state_dir: dir.join("state"),
            project_dir: dir.join("work"),
            cwd: dir.join("work"),
            home: dir.join("home"),
            home_target: PathBuf::from("/root"),
            env,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            shell: None,
            hostname: "devenv-lock".into(),
            network: Network::Host,
            root: true,
            mounts: [
                Mount {
                    source: dir.join("out"),
                    target: PathBuf::from(OUT),
                    read_only: false,
                },
                Mount {
                    source: cache,
                    target: PathBuf::from(PIP_CACHE),
                    read_only: false,
                },
            ]
            .into_iter()
            .chain(ca.map(|source| Mount {
                source,
                target: PathBuf::from(HOST_CA),
                read_only: true,
            }))
            .collect(),
        };
        let status = runtime::run(&spec)?;
        Ok(Ran { status, staging })
    }
}

pub(super) struct PythonRequest<'a> {
    pub pip: &'a [String],
    /// The content of `[packages].requirements`.
    pub requirements: Option<&'a str>,
    pub index_url: Option<&'a str>,
    pub extra_index_urls: &'a [String],
    /// `name==version` lines pip must keep (`--update NAME` moves only NAME).
    pub constraints: &'a [String],
}

pub(super) struct PythonResolved {
    /// `3.11.2`.
    pub interpreter: String,
    pub packages: Vec<PythonPackage>,
}

/// The requirements file the resolver reads: options first, then env.toml's requirements.
fn python_request_file(req: &PythonRequest<'_>) -> String {
    let mut text = String::new();
    if let Some(u) = req.index_url {
        text.push_str(&format!("--index-url {u}\n"));
    }
    for u in req.extra_index_urls {
        text.push_str(&format!("--extra-index-url {u}\n"));
    }
    if !req.constraints.is_empty() {
        text.push_str(&format!("-c {OUT}/constraints.txt\n"));
    }
    if req.requirements.is_some() {
        text.push_str(&format!("-r {OUT}/user-requirements.txt\n"));
    }
    for p in req.pip {
        text.push_str(p);
        text.push('\n');
    }
    text
}

/// Resolve Python requirements with the image's pip, in a venv like the one the build makes.
pub(super) fn python(
    sb: &Sandbox<'_>,
    req: &PythonRequest<'_>,
) -> Result<PythonResolved, LockError> {
    let script = format!(
        "command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}\n\
         python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' > {OUT}/python-version || exit {NO_PYTHON}\n\
         python3 -m venv /opt/devenv/venv > {OUT}/venv.log 2>&1 || exit {NO_VENV}\n\
         [ -s {OUT}/requirements.txt ] || exit 0\n\
         /opt/devenv/venv/bin/pip install --dry-run --ignore-installed --quiet \
         --report {OUT}/report.json -r {OUT}/requirements.txt > {OUT}/pip.log 2>&1 || exit {PIP_FAILED}\n"
    );
    let request = python_request_file(req);
    // Only an interpreter to check: no pip run.
    let request = if req.pip.is_empty() && req.requirements.is_none() {
        String::new()
    } else {
        request
    };
    let constraints: String = req.constraints.iter().map(|c| format!("{c}\n")).collect();
    let ran = sb.run(
        &script,
        &[
            ("requirements.txt", &request),
            ("constraints.txt", &constraints),
            ("user-requirements.txt", req.requirements.unwrap_or("")),
        ],
    )?;
    match ran.status {
        0 => {}
        NO_PYTHON => {
            return Err(LockError::NoPython {
                image: sb.image.clone(),
            });
        }
        NO_VENV => {
            return Err(LockError::NoVenv {
                image: sb.image.clone(),
                log: tail(&ran.read("venv.log"), 10),
            });
        }
        PIP_FAILED => {
            return Err(LockError::Pip {
                log: pip_words(&ran.read("pip.log")),
            });
        }
        status => {
            return Err(LockError::Container {
                status,
                log: tail(&ran.read("pip.log"), 10),
            });
        }
    }
    let interpreter = ran.read("python-version").trim().to_string();
    let packages = if request.is_empty() {
        Vec::new()
    } else {
        parse_report(&ran.read("report.json"))?
    };
    Ok(PythonResolved {
        interpreter,
        packages,
    })
}

/// pip's own words: its `ERROR:` lines and what follows them, else the last lines.
fn pip_words(log: &str) -> String {
    match log.find("ERROR:") {
        Some(i) => tail(&log[i..], 30),
        None => tail(log, 15),
    }
}

/// The last `n` lines of `text`, indented for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    metadata: ReportMetadata,
    download_info: DownloadInfo,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct DownloadInfo {
    url: String,
    archive_info: Option<ArchiveInfo>,
    vcs_info: Option<serde_json::Value>,
    dir_info: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    /// `sha256=<hex>` (pip ≥ 22.2).
    hash: Option<String>,
    /// `{"sha256": "<hex>"}` (pip ≥ 23.0).
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// Every distribution pip's `--report` would install, with the sha256 of its exact file.
pub(super) fn parse_report(json: &str) -> Result<Vec<PythonPackage>, LockError> {
    let report: Report = serde_json::from_str(json).map_err(|e| LockError::Report {
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for item in report.install {
        let name = normalize(&item.metadata.name);
        let info = item.download_info;
        let source_kind = if info.vcs_info.is_some() {
            Some("a version control checkout")
        } else if info.dir_info.is_some() {
            Some("a local directory")
        } else {
            None
        };
        if let Some(kind) = source_kind {
            return Err(LockError::Unlockable {
                name,
                source_kind: kind.into(),
            });
        }
        let archive = info.archive_info;
        let sha256 = archive.as_ref().and_then(|a| {
            a.hashes.get("sha256").cloned().or_else(|| {
                a.hash
                    .as_deref()
                    .and_then(|h| h.strip_prefix("sha256="))
                    .map(str::to_string)
            })
        });
        let sha256 = match sha256 {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                h.to_ascii_lowercase()
            }
            _ => {
                return Err(LockError::Unhashed {
                    name,
                    url: info.url,
                });
            }
        };
        out.push(PythonPackage {
            name,
            version: item.metadata.version,
            url: info.url,
            sha256,
        });
    }
    out.sort();
    Ok(out)
}

/// A Debian package name (policy 5.6.1), optionally `:arch`; nothing a shell would read.
fn apt_name_ok(name: &str) -> bool {
    let (pkg, arch) = name.split_once(':').unwrap_or((name, "x"));
    pkg.len() >= 2
        && pkg.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && pkg
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
        && !arch.is_empty()
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Resolve apt packages against the image's release: what an install would add, by version.
pub(super) fn apt(sb: &Sandbox<'_>, names: &[String]) -> Result<Vec<AptPackage>, LockError> {
    if let Some(bad) = names.iter().find(|n| !apt_name_ok(n)) {
        return Err(LockError::AptName { name: bad.clone() });
    }
    // apt drops privileges to `_apt` for downloads; in a single-uid namespace there is no such
    // user to become, so the sandbox user is root (the namespace's root, unprivileged outside).
    let apt = "apt-get -o APT::Sandbox::User=root";
    let script = format!(
        "command -v apt-get >/dev/null 2>&1 || exit {NO_APT}\n\
         {apt} update > {OUT}/update.log 2>&1 || exit {APT_UPDATE_FAILED}\n\
         {apt} install --dry-run --no-install-recommends -y $(cat {OUT}/apt.txt) > {OUT}/dry-run.txt 2>&1 || exit {APT_FAILED}\n\
         dpkg-query -W -f='${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' > {OUT}/installed.txt 2>/dev/null\n\
         exit 0\n"
    );
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    let ran = sb.run(&script, &[("apt.txt", &list)])?;
    match ran.status {
        0 => {}
        NO_APT => {
            return Err(LockError::NoApt {
                image: sb.image.clone(),
            });
        }
        APT_UPDATE_FAILED => {
            return Err(LockError::AptUpdate {
                image: sb.image.clone(),
                log: tail(&ran.read("update.log"), 10),
            });
        }
        APT_FAILED => {
            let log = ran.read("dry-run.txt");
            let unknown = unknown_apt(&log);
            if !unknown.is_empty() {
                return Err(LockError::AptUnknown {
                    image: sb.image.clone(),
                    names: unknown,
                });
            }
            return Err(LockError::Apt {
                log: tail(&log, 15),
            });
        }
        status => {
            return Err(LockError::Container {
                status,
                log: tail(&ran.read("dry-run.txt"), 10),
            });
        }
    }
    Ok(apt_packages(
        names,
        &ran.read("dry-run.txt"),
        &ran.read("installed.txt"),
    ))
}

/// Names apt says it cannot find.
fn unknown_apt(log: &str) -> Vec<String> {
    let mut out: Vec<String> = log
        .lines()
        .filter_map(|l| {
            l.strip_prefix("E: Unable to locate package ")
                .or_else(|| {
                    l.strip_prefix("E: Package '")
                        .and_then(|r| r.split_once("' has no installation candidate"))
                        .map(|(n, _)| n)
                })
                .map(|n| n.trim().to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The packages an install adds (`Inst name [old] (version …)` lines of `--dry-run`), plus the
/// requested ones the image already has, at the version `dpkg-query` reports. Sorted.
pub(super) fn apt_packages(
    requested: &[String],
    dry_run: &str,
    installed: &str,
) -> Vec<AptPackage> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for line in dry_run.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or("");
        let version = rest
            .split_once('(')
            .and_then(|(_, v)| v.split_whitespace().next());
        if let (false, Some(v)) = (name.is_empty(), version) {
            found.insert(name.to_string(), v.to_string());
        }
    }
    let have: BTreeMap<&str, &str> = installed
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, version, status) = (f.next()?, f.next()?, f.next()?);
            status.starts_with("ii").then_some((name, version))
        })
        .collect();
    for name in requested {
        let bare = name.split_once(':').map_or(name.as_str(), |(n, _)| n);
        if !found.contains_key(bare)
            && let Some(v) = have.get(bare)
        {
            found.insert(bare.to_string(), v.to_string());
        }
    }
    found
        .into_iter()
        .map(|(name, version)| AptPackage { name, version })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_gives_every_distribution_with_its_hash() {
        let json = r#"{"version": "1", "pip_version": "23.0.1", "install": [
          {"download_info": {"url": "https://files.pythonhosted.org/packages/six-1.16.0-py2.py3-none-any.whl",
             "archive_info": {"hash": "sha256=8ABB2F1D86890A2DFB989F9A77CFCFD3E47C2A354B01111771326F8AA26E0254"}},
           "is_direct": false, "requested": true,
           "metadata": {"name": "six", "version": "1.16.0"}},
          {"download_info": {"url": "https://x/Typing_Extensions-4.12.2-py3-none-any.whl",
             "archive_info": {"hash": "sha256=00", "hashes": {"sha256": "04e5ca0351e0f3f85c6853954072df659d0d13fac324d0072316b67d7794700d"}}},
           "metadata": {"name": "Typing_Extensions", "version": "4.12.2"}}
        ]}"#;
        let p = parse_report(json).expect("parses");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "six");
        assert_eq!(
            p[0].sha256,
            "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
        );
        assert_eq!(p[1].name, "typing-extensions");
        assert!(p[1].sha256.starts_with("04e5ca"));
    }

    #[test]
    fn report_without_hash_or_from_a_checkout_is_refused() {
        let no_hash = r#"{"install": [{"download_info": {"url": "https://x/a.whl", "archive_info": {}},
            "metadata": {"name": "a", "version": "1"}}]}"#;
        assert!(matches!(
            parse_report(no_hash),
            Err(LockError::Unhashed { .. })
        ));
        let vcs = r#"{"install": [{"download_info": {"url": "git+https://x/a", "vcs_info": {"vcs": "git"}},
            "metadata": {"name": "a", "version": "1"}}]}"#;
        assert!(matches!(
            parse_report(vcs),
            Err(LockError::Unlockable { .. })
        ));
        assert!(matches!(
            parse_report("not json"),
            Err(LockError::Report { .. })
        ));
    }

    #[test]
    fn apt_dry_run_lines_and_preinstalled_packages() {
        let dry = "Reading package lists...\n\
                   Inst libonig5 (6.9.8-1 Debian:12.8/stable [amd64])\n\
                   Inst libjq1 (1.6-2.1 Debian:12.8/stable [amd64])\n\
                   Inst jq (1.6-2.1 Debian:12.8/stable [amd64])\n\
                   Inst tzdata [2024a-0+deb12u1] (2024b-0+deb12u1 Debian:12.8/stable [all])\n\
                   Conf jq (1.6-2.1 Debian:12.8/stable [amd64])\n";
        let installed = "bash\t5.2.15-2+b7\tii \ncurl\t7.88.1-10\tii \nrc-pkg\t1\trc \n";
        let req = ["bash".to_string(), "jq".into(), "tzdata".into()];
        let got = apt_packages(&req, dry, installed);
        let pins: Vec<String> = got
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(
            pins,
            [
                "bash=5.2.15-2+b7",
                "jq=1.6-2.1",
                "libjq1=1.6-2.1",
                "libonig5=6.9.8-1",
                "tzdata=2024b-0+deb12u1"
            ]
        );
    }

    #[test]
    fn apt_unknown_names_are_found_in_the_log() {
        let log = "Reading package lists...\nE: Unable to locate package nosuch\n\
                   E: Package 'virt' has no installation candidate\n";
        assert_eq!(unknown_apt(log), ["nosuch", "virt"]);
    }

    #[test]
    fn apt_names_reach_no_shell() {
        assert!(apt_name_ok("libgl1"));
        assert!(apt_name_ok("g++"));
        assert!(apt_name_ok("libc6:amd64"));
        assert!(!apt_name_ok("$(reboot)"));
        assert!(!apt_name_ok("a;b"));
        assert!(!apt_name_ok("Git"));
    }

    #[test]
    fn request_file_puts_options_first() {
        let pip = ["torch==2.5.1".to_string()];
        let extra = ["https://pypi.org/simple".to_string()];
        let c = ["numpy==1.26.4".to_string()];
        let text = python_request_file(&PythonRequest {
            pip: &pip,
            requirements: Some("six\n"),
            index_url: Some("https://download.pytorch.org/whl/cpu"),
            extra_index_urls: &extra,
            constraints: &c,
        });
        assert_eq!(
            text,
            "--index-url https://download.pytorch.org/whl/cpu\n\
             --extra-index-url https://pypi.org/simple\n\
             -c /devenv-out/constraints.txt\n\
             -r /devenv-out/user-requirements.txt\n\
             torch==2.5.1\n"
        );
    }
}
