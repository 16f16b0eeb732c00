//! Resolution inside the base image: a throwaway container (root in the namespace, host network)
//! runs the image's own tools (its interpreter, apt) and devenv's pinned uv (bound read-only)
//! and leaves its answers in a host directory mounted at `/devenv-out`. Scripts take no text from env.toml: requirements go through files, package
//! names are checked first. What the tools print is parsed here by pure functions, tested as
//! tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::tags::{Interpreter, best_wheel};
use super::{AptPackage, LockError, PythonPackage, normalize};
use crate::config::{Mount, Network};
use crate::runtime::{self, Spec};
use crate::store::Store;
use crate::tools::uv::Uv;

/// Where the host directory with the scripts' inputs and outputs appears inside.
const OUT: &str = "/devenv-out";
/// The store's uv cache: index pages and metadata uv read while resolving serve the next
/// resolution, and wheels it fetched serve builds.
const UV_CACHE: &str = "/devenv-cache/uv";

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
        fs_err::read_to_string(self.staging.path().join("out").join(name)).unwrap_or_default()
    }
}

impl Sandbox<'_> {
    /// Run `script` under `/bin/sh` with `files` written to `/devenv-out` first and `uv` (when
    /// given) at [`crate::tools::uv::DIR`].
    fn run(&self, script: &str, files: &[(&str, &str)], uv: Option<&Uv>) -> Result<Ran, LockError> {
        let staging = self.store.staging_dir("resolve")?;
        let dir = staging.path().to_path_buf();
        for d in ["out", "state", "home", "work"] {
            fs_err::create_dir_all(dir.join(d))?;
        }
        for (name, content) in files {
            fs_err::write(dir.join("out").join(name), content)?;
        }
        let cache = crate::tools::uv::work_dir(self.store).join("cache");
        fs_err::create_dir_all(&cache)?;
        let env = crate::project::root_step_env(
            &self.image_env,
            &[("UV_CACHE_DIR", UV_CACHE.to_string())],
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
                    target: PathBuf::from(UV_CACHE),
                    read_only: false,
                },
            ]
            .into_iter()
            .chain(uv.map(Uv::mount))
            .collect(),
            upper: None,
            output: None,
            gpu: None,
            sandbox: Default::default(),
            quiet: false,
            pod: None,
        };
        let status = runtime::run(&spec)?;
        Ok(Ran { status, staging })
    }
}

pub(super) struct PythonRequest<'a> {
    pub pip: &'a [String],
    /// The content of `[packages].requirements`.
    pub requirements: Option<&'a str>,
    /// The user's index (`None`: uv's own default).
    pub default_index: Option<&'a str>,
    /// A recipe variant's index, resolved: searched beside the default one.
    pub index: Option<&'a str>,
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
    // Both indexes are searched alike (`--index-strategy unsafe-best-match`): torch's `+cpu`
    // build outranks PyPI's plain one for `torch==2.5.1`, and the dependencies come from either.
    if let Some(u) = req.default_index {
        text.push_str(&format!("--index-url {u}\n"));
    }
    if let Some(u) = req.index {
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

/// Resolve Python requirements with the pinned uv (`uv pip compile --format pylock.toml`) for
/// the image's interpreter, in a venv like the one the build makes; then keep, of every
/// distribution, the one file that interpreter installs (see [`super::tags`]).
pub(super) fn python(
    sb: &Sandbox<'_>,
    uv: &Uv,
    req: &PythonRequest<'_>,
) -> Result<PythonResolved, LockError> {
    let bin = crate::tools::uv::BIN;
    let script = format!(
        "command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}\n\
         python3 {OUT}/facts.py > {OUT}/interpreter.json 2> {OUT}/facts.log || exit {NO_PYTHON}\n\
         python3 -m venv --without-pip /opt/devenv/venv > {OUT}/venv.log 2>&1 || exit {NO_VENV}\n\
         [ -s {OUT}/requirements.txt ] || exit 0\n\
         {bin} pip compile --no-config --quiet --format pylock.toml --no-header \
         --python /opt/devenv/venv/bin/python --python-preference only-system \
         --index-strategy unsafe-best-match \
         --output-file {OUT}/pylock.toml {OUT}/requirements.txt > {OUT}/uv.log 2>&1 || exit {PIP_FAILED}\n"
    );
    let request = python_request_file(req);
    // Only an interpreter to check: no resolution.
    let request = if req.pip.is_empty() && req.requirements.is_none() {
        String::new()
    } else {
        request
    };
    let constraints: String = req.constraints.iter().map(|c| format!("{c}\n")).collect();
    let ran = sb.run(
        &script,
        &[
            ("facts.py", super::tags::FACTS_SCRIPT),
            ("requirements.txt", &request),
            ("constraints.txt", &constraints),
            ("user-requirements.txt", req.requirements.unwrap_or("")),
        ],
        Some(uv),
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
                log: resolver_words(&ran.read("uv.log")),
            });
        }
        status => {
            return Err(LockError::Container {
                status,
                log: tail(&ran.read("uv.log"), 10),
            });
        }
    }
    let interpreter: Interpreter =
        serde_json::from_str(&ran.read("interpreter.json")).map_err(|e| LockError::Report {
            message: format!(
                "the interpreter's facts: {e}\n{}",
                tail(&ran.read("facts.log"), 10)
            ),
        })?;
    let packages = if request.is_empty() {
        Vec::new()
    } else {
        parse_pylock(&ran.read("pylock.toml"), &interpreter.tags())?
    };
    Ok(PythonResolved {
        interpreter: interpreter.version_string(),
        packages,
    })
}

/// The resolver's own words: from its first error line (`error:`, `×`) on, else the last lines.
fn resolver_words(log: &str) -> String {
    let start = log
        .lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with("error:") || l.starts_with('×') || l.starts_with("ERROR:")
        })
        .map(|i| log.lines().skip(i).collect::<Vec<_>>().join("\n"));
    match start {
        Some(text) => tail(&text, 30),
        None => tail(log, 15),
    }
}

/// The indented last `n` non-empty lines of `text`, for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// pylock.toml (PEP 751) as uv writes it for one interpreter.
#[derive(Deserialize)]
struct Pylock {
    #[serde(default)]
    packages: Vec<PylockPackage>,
}

#[derive(Deserialize)]
struct PylockPackage {
    name: String,
    version: Option<String>,
    #[serde(default)]
    wheels: Vec<PylockFile>,
    sdist: Option<PylockFile>,
    archive: Option<PylockFile>,
    vcs: Option<toml::Value>,
    directory: Option<toml::Value>,
}

#[derive(Deserialize)]
struct PylockFile {
    name: Option<String>,
    url: Option<String>,
    path: Option<String>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

impl PylockFile {
    fn file_name(&self) -> Option<String> {
        self.name
            .clone()
            .or_else(|| self.url.as_deref().and_then(crate::tools::fetch::file_name))
            .or_else(|| {
                let path = self.path.as_deref()?;
                path.rsplit('/').next().map(str::to_string)
            })
    }
}

/// Every distribution of uv's pylock.toml, each with the one file an interpreter with `tags`
/// (best first) installs: its best wheel, else the source distribution. Sorted.
pub(super) fn parse_pylock(text: &str, tags: &[String]) -> Result<Vec<PythonPackage>, LockError> {
    let lock: Pylock = toml::from_str(text).map_err(|e| LockError::Report {
        message: e.message().to_string(),
    })?;
    let mut out = Vec::new();
    for p in lock.packages {
        let name = normalize(&p.name);
        let unlockable = |kind: &str| LockError::Unlockable {
            name: name.clone(),
            source_kind: kind.into(),
        };
        if p.vcs.is_some() {
            return Err(unlockable("a version control checkout"));
        }
        if p.directory.is_some() {
            return Err(unlockable("a local directory"));
        }
        let version = p.version.clone().ok_or_else(|| LockError::Report {
            message: format!("`{name}` has no version"),
        })?;
        let names: Vec<String> = p
            .wheels
            .iter()
            .map(|w| w.file_name().unwrap_or_default())
            .collect();
        let file = match best_wheel(&names, tags) {
            Some(i) => &p.wheels[i],
            None => match (&p.sdist, &p.archive) {
                (Some(f), _) | (None, Some(f)) => f,
                (None, None) => {
                    return Err(LockError::NoFile {
                        name,
                        version,
                        files: names,
                    });
                }
            },
        };
        let Some(url) = file.url.clone() else {
            return Err(match &file.path {
                Some(_) => unlockable("a local file"),
                None => LockError::Report {
                    message: format!("`{name}`: a file without a URL"),
                },
            });
        };
        let sha256 = match file.hashes.get("sha256") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                h.to_ascii_lowercase()
            }
            _ => return Err(LockError::Unhashed { name, url }),
        };
        out.push(PythonPackage {
            name,
            version,
            url,
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
    let ran = sb.run(&script, &[("apt.txt", &list)], None)?;
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

    /// bookworm's CPython 3.11 on x86_64.
    fn cp311() -> Vec<String> {
        let i: super::super::tags::Interpreter = serde_json::from_str(
            r#"{"implementation": "cpython", "version": [3, 11, 2], "platform": "linux-x86_64",
                "soabi": "cpython-311-x86_64-linux-gnu", "glibc": "glibc 2.36", "musl": null}"#,
        )
        .unwrap();
        i.tags()
    }

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const H3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    /// Shaped as `uv pip compile --format pylock.toml` writes it (uv 0.13).
    #[test]
    fn pylock_gives_one_file_per_distribution_the_best_wheel() {
        let text = format!(
            r#"lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11.2"

[[packages]]
name = "Typing_Extensions"
version = "4.12.2"
sdist = {{ url = "https://f/typing_extensions-4.12.2.tar.gz", upload-time = 2024-06-07T18:52:15Z, size = 85321, hashes = {{ sha256 = "{H1}" }} }}
wheels = [{{ url = "https://f/typing_extensions-4.12.2-py3-none-any.whl", upload-time = 2024-06-07T18:52:13Z, size = 37438, hashes = {{ sha256 = "{H2}" }} }}]

[[packages]]
name = "numpy"
version = "2.1.3"
sdist = {{ url = "https://f/numpy-2.1.3.tar.gz", hashes = {{ sha256 = "{H1}" }} }}
wheels = [
    {{ url = "https://f/numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", hashes = {{ sha256 = "{H1}" }} }},
    {{ url = "https://f/numpy-2.1.3-cp311-cp311-manylinux_2_28_x86_64.whl", hashes = {{ sha256 = "{H3}" }} }},
]

[[packages]]
name = "only-sdist"
version = "0.1"
sdist = {{ url = "https://f/only_sdist-0.1.tar.gz", hashes = {{ sha256 = "{H2}" }} }}
"#
        );
        let p = parse_pylock(&text, &cp311()).expect("parses");
        let got: Vec<(&str, &str, &str)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.url.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "numpy",
                    "2.1.3",
                    "https://f/numpy-2.1.3-cp311-cp311-manylinux_2_28_x86_64.whl"
                ),
                ("only-sdist", "0.1", "https://f/only_sdist-0.1.tar.gz"),
                (
                    "typing-extensions",
                    "4.12.2",
                    "https://f/typing_extensions-4.12.2-py3-none-any.whl"
                ),
            ]
        );
        assert_eq!(p[0].sha256, H3);
        assert_eq!(p[2].sha256, H2);
    }

    #[test]
    fn pylock_without_a_fitting_file_hash_or_url_is_refused() {
        let none_fits = format!(
            "[[packages]]\nname = \"a\"\nversion = \"1\"\nwheels = [{{ url = \"https://f/a-1-cp312-cp312-manylinux_2_17_x86_64.whl\", hashes = {{ sha256 = \"{H1}\" }} }}]\n"
        );
        let err = parse_pylock(&none_fits, &cp311()).unwrap_err();
        assert!(matches!(err, LockError::NoFile { .. }), "{err}");
        assert!(err.to_string().contains("a-1-cp312-cp312"), "{err}");
        let no_hash = "[[packages]]\nname = \"a\"\nversion = \"1\"\nwheels = [{ url = \"https://f/a-1-py3-none-any.whl\", hashes = { md5 = \"00\" } }]\n";
        assert!(matches!(
            parse_pylock(no_hash, &cp311()),
            Err(LockError::Unhashed { .. })
        ));
        let vcs = "[[packages]]\nname = \"a\"\nvcs = { type = \"git\", url = \"https://x/a\", commit-id = \"00\" }\n";
        assert!(matches!(
            parse_pylock(vcs, &cp311()),
            Err(LockError::Unlockable { .. })
        ));
        let dir = "[[packages]]\nname = \"a\"\ndirectory = { path = \"./a\" }\n";
        assert!(matches!(
            parse_pylock(dir, &cp311()),
            Err(LockError::Unlockable { .. })
        ));
        let local = format!(
            "[[packages]]\nname = \"a\"\nversion = \"1\"\nwheels = [{{ path = \"a-1-py3-none-any.whl\", hashes = {{ sha256 = \"{H1}\" }} }}]\n"
        );
        assert!(matches!(
            parse_pylock(&local, &cp311()),
            Err(LockError::Unlockable { .. })
        ));
        assert!(matches!(
            parse_pylock("packages = 3", &cp311()),
            Err(LockError::Report { .. })
        ));
        assert_eq!(
            parse_pylock("lock-version = \"1.0\"\n", &cp311()).unwrap(),
            []
        );
    }

    #[test]
    fn resolver_words_start_at_its_error() {
        let log = "Using Python 3.11.2 environment at: /opt/devenv/venv\n\
                   \u{d7} No solution found when resolving dependencies:\n\
                   \u{2570}\u{2500}\u{25b6} Because there is no version of nosuch==1.0 and you require nosuch==1.0, we can conclude that your requirements are unsatisfiable.\n";
        let words = resolver_words(log);
        assert!(words.starts_with("  \u{d7} No solution found"), "{words}");
        assert!(
            words.contains("there is no version of nosuch==1.0"),
            "{words}"
        );
        assert!(!words.contains("Using Python"), "{words}");
        assert_eq!(resolver_words("a\nb\n"), "  a\n  b");
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
        let c = ["numpy==1.26.4".to_string()];
        let mut req = PythonRequest {
            pip: &pip,
            requirements: Some("six\n"),
            default_index: Some("https://mirror.example/simple"),
            index: Some("https://torch.example/whl/cpu"),
            constraints: &c,
        };
        assert_eq!(
            python_request_file(&req),
            "--index-url https://mirror.example/simple\n\
             --extra-index-url https://torch.example/whl/cpu\n\
             -c /devenv-out/constraints.txt\n\
             -r /devenv-out/user-requirements.txt\n\
             torch==2.5.1\n"
        );
        // Without the user's index, uv's own default stays and the recipe's is added to it.
        req.default_index = None;
        assert!(
            python_request_file(&req)
                .starts_with("--extra-index-url https://torch.example/whl/cpu\n-c ")
        );
    }
}
