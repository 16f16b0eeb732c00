//! The shared harness for integration tests that run the real `devenv` binary.
//!
//! Every test gets a [`TestHome`] (HOME, XDG dirs, DEVENV_HOME, DOCKER_CONFIG and a project
//! directory in one temp dir) and runs devenv through [`devenv`], which, when the tests run as
//! root (as CI does), drops to the unprivileged user [`TEST_USER`]: devenv is rootless, and a
//! test run as root would hide every permission bug. Registries are real `docker-registry`
//! processes ([`registry`], [`Registry`]); faults a real registry will not produce come from
//! [`fault::FaultServer`]; images are built byte by byte by [`image`].
//!
//! The harness never skips: a missing registry, user or kernel feature is a panic that says
//! what to run (`scripts/test`).
#![allow(dead_code, unused_imports)]
// Tests print what they keep or skip for the person running them; no ui here.
#![allow(clippy::disallowed_macros)]

pub mod env;
pub mod fault;
pub mod image;
pub mod mirror;
pub mod podman;
pub mod registry;
pub mod services;
pub mod tree;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary starts a registry of its own
pub use registry::{Registry, registry};

/// The unprivileged user devenv runs as when the tests run as root.
pub const TEST_USER: &str = "devenvtest";

/// A PATH that finds the system tools on Debian and Ubuntu, whatever the test's own PATH is.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long one devenv command may run before the test kills it and fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The uid and gid devenv runs as: the test user's when root, ours otherwise.
pub fn runner_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !is_root() {
            return (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            );
        }
        ensure_test_user();
        let user = nix::unistd::User::from_name(TEST_USER)
            .expect("reading the passwd database")
            .unwrap_or_else(|| panic!("user {TEST_USER} is missing; run scripts/test as root"));
        (user.uid.as_raw(), user.gid.as_raw())
    })
}

/// Creates [`TEST_USER`] with subordinate id ranges if it does not exist (root only).
fn ensure_test_user() {
    let exists = || {
        nix::unistd::User::from_name(TEST_USER)
            .ok()
            .flatten()
            .is_some()
    };
    if exists() {
        return;
    }
    // Several test binaries may race here; the loser's useradd fails and the user exists.
    let status = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", TEST_USER])
        .env("PATH", SYSTEM_PATH)
        .status()
        .expect("running useradd");
    assert!(
        status.success() || exists(),
        "useradd {TEST_USER} failed ({status}); run scripts/test as root"
    );
}

/// A directory under /tmp that every user can traverse, for test homes and the binary copy.
fn shared_tmp() -> PathBuf {
    if !is_root() {
        return std::env::temp_dir();
    }
    let dir = PathBuf::from("/tmp/devenv-tests");
    fs_err::create_dir_all(&dir).expect("creating /tmp/devenv-tests");
    fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod /tmp/devenv-tests");
    dir
}

/// The devenv binary the runner executes: cargo's (or `$DEVENV_TEST_BIN`, to test another
/// build such as a release binary), as root copied where the test user can read it, since
/// cargo's target dir often sits in a home the test user cannot enter.
pub fn devenv_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = std::env::var_os("DEVENV_TEST_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_devenv")));
        if !is_root() {
            return built;
        }
        let dir = shared_tmp().join(format!("bin-{}", std::process::id()));
        fs_err::create_dir_all(&dir).expect("creating the binary dir");
        fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dest = dir.join("devenv");
        fs_err::copy(&built, &dest).expect("copying the devenv binary");
        fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        remove_stale_dirs();
        dest
    })
    .clone()
}

/// Removes binary copies and homes left by test processes that no longer run (killed before
/// their destructors ran).
fn remove_stale_dirs() {
    let Ok(entries) = fs_err::read_dir(shared_tmp()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("bin-")
            .or_else(|| name.strip_prefix("home-").and_then(|r| r.split('-').next()))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            make_writable(&e.path());
            let _ = fs_err::remove_dir_all(e.path());
        }
    }
}

pub fn tool(name: &str) -> PathBuf {
    for dir in SYSTEM_PATH.split(':') {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed; run scripts/test as root, which installs it")
}

/// A command that runs `program` as the test user (as root) or as ourselves, with a clean
/// environment holding only PATH.
pub fn as_user(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = if is_root() {
        let (uid, gid) = runner_ids();
        let mut c = Command::new(tool("setpriv"));
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.env_clear().env("PATH", SYSTEM_PATH).current_dir("/");
    cmd
}

/// The real devenv binary, run as the test user, with everything it reads pointed into `home`.
pub fn devenv(home: &TestHome) -> Command {
    user_in(home, devenv_bin())
}

/// `program` run as the test user with devenv's environment pointed into `home` (a host shell
/// that starts devenv itself, a wrapper around it), in the project directory.
pub fn user_in(home: &TestHome, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = as_user(program);
    cmd.env("HOME", home.home())
        .env("XDG_CACHE_HOME", home.home().join(".cache"))
        .env("XDG_CONFIG_HOME", home.config())
        .env("DEVENV_HOME", home.store())
        .env("DOCKER_CONFIG", home.docker())
        .env("NO_COLOR", "1")
        .current_dir(home.project());
    cmd
}

/// A temp dir owned by the test user: `home/`, `cache/` (the store, DEVENV_HOME), `config/`,
/// `docker/` (DOCKER_CONFIG) and `project/`. Removed on drop, whatever modes devenv left.
pub struct TestHome {
    root: PathBuf,
}

impl TestHome {
    pub fn new() -> TestHome {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("home-{}-", std::process::id()))
            .tempdir_in(shared_tmp())
            .expect("creating a test home");
        let root = tmp.keep();
        fs_err::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = TestHome { root };
        for d in ["home", "cache", "config", "docker", "project"] {
            home.mkdir(d);
        }
        home.chown(&home.root);
        home
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    /// The store root (DEVENV_HOME).
    pub fn store(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn docker(&self) -> PathBuf {
        self.root.join("docker")
    }
    pub fn project(&self) -> PathBuf {
        self.root.join("project")
    }

    /// `layers/<hex>` in the store, for a `sha256:<hex>` diff_id or a bare hex.
    pub fn layer(&self, diff_id: &str) -> PathBuf {
        self.store().join("layers").join(hex_of(diff_id))
    }
    /// `blobs/sha256/<hex>` in the store.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.store().join("blobs/sha256").join(hex_of(digest))
    }

    /// The names under `layers/` and `blobs/sha256/` (as `layers/<hex>`, `blobs/sha256/<hex>`):
    /// what a failed pull must not add to.
    pub fn store_entries(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for sub in ["layers", "blobs/sha256"] {
            let Ok(rd) = fs_err::read_dir(self.store().join(sub)) else {
                continue;
            };
            for e in rd {
                let e = e.expect("reading the store");
                out.insert(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// Makes a directory (relative to the root, or absolute inside it) owned by the test user.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        fs_err::create_dir_all(&p).unwrap();
        self.chown(&p);
        p
    }

    /// Writes a file (creating parents) owned by the test user.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs_err::create_dir_all(parent).unwrap();
            self.chown_up_to_root(parent);
        }
        fs_err::write(&p, contents).unwrap();
        self.chown(&p);
        p
    }

    /// Reads a file back (as the test process, root when CI).
    pub fn read(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        fs_err::read(self.root.join(rel)).unwrap()
    }

    /// `$DOCKER_CONFIG/config.json` with basic credentials for `registry`.
    pub fn docker_login(&self, registry: &str, user: &str, pass: &str) {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let json = serde_json::json!({ "auths": { registry: { "auth": auth } } });
        self.write(
            "docker/config.json",
            serde_json::to_vec_pretty(&json).unwrap(),
        );
    }

    /// Gives `path` (recursively) to the test user; nothing to do when not root.
    pub fn chown(&self, path: &Path) {
        if !is_root() {
            return;
        }
        let (uid, gid) = runner_ids();
        let status = Command::new(tool("chown"))
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown -R {}", path.display());
    }

    fn chown_up_to_root(&self, dir: &Path) {
        let mut d = dir;
        while d.starts_with(&self.root) && d != self.root {
            if is_root() {
                let (uid, gid) = runner_ids();
                nix::unistd::chown(
                    d,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .unwrap();
            }
            d = d.parent().unwrap();
        }
    }
}

impl Default for TestHome {
    fn default() -> Self {
        TestHome::new()
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        if std::env::var_os("DEVENV_TEST_KEEP").is_some() {
            eprintln!("keeping test home {}", self.root.display());
            return;
        }
        // devenv keeps modes: a 0555 layer directory cannot be emptied until made writable.
        make_writable(&self.root);
        let _ = fs_err::remove_dir_all(&self.root);
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = fs_err::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(rd) = fs_err::read_dir(dir) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// `sha256:<hex>` or `<hex>` → `<hex>`.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// What a finished command did, with its output kept for assertions and failure messages.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n  status: {}\n  stdout:\n{}\n  stderr:\n{}",
            self.what,
            self.status,
            indent(&self.stdout),
            indent(&self.stderr)
        )
    }

    /// Exit 0, or panic showing both streams.
    #[track_caller]
    /// How many `error:` lines stderr has (devenv prints one per failure).
    pub fn errors(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count()
    }

    pub fn success(self) -> Outcome {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        self
    }

    /// Exit 1 with a line starting with `error:` on stderr, which also contains each of
    /// `needles` (case-insensitive).
    #[track_caller]
    pub fn failure(self, needles: &[&str]) -> Outcome {
        assert_eq!(
            self.code(),
            Some(1),
            "expected exit status 1: {}",
            self.describe()
        );
        assert!(
            self.stderr.lines().any(|l| l.starts_with("error:")),
            "expected a line starting with `error:` on stderr: {}",
            self.describe()
        );
        let lower = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "expected stderr to mention {n:?}: {}",
                self.describe()
            );
        }
        self
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Runs `cmd` to completion (killed after [`COMMAND_TIMEOUT`]), capturing both streams.
pub fn run(cmd: &mut Command) -> Outcome {
    let (child, what) = spawn(cmd);
    wait(child, what)
}

/// Starts `cmd` without waiting, streams captured; finish it with [`wait`].
pub fn spawn(cmd: &mut Command) -> (Child, String) {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    (child, what)
}

/// Waits for a child from [`spawn`], killing it after [`COMMAND_TIMEOUT`].
pub fn wait(mut child: Child, what: String) -> Outcome {
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            break s;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let s = child.wait().expect("waiting for a killed child");
            let outcome = Outcome {
                status: s,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
                what,
            };
            panic!("timed out after {COMMAND_TIMEOUT:?}: {outcome:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        what,
    }
}

/// Runs a shell script as the test user inside `unshare -Urm` (a user and mount namespace where
/// the user is root).
pub fn in_userns(script: &str) -> Outcome {
    run(as_user(tool("unshare"))
        .args(["-Urm", "sh", "-euc"])
        .arg(script))
}

/// Mounts the layer chain (`lowers[0]` on top) with overlay as the test user, in a user
/// namespace, and returns `find` of the merged tree: one `<path> <type> <mode>` line per entry
/// (path relative to the root, `f`/`d`/`l`, octal mode; sorted), then `<path>: <content>` for
/// each small regular file.
pub fn overlay_listing(home: &TestHome, lowers: &[PathBuf]) -> Vec<String> {
    let mnt = home.mkdir("overlay/merged");
    let upper = home.mkdir("overlay/upper");
    let work = home.mkdir("overlay/work");
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let script = format!(
        "mount -t overlay overlay -o lowerdir={lowerdir},upperdir={},workdir={},userxattr {} \
         && cd {} && find . -mindepth 1 -printf '%P %y %m\\n' | sort \
         && find . -mindepth 1 -type f -size -2k -printf '%P\\n' | sort | \
            while read -r f; do printf '%s: %s\\n' \"$f\" \"$(cat \"$f\")\"; done",
        upper.display(),
        work.display(),
        mnt.display(),
        mnt.display()
    );
    let out = in_userns(&script).success();
    out.stdout.lines().map(str::to_owned).collect()
}

/// A directory outside the store with known content, which no pull may change: hostile layers
/// aim their escapes at it. Owned by the test user, so an escape would succeed if attempted.
pub struct Bait {
    pub dir: PathBuf,
    before: tree::Tree,
}

impl Bait {
    pub fn new(home: &TestHome) -> Bait {
        let dir = home.mkdir("bait");
        home.write("bait/secret", "the secret\n");
        home.write("bait/victim", "delete me and the test fails\n");
        home.write("bait/sub/deep", "deep\n");
        fs_err::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let before = tree::Tree::read(&dir);
        Bait { dir, before }
    }

    /// The bait's absolute path without the leading `/`: append it to a path that resolves to
    /// `/` (`../../..`, a symlink to `/`) to aim at the bait.
    pub fn rel_from_root(&self) -> String {
        self.dir
            .display()
            .to_string()
            .trim_start_matches('/')
            .to_owned()
    }

    /// Panics unless the bait is byte-for-byte, mode-for-mode and link-count-for-link-count as
    /// it was made (a hardlink to a bait file raises its link count).
    #[track_caller]
    pub fn assert_unchanged(&self) {
        let now = tree::Tree::read(&self.dir);
        assert_eq!(
            now,
            self.before,
            "the bait directory {} changed",
            self.dir.display()
        );
        for f in ["secret", "victim", "sub/deep"] {
            let nlink = fs_err::metadata(self.dir.join(f)).unwrap().nlink();
            assert_eq!(nlink, 1, "bait/{f} gained a hard link");
        }
    }
}

/// A name unique in this test run, for repositories on the shared registry.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{n}-{nanos:x}", std::process::id())
}

/// The host's platform as OCI names it (`amd64`, `arm64`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => panic!("no OCI name known for {other}"),
    }
}

/// Some architecture that is not the host's, for platform selection tests.
pub fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// Deterministic pseudo-random bytes (xorshift): incompressible content for large blobs.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `$DEVENV_TEST_CACHE` (default `/var/cache/devenv-test`): where `scripts/test` keeps the
/// root filesystem tars it builds with mmdebstrap.
pub fn test_cache() -> PathBuf {
    std::env::var_os("DEVENV_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/devenv-test"))
}

/// `name` in [`test_cache`], which must exist.
#[track_caller]
pub fn cached_tar(name: &str) -> PathBuf {
    let tar = test_cache().join(name);
    assert!(
        tar.is_file(),
        "{} is missing: run scripts/test, which builds it with mmdebstrap",
        tar.display()
    );
    tar
}

/// A root filesystem tar pushed to the shared registry as a one-layer image (gzip) with PATH
/// and LANG set, as `unique(name):1`; its reference.
pub fn push_rootfs_tar(tar: &Path, name: &str) -> String {
    let bytes = fs_err::read(tar).expect("reading a cached root filesystem tar");
    let image = image::ImageBuilder::new()
        .layer(image::Layer::from_tar(bytes))
        .env("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG=C.UTF-8")
        .build();
    registry::Client::shared().push(&unique(name), "1", &image)
}

/// The Debian bookworm root filesystem (python3, python3-venv, python3-pip, ca-certificates)
/// that `scripts/test` builds with mmdebstrap into [`test_cache`].
pub fn bookworm_tar() -> PathBuf {
    cached_tar("bookworm-python.tar")
}

/// [`bookworm_tar`] pushed to the shared registry as a one-layer image (gzip), once per test
/// process; its reference.
pub fn bookworm_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| push_rootfs_tar(&bookworm_tar(), "bookworm-python"))
        .clone()
}
