//! Images and a browser for the services tests: the PostgreSQL and Redis root filesystems that
//! `scripts/test` builds with mmdebstrap into [`test_cache`](super::test_cache), pushed to the
//! shared registry like [`bookworm_image`](super::bookworm_image), and headless Chromium, which
//! loads a page that a service or an env serves, runs its JavaScript and dumps the DOM or takes
//! a screenshot.
//!
//! postgres.tar: PostgreSQL 15 (`/usr/lib/postgresql/15/bin/{initdb,postgres,pg_ctl,...}`), the
//! `postgres` user (uid 101, gid 103, home /var/lib/postgresql), an empty
//! `/var/lib/postgresql/data` (postgres's, 0700) to mount a data volume on, psql, redis-cli and
//! python3 with python3-redis: the env's own image as well as the database's. Debian's postinst
//! also made the default cluster /var/lib/postgresql/15/main, which nothing uses.
//! redis.tar: `/usr/bin/redis-server`, the `redis` user (uid 100, gid 101).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{Outcome, SYSTEM_PATH, cached_tar, push_rootfs_tar, run};

/// [`cached_tar`]`("postgres.tar")` pushed to the shared registry as a one-layer image, once
/// per test process; its reference.
pub fn postgres_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| push_rootfs_tar(&cached_tar("postgres.tar"), "postgres"))
        .clone()
}

/// [`cached_tar`]`("redis.tar")` pushed to the shared registry as a one-layer image, once per
/// test process; its reference.
pub fn redis_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| push_rootfs_tar(&cached_tar("redis.tar"), "redis"))
        .clone()
}

/// In the DOM [`chromium_dom`] dumps of JupyterLab's `/lab`, only once its application has
/// started: the shell's main dock panel, which JavaScript creates. The page as served (`curl`)
/// does not contain it, nor does Chromium's DOM at the load event (the app's CSS, injected by
/// then, names the panel only as `#jp-main-dock-panel`). JupyterLab 4.
pub const JUPYTERLAB_MARKER: &str = r#"id="jp-main-dock-panel""#;

/// How much virtual time Chromium gives a page's timers and fetches before it dumps the DOM
/// or takes the screenshot. Virtual time runs ahead whenever the page is idle, so the budget
/// costs little real time (JupyterLab: about 3 s of wall time in all); without it Chromium
/// dumps at the load event, before the app has rendered anything, and screenshots a blank page.
pub const CHROMIUM_VIRTUAL_TIME_MS: u32 = 10_000;

fn chromium_bin() -> PathBuf {
    SYSTEM_PATH
        .split(':')
        .map(|dir| Path::new(dir).join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("chromium is missing: scripts/test installs it"))
}

/// Headless Chromium on `url` with `output` (`--dump-dom`, `--screenshot=...`), as the test
/// process: `--no-sandbox`, because as root Chromium refuses to start with its sandbox; a
/// fresh profile and HOME in a temp dir, because headless Chromium cannot start without a
/// writable profile directory; `--disable-gpu` and `--no-proxy-server`, so that neither a
/// missing GPU nor the environment's proxy settings change what loads.
fn chromium(url: &str, output: &[String]) -> Outcome {
    let dir = tempfile::Builder::new()
        .prefix("devenv-chromium-")
        .tempdir()
        .expect("creating a profile dir for chromium");
    let mut cmd = Command::new(chromium_bin());
    cmd.env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", dir.path())
        .env("LANG", "C.UTF-8")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={CHROMIUM_VIRTUAL_TIME_MS}"))
        .args(output)
        .arg(url)
        .current_dir(dir.path());
    run(&mut cmd)
}

/// The DOM of `url` after its JavaScript has run (Chromium's `--dump-dom`). A page that did
/// not load is no failure (Chromium exits 0 and prints nothing when the connection is
/// refused): look for a marker such as [`JUPYTERLAB_MARKER`]. About 3 s for JupyterLab.
pub fn chromium_dom(url: &str) -> String {
    chromium(url, &["--dump-dom".to_owned()]).success().stdout
}

/// A 1280x800 PNG screenshot of `url` after its JavaScript has run, written to `png`.
pub fn chromium_screenshot(url: &str, png: &Path) {
    match fs_err::remove_file(png) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{e}"),
    }
    let out = chromium(
        url,
        &[
            "--window-size=1280,800".to_owned(),
            format!("--screenshot={}", png.display()),
        ],
    )
    .success();
    let bytes =
        fs_err::read(png).unwrap_or_else(|e| panic!("chromium wrote no screenshot ({e}): {out:?}"));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chromium's screenshot {} is not a PNG: {out:?}",
        png.display()
    );
}

/// `cmd` run in a mount namespace of its own where `/dev/net/tun` is a tun device node as the
/// kernel leaves it without udev: root's, mode 0600 (a node made in `dir`, bound over the real
/// one; nothing outside that namespace changes). The wrapper runs as root, so the test must:
/// it then drops to the test user as `cmd` does.
#[track_caller]
pub fn with_tun_root_only(cmd: &Command, dir: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        super::is_root(),
        "this test binds a root-only /dev/net/tun in a mount namespace: run it as root (scripts/test does)"
    );
    let node = dir.join("tun");
    let _ = fs_err::remove_file(&node);
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(10, 200),
    )
    .expect("mknod of a tun device node");
    fs_err::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut wrapped = Command::new(super::tool("unshare"));
    wrapped
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg("mount --bind \"$1\" /dev/net/tun && shift && exec \"$@\"")
        .arg("sh")
        .arg(&node)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        wrapped.current_dir(d);
    }
    wrapped
}
