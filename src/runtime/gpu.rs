//! `[container].gpu = true`: the host's NVIDIA devices and driver, as Apptainer's `--nv` and
//! nvidia-container-toolkit provide them. The driver's user-space half must match the kernel
//! module exactly, so it comes from the host, never from the image: each driver library found
//! in the host's `ldconfig -p` is bound read-only into `/usr/local/nvidia/lib64` (the path
//! NVIDIA's CUDA images already put on `LD_LIBRARY_PATH`), the tools (`nvidia-smi`, …) into
//! `/usr/local/nvidia/bin`, and every `/dev/nvidia*` device into the container's `/dev`.
//! CUDA itself (the toolkit, cuDNN, the framework's wheels) is the image's or the tool layers'.
//!
//! Invariants: nothing is taken but character devices named `nvidia*` under /dev (and the
//! `nvidia-caps` directory), libraries whose names are on [`LIBRARIES`] for the host's own
//! word size, each name one path component (the mounts join it under `lib64/`), and the
//! programs on [`PROGRAMS`]; all of it read-only except the devices.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the driver's files appear inside.
pub const LIB_DIR: &str = "/usr/local/nvidia/lib64";
pub const BIN_DIR: &str = "/usr/local/nvidia/bin";

/// The driver's user-space libraries, by name prefix (nvidia-container-toolkit's and
/// Apptainer's lists: compute, utility, video, graphics).
const LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-cfg.so",
    "libnvidia-opencl.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-pkcs11.so",
    "libnvidia-encode.so",
    "libnvcuvid.so",
    "libnvidia-opticalflow.so",
    "libnvoptix.so",
    "libnvidia-rtcore.so",
    "libnvidia-ngx.so",
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-tls.so",
    "libnvidia-glsi.so",
    "libnvidia-glvkspirv.so",
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libvdpau_nvidia.so",
];

/// The driver's tools.
const PROGRAMS: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Where drivers live that the host's ld.so.cache may not list: NVIDIA's own layout on GPU
/// nodes of managed Kubernetes and of GPU cloud machines (`/usr/local/nvidia`), Debian's
/// alternatives directory.
const DRIVER_DIRS: &[&str] = &[
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib64/nvidia",
];

/// What of the host's NVIDIA driver goes into the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGpu {
    /// Host paths of the device nodes (and the `nvidia-caps` directory), bound at the same path.
    pub devices: Vec<PathBuf>,
    /// (name inside [`LIB_DIR`], host file): one per library name, the first `ldconfig -p` lists.
    pub libraries: Vec<(String, PathBuf)>,
    /// Host paths of the driver's programs, bound into [`BIN_DIR`] under their own names.
    pub programs: Vec<PathBuf>,
    /// nvidia-persistenced's socket on the host, when the daemon runs.
    #[serde(default)]
    pub persistenced: Option<PathBuf>,
    /// Whether `/dev/nvidia-uvm` exists: CUDA needs it, and a rootless container cannot make it.
    #[serde(default)]
    pub uvm: bool,
}

/// The host's NVIDIA driver, `None` when it has none loaded (no `/dev/nvidiactl`). Under
/// `DEVENV_GPU_ROOT` (a fixture driver root for tests: `dev/`, the driver directories, regular
/// files standing in for device nodes) instead of `/`.
///
/// Found once per process (it runs `ldconfig -p`): the preflight before and after the pull, the
/// session and `doctor` all ask.
pub fn discover() -> Option<HostGpu> {
    static FOUND: std::sync::OnceLock<Option<HostGpu>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(
            || match std::env::var_os("DEVENV_GPU_ROOT").filter(|v| !v.is_empty()) {
                Some(root) => discover_in(Path::new(&root)),
                None => discover_in(Path::new("/")),
            },
        )
        .clone()
}

/// [`discover`] under `root`; only the real root asks `ldconfig -p`, only a fixture root takes
/// regular files for device nodes.
pub fn discover_in(root: &Path) -> Option<HostGpu> {
    let host = root == Path::new("/");
    let dev = root.join("dev");
    if !dev.join("nvidiactl").exists() {
        return None;
    }
    let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| host && Path::new(p).is_file());
    let cache = ldconfig
        .and_then(|l| {
            std::process::Command::new(l)
                .arg("-p")
                .env("LC_ALL", "C")
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = if host {
        std::env::split_paths(&path).collect()
    } else {
        Vec::new()
    };
    dirs.push(root.join("usr/bin"));
    dirs.push(root.join("usr/local/nvidia/bin"));
    let mut libraries = libraries(&cache, std::env::consts::ARCH);
    for dir in DRIVER_DIRS {
        for (name, path) in scanned(&root.join(dir.trim_start_matches('/'))) {
            if !libraries.iter().any(|(n, _)| *n == name) {
                libraries.push((name, path));
            }
        }
    }
    // `-lcuda` (Triton, behind torch.compile) links the unversioned name, which driver
    // packages often leave to the -dev package.
    if !libraries.iter().any(|(n, _)| n == "libcuda.so")
        && let Some((_, p)) = libraries.iter().find(|(n, _)| n == "libcuda.so.1")
    {
        let p = p.clone();
        libraries.push(("libcuda.so".into(), p));
    }
    let socket = root.join(PERSISTENCED.trim_start_matches('/'));
    Some(HostGpu {
        devices: devices(&dev, !host),
        persistenced: socket_exists(&socket).then_some(socket),
        uvm: dev.join("nvidia-uvm").exists(),
        libraries,
        programs: PROGRAMS
            .iter()
            .filter_map(|p| dirs.iter().map(|d| d.join(p)).find(|f| f.is_file()))
            .collect(),
    })
}

/// nvidia-persistenced's socket: bound in when the daemon runs, so CUDA keeps the GPU
/// initialised between processes as on the host.
pub const PERSISTENCED: &str = "/run/nvidia-persistenced/socket";

fn socket_exists(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs_err::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// `/dev/nvidia*` character devices (regular files too in a fixture root) and the
/// `nvidia-caps` directory, sorted.
fn devices(dev: &Path, fixture: bool) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = fs_err::read_dir(dev) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .filter(|e| {
            e.file_type().is_ok_and(|t| {
                t.is_char_device()
                    || (fixture && t.is_file())
                    || (t.is_dir() && e.file_name() == "nvidia-caps")
            })
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The driver libraries in `ldconfig -p` output, for `arch` (std's name: x86_64, aarch64):
/// lines like `\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1`. The
/// first entry of each name wins, as it would for the dynamic loader; other word sizes are
/// skipped.
fn libraries(ldconfig: &str, arch: &str) -> Vec<(String, PathBuf)> {
    let tag = match arch {
        "x86_64" => "x86-64",
        "aarch64" => "AArch64",
        "powerpc64" => "64bit",
        _ => "",
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for line in ldconfig.lines() {
        let Some((left, path)) = line.split_once(" => ") else {
            continue;
        };
        let Some((name, flags)) = left.trim().split_once(' ') else {
            continue;
        };
        let ours = if tag.is_empty() {
            !flags.contains("x86-64") && !flags.contains("64bit") && !flags.contains("AArch64")
        } else {
            flags.contains(tag)
        };
        let wanted = LIBRARIES.iter().any(|l| name.starts_with(l));
        let plain = !name.contains('/') && name != "." && name != "..";
        if ours && wanted && plain && !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), PathBuf::from(path.trim())));
        }
    }
    out
}

/// The driver libraries in `dir` by their file names (`libcuda.so.1`, `libcuda.so.580.65.06`),
/// sorted; links are kept as names (the bind follows them to the file).
fn scanned(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let wanted = LIBRARIES.iter().any(|l| name.starts_with(l));
            (wanted && e.path().is_file()).then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The host's GPU indices: the `N` of each `/dev/nvidiaN`, sorted.
pub fn indices(gpu: &HostGpu) -> Vec<u32> {
    let mut out: Vec<u32> = gpu
        .devices
        .iter()
        .filter_map(|d| {
            d.file_name()?
                .to_str()?
                .strip_prefix("nvidia")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// `env` with [`LIB_DIR`] first on `LD_LIBRARY_PATH` (the host's driver must win over any
/// copy in the image) and [`BIN_DIR`] last on `PATH`.
pub fn add_to_env(env: &mut Vec<(String, String)>) {
    let mut set = |key: &str, dir: &str, first: bool| match env.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) if v.split(':').any(|d| d == dir) => {}
        Some((_, v)) if v.is_empty() => *v = dir.to_string(),
        Some((_, v)) if first => *v = format!("{dir}:{v}"),
        Some((_, v)) => *v = format!("{v}:{dir}"),
        None => env.push((key.to_string(), dir.to_string())),
    };
    set("LD_LIBRARY_PATH", LIB_DIR, true);
    set("PATH", BIN_DIR, false);
    // Triton (torch.compile) looks here before `ldconfig -p`.
    if !env.iter().any(|(k, _)| k == "TRITON_LIBCUDA_PATH") {
        env.push(("TRITON_LIBCUDA_PATH".into(), LIB_DIR.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDCONFIG: &str = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ml.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so
\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so.1 (libc6,x86-64) => /usr/local/old/libcuda.so.1
\tlibcuda.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so
\tlibcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
\tlibGLX_nvidia.so.0 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0
Cache generated by: ldconfig (GNU libc) stable release version 2.36
";

    #[test]
    fn driver_libraries_of_our_word_size_first_entry_wins() {
        let libs = libraries(LDCONFIG, "x86_64");
        let names: Vec<&str> = libs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "libnvidia-ml.so.1",
                "libnvidia-ml.so",
                "libcuda.so.1",
                "libcuda.so",
                "libGLX_nvidia.so.0"
            ]
        );
        assert_eq!(
            libs[2].1,
            Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
            "the loader's first choice"
        );
        // libcudart is CUDA's, not the driver's: it comes with the image or a tool layer.
        assert!(!names.contains(&"libcudart.so.12"));
    }

    #[test]
    fn other_architectures_pick_their_own_entries() {
        let arm = "\tlibcuda.so.1 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libcuda.so.1\n\
                   \tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n";
        assert_eq!(
            libraries(arm, "aarch64"),
            [(
                "libcuda.so.1".to_string(),
                PathBuf::from("/usr/lib/aarch64-linux-gnu/libcuda.so.1")
            )]
        );
    }

    #[test]
    fn nothing_from_garbage_or_odd_names() {
        assert!(libraries("", "x86_64").is_empty());
        assert!(libraries("no arrow here\n\t(libc6) =>\n", "x86_64").is_empty());
        let odd = "\tlibcuda.so/../../x (libc6,x86-64) => /tmp/x\n";
        assert!(libraries(odd, "x86_64").is_empty());
    }

    #[test]
    fn only_nvidia_character_devices_and_the_caps_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("nvidia0"), "").unwrap(); // a file, not a device
        fs_err::create_dir(dir.path().join("nvidia-caps")).unwrap();
        fs_err::create_dir(dir.path().join("nvidia-other")).unwrap();
        assert_eq!(devices(dir.path(), false), [dir.path().join("nvidia-caps")]);
        // A fixture root's regular files stand in for device nodes.
        assert_eq!(
            devices(dir.path(), true),
            [dir.path().join("nvidia-caps"), dir.path().join("nvidia0")]
        );
        let real = devices(Path::new("/dev"), false);
        assert!(
            real.iter().all(|d| d.starts_with("/dev/nvidia")),
            "{real:?}"
        );
    }

    #[test]
    fn library_dir_first_program_dir_last_once() {
        let mut env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("LD_LIBRARY_PATH".to_string(), "/opt/lib".to_string()),
        ];
        add_to_env(&mut env);
        add_to_env(&mut env);
        assert_eq!(env[0].1, "/usr/bin:/bin:/usr/local/nvidia/bin");
        assert_eq!(env[1].1, "/usr/local/nvidia/lib64:/opt/lib");
        let mut bare = Vec::new();
        add_to_env(&mut bare);
        assert_eq!(
            bare,
            [
                ("LD_LIBRARY_PATH".to_string(), LIB_DIR.to_string()),
                ("PATH".to_string(), BIN_DIR.to_string()),
                ("TRITON_LIBCUDA_PATH".to_string(), LIB_DIR.to_string()),
            ]
        );
    }

    #[test]
    fn a_driver_directory_is_scanned_by_name_links_kept_dangling_ones_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs_err::write(d.join("libcuda.so.580.65.06"), "elf").unwrap();
        std::os::unix::fs::symlink("libcuda.so.580.65.06", d.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("gone", d.join("libnvidia-ml.so.1")).unwrap();
        fs_err::write(d.join("libfoo.so.1"), "elf").unwrap();
        let names: Vec<String> = scanned(d).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["libcuda.so.1", "libcuda.so.580.65.06"]);
        assert!(scanned(&d.join("missing")).is_empty());
    }
}
