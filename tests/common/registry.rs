//! Real registries: the shared one `scripts/test` starts ([`registry`]) and private ones a test
//! starts for itself ([`Registry::start`], with basic auth [`Registry::start_with_htpasswd`]),
//! plus pushing built images through the distribution HTTP API.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::image::{BuiltImage, BuiltIndex};

/// The shared registry (`127.0.0.1:PORT`) that `scripts/test` started. Never skips.
pub fn registry() -> String {
    match std::env::var("DEVENV_TEST_REGISTRY") {
        Ok(addr) if !addr.is_empty() => addr,
        _ => panic!(
            "DEVENV_TEST_REGISTRY is not set: these tests need a registry on loopback; \
             run them with scripts/test (as root on a fresh machine it installs what is missing)"
        ),
    }
}

/// A `docker-registry` process of the test's own, killed (and its storage removed) on drop.
pub struct Registry {
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
    auth: Option<(String, String)>,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry that demands basic auth; the htpasswd file is bcrypt (`htpasswd -Bbn`), the
    /// only hash docker-registry accepts.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Registry::launch(Some((user.to_owned(), pass.to_owned())))
    }

    fn launch(auth: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("devenv-registry-")
            .tempdir()
            .expect("creating the registry dir");
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = &auth {
            let out = Command::new(super::tool("htpasswd"))
                .args(["-Bbn", user, pass])
                .output()
                .expect("running htpasswd");
            assert!(out.status.success(), "htpasswd -Bbn failed: {out:?}");
            let htpasswd = dir.path().join("htpasswd");
            fs_err::write(&htpasswd, &out.stdout).unwrap();
            auth_yaml = format!(
                "auth: {{ htpasswd: {{ realm: devenv-test, path: {} }} }}\n",
                htpasswd.display()
            );
        }
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs_err::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
                     storage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\n\
                     http:\n  addr: {addr}\n  secret: devenv-tests\n{auth_yaml}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = fs_err::File::create(dir.path().join("log"))
                .unwrap()
                .into_file();
            let mut child = Command::new(super::tool("docker-registry"))
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting docker-registry (run scripts/test, which installs it)");
            if wait_ready(&addr, &mut child) {
                return Registry {
                    addr,
                    child,
                    dir,
                    auth,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut log = String::new();
        let _ = fs_err::File::open(dir.path().join("log")).map(|mut f| f.read_to_string(&mut log));
        panic!("docker-registry did not come up on loopback:\n{log}");
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Where the registry keeps `digest`'s bytes: change them (same length) to serve a corrupt
    /// blob, since the registry refuses corrupt uploads.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = super::hex_of(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }

    /// A client for this registry, with its credentials when it has any.
    pub fn client(&self) -> Client {
        Client {
            addr: self.addr.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().unwrap().port()
}

/// Polls `GET /v2/` until the registry answers (200, or 401 when it wants auth).
fn wait_ready(addr: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        match agent.get(&format!("http://{addr}/v2/")).call() {
            Ok(_) | Err(ureq::Error::Status(401, _)) => return true,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

/// Pushes and fetches through the distribution API (plain HTTP, basic auth when given).
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: String,
    pub auth: Option<(String, String)>,
}

impl Client {
    /// For the shared registry.
    pub fn shared() -> Client {
        Client {
            addr: registry(),
            auth: None,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build()
    }

    fn authorize(&self, req: ureq::Request) -> ureq::Request {
        match &self.auth {
            Some((u, p)) => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req.set("Authorization", &format!("Basic {b}"))
            }
            None => req,
        }
    }

    /// Uploads one blob monolithically: POST an upload session, then PUT `?digest=`.
    pub fn push_blob(&self, name: &str, digest: &str, bytes: &[u8]) {
        let agent = Client::agent();
        let url = format!("http://{}/v2/{name}/blobs/uploads/", self.addr);
        let resp = self
            .authorize(agent.post(&url))
            .call()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(resp.status(), 202, "POST {url}");
        let location = resp
            .header("Location")
            .expect("upload response without Location")
            .to_owned();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.addr)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let resp = self
            .authorize(agent.put(&put))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT blob {digest} to {name}: {e}"));
        assert_eq!(resp.status(), 201, "PUT blob {digest}");
    }

    /// PUTs a manifest (or index) under `reference`, a tag or a digest.
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let url = format!("http://{}/v2/{name}/manifests/{reference}", self.addr);
        let resp = self
            .authorize(Client::agent().put(&url))
            .set("Content-Type", media_type)
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT {url}: {}", describe(e)));
        assert_eq!(resp.status(), 201, "PUT {url}");
    }

    /// Pushes config, layers and manifest; the image is then `<addr>/<name>:<tag>`.
    pub fn push(&self, name: &str, tag: &str, image: &BuiltImage) -> String {
        self.push_blobs_and_manifest(name, image);
        self.push_manifest(name, tag, image.manifest_media_type, &image.manifest);
        format!("{}/{name}:{tag}", self.addr)
    }

    fn push_blobs_and_manifest(&self, name: &str, image: &BuiltImage) {
        self.push_blob(name, &image.config_digest, &image.config);
        for l in &image.layers {
            self.push_blob(name, &l.digest, &l.blob);
        }
        self.push_manifest(
            name,
            &image.manifest_digest,
            image.manifest_media_type,
            &image.manifest,
        );
    }

    /// Pushes every image of the index by digest, then the index under `tag`.
    pub fn push_index(&self, name: &str, tag: &str, index: &BuiltIndex) -> String {
        for image in &index.images {
            self.push_blobs_and_manifest(name, image);
        }
        self.push_manifest(name, tag, index.media_type, &index.bytes);
        format!("{}/{name}:{tag}", self.addr)
    }

    /// GET a manifest with every media type accepted: (content type, bytes).
    pub fn get_manifest(&self, name: &str, reference: &str) -> (String, Vec<u8>) {
        let url = format!("http://{}/v2/{name}/manifests/{reference}", self.addr);
        let resp = self
            .authorize(Client::agent().get(&url))
            .set("Accept", super::image::ACCEPT_ALL_MANIFESTS)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {}", describe(e)));
        let ct = resp.content_type().to_owned();
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        (ct, body)
    }

    pub fn get_blob(&self, name: &str, digest: &str) -> Vec<u8> {
        let url = format!("http://{}/v2/{name}/blobs/{digest}", self.addr);
        let resp = self
            .authorize(Client::agent().get(&url))
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {}", describe(e)));
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        body
    }

    /// The image config of a single-platform `name:reference`, and its layer diff_ids.
    pub fn get_config(&self, name: &str, reference: &str) -> serde_json::Value {
        let (_, manifest) = self.get_manifest(name, reference);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let digest = manifest["config"]["digest"]
            .as_str()
            .expect("manifest without config digest");
        serde_json::from_slice(&self.get_blob(name, digest)).unwrap()
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => {
            format!("status {code}: {}", resp.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}
