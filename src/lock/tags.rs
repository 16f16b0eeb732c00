//! Wheel compatibility tags (PEP 425, the platform tags of PEP 600 and PEP 656), to choose the
//! one file of a distribution the image's interpreter installs. uv's resolution lists every
//! compatible file of the chosen version; env.lock keeps exactly one, the one whose best tag
//! comes first in the interpreter's priority list, as pip and uv order it (`packaging.tags.
//! sys_tags`). The facts the list is built from ([`Interpreter`]) are read once from the
//! interpreter inside the container by [`FACTS_SCRIPT`]; everything else here is pure.
//!
//! Never guesses: a wheel whose name does not parse, or none of whose tags the interpreter
//! supports, is not chosen.

use std::collections::HashMap;

use serde::Deserialize;

/// Python, run by the image's interpreter: its facts as one JSON object on stdout. Works from
/// Python 3.6 on; reads no file outside the interpreter and the dynamic loader.
pub const FACTS_SCRIPT: &str = r#"import glob, json, os, subprocess, sys, sysconfig
glibc = None
try:
    glibc = os.confstr("CS_GNU_LIBC_VERSION")
except (AttributeError, OSError, ValueError):
    pass
musl = None
if not glibc:
    for loader in sorted(glob.glob("/lib/ld-musl-*.so.1")):
        try:
            out = subprocess.run([loader], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL).stderr.decode()
        except OSError:
            continue
        for line in out.splitlines():
            if line.startswith("Version "):
                musl = line.split()[1]
        break
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": list(sys.version_info[:3]),
    "platform": sysconfig.get_platform(),
    "soabi": sysconfig.get_config_var("SOABI"),
    "glibc": glibc,
    "musl": musl,
    "bits64": sys.maxsize > 2**32,
}))
"#;

/// What the interpreter in the image says about itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Interpreter {
    /// `cpython`, `pypy`.
    pub implementation: String,
    /// `[3, 11, 2]`.
    pub version: Vec<u32>,
    /// `sysconfig.get_platform()`: `linux-x86_64`, `linux-aarch64`.
    pub platform: String,
    /// `cpython-311-x86_64-linux-gnu`, `pypy310-pp73-x86_64-linux-gnu`.
    pub soabi: Option<String>,
    /// `glibc 2.36` when linked against glibc.
    pub glibc: Option<String>,
    /// `1.2.4` when linked against musl.
    pub musl: Option<String>,
    #[serde(default = "yes")]
    pub bits64: bool,
}

fn yes() -> bool {
    true
}

/// `x.y` → `(x, y)`.
fn major_minor(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    Some((major, minor.parse().ok()?))
}

impl Interpreter {
    /// `3.11.2`.
    pub fn version_string(&self) -> String {
        self.version
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    fn major_minor(&self) -> (u32, u32) {
        (
            self.version.first().copied().unwrap_or(3),
            self.version.get(1).copied().unwrap_or(0),
        )
    }

    /// The architecture in platform tags: `x86_64`, `aarch64` (`i686` for a 32-bit
    /// interpreter on x86_64).
    fn arch(&self) -> String {
        let arch = self
            .platform
            .strip_prefix("linux-")
            .unwrap_or(&self.platform)
            .replace(['-', '.', ' '], "_");
        if arch == "x86_64" && !self.bits64 {
            "i686".into()
        } else {
            arch
        }
    }

    /// Platform tags, most specific first: manylinux from the interpreter's glibc down to the
    /// oldest one defined for the architecture (with the legacy aliases beside their versions),
    /// musllinux from its musl down, then `linux_<arch>`.
    pub fn platforms(&self) -> Vec<String> {
        let arch = self.arch();
        if !self.platform.starts_with("linux") {
            return vec![self.platform.replace(['-', '.', ' '], "_")];
        }
        let mut out = Vec::new();
        let glibc = self
            .glibc
            .as_deref()
            .and_then(|g| g.strip_prefix("glibc "))
            .and_then(major_minor);
        if let Some((major, minor)) = glibc {
            // manylinux_2_5 (manylinux1) exists for x86 only; elsewhere 2_17 is the first.
            let oldest = if matches!(arch.as_str(), "x86_64" | "i686") {
                5
            } else {
                17
            };
            if major == 2 {
                for m in (oldest..=minor).rev() {
                    out.push(format!("manylinux_2_{m}_{arch}"));
                    let legacy = match m {
                        17 => Some("manylinux2014"),
                        12 => Some("manylinux2010"),
                        5 => Some("manylinux1"),
                        _ => None,
                    };
                    if let Some(l) = legacy {
                        out.push(format!("{l}_{arch}"));
                    }
                }
            }
        }
        if let Some((major, minor)) = self.musl.as_deref().and_then(major_minor) {
            for m in (0..=minor).rev() {
                out.push(format!("musllinux_{major}_{m}_{arch}"));
            }
        }
        out.push(format!("linux_{arch}"));
        out
    }

    /// Every tag the interpreter installs, best first (`packaging.tags.sys_tags`).
    pub fn tags(&self) -> Vec<String> {
        let (major, minor) = self.major_minor();
        let platforms = self.platforms();
        let mut out = Vec::new();
        let soabi = self.soabi.clone().unwrap_or_default();
        let interp = if self.implementation == "cpython" {
            let interp = format!("cp{major}{minor}");
            // `cpython-311-x86_64-linux-gnu` → cp311; `cpython-313t-…` → cp313t.
            let abi = soabi
                .strip_prefix("cpython-")
                .and_then(|r| r.split('-').next())
                .map(|v| format!("cp{v}"))
                .unwrap_or_else(|| interp.clone());
            let free_threaded = abi.ends_with('t');
            for p in &platforms {
                out.push(format!("{interp}-{abi}-{p}"));
            }
            let abi3 = major == 3 && minor >= 2 && !free_threaded;
            if abi3 {
                for p in &platforms {
                    out.push(format!("{interp}-abi3-{p}"));
                }
            }
            for p in &platforms {
                out.push(format!("{interp}-none-{p}"));
            }
            if abi3 {
                for m in (2..minor).rev() {
                    for p in &platforms {
                        out.push(format!("cp{major}{m}-abi3-{p}"));
                    }
                }
            }
            interp
        } else {
            let short = match self.implementation.as_str() {
                "pypy" => "pp".to_string(),
                "ironpython" => "ip".into(),
                "jython" => "jy".into(),
                other => other.to_string(),
            };
            let interp = format!("{short}{major}{minor}");
            // `pypy310-pp73-x86_64-linux-gnu` → pypy310_pp73.
            let parts: Vec<&str> = soabi.split('-').collect();
            if parts.len() >= 2 {
                let abi = format!("{}_{}", parts[0], parts[1]).replace('.', "_");
                for p in &platforms {
                    out.push(format!("{interp}-{abi}-{p}"));
                }
            }
            for p in &platforms {
                out.push(format!("{interp}-none-{p}"));
            }
            interp
        };
        // Pure-Python tags: py311, py3, py310 … py30 on each platform, then `any`.
        let mut py = vec![format!("py{major}{minor}"), format!("py{major}")];
        py.extend((0..minor).rev().map(|m| format!("py{major}{m}")));
        for v in &py {
            for p in &platforms {
                out.push(format!("{v}-none-{p}"));
            }
        }
        out.push(format!("{interp}-none-any"));
        for v in &py {
            out.push(format!("{v}-none-any"));
        }
        out
    }
}

/// The tags a wheel file name declares (`numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.
/// manylinux2014_x86_64.whl` → two), compressed tag sets expanded. `None` when the name is no
/// wheel name.
pub fn wheel_tags(file_name: &str) -> Option<Vec<String>> {
    let stem = file_name.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let n = parts.len();
    let (py, abi, plat) = (parts[n - 3], parts[n - 2], parts[n - 1]);
    let mut out = Vec::new();
    for x in py.split('.') {
        for a in abi.split('.') {
            for p in plat.split('.') {
                out.push(format!("{x}-{a}-{p}"));
            }
        }
    }
    Some(out)
}

/// The index into `files` of the wheel the interpreter with `tags` (best first) installs: the
/// one whose best tag ranks highest; ties go to the earlier file. `None` when none fits.
pub fn best_wheel<S: AsRef<str>>(files: &[S], tags: &[String]) -> Option<usize> {
    let rank: HashMap<&str, usize> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let best = wheel_tags(f.as_ref())?
                .iter()
                .filter_map(|t| rank.get(t.as_str()).copied())
                .min()?;
            Some((best, i))
        })
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian bookworm's python3 on x86_64.
    fn bookworm() -> Interpreter {
        Interpreter {
            implementation: "cpython".into(),
            version: vec![3, 11, 2],
            platform: "linux-x86_64".into(),
            soabi: Some("cpython-311-x86_64-linux-gnu".into()),
            glibc: Some("glibc 2.36".into()),
            musl: None,
            bits64: true,
        }
    }

    #[test]
    fn facts_parse_from_the_script_output() {
        let json = r#"{"implementation": "cpython", "version": [3, 11, 2], "platform": "linux-x86_64",
            "soabi": "cpython-311-x86_64-linux-gnu", "glibc": "glibc 2.36", "musl": null, "bits64": true}"#;
        let i: Interpreter = serde_json::from_str(json).unwrap();
        assert_eq!(i, bookworm());
        assert_eq!(i.version_string(), "3.11.2");
    }

    #[test]
    fn glibc_platforms_descend_with_legacy_aliases() {
        let p = bookworm().platforms();
        assert_eq!(p[0], "manylinux_2_36_x86_64");
        assert_eq!(p[1], "manylinux_2_35_x86_64");
        let at = |t: &str| p.iter().position(|x| x == t).unwrap();
        assert_eq!(at("manylinux2014_x86_64"), at("manylinux_2_17_x86_64") + 1);
        assert_eq!(at("manylinux2010_x86_64"), at("manylinux_2_12_x86_64") + 1);
        assert_eq!(
            p[p.len() - 3..],
            ["manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64"]
        );
        assert!(!p.iter().any(|t| t.starts_with("musllinux")));
        let mut arm = bookworm();
        arm.platform = "linux-aarch64".into();
        let p = arm.platforms();
        assert_eq!(
            p[p.len() - 3..],
            [
                "manylinux_2_17_aarch64",
                "manylinux2014_aarch64",
                "linux_aarch64"
            ]
        );
    }

    #[test]
    fn musl_platforms() {
        let mut alpine = bookworm();
        alpine.glibc = None;
        alpine.musl = Some("1.2.4".into());
        assert_eq!(
            alpine.platforms(),
            [
                "musllinux_1_2_x86_64",
                "musllinux_1_1_x86_64",
                "musllinux_1_0_x86_64",
                "linux_x86_64"
            ]
        );
    }

    #[test]
    fn cpython_tag_order_follows_packaging() {
        let tags = bookworm().tags();
        let at = |t: &str| tags.iter().position(|x| x == t).unwrap_or(usize::MAX);
        assert_eq!(tags[0], "cp311-cp311-manylinux_2_36_x86_64");
        assert!(at("cp311-cp311-linux_x86_64") < at("cp311-abi3-manylinux_2_36_x86_64"));
        assert!(at("cp311-abi3-linux_x86_64") < at("cp311-none-manylinux_2_36_x86_64"));
        assert!(at("cp311-none-linux_x86_64") < at("cp310-abi3-manylinux_2_36_x86_64"));
        assert!(at("cp32-abi3-linux_x86_64") < at("py311-none-manylinux_2_36_x86_64"));
        assert!(at("py30-none-linux_x86_64") < at("cp311-none-any"));
        assert_eq!(
            tags[tags.len() - 14..tags.len() - 11],
            ["cp311-none-any", "py311-none-any", "py3-none-any"]
        );
        assert_eq!(tags.last().unwrap(), "py30-none-any");
        assert_eq!(at("cp312-cp312-manylinux_2_36_x86_64"), usize::MAX);
        assert_eq!(at("cp311-cp311-musllinux_1_2_x86_64"), usize::MAX);
        let free = Interpreter {
            version: vec![3, 13, 0],
            soabi: Some("cpython-313t-x86_64-linux-gnu".into()),
            ..bookworm()
        };
        let t = free.tags();
        assert_eq!(t[0], "cp313-cp313t-manylinux_2_36_x86_64");
        assert!(
            !t.iter().any(|x| x.contains("abi3")),
            "no abi3 for free-threaded builds"
        );
    }

    #[test]
    fn pypy_tags() {
        let pypy = Interpreter {
            implementation: "pypy".into(),
            version: vec![3, 10, 14],
            soabi: Some("pypy310-pp73-x86_64-linux-gnu".into()),
            ..bookworm()
        };
        let t = pypy.tags();
        assert_eq!(t[0], "pp310-pypy310_pp73-manylinux_2_36_x86_64");
        assert!(t.contains(&"py3-none-any".to_string()));
    }

    #[test]
    fn wheel_names_expand_compressed_tag_sets() {
        assert_eq!(
            wheel_tags("numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
                .unwrap(),
            [
                "cp311-cp311-manylinux_2_17_x86_64",
                "cp311-cp311-manylinux2014_x86_64"
            ]
        );
        assert_eq!(
            wheel_tags("six-1.16.0-py2.py3-none-any.whl").unwrap(),
            ["py2-none-any", "py3-none-any"]
        );
        assert_eq!(
            wheel_tags("pkg-1.0-1build-py3-none-any.whl").unwrap(),
            ["py3-none-any"],
            "a build tag"
        );
        assert_eq!(wheel_tags("pkg-1.0.tar.gz"), None);
        assert_eq!(wheel_tags("pkg-1.0-py3.whl"), None);
        assert_eq!(wheel_tags("pkg--py3-none-any.whl"), None);
    }

    #[test]
    fn the_best_wheel_is_the_most_specific_the_interpreter_runs() {
        let tags = bookworm().tags();
        let files = [
            "pkg-1.0-py3-none-any.whl",
            "pkg-1.0-cp311-cp311-musllinux_1_1_x86_64.whl",
            "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "pkg-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "pkg-1.0-cp38-abi3-manylinux_2_17_x86_64.whl",
        ];
        assert_eq!(
            best_wheel(&files, &tags),
            Some(3),
            "the newest glibc it supports"
        );
        assert_eq!(best_wheel(&files[..3], &tags), Some(2));
        assert_eq!(
            best_wheel(&[files[0], files[4]], &tags),
            Some(1),
            "abi3 beats pure Python"
        );
        assert_eq!(
            best_wheel(&files[..2], &tags),
            Some(0),
            "musl wheels do not run here"
        );
        let none = ["pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "junk.whl"];
        assert_eq!(best_wheel(&none, &tags), None);
        let mut old = bookworm();
        old.glibc = Some("glibc 2.17".into());
        assert_eq!(
            best_wheel(&files, &old.tags()),
            Some(2),
            "2_28 needs a newer glibc"
        );
    }
}
