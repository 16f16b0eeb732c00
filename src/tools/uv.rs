//! uv, the Python installer and resolver devenv runs inside build and resolve containers,
//! pinned: the wheel the uv project publishes for this host's architecture, by file name and
//! sha256 (the musllinux wheel: a static binary that runs in any image, glibc or musl).
//! [`ensure`] finds that file on the user's package index (its simple API, see
//! [`super::index`]), downloads it once, verifies it, extracts the `uv` binary and commits it
//! to `tools/uv-<version>-<arch>/uv` in the store by rename; [`Uv::mount`] binds that
//! directory read-only at [`DIR`] in a container.
//!
//! Invariants: the index only says where the file is: a binary enters the store only from a
//! wheel whose sha256 matched the pin (whatever index or mirror served it), and
//! only complete (staged in `tmp/`, renamed); nothing here runs the binary on the host. `gc`
//! never removes `tools/` (it collects layers, blobs, manifests and `tmp/` only), so a pinned
//! uv is downloaded once per store. Moving the pin is a source change: a new version gets a new
//! directory, so builds with the old one stay reproducible until `devenv cache` removes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::fetch::{self, Verified};
use crate::config::Mount;
use crate::progress::Reporter;
use crate::store::{Store, StoreError};

/// The pinned uv release.
pub const VERSION: &str = "0.13.9";
/// Where the pinned uv's directory appears in a container (on its `/tmp` tmpfs, so it never
/// becomes part of a layer).
pub const DIR: &str = "/tmp/devenv-uv";
/// The binary inside a container.
pub const BIN: &str = "/tmp/devenv-uv/uv";

/// One architecture's pinned wheel.
struct Pin {
    /// `std::env::consts::ARCH`.
    arch: &'static str,
    /// The wheel's file name on the index's `uv` project page.
    file: &'static str,
    sha256: &'static str,
}

/// The musllinux wheels of [`VERSION`], as the uv project published them (aarch64's is tagged
/// manylinux and musllinux at once; it is the same static binary).
const PINS: &[Pin] = &[
    Pin {
        arch: "x86_64",
        file: "uv-0.13.9-py3-none-musllinux_1_1_x86_64.whl",
        sha256: "2c45530751517d6c3bbc69a19473f6effe47cce047bede01ffd8af7ea7b36b25",
    },
    Pin {
        arch: "aarch64",
        file: "uv-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        sha256: "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    },
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UvError {
    #[error("devenv pins no uv build for the {arch} architecture")]
    UnsupportedArch { arch: String },
    #[error("uv {version} is not in the store and --offline forbids downloading it")]
    Offline { version: &'static str },
    #[error(transparent)]
    Index(#[from] super::index::IndexError),
    #[error("uv {version}: the index {index} lists no {file}")]
    NotListed {
        version: &'static str,
        index: String,
        file: &'static str,
    },
    #[error("downloading uv {version} from {url}: {message}")]
    Download {
        version: &'static str,
        url: String,
        message: String,
    },
    #[error("uv {version}: {url} has sha256 {actual}, devenv pins {expected}")]
    HashMismatch {
        version: &'static str,
        url: String,
        expected: &'static str,
        actual: String,
    },
    #[error("uv {version}: the wheel {}: {message}", wheel.display())]
    Wheel {
        version: &'static str,
        wheel: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl crate::error::Hint for UvError {
    fn hint(&self) -> Option<String> {
        match self {
            UvError::UnsupportedArch { .. } => Some(
                "Python packages are installed with uv, pinned for x86_64 and aarch64 hosts only"
                    .into(),
            ),
            UvError::Offline { .. } => Some(
                "run one `devenv build` (or `devenv lock`) with the network: devenv fetches its \
                 pinned uv from your package index once per store"
                    .into(),
            ),
            UvError::Index(e) => crate::error::Hint::hint(e),
            UvError::NotListed { .. } => Some(
                "the index (or mirror) does not carry the uv release devenv pins: mirror that \
                 file, or point PIP_INDEX_URL at an index that has it"
                    .into(),
            ),
            UvError::Download { .. } => Some(
                "devenv fetches its pinned uv from your package index once per store: check \
                 the network (and https_proxy)"
                    .into(),
            ),
            UvError::HashMismatch { .. } => Some(
                "the index (or a proxy) served other bytes than devenv pins; nothing was \
                 stored. Check the proxy, or report it"
                    .into(),
            ),
            UvError::Wheel { .. } => Some(
                "the downloaded wheel matched its pin but could not be unpacked: check the \
                 disk (df) and retry"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The pinned uv, present in the store.
#[derive(Clone, Debug)]
pub struct Uv {
    /// `tools/uv-<version>-<arch>/`, holding `uv`.
    pub dir: PathBuf,
}

impl Uv {
    /// Bind the binary's directory read-only at [`DIR`].
    pub fn mount(&self) -> Mount {
        Mount {
            source: self.dir.clone(),
            target: PathBuf::from(DIR),
            read_only: true,
        }
    }
}

/// The store directory of the pinned uv for `arch`.
pub fn tool_dir(store: &Store, arch: &str) -> PathBuf {
    store
        .root()
        .join("tools")
        .join(format!("uv-{VERSION}-{arch}"))
}

/// The store's uv work directory, `cache/uv`: uv's cache in `cache/` (shared by resolution and
/// every build), the venv a python step is building in `venv/`.
pub fn work_dir(store: &Store) -> PathBuf {
    store.root().join("cache/uv")
}

fn pin_for(arch: &str) -> Result<&'static Pin, UvError> {
    PINS.iter()
        .find(|p| p.arch == arch)
        .ok_or_else(|| UvError::UnsupportedArch { arch: arch.into() })
}

/// Make the pinned uv present in the store, downloading and unpacking it when missing.
pub fn ensure(store: &Store, offline: bool, ui: &dyn Reporter) -> Result<Uv, UvError> {
    let arch = std::env::consts::ARCH;
    let pin = pin_for(arch)?;
    let dir = tool_dir(store, arch);
    if dir.join("uv").is_file() {
        return Ok(Uv { dir });
    }
    let _held = store.lock(&format!("tool-uv-{VERSION}-{arch}"))?;
    if dir.join("uv").is_file() {
        return Ok(Uv { dir });
    }
    if offline {
        return Err(UvError::Offline { version: VERSION });
    }
    fs_err::create_dir_all(store.root().join("tools"))?;
    let staging = store.staging_dir("uv")?;
    let wheel = staging.path().join("uv.whl");
    let indexes = super::index::Indexes::load()?;
    let index = indexes.require_default("devenv fetches its pinned uv from it")?;
    download(store, index, pin.file, pin.sha256, &wheel, ui)?;
    let bin_dir = staging.path().join("tool");
    fs_err::create_dir(&bin_dir)?;
    extract_binary(&wheel, &bin_dir.join("uv"))?;
    fs_err::remove_file(&wheel)?;
    fs_err::set_permissions(
        &bin_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    match fs_err::rename(&bin_dir, &dir) {
        Ok(()) => {}
        Err(_) if dir.join("uv").is_file() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Uv { dir })
}

/// Find `file` on `index`'s `uv` project page and download it to `dest`, verified against
/// `sha256`.
fn download(
    store: &Store,
    index: &str,
    file: &'static str,
    sha256: &'static str,
    dest: &Path,
    ui: &dyn Reporter,
) -> Result<(), UvError> {
    use super::index::{self, redacted};
    let failed = |url: &str, message: String| UvError::Download {
        version: VERSION,
        url: redacted(url),
        message,
    };
    let page = index::project_url(index, "uv");
    let agents = fetch::agents().map_err(|e| failed(&page, e.to_string()))?;
    let body = agents
        .for_url(&page)
        .get(&page)
        .set("Accept", index::ACCEPT)
        .call()
        .map_err(|e| failed(&page, fetch::http_message(&page, &e)))?
        .into_string()
        .map_err(|e| failed(&page, e.to_string()))?;
    let listed = index::parse_project_page(&body, &page);
    let url = listed
        .iter()
        .find(|l| l.filename == file)
        .map(|l| l.url.clone())
        .ok_or_else(|| UvError::NotListed {
            version: VERSION,
            index: redacted(index),
            file,
        })?;
    let label = format!("uv {VERSION}");
    match fetch::download_verified(store, &agents, &url, sha256, dest, &label, ui) {
        Ok(Verified::Stored) => Ok(()),
        Ok(Verified::Mismatch { actual }) => Err(UvError::HashMismatch {
            version: VERSION,
            url: redacted(&url),
            expected: sha256,
            actual,
        }),
        Err(fetch::FetchError::Download { message, .. }) => Err(failed(&url, message)),
        Err(fetch::FetchError::Io(e)) => Err(e.into()),
        Err(e) => Err(failed(&url, e.to_string())),
    }
}

/// The path of the binary inside the wheel: `uv-<version>.data/scripts/uv`.
fn binary_entry() -> String {
    format!("uv-{VERSION}.data/scripts/uv")
}

/// Copy the wheel's `uv` binary to `dest` (mode 0755, fsync'd).
fn extract_binary(wheel: &Path, dest: &Path) -> Result<(), UvError> {
    let bad = |message: String| UvError::Wheel {
        version: VERSION,
        wheel: wheel.to_path_buf(),
        message,
    };
    let file = fs_err::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let name = binary_entry();
    let mut entry = zip
        .by_name(&name)
        .map_err(|e| bad(format!("{name}: {e}")))?;
    let mut out = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut out, &buf[..n])?;
    }
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    out.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_name_their_version_and_a_static_wheel() {
        for pin in PINS {
            let name = pin.file;
            assert!(name.starts_with(&format!("uv-{VERSION}-")), "{name}");
            assert!(name.contains("musllinux"), "the static build: {name}");
            assert!(name.ends_with(&format!("_{}.whl", pin.arch)), "{name}");
            assert!(
                pin.sha256.len() == 64 && pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}",
                pin.sha256
            );
        }
        assert!(pin_for("x86_64").is_ok() && pin_for("aarch64").is_ok());
        assert!(matches!(
            pin_for("riscv64"),
            Err(UvError::UnsupportedArch { .. })
        ));
    }

    /// A wheel made here the way PyPI's are laid out: the binary comes out byte for byte,
    /// executable; a wheel without it is an error naming the entry.
    #[test]
    fn the_binary_comes_out_of_the_wheel() {
        let t = tempfile::tempdir().unwrap();
        let wheel = t.path().join("uv.whl");
        let mut w = zip::ZipWriter::new(fs_err::File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("uv/__init__.py", opts).unwrap();
        std::io::Write::write_all(&mut w, b"").unwrap();
        w.start_file(binary_entry(), opts).unwrap();
        std::io::Write::write_all(&mut w, b"\x7fELF pretend binary").unwrap();
        w.finish().unwrap();
        let dest = t.path().join("uv");
        extract_binary(&wheel, &dest).unwrap();
        assert_eq!(fs_err::read(&dest).unwrap(), b"\x7fELF pretend binary");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs_err::metadata(&dest).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755);

        let empty = t.path().join("empty.whl");
        zip::ZipWriter::new(fs_err::File::create(&empty).unwrap())
            .finish()
            .unwrap();
        let err = extract_binary(&empty, &t.path().join("uv2")).unwrap_err();
        assert!(err.to_string().contains(&binary_entry()), "{err}");
    }

    /// gc keeps the pinned uv and uv's cache while they are in use, and removes both with
    /// `--all` (a build fetches uv again, verified, and uv fills its cache again).
    #[test]
    fn gc_keeps_the_tool_and_the_uv_cache_in_use_and_all_removes_them() {
        use crate::store::gc::{Cache, Caches, collect};
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let dir = tool_dir(&store, "x86_64");
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::write(dir.join("uv"), b"bin").unwrap();
        let cache = work_dir(&store).join("cache/wheels-v5");
        fs_err::create_dir_all(&cache).unwrap();
        let plan = collect(&store, false, Caches::DEFAULT).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
        assert!(dir.join("uv").is_file() && cache.is_dir());
        let plan = collect(&store, true, Caches::All).unwrap();
        let kinds: Vec<Cache> = plan.caches.iter().map(|(c, _)| *c).collect();
        assert_eq!(kinds, [Cache::Uv, Cache::Tools], "{plan:?}");
        assert!(dir.join("uv").is_file(), "a dry run removes nothing");
        collect(&store, false, Caches::All).unwrap();
        assert!(!dir.exists() && !cache.exists());
    }

    /// A package index on loopback, as a mirror would serve it: `/simple/uv/` (HTML, with a
    /// path-relative link) and the file it links (the registry tests' in-process server).
    fn serve_index(wheel: Vec<u8>) -> String {
        use crate::registry::tests::{reply, serve};
        let file = format!("/files/{}", PINS[0].file);
        let server = serve(move |req| match req.path.as_str() {
            "/simple/uv/" => reply(
                200,
                &[],
                format!(
                    "<html><body><a href=\"../../files/{0}#sha256=00\">{0}</a></body></html>",
                    PINS[0].file
                ),
            ),
            p if p == file => reply(200, &[], wheel.clone()),
            _ => reply(404, &[], "no"),
        });
        format!("http://{}/simple", server.addr)
    }

    #[test]
    fn the_wheel_is_found_on_the_index_page_and_stored_only_when_it_matches_the_pin() {
        use sha2::Digest as _;
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let wheel = b"pretend wheel".to_vec();
        let sha: &'static str = hex::encode(sha2::Sha256::digest(&wheel)).leak();
        let index = serve_index(wheel);
        let dest = t.path().join("uv.whl");
        let ui = crate::progress::Silent;
        download(&store, &index, PINS[0].file, sha, &dest, &ui).unwrap();
        assert_eq!(fs_err::read(&dest).unwrap(), b"pretend wheel");

        let other = t.path().join("other.whl");
        let err = download(&store, &index, PINS[0].file, PINS[0].sha256, &other, &ui).unwrap_err();
        assert!(matches!(err, UvError::HashMismatch { .. }), "{err}");
        assert!(!other.exists(), "nothing stored on a mismatch");

        let err = download(&store, &index, "uv-0-py3-none-any.whl", sha, &other, &ui).unwrap_err();
        assert!(matches!(err, UvError::NotListed { .. }), "{err}");
        let err = download(
            &store,
            &format!("{index}/../nothing"),
            PINS[0].file,
            sha,
            &other,
            &ui,
        )
        .unwrap_err();
        assert!(matches!(err, UvError::Download { .. }), "{err}");
    }

    #[test]
    fn offline_without_the_tool_says_how_to_get_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let err = ensure(&store, true, &crate::progress::Silent).unwrap_err();
        assert!(matches!(err, UvError::Offline { .. }), "{err}");
        let hint = crate::error::Hint::hint(&err).unwrap();
        assert!(hint.contains("with the network"), "{hint}");
    }
}
