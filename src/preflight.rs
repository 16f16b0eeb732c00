//! The GPU preflight: can the host's NVIDIA driver run the CUDA the env's locked packages were
//! built for? Answered before anything is pulled, built or started, with the exact fix, instead
//! of a stack trace deep inside a framework.
//!
//! The driver's version is read without root and without NVML: `/proc/driver/nvidia/version`
//! (both the proprietary and the open kernel module's format), else
//! `/sys/module/nvidia/version`, else the suffix of the `libcuda.so.<version>` the runtime would
//! bind. What the env needs comes from env.lock: the `nvidia-*-cuNN` wheels (the CUDA runtime's
//! own version where it is locked), torch's `+cuXXX` local version, TensorFlow's tested CUDA,
//! and the image's `CUDA_VERSION`. The rule is NVIDIA's minor-version compatibility: a CUDA
//! major runs on any driver at or above that major's minimum (docs.nvidia.com, "CUDA
//! Compatibility"); forward compatibility packages are for data-center GPUs only and are not
//! assumed.
//!
//! Invariants: pure apart from [`host_driver`]'s reads under a root (tests point it at a fixture
//! directory); an env that needs no CUDA never fails; nothing here prints.

use std::fmt;
use std::path::Path;

use crate::lock::Lock;

/// A driver version: `550.54.14`, `470.82.01`, `580.65`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DriverVersion(pub u32, pub u32, pub u32);

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{:02}", self.0, self.1),
            p => write!(f, "{}.{:02}.{:02}", self.0, self.1, p),
        }
    }
}

impl DriverVersion {
    /// The first `\d+\.\d+(\.\d+)?` in `s` (after `Module` when it says so).
    pub fn find(s: &str) -> Option<DriverVersion> {
        let s = s.split_once("Module").map_or(s, |(_, rest)| rest);
        s.split(|c: char| c.is_whitespace())
            .find_map(DriverVersion::parse)
    }

    pub fn parse(s: &str) -> Option<DriverVersion> {
        let mut parts = s.split('.');
        let n = |p: Option<&str>| -> Option<u32> {
            p.filter(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))?
                .parse()
                .ok()
        };
        let major = n(parts.next())?;
        let minor = n(parts.next())?;
        let patch = match parts.next() {
            None => 0,
            p => n(p)?,
        };
        if parts.next().is_some() || major < 100 {
            return None;
        }
        Some(DriverVersion(major, minor, patch))
    }
}

/// A CUDA version, `12.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cuda(pub u32, pub u32);

impl fmt::Display for Cuda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The oldest driver each CUDA major runs on (Linux; minor-version compatibility within a
/// major). Newest first.
const MINIMUM: &[(u32, DriverVersion)] = &[
    (13, DriverVersion(580, 0, 0)),
    (12, DriverVersion(525, 60, 13)),
    (11, DriverVersion(450, 80, 2)),
    (10, DriverVersion(440, 33, 0)),
];

/// The oldest driver that runs `cuda`, when the table knows its major.
pub fn minimum_driver(cuda: Cuda) -> Option<DriverVersion> {
    MINIMUM.iter().find(|(m, _)| *m == cuda.0).map(|(_, d)| *d)
}

/// The newest CUDA major `driver` runs.
pub fn newest_major(driver: DriverVersion) -> Option<u32> {
    MINIMUM.iter().find(|(_, d)| driver >= *d).map(|(m, _)| *m)
}

/// What the host's driver is, and where that was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDriver {
    pub version: DriverVersion,
    pub source: &'static str,
    /// The user-space library's version when it differs from the kernel module's: a driver
    /// updated without a reboot.
    pub library: Option<DriverVersion>,
}

/// The driver under `root` (`/` on a real host): `None` when no NVIDIA kernel module is
/// loaded. `libcuda` is the file the runtime would bind, when known.
pub fn host_driver(root: &Path, libcuda: Option<&Path>) -> Option<HostDriver> {
    let read = |p: &str| fs_err::read_to_string(root.join(p)).ok();
    let lib = libcuda.and_then(|p| {
        let name = p.file_name()?.to_str()?;
        DriverVersion::parse(name.strip_prefix("libcuda.so.")?)
    });
    let (version, source) = if let Some(v) = read("proc/driver/nvidia/version")
        .as_deref()
        .and_then(DriverVersion::find)
    {
        (v, "/proc/driver/nvidia/version")
    } else if let Some(v) = read("sys/module/nvidia/version")
        .as_deref()
        .and_then(|s| DriverVersion::parse(s.trim()))
    {
        (v, "/sys/module/nvidia/version")
    } else {
        (lib?, "the libcuda.so suffix")
    };
    Some(HostDriver {
        version,
        source,
        library: lib.filter(|l| *l != version),
    })
}

/// Why the env needs a CUDA: the package (or image variable) that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub cuda: Cuda,
    pub because: String,
}

/// The newest CUDA the env's lock (and the image's `CUDA_VERSION`) needs; `None` when it needs
/// none.
pub fn cuda_needed(lock: &Lock, image_env: &[String]) -> Option<Need> {
    let mut needs: Vec<Need> = Vec::new();
    let mut runtime: Option<Need> = None;
    for p in &lock.python.packages {
        let name = p.name.as_str();
        // nvidia-cuda-runtime-cu12 12.1.105: the toolkit release itself.
        if let Some(major) = name
            .strip_prefix("nvidia-")
            .and_then(|n| n.rsplit_once("-cu"))
            .and_then(|(_, m)| m.parse::<u32>().ok())
        {
            let release = cuda_of(&p.version).filter(|c| c.0 == major);
            let need = Need {
                cuda: release.unwrap_or(Cuda(major, 0)),
                because: format!("{name} {}", p.version),
            };
            if name.starts_with("nvidia-cuda-runtime-") {
                runtime = Some(need);
            } else if release.is_none() || name.starts_with("nvidia-cuda-nvcc-") {
                needs.push(need);
            } else {
                // Library versions (cublas 12.1.3.1) follow their own numbering within the
                // major: only the major is certain.
                needs.push(Need {
                    cuda: Cuda(major, 0),
                    ..need
                });
            }
        }
        // torch 2.3.1+cu121, torchvision 0.18.1+cu121
        if let Some((_, local)) = p.version.split_once("+cu")
            && let Ok(n) = local.parse::<u32>()
            && n >= 100
        {
            needs.push(Need {
                // cu121 → 12.1, cu118 → 11.8, cu130 → 13.0
                cuda: Cuda(n / 10, n % 10),
                because: format!("{name} {}", p.version),
            });
        }
        if name == "tensorflow"
            && let Some(c) = tensorflow_cuda(&p.version)
        {
            needs.push(Need {
                cuda: c,
                because: format!("tensorflow {} (tested with CUDA {c})", p.version),
            });
        }
    }
    for kv in image_env {
        if let Some(v) = kv.strip_prefix("CUDA_VERSION=")
            && let Some(c) = cuda_of(v)
        {
            needs.push(Need {
                cuda: c,
                because: format!("the image's CUDA_VERSION={v}"),
            });
        }
    }
    // The runtime wheel states the exact release; other wheels of its major say no more.
    if let Some(r) = runtime {
        needs.retain(|n| n.cuda.0 != r.cuda.0 || n.cuda > r.cuda);
        needs.push(r);
    }
    needs.into_iter().max_by_key(|n| n.cuda)
}

/// `12.1.105` → 12.1.
fn cuda_of(v: &str) -> Option<Cuda> {
    let mut p = v.split(['.', '+']);
    let major = p.next()?.parse().ok()?;
    let minor = p.next()?.parse().ok()?;
    (7..100).contains(&major).then_some(Cuda(major, minor))
}

/// The CUDA TensorFlow's Linux GPU build of `version` was tested with (tensorflow.org, "Tested
/// build configurations").
fn tensorflow_cuda(version: &str) -> Option<Cuda> {
    let mut p = version.split('.');
    let minor: u32 = (p.next()? == "2").then(|| p.next()?.parse().ok())??;
    Some(match minor {
        18.. => Cuda(12, 5),
        16 | 17 => Cuda(12, 3),
        15 => Cuda(12, 2),
        12..=14 => Cuda(11, 8),
        11 => Cuda(11, 2),
        5..=10 => Cuda(11, 2),
        _ => return None,
    })
}

/// Why the env cannot start on this driver, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this env needs CUDA {} ({}), but the host's NVIDIA driver {} (from {}) runs CUDA {} at most",
    need.cuda,
    need.because,
    driver.version,
    driver.source,
    newest_major(driver.version).map_or("below 10".to_string(), |m| format!("{m}.x"))
)]
pub struct Refused {
    pub need: Need,
    pub driver: HostDriver,
}

impl Refused {
    /// The exact fix: the driver it needs, or the pin that fits the driver it has.
    pub fn fix(&self) -> String {
        let wanted = minimum_driver(self.need.cuda)
            .map(|d| format!("install NVIDIA driver {d} or newer on the host"))
            .unwrap_or_else(|| "install a newer NVIDIA driver on the host".into());
        let fits = match newest_major(self.driver.version) {
            Some(12) => "cu121 or cu124 (torch) / nvidia-*-cu12 wheels",
            Some(11) => {
                "cu118 (torch: `[tools] torch = { version = \"…\", variant = \"cu118\" }`) or TensorFlow 2.14 or older"
            }
            _ => "a CPU-only build",
        };
        format!(
            "{wanted}, or pin builds for the CUDA this driver runs: {fits}; then `devenv lock --update`"
        )
    }
}

/// The preflight: `Ok` when the env needs no CUDA, or the driver runs what it needs.
pub fn check(driver: &HostDriver, need: Option<&Need>) -> Result<(), Refused> {
    let Some(need) = need else { return Ok(()) };
    let Some(minimum) = minimum_driver(need.cuda) else {
        // A CUDA newer than the table (or older than 10): nothing certain to say.
        return Ok(());
    };
    if driver.version >= minimum {
        return Ok(());
    }
    Err(Refused {
        need: need.clone(),
        driver: driver.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::PythonPackage;

    fn lock(pins: &[(&str, &str)]) -> Lock {
        let mut l = Lock::default();
        l.python.packages = pins
            .iter()
            .map(|(n, v)| PythonPackage {
                name: n.to_string(),
                version: v.to_string(),
                url: format!("https://index.example/{n}-{v}.whl"),
                sha256: "0".repeat(64),
            })
            .collect();
        l
    }

    fn driver(v: &str) -> HostDriver {
        HostDriver {
            version: DriverVersion::parse(v).unwrap(),
            source: "/proc/driver/nvidia/version",
            library: None,
        }
    }

    #[test]
    fn both_proc_formats_and_the_fallbacks_are_read() {
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  575.57.08  Release Build  (dvs-builder@U16-I3-B03-4-3)  Wed May 21 2025\n";
        assert_eq!(
            DriverVersion::find(proprietary),
            Some(DriverVersion(550, 54, 14))
        );
        assert_eq!(DriverVersion::find(open), Some(DriverVersion(575, 57, 8)));
        assert_eq!(DriverVersion::find("garbage 1.2"), None);

        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            host_driver(root.path(), None),
            None,
            "no module, no library: no driver"
        );
        fs_err::create_dir_all(root.path().join("sys/module/nvidia")).unwrap();
        fs_err::write(root.path().join("sys/module/nvidia/version"), "470.82.01\n").unwrap();
        let d = host_driver(root.path(), Some(Path::new("/x/libcuda.so.470.82.01"))).unwrap();
        assert_eq!(
            (d.version, d.source, d.library),
            (
                DriverVersion(470, 82, 1),
                "/sys/module/nvidia/version",
                None
            )
        );
        fs_err::create_dir_all(root.path().join("proc/driver/nvidia")).unwrap();
        fs_err::write(root.path().join("proc/driver/nvidia/version"), proprietary).unwrap();
        let d = host_driver(root.path(), Some(Path::new("/x/libcuda.so.545.23.08"))).unwrap();
        assert_eq!(d.version, DriverVersion(550, 54, 14));
        assert_eq!(
            d.library,
            Some(DriverVersion(545, 23, 8)),
            "updated without a reboot"
        );
        let only_lib = tempfile::tempdir().unwrap();
        let d = host_driver(only_lib.path(), Some(Path::new("/x/libcuda.so.580.65.06"))).unwrap();
        assert_eq!(
            (d.version, d.source),
            (DriverVersion(580, 65, 6), "the libcuda.so suffix")
        );
    }

    #[test]
    fn a_torch_cu121_lock_is_refused_on_470_and_runs_on_550() {
        let l = lock(&[
            ("torch", "2.3.1+cu121"),
            ("nvidia-cuda-runtime-cu12", "12.1.105"),
            ("nvidia-cublas-cu12", "12.1.3.1"),
            ("numpy", "1.26.4"),
        ]);
        let need = cuda_needed(&l, &[]).unwrap();
        assert_eq!(need.cuda, Cuda(12, 1), "{need:?}");
        let refused = check(&driver("470.82.01"), Some(&need)).unwrap_err();
        let msg = refused.to_string();
        assert!(
            msg.contains("needs CUDA 12.1")
                && msg.contains("470.82.01")
                && msg.contains("CUDA 11.x at most"),
            "{msg}"
        );
        let fix = refused.fix();
        assert!(
            fix.contains("525.60.13 or newer") && fix.contains("cu118"),
            "{fix}"
        );
        assert_eq!(check(&driver("550.54.14"), Some(&need)), Ok(()));
        assert_eq!(
            check(&driver("525.60.13"), Some(&need)),
            Ok(()),
            "the minimum itself"
        );
    }

    #[test]
    fn what_each_kind_of_pin_needs() {
        let need = |pins: &[(&str, &str)], env: &[&str]| {
            let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
            cuda_needed(&lock(pins), &env).map(|n| n.cuda)
        };
        assert_eq!(
            need(&[("numpy", "2.1.3"), ("pandas", "2.2.3")], &[]),
            None,
            "no CUDA: never refused"
        );
        assert_eq!(need(&[("torch", "2.4.0+cu118")], &[]), Some(Cuda(11, 8)));
        assert_eq!(need(&[("torch", "2.4.0+cpu")], &[]), None);
        assert_eq!(
            need(&[("nvidia-cudnn-cu12", "9.1.0.70")], &[]),
            Some(Cuda(12, 0))
        );
        assert_eq!(
            need(&[("nvidia-cuda-runtime-cu13", "13.0.48")], &[]),
            Some(Cuda(13, 0))
        );
        assert_eq!(need(&[("tensorflow", "2.16.1")], &[]), Some(Cuda(12, 3)));
        assert_eq!(need(&[("tensorflow", "2.14.0")], &[]), Some(Cuda(11, 8)));
        assert_eq!(
            need(&[], &["PATH=/bin", "CUDA_VERSION=12.4.1"]),
            Some(Cuda(12, 4))
        );
        assert!(
            check(
                &driver("580.65.06"),
                cuda_needed(&lock(&[("nvidia-cuda-runtime-cu13", "13.0.48")]), &[]).as_ref()
            )
            .is_ok()
        );
        assert!(
            check(
                &driver("575.57.08"),
                cuda_needed(&lock(&[("nvidia-cuda-runtime-cu13", "13.0.48")]), &[]).as_ref()
            )
            .is_err()
        );
    }
}
