//! `devenv doctor`: what this machine needs for devenv, each check ok, warn or fail, with the
//! fix for each failure.
//!
//! Checks are plain data ([`Check`]); printing them is the CLI's job. The user-namespace and
//! overlay checks run for real in a child process (`devenv __probe DIR`), because sysctls alone
//! do not tell (AppArmor, seccomp and container runtimes can forbid what the sysctls allow).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// argv[1] of the probe child.
pub const PROBE_ARG: &str = "__probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable identifier, e.g. `userns`, `overlay`, `disk`.
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

fn read_sysctl(path: &str) -> Option<String> {
    fs_err::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The sysctls that gate unprivileged user namespaces, and what each says.
pub fn check_userns_sysctls() -> Check {
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Check::fail(
            "userns-sysctl",
            "user.max_user_namespaces is 0",
            "sudo sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d/)",
        );
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Check::fail(
            "userns-sysctl",
            "kernel.unprivileged_userns_clone is 0",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1 (and persist it in /etc/sysctl.d/)",
        );
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Check::warn(
            "userns-sysctl",
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+)",
            "add an AppArmor profile allowing `userns` for devenv's path, or sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        );
    }
    Check::ok("userns-sysctl", "unprivileged user namespaces are allowed")
}

/// Run the probe child against a scratch directory on the store's filesystem.
pub fn probe(store_tmp: &Path) -> (Check, Check) {
    let scratch = match tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(store_tmp)
    {
        Ok(d) => d,
        Err(e) => {
            let fail = Check::fail(
                "userns",
                format!(
                    "cannot create a scratch dir in {}: {e}",
                    store_tmp.display()
                ),
                "make the store writable",
            );
            return (
                fail.clone(),
                Check {
                    name: "overlay",
                    ..fail
                },
            );
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let out = Command::new(exe)
        .arg(PROBE_ARG)
        .arg(scratch.path())
        .output();
    let _ = crate::store::remove_tree(scratch.path());
    let text = match &out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("userns fail cannot run the probe: {e}\n"),
    };
    let line = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|r| r.trim().to_string()))
    };
    let userns = match line("userns") {
        Some(r) if r == "ok" => Check::ok("userns", "a user and mount namespace can be created"),
        Some(r) => Check::fail(
            "userns",
            format!(
                "unshare(CLONE_NEWUSER) failed: {}",
                r.trim_start_matches("fail ")
            ),
            "allow unprivileged user namespaces (see the userns-sysctl check); inside a container, run it with --privileged or a seccomp profile that allows unshare",
        ),
        None => Check::fail(
            "userns",
            "the probe did not report",
            "run `devenv -v doctor` and report the output",
        ),
    };
    let overlay = match line("overlay") {
        Some(r) if r == "ok" => Check::ok(
            "overlay",
            format!("overlay with userxattr mounts on {}", store_tmp.display()),
        ),
        Some(r) => Check::fail(
            "overlay",
            format!(
                "overlay with userxattr failed on {}: {}",
                store_tmp.display(),
                r.trim_start_matches("fail ")
            ),
            "put the store on ext4, xfs or btrfs (DEVENV_HOME=/path/on/such/fs); Linux 5.11+ is needed for userxattr. devenv falls back to a flattened copy, which is slower and uses more disk",
        ),
        None => Check::fail(
            "overlay",
            "not tried: no user namespace",
            "fix the userns check first",
        ),
    };
    (userns, overlay)
}

/// The probe child: create a user and mount namespace, then mount overlay with userxattr.
/// Prints `userns ok|fail …` and `overlay ok|fail …`. Single-threaded: dispatched from main.
pub fn probe_main(dir: &Path) -> crate::ExitCode {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    // unshare(2): CLONE_NEWUSER needs a single-threaded caller; main dispatches us first.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        println!("userns fail {e}");
        return crate::ExitCode::from(1);
    }
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, text) in maps {
        if let Err(e) = fs_err::write(path, text) {
            println!("userns fail {e}");
            return crate::ExitCode::from(1);
        }
    }
    println!("userns ok");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| dir.join(d));
    for d in &dirs {
        if let Err(e) = fs_err::create_dir_all(d) {
            println!("overlay fail {e}");
            return crate::ExitCode::from(1);
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    match mount(
        Some("overlay"),
        &dirs[3],
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    ) {
        Ok(()) => println!("overlay ok"),
        Err(e) => println!("overlay fail {e}"),
    }
    crate::ExitCode::SUCCESS
}

/// Extended attributes in the `user.` namespace: overlay's userxattr mode and opaque
/// directories need them on the store's filesystem.
pub fn check_user_xattrs(store_tmp: &Path) -> Check {
    let result = tempfile::NamedTempFile::new_in(store_tmp)
        .and_then(|f| xattr::set(f.path(), "user.devenv.probe", b"y").map(|_| f));
    match result {
        Ok(_) => Check::ok("xattr", "user.* extended attributes work in the store"),
        Err(e) => Check::fail(
            "xattr",
            format!(
                "cannot set user.* extended attributes in {}: {e}",
                store_tmp.display()
            ),
            "put the store on a filesystem with user xattrs (ext4, xfs, btrfs; not vfat, not some network filesystems): DEVENV_HOME=/path",
        ),
    }
}

pub fn check_store_writable(root: &Path) -> Check {
    match tempfile::NamedTempFile::new_in(root.join("tmp")) {
        Ok(_) => Check::ok("store", format!("{} is writable", root.display())),
        Err(e) => Check::fail(
            "store",
            format!("{} is not writable: {e}", root.display()),
            "fix its permissions or point DEVENV_HOME elsewhere",
        ),
    }
}

pub fn check_disk(root: &Path) -> Check {
    let Ok(st) = nix::sys::statvfs::statvfs(root) else {
        return Check::warn(
            "disk",
            format!("cannot read free space of {}", root.display()),
            "check the store path",
        );
    };
    let free = st.blocks_available() * st.fragment_size();
    let gib = free as f64 / (1u64 << 30) as f64;
    let detail = format!("{gib:.1} GiB free for the store");
    if free < 1 << 30 {
        Check::fail(
            "disk",
            detail,
            "free space or move the store (DEVENV_HOME); `devenv gc` removes what no env uses",
        )
    } else if free < 10 << 30 {
        Check::warn(
            "disk",
            detail,
            "ML images are large: 10 GiB or more is comfortable; `devenv gc` frees unused layers",
        )
    } else {
        Check::ok("disk", detail)
    }
}

/// Proxy and CA settings as registry traffic will see them.
pub fn check_network_settings() -> Vec<Check> {
    let mut out = Vec::new();
    let proxy = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok().map(|v| (k, v)));
    out.push(match proxy {
        Some((k, v)) => Check::ok(
            "proxy",
            format!(
                "{k}={v} (NO_PROXY={})",
                std::env::var("NO_PROXY")
                    .or_else(|_| std::env::var("no_proxy"))
                    .unwrap_or_default()
            ),
        ),
        None => Check::ok("proxy", "no proxy configured"),
    });
    out.push(match std::env::var_os("SSL_CERT_FILE") {
        None => Check::ok("ca", "system CA store"),
        Some(f) if Path::new(&f).is_file() => Check::ok(
            "ca",
            format!(
                "system CA store plus SSL_CERT_FILE={}",
                Path::new(&f).display()
            ),
        ),
        Some(f) => Check::fail(
            "ca",
            format!("SSL_CERT_FILE={} does not exist", Path::new(&f).display()),
            "point SSL_CERT_FILE at a PEM file or unset it",
        ),
    });
    out.push(check_user_config(crate::user_config::read()));
    out.push(check_python_index(
        crate::tools::index::Indexes::load().map_err(|e| {
            let hint = crate::error::Hint::hint(&e).unwrap_or_default();
            (e.to_string(), hint)
        }),
    ));
    out
}

/// The user's config.toml: readable, TOML, and every top-level key one devenv reads.
fn check_user_config(
    file: Result<Option<&crate::user_config::File>, &crate::user_config::Unreadable>,
) -> Check {
    use crate::user_config::{KNOWN_KEYS, unknown_keys};
    match file {
        Ok(None) => Check::ok("config", "no config.toml (defaults)"),
        Err(e) => Check::fail(
            "config",
            format!("{}: {}", e.path.display(), e.message),
            "make it readable by you, or remove it",
        ),
        Ok(Some(f)) => match unknown_keys(&f.text) {
            Err(why) => Check::fail(
                "config",
                format!("{}: {why}", f.path.display()),
                "fix the TOML syntax at the line named",
            ),
            Ok(unknown) if unknown.is_empty() => Check::ok("config", f.path.display().to_string()),
            Ok(unknown) => Check::warn(
                "config",
                format!(
                    "{}: devenv reads no `{}`",
                    f.path.display(),
                    unknown.join("`, `")
                ),
                format!("the keys devenv reads: {}", KNOWN_KEYS.join(", ")),
            ),
        },
    }
}

/// The Python package index builds and the uv bootstrap use, and where it was set.
fn check_python_index(indexes: Result<crate::tools::index::Indexes, (String, String)>) -> Check {
    use crate::tools::index::{Origin, redacted};
    let indexes = match indexes {
        Ok(i) => i,
        Err((why, fix)) => return Check::fail("python-index", why, fix),
    };
    let named: Vec<String> = indexes
        .named
        .iter()
        .map(|(n, u)| format!("{n} = {}", redacted(u)))
        .collect();
    let named = if named.is_empty() {
        String::new()
    } else {
        format!("; named: {}", named.join(", "))
    };
    match &indexes.default {
        Some((url, origin)) => {
            let from = match origin {
                Origin::Variable(v) => (*v).to_string(),
                Origin::UserConfig => "config.toml [python] index".into(),
                Origin::BuiltIn => "this build's default".into(),
            };
            Check::ok("python-index", format!("{} ({from}){named}", redacted(url)))
        }
        None => Check::warn(
            "python-index",
            format!(
                "no Python package index is configured: Python packages resolve from uv's own \
                 default, and devenv cannot fetch its pinned uv{named}"
            ),
            "set PIP_INDEX_URL (or [python] index in config.toml) to your package index's \
             simple URL",
        ),
    }
}

#[cfg(test)]
mod python_index_tests {
    use super::*;
    use crate::tools::index::{Indexes, Origin};

    #[test]
    fn the_index_in_effect_is_shown_with_where_it_was_set_and_without_credentials() {
        let mut i = Indexes {
            default: Some((
                "https://me:secret@mirror.example/simple".into(),
                Origin::Variable("PIP_INDEX_URL"),
            )),
            ..Indexes::default()
        };
        i.named
            .insert("pytorch".into(), "https://torch.example/whl".into());
        let c = check_python_index(Ok(i));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "https://…@mirror.example/simple (PIP_INDEX_URL); named: pytorch = https://torch.example/whl"
        );
        let none = check_python_index(Ok(Indexes::default()));
        assert_eq!(none.status, Status::Warn);
        assert!(none.fix.unwrap().contains("PIP_INDEX_URL"));
        let bad = check_python_index(Err(("bad".into(), "fix it".into())));
        assert_eq!(
            (bad.status, bad.fix.as_deref()),
            (Status::Fail, Some("fix it"))
        );
    }

    #[test]
    fn config_toml_is_checked_for_syntax_and_misspelt_tables() {
        use crate::user_config::File;
        let file = |text: &str| File {
            path: "/c/config.toml".into(),
            text: text.into(),
        };
        assert_eq!(check_user_config(Ok(None)).status, Status::Ok);
        let good = file("[python]\nindex = \"https://m.example/simple\"\n");
        assert_eq!(check_user_config(Ok(Some(&good))).status, Status::Ok);
        let typo = file("[pyhton]\n");
        let c = check_user_config(Ok(Some(&typo)));
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.detail, "/c/config.toml: devenv reads no `pyhton`");
        let broken = file("[python\n");
        assert_eq!(check_user_config(Ok(Some(&broken))).status, Status::Fail);
    }
}

/// Whether an env's private network (`[services]`, `ports`) gets a way out: slirp4netns and a
/// usable /dev/net/tun. A warning, and only with such an env: without them it still starts.
pub fn check_outbound(wanted: bool) -> Check {
    match crate::services::net::outbound_missing() {
        None => Check::ok(
            "outbound",
            "slirp4netns and /dev/net/tun: a private network has a way out",
        ),
        Some(why) if wanted => Check::warn("outbound", why, "see docs/services.md, \"Networking\""),
        Some(why) => Check::ok("outbound", format!("(only for [services] and ports) {why}")),
    }
}

/// NVIDIA driver presence, and what `[container].gpu = true` would bring in; only a warning,
/// and only relevant with `[container].gpu = true`.
pub fn check_gpu(wanted: bool) -> Check {
    match (crate::runtime::gpu::discover(), wanted) {
        (Some(gpu), _) => {
            let smi = gpu.programs.iter().any(|p| p.ends_with("nvidia-smi"));
            let detail = format!(
                "NVIDIA driver present: {} devices, {} driver libraries{}",
                gpu.devices.len(),
                gpu.libraries.len(),
                if smi { ", nvidia-smi" } else { "" }
            );
            if wanted
                && !gpu
                    .libraries
                    .iter()
                    .any(|(n, _)| n.starts_with("libcuda.so"))
            {
                Check::warn(
                    "gpu",
                    format!("{detail}, but no libcuda in `ldconfig -p`"),
                    "install the driver's CUDA library (Debian: libcuda1; Ubuntu: \
                     libnvidia-compute-<version>) and run `sudo ldconfig`",
                )
            } else {
                Check::ok("gpu", detail)
            }
        }
        (None, false) => Check::ok(
            "gpu",
            "no NVIDIA driver (not needed: [container].gpu is off)",
        ),
        (None, true) => Check::warn(
            "gpu",
            "env.toml asks for a GPU but no NVIDIA driver is loaded (no /dev/nvidiactl)",
            "install the NVIDIA driver on the host: the env uses the host's driver and starts \
             without a GPU until there is one",
        ),
    }
}

/// The GPU preflight against the project's env.lock: the host driver, what the lock needs, and
/// the verdict `devenv run` would give.
pub fn check_gpu_preflight(loaded: &crate::config::Loaded) -> Option<Check> {
    let driver = crate::env::host_driver()?;
    let lock = crate::lock::read(&loaded.project_dir).ok().flatten();
    let need = lock
        .as_ref()
        .and_then(|l| crate::preflight::cuda_needed(l, &[]));
    let detail = match &need {
        Some(n) => format!(
            "driver {} (from {}); env.lock needs CUDA {} ({})",
            driver.version, driver.source, n.cuda, n.because
        ),
        None => format!(
            "driver {} (from {}); env.lock needs no CUDA",
            driver.version, driver.source
        ),
    };
    Some(match crate::preflight::check(&driver, need.as_ref()) {
        Ok(()) => Check::ok("gpu-preflight", detail),
        Err(refused) => Check::fail("gpu-preflight", refused.to_string(), refused.fix()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_serialize_with_stable_names() {
        let c = Check::fail("disk", "0.1 GiB free", "free space");
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["name"], "disk");
        assert_eq!(v["status"], "fail");
        assert_eq!(v["fix"], "free space");
        let ok = serde_json::to_value(Check::ok("store", "x")).unwrap();
        assert!(ok.get("fix").is_none());
    }

    #[test]
    fn xattr_check_passes_on_this_filesystem() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        // /tmp may be tmpfs (user xattrs since 6.6) or ext4; either way this machine has them.
        assert_eq!(check_user_xattrs(dir.path()).status, Status::Ok);
    }
}
