//! The client against a tiny in-process HTTP/1.1 server on 127.0.0.1: the faults a real
//! registry will not produce on demand (challenges, 429, 500, a body cut mid-blob, wrong
//! digests, redirects to another host).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::error::Hint;

#[derive(Clone, Debug)]
pub(crate) struct Req {
    method: String,
    pub(crate) path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server's own address, for URLs pointing back at it.
    server: SocketAddr,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes (Content-Length still says all).
    cut_at: Option<usize>,
}

pub(crate) fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
        cut_at: None,
    }
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
    fn count(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }
}

/// Serve `handler` on a fresh loopback port, one connection at a time, each closed after its
/// answer. The thread lives until the test process ends.
pub(crate) fn serve(handler: impl Fn(&Req) -> Reply + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = handle(stream, addr, &handler, &log2);
        }
    });
    Server { addr, log }
}

fn handle(
    mut stream: TcpStream,
    addr: SocketAddr,
    handler: &impl Fn(&Req) -> Reply,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut first = [0u8; 1];
    stream.peek(&mut first)?;
    if first[0] == 0x16 {
        // A TLS ClientHello to a plain-HTTP server.
        stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    }
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let req = Req {
        method,
        path,
        headers,
        body,
        server: addr,
    };
    log.lock().unwrap().push(req.clone());
    let r = handler(&req);
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
    let no_length = r.headers.iter().any(|(k, _)| k == "X-No-Length");
    if !no_length
        && !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let end = r.cut_at.unwrap_or(r.body.len()).min(r.body.len());
    stream.write_all(&r.body[..end])?;
    stream.flush()?;
    if r.cut_at.is_some() || no_length {
        // Reset rather than a clean close, like a dropped connection.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        tries: 5,
        base: Duration::from_millis(1),
        max_retry_after: Duration::from_millis(20),
    }
}

fn client_with(settings: Settings, docker_config: Option<PathBuf>) -> Client {
    Client::with_parts(
        settings,
        CredentialStore {
            docker_config,
            podman_auth: None,
            helper_dir: None,
        },
        ProxyConfig::default(),
        fast(),
    )
    .unwrap()
}

fn client() -> Client {
    client_with(Settings::default(), None)
}

fn image(server: &Server) -> ImageRef {
    format!("127.0.0.1:{}/team/app:v1", server.addr.port())
        .parse()
        .unwrap()
}

fn manifest_body() -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        manifest::OCI_MANIFEST,
        Digest::of(b"{}")
    )
    .into_bytes()
}

fn manifest_reply() -> Reply {
    let body = manifest_body();
    let digest = Digest::of(&body).to_string();
    reply(
        200,
        &[
            ("Content-Type", manifest::OCI_MANIFEST),
            ("Docker-Content-Digest", &digest),
        ],
        body,
    )
}

fn docker_config(dir: &std::path::Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join("config.json");
    fs_err::write(
        &path,
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}

fn basic(user: &str, pass: &str) -> String {
    Credentials {
        username: user.into(),
        password: pass.into(),
    }
    .basic_header()
}

#[test]
fn bearer_challenge_then_token_then_manifest() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let t2 = tokens.clone();
    let server = serve(move |r| {
        if r.path.starts_with("/token") {
            t2.fetch_add(1, Ordering::SeqCst);
            assert_eq!(r.header("authorization"), Some(basic("u", "p").as_str()));
            return reply(200, &[], r#"{"access_token":"T1","expires_in":300}"#);
        }
        if r.header("authorization") == Some("Bearer T1") {
            return manifest_reply();
        }
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="test registry",scope="repository:team/app:pull""#,
            r.server
        );
        reply(401, &[("WWW-Authenticate", &challenge)], "")
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = docker_config(dir.path(), &server.addr.to_string(), "u", "p");
    let c = client_with(Settings::default(), Some(cfg));
    let img = image(&server);
    let f = c.fetch_manifest(&img, "v1").unwrap();
    assert_eq!(f.bytes, manifest_body());
    assert_eq!(f.media_type, manifest::OCI_MANIFEST);
    assert_eq!(f.digest, Digest::of(&manifest_body()));
    // The token is cached for the repository: the second fetch goes straight through.
    c.fetch_manifest(&img, "v1").unwrap();
    assert_eq!(tokens.load(Ordering::SeqCst), 1);
    let token_req = server
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/token"))
        .unwrap();
    assert!(
        token_req
            .path
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        token_req.path
    );
    assert!(
        token_req.path.contains("service=test%20registry"),
        "{}",
        token_req.path
    );
    let manifest_reqs: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/manifests/"))
        .collect();
    assert_eq!(manifest_reqs.len(), 3);
    assert!(server.requests().iter().all(|r| r.method == "GET"));
    let accept = manifest_reqs[0].header("accept").unwrap();
    for mt in manifest::ACCEPTED {
        assert!(accept.contains(mt), "{accept}");
    }
}

#[test]
fn token_answer_with_token_field_and_anonymous_access() {
    let server = serve(move |r| {
        if r.path.starts_with("/token") {
            assert_eq!(
                r.header("authorization"),
                None,
                "anonymous: no credentials sent"
            );
            return reply(200, &[], r#"{"token":"ANON"}"#);
        }
        if r.header("authorization") == Some("Bearer ANON") {
            return manifest_reply();
        }
        let challenge = format!(r#"Bearer realm="http://{}/token""#, r.server);
        reply(401, &[("WWW-Authenticate", &challenge)], "")
    });
    client().fetch_manifest(&image(&server), "v1").unwrap();
}

#[test]
fn basic_auth_and_refused_credentials() {
    let server = serve(move |r| {
        if r.header("authorization") == Some(basic("alice", "pw").as_str()) {
            return manifest_reply();
        }
        reply(401, &[("WWW-Authenticate", r#"Basic realm="test""#)], "")
    });
    let dir = tempfile::tempdir().unwrap();
    let img = image(&server);
    let good = docker_config(
        dir.path(),
        &format!("http://{}", server.addr),
        "alice",
        "pw",
    );
    client_with(Settings::default(), Some(good))
        .fetch_manifest(&img, "v1")
        .unwrap();

    let bad = docker_config(dir.path(), &server.addr.to_string(), "alice", "wrong");
    match client_with(Settings::default(), Some(bad.clone())).fetch_manifest(&img, "v1") {
        Err(
            e @ RegistryError::Unauthorized {
                had_credentials: true,
                ..
            },
        ) => {
            let hint = e.hint().unwrap();
            assert!(hint.contains(&bad.display().to_string()), "{hint}");
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
    let missing = dir.path().join("nothing.json");
    match client_with(Settings::default(), Some(missing.clone())).fetch_manifest(&img, "v1") {
        Err(
            e @ RegistryError::Unauthorized {
                had_credentials: false,
                ..
            },
        ) => {
            let hint = e.hint().unwrap();
            assert!(hint.contains(&missing.display().to_string()), "{hint}");
            assert!(hint.contains("docker login"), "{hint}");
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
}

#[test]
fn retries_429_then_succeeds() {
    let n = AtomicUsize::new(0);
    let server = serve(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            reply(429, &[("Retry-After", "0")], "slow down")
        } else {
            manifest_reply()
        }
    });
    client().fetch_manifest(&image(&server), "v1").unwrap();
    assert_eq!(server.count("/v2/"), 2);
}

#[test]
fn retries_500_then_serves_blob() {
    let data = b"config blob".to_vec();
    let digest = Digest::of(&data);
    let n = AtomicUsize::new(0);
    let d2 = data.clone();
    let server = serve(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) < 2 {
            reply(500, &[], "oops")
        } else {
            reply(200, &[], d2.clone())
        }
    });
    let got = client().fetch_blob(&image(&server), &digest, 1024).unwrap();
    assert_eq!(got, data);
    assert_eq!(server.count("/v2/"), 3);
}

#[test]
fn gives_up_after_five_tries() {
    let server = serve(|_| reply(503, &[], ""));
    match client().fetch_manifest(&image(&server), "v1") {
        Err(RegistryError::TooManyRetries { tries: 5, last, .. }) => assert_eq!(last, "HTTP 503"),
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
    assert_eq!(server.count("/v2/"), 5);
}

fn big_blob() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn resumes_a_cut_blob_with_range() {
    let data = big_blob();
    let digest = Digest::of(&data);
    let d2 = data.clone();
    let server = serve(move |r| match r.header("range") {
        None => Reply {
            cut_at: Some(70_000),
            ..reply(200, &[], d2.clone())
        },
        Some(range) => {
            let start: usize = range
                .strip_prefix("bytes=")
                .and_then(|s| s.strip_suffix('-'))
                .and_then(|s| s.parse().ok())
                .unwrap();
            let cr = format!("bytes {start}-{}/{}", d2.len() - 1, d2.len());
            reply(206, &[("Content-Range", &cr)], d2[start..].to_vec())
        }
    });
    let mut r = client()
        .open_blob(&image(&server), &digest, Some(data.len() as u64))
        .unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    let ranges: Vec<_> = server
        .requests()
        .iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges.len(), 1);
    let offset: u64 = ranges[0][6..ranges[0].len() - 1].parse().unwrap();
    assert!(offset > 0 && offset <= 70_000, "{offset}");
    // Reading on after the verified end stays at EOF.
    assert_eq!(r.read(&mut [0u8; 16]).unwrap(), 0);
}

#[test]
fn a_registry_that_ignores_range_is_an_error() {
    let data = big_blob();
    let digest = Digest::of(&data);
    let d2 = data.clone();
    let server = serve(move |_| Reply {
        cut_at: Some(50_000),
        ..reply(200, &[], d2.clone())
    });
    let mut r = client().open_blob(&image(&server), &digest, None).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        matches!(RegistryError::from_io_ref(&err), Some(RegistryError::NoResume { offset, .. }) if *offset > 0),
        "{err}"
    );
}

#[test]
fn wrong_blob_content_fails_before_eof() {
    let data = b"the real content".to_vec();
    let digest = Digest::of(&data);
    let server = serve(|_| reply(200, &[], b"the fake content".to_vec()));
    let mut r = client()
        .open_blob(&image(&server), &digest, Some(data.len() as u64))
        .unwrap();
    let mut buf = [0u8; 4];
    let mut total = 0;
    let err = loop {
        match r.read(&mut buf) {
            Ok(0) => panic!("EOF reported for a blob that does not match its digest"),
            Ok(n) => total += n,
            Err(e) => break e,
        }
    };
    assert_eq!(total, data.len());
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    match RegistryError::from_io_ref(&err) {
        Some(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, &digest);
            assert_eq!(actual, &Digest::of(b"the fake content"));
        }
        other => panic!("{other:?}"),
    }
    // And it stays failed.
    assert!(r.read(&mut buf).is_err());
    // fetch_blob reports the same, unwrapped.
    assert!(matches!(
        client().fetch_blob(&image(&server), &digest, 100),
        Err(RegistryError::DigestMismatch { .. })
    ));
}

#[test]
fn wrong_blob_size_is_an_error() {
    let data = b"abc".to_vec();
    let digest = Digest::of(&data);
    let server = serve(|r| {
        if r.path.contains("nolength") {
            // Body delimited by closing the connection: the size is found out while reading.
            reply(200, &[("X-No-Length", "1")], b"abc".to_vec())
        } else {
            reply(200, &[], b"abc".to_vec())
        }
    });
    // Announced by Content-Length: refused before the body is read.
    assert!(matches!(
        client()
            .open_blob(&image(&server), &digest, Some(4))
            .map(|_| ()),
        Err(RegistryError::SizeMismatch {
            expected: 4,
            actual: 3,
            ..
        })
    ));
    let img: ImageRef = format!("127.0.0.1:{}/nolength", server.addr.port())
        .parse()
        .unwrap();
    let mut r = client().open_blob(&img, &digest, Some(2)).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            RegistryError::from_io_ref(&err),
            Some(RegistryError::SizeMismatch {
                expected: 2,
                actual: 3,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn fetch_blob_refuses_large_bodies() {
    let data = vec![7u8; 5000];
    let digest = Digest::of(&data);
    let server = serve(move |_| reply(200, &[], data.clone()));
    assert!(matches!(
        client().fetch_blob(&image(&server), &digest, 4096),
        Err(RegistryError::TooLarge { limit: 4096, .. })
    ));
}

#[test]
fn docker_content_digest_mismatch_is_an_error() {
    let server = serve(|_| {
        let wrong = Digest::of(b"something else").to_string();
        reply(
            200,
            &[
                ("Content-Type", manifest::OCI_MANIFEST),
                ("Docker-Content-Digest", &wrong),
            ],
            manifest_body(),
        )
    });
    match client().fetch_manifest(&image(&server), "v1") {
        Err(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, Digest::of(b"something else"));
            assert_eq!(actual, Digest::of(&manifest_body()));
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
}

#[test]
fn manifest_by_digest_must_hash_to_it() {
    let server = serve(|_| {
        reply(
            200,
            &[("Content-Type", manifest::OCI_MANIFEST)],
            manifest_body(),
        )
    });
    let img = image(&server);
    let right = Digest::of(&manifest_body());
    assert_eq!(
        client()
            .fetch_manifest(&img, right.as_str())
            .unwrap()
            .digest,
        right
    );
    let wrong = Digest::of(b"x");
    assert!(matches!(
        client().fetch_manifest(&img, wrong.as_str()),
        Err(RegistryError::DigestMismatch { expected, .. }) if expected == wrong
    ));
}

#[test]
fn generic_content_type_is_sniffed_and_schema1_refused() {
    let server = serve(|r| {
        if r.path.ends_with("/old") {
            reply(
                200,
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )],
                r#"{"schemaVersion":1,"fsLayers":[]}"#,
            )
        } else {
            reply(
                200,
                &[("Content-Type", "application/json")],
                manifest_body(),
            )
        }
    });
    let img = image(&server);
    assert_eq!(
        client().fetch_manifest(&img, "v1").unwrap().media_type,
        manifest::OCI_MANIFEST
    );
    match client().fetch_manifest(&img, "old") {
        Err(e @ RegistryError::UnsupportedMediaType { .. }) => {
            assert!(e.hint().unwrap().contains("schema 1"), "{:?}", e.hint())
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
}

#[test]
fn oversized_manifests_are_refused() {
    let server = serve(|_| {
        reply(
            200,
            &[("Content-Type", manifest::OCI_MANIFEST)],
            vec![b' '; MAX_MANIFEST_SIZE as usize + 1],
        )
    });
    assert!(matches!(
        client().fetch_manifest(&image(&server), "v1"),
        Err(RegistryError::TooLarge { .. })
    ));
}

#[test]
fn not_found_and_other_statuses() {
    let server = serve(|r| {
        if r.path.ends_with("/missing") || r.path.contains("/blobs/") {
            reply(
                404,
                &[],
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
        } else if r.path.ends_with("/denied") {
            reply(403, &[], "")
        } else {
            reply(
                400,
                &[],
                r#"{"errors":[{"code":"TAG_INVALID","message":"bad tag"}]}"#,
            )
        }
    });
    let img = image(&server);
    match client().fetch_manifest(&img, "missing") {
        Err(e @ RegistryError::NotFound { .. }) => {
            assert_eq!(
                e.to_string(),
                format!(
                    "127.0.0.1:{}/team/app:missing: not found in the registry",
                    server.addr.port()
                )
            );
            assert!(e.hint().unwrap().contains("check the image name"));
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
    assert!(matches!(
        client().fetch_manifest(&img, "denied"),
        Err(RegistryError::Denied { .. })
    ));
    match client().fetch_manifest(&img, "x") {
        Err(e @ RegistryError::Http { status: 400, .. }) => {
            assert!(e.to_string().contains("bad tag (TAG_INVALID)"), "{e}")
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
    let digest = Digest::of(b"nope");
    assert!(matches!(
        client().fetch_blob(&img, &digest, 10),
        Err(RegistryError::BlobNotFound { .. })
    ));
}

#[test]
fn redirected_blobs_do_not_carry_our_credentials() {
    let data = b"layer bytes".to_vec();
    let digest = Digest::of(&data);
    let d2 = data.clone();
    let storage = serve(move |_| reply(200, &[], d2.clone()));
    let storage_port = storage.addr.port();
    let registry = serve(move |r| {
        if r.path.starts_with("/token") {
            return reply(200, &[], r#"{"token":"SECRET"}"#);
        }
        if r.header("authorization") != Some("Bearer SECRET") {
            let challenge = format!(r#"Bearer realm="http://{}/token""#, r.server);
            return reply(401, &[("WWW-Authenticate", &challenge)], "");
        }
        // Another origin (a different port of localhost), like S3.
        let to = format!("http://localhost:{storage_port}/bucket/blob?X-Signature=abc");
        reply(307, &[("Location", &to)], "")
    });
    let got = client()
        .fetch_blob(&image(&registry), &digest, 1024)
        .unwrap();
    assert_eq!(got, data);
    let reqs = storage.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/bucket/blob?X-Signature=abc");
    assert_eq!(reqs[0].header("authorization"), None);
}

#[test]
fn mirrors_are_tried_first_then_the_origin() {
    let mirror = serve(|_| reply(404, &[], ""));
    let origin = serve(|_| manifest_reply());
    let img = image(&origin);
    let mut settings = Settings::default();
    settings.mirrors.insert(
        img.registry.clone(),
        vec![Mirror {
            host: mirror.addr.to_string(),
            plain_http: None,
        }],
    );
    client_with(settings.clone(), None)
        .fetch_manifest(&img, "v1")
        .unwrap();
    assert_eq!(mirror.count("/v2/team/app/manifests/v1"), 1);
    assert_eq!(origin.count("/v2/team/app/manifests/v1"), 1);

    // A mirror that has it answers alone.
    let good_mirror = serve(|_| manifest_reply());
    settings.mirrors.insert(
        img.registry.clone(),
        vec![Mirror {
            host: good_mirror.addr.to_string(),
            plain_http: None,
        }],
    );
    client_with(settings, None)
        .fetch_manifest(&img, "v1")
        .unwrap();
    assert_eq!(origin.count("/v2/"), 1);
}

#[test]
fn connection_refused_is_unreachable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let img: ImageRef = format!("127.0.0.1:{port}/a:b").parse().unwrap();
    match client().fetch_manifest(&img, "b") {
        Err(e @ RegistryError::Unreachable { .. }) => {
            assert!(
                e.hint().unwrap().contains("is a registry running"),
                "{:?}",
                e.hint()
            );
            let chain = crate::error::render(&anyhow::Error::new(e));
            assert!(chain.contains("refused"), "{chain}");
        }
        other => panic!("{:?}", other.map(|f| f.digest)),
    }
    assert!(client().ping(&format!("127.0.0.1:{port}")).is_err());
}

#[test]
fn https_to_a_plain_server_is_a_tls_error() {
    let server = serve(|_| reply(200, &[], ""));
    let c = client();
    let url = format!("https://{}/v2/", server.addr);
    let err = c
        .inner
        .with_retries("test", &url, || {
            c.inner.exchange("GET", &url, &[], None, None)
        })
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(err.hint().unwrap().contains("insecure-registries"));
    // Plain HTTP to the same server works: the ping.
    c.ping(&server.addr.to_string()).unwrap();
}

#[test]
fn proxies_are_used_unless_no_proxy_says_otherwise() {
    // The server plays an HTTP proxy in front of a registry with a name that does not resolve.
    let proxy = serve(|r| {
        if r.path == "http://registry.test:5000/v2/team/app/manifests/v1" {
            manifest_reply()
        } else {
            reply(502, &[], "")
        }
    });
    let settings = Settings {
        insecure: vec!["registry.test:5000".into()],
        ..Settings::default()
    };
    let img: ImageRef = "registry.test:5000/team/app:v1".parse().unwrap();
    let through = |no_proxy: Vec<String>| {
        Client::with_parts(
            settings.clone(),
            CredentialStore::default(),
            ProxyConfig {
                https: None,
                http: Some(format!("http://{}", proxy.addr)),
                no_proxy,
            },
            fast(),
        )
        .unwrap()
        .fetch_manifest(&img, "v1")
    };
    through(vec![]).unwrap();
    assert_eq!(proxy.requests().len(), 1);
    // Bypassed: straight to registry.test, which does not resolve.
    assert!(matches!(
        through(vec![".test".into()]),
        Err(RegistryError::Unreachable { .. })
    ));
    assert_eq!(proxy.requests().len(), 1);
}

#[test]
fn client_and_blob_readers_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<RegistryError>();
}

#[test]
fn identity_tokens_are_exchanged_by_oauth2_post() {
    let server = serve(|r| {
        if r.path == "/token" {
            assert_eq!(r.method, "POST");
            let form = String::from_utf8_lossy(&r.body).to_string();
            assert!(form.contains("grant_type=refresh_token"), "{form}");
            assert!(form.contains("refresh_token=REFRESH"), "{form}");
            assert!(
                form.contains("scope=repository%3Ateam%2Fapp%3Apull"),
                "{form}"
            );
            assert_eq!(r.header("authorization"), None);
            return reply(200, &[], r#"{"access_token":"ACCESS"}"#);
        }
        if r.header("authorization") == Some("Bearer ACCESS") {
            return manifest_reply();
        }
        let challenge = format!(r#"Bearer realm="http://{}/token",service="s""#, r.server);
        reply(401, &[("WWW-Authenticate", &challenge)], "")
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    fs_err::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"","identitytoken":"REFRESH"}}}}}}"#,
            server.addr
        ),
    )
    .unwrap();
    client_with(Settings::default(), Some(cfg))
        .fetch_manifest(&image(&server), "v1")
        .unwrap();
    assert_eq!(server.count("/token"), 1);
}

/// A registry's upload endpoints: `POST` opens session N, `PUT` of session N answers what
/// `put` says for that try (1-based).
fn upload_server(put: impl Fn(usize, &Req) -> Reply + Send + 'static) -> Server {
    let sessions = AtomicUsize::new(0);
    let puts = AtomicUsize::new(0);
    serve(move |r| {
        if r.method == "POST" && r.path.starts_with("/v2/team/app/blobs/uploads/") {
            let n = sessions.fetch_add(1, Ordering::SeqCst) + 1;
            let location = format!("/v2/team/app/blobs/uploads/session-{n}?state=s{n}");
            return reply(202, &[("Location", &location)], "");
        }
        if r.method == "PUT" && r.path.starts_with("/v2/team/app/blobs/uploads/session-") {
            return put(puts.fetch_add(1, Ordering::SeqCst) + 1, r);
        }
        if r.method == "HEAD" {
            return reply(404, &[], "");
        }
        reply(400, &[], "")
    })
}

fn upload(c: &Client, server: &Server, bytes: &'static [u8]) -> Result<(), RegistryError> {
    let bar = crate::progress::Silent.bar("", None);
    c.upload_blob(
        &image(server),
        &Digest::of(bytes),
        bytes.len() as u64,
        &|| Ok(Box::new(bytes)),
        &*bar,
    )
}

use crate::progress::Reporter as _;

#[test]
fn an_upload_refused_with_500_starts_again_from_a_fresh_session() {
    let server = upload_server(|n, r| {
        if n == 1 {
            return reply(500, &[], "");
        }
        assert_eq!(r.body, b"layer bytes");
        assert!(
            r.path
                .starts_with("/v2/team/app/blobs/uploads/session-2?state=s2&digest=sha256:")
        );
        reply(201, &[], "")
    });
    let c = client();
    assert!(
        !c.has_blob(&image(&server), &Digest::of(b"layer bytes"))
            .unwrap()
    );
    upload(&c, &server, b"layer bytes").unwrap();
    let posts = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 2, "a fresh session for the second try");
}

#[test]
fn an_upload_the_registry_keeps_refusing_gives_up_with_the_status() {
    let server = upload_server(|_, _| reply(503, &[], ""));
    let err = upload(&client(), &server, b"x").unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyRetries { tries: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(err.hint().is_some());
}

#[test]
fn an_upload_refused_with_a_client_error_is_not_retried() {
    let server = upload_server(|_, _| {
        reply(
            400,
            &[],
            r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
        )
    });
    let err = upload(&client(), &server, b"x").unwrap_err();
    assert!(err.to_string().contains("DIGEST_INVALID"), "{err}");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count(),
        1
    );
}

#[test]
fn pushing_asks_for_a_token_with_push_scope_and_the_mount_source() {
    let server = serve(move |r| {
        if r.path.starts_with("/token") {
            return reply(200, &[], r#"{"token":"PUSH"}"#);
        }
        if r.header("authorization") != Some("Bearer PUSH") {
            let challenge = format!(r#"Bearer realm="http://{}/token",service="reg""#, r.server);
            return reply(401, &[("WWW-Authenticate", &challenge)], "");
        }
        if r.method == "POST" && r.path.contains("mount=") {
            return reply(201, &[], "");
        }
        reply(404, &[], "")
    });
    let c = client();
    let img = image(&server);
    let d = Digest::of(b"base layer");
    assert_eq!(
        c.mount_blob(&img, &d, "library/base").unwrap(),
        upload::Mounted::Yes
    );
    let token = server
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/token"))
        .unwrap();
    assert!(
        token
            .path
            .contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush"),
        "{}",
        token.path
    );
    assert!(
        token
            .path
            .contains("scope=repository%3Alibrary%2Fbase%3Apull"),
        "{}",
        token.path
    );
    let mount = server
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert!(
        mount
            .path
            .contains(&format!("mount={d}&from=library%2Fbase")),
        "{}",
        mount.path
    );
}

#[test]
fn a_manifest_put_refused_with_403_is_denied() {
    let server = serve(|_| reply(403, &[], ""));
    let err = client()
        .put_manifest(
            &image(&server),
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            b"{}",
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
}
