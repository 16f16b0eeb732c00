//! A Python package mirror on loopback, as a company runs one: Python's own `http.server`
//! serving a PEP 503 tree (`simple/<project>/index.html` linking `files/<wheel>#sha256=…`) of
//! the wheels `scripts/test` downloads into `$DEVENV_TEST_CACHE/wheels`. Its request log says
//! what was fetched from it; [`behind_closed_proxy`] keeps every other index out of reach.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Mirror {
    /// The index's simple URL, `http://127.0.0.1:PORT/simple`.
    pub url: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The wheels `scripts/test` downloads for the mirror.
#[track_caller]
pub fn wheels() -> PathBuf {
    let dir = super::test_cache().join("wheels");
    let done = fs_err::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("done-uv-"))
        })
        .unwrap_or(false);
    assert!(
        done,
        "{} is missing: run scripts/test, which downloads the mirror's wheels with pip",
        dir.display()
    );
    dir
}

/// PEP 503's normalized project name of a wheel file.
fn project_of(wheel: &str) -> String {
    let name = wheel.split('-').next().unwrap_or(wheel);
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

impl Mirror {
    /// Serve every wheel in `wheels`.
    pub fn serve(wheels: &Path) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        fs_err::create_dir_all(&files).unwrap();
        let mut pages: std::collections::BTreeMap<String, String> = Default::default();
        for e in fs_err::read_dir(wheels).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".whl") {
                continue;
            }
            let bytes = fs_err::read(e.path()).unwrap();
            fs_err::write(files.join(&name), &bytes).unwrap();
            let sha = super::image::sha256(&bytes);
            pages
                .entry(project_of(&name))
                .or_default()
                .push_str(&format!(
                    "<a href=\"../../files/{name}#sha256={}\">{name}</a><br/>\n",
                    sha.trim_start_matches("sha256:")
                ));
        }
        for (project, links) in &pages {
            let page = dir.path().join("simple").join(project);
            fs_err::create_dir_all(&page).unwrap();
            fs_err::write(
                page.join("index.html"),
                format!("<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n"),
            )
            .unwrap();
        }
        let log = dir.path().join("requests.log");
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
            .spawn()
            .expect("python3 -m http.server (python3 is needed for the mirror)");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .split("port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server did not say its port: {line:?}"));
        Mirror {
            url: format!("http://127.0.0.1:{port}/simple"),
            child,
            log,
            _dir: dir,
        }
    }

    /// The paths asked so far, in order (`GET /simple/uv/`).
    pub fn requests(&self) -> Vec<String> {
        fs_err::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let quoted = l.split('"').nth(1)?;
                let mut words = quoted.split(' ');
                Some(format!("{} {}", words.next()?, words.next()?))
            })
            .collect()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every proxy variable pointed at a closed port on loopback, loopback itself exempt: what
/// `cmd` fetches from the internet fails, what it fetches from 127.0.0.1 works.
pub fn behind_closed_proxy(cmd: &mut Command) -> &mut Command {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = format!("http://127.0.0.1:{closed}");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(v, &proxy);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
}
