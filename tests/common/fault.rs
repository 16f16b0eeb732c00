//! `FaultServer`: a tiny HTTP/1.1 registry on loopback serving fixed images, which misbehaves
//! on demand — a status once (429, 500), a body cut after N bytes, wrong bytes of the right
//! length, a slow body — and counts requests per path. It honours `Range: bytes=N-` so a client
//! can resume a cut body, and can demand a bearer token fetched from its own `/token`
//! endpoint. One thread per connection, `Connection: close` on every response.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::image::{BuiltImage, BuiltIndex};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status with an empty body (and `Retry-After: 0` for 429 and 503).
    Status(u16),
    /// Announce the full length, send this many body bytes, then close the connection.
    CutAfter(usize),
    /// Send the right number of bytes with the last one changed.
    WrongBytes,
    /// Send the body `chunk` bytes at a time with `delay` between chunks.
    Slow { chunk: usize, delay: Duration },
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

struct Resource {
    body: Vec<u8>,
    content_type: String,
    digest: Option<String>,
}

struct Armed {
    fault: Fault,
    /// How many more requests it applies to; `None`: all of them.
    left: Option<usize>,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Resource>,
    faults: HashMap<String, Vec<Armed>>,
    log: Vec<Request>,
    bearer: Option<Bearer>,
}

#[derive(Clone)]
struct Bearer {
    token: String,
    /// Credentials the token endpoint demands (basic auth), if any.
    basic: Option<String>,
}

pub struct FaultServer {
    addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault server");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, a) = (state.clone(), stop.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, a) = (st.clone(), a.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &st, &a);
                });
            }
        });
        FaultServer { addr, state, stop }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn route(&self, path: String, body: Vec<u8>, content_type: &str, digest: Option<String>) {
        self.state.lock().unwrap().routes.insert(
            path,
            Resource {
                body,
                content_type: content_type.into(),
                digest,
            },
        );
    }

    fn serve_parts(&self, name: &str, image: &BuiltImage) {
        self.route(
            format!("/v2/{name}/manifests/{}", image.manifest_digest),
            image.manifest.clone(),
            image.manifest_media_type,
            Some(image.manifest_digest.clone()),
        );
        self.route(
            self.blob_path(name, &image.config_digest),
            image.config.clone(),
            "application/octet-stream",
            Some(image.config_digest.clone()),
        );
        for l in &image.layers {
            self.route(
                self.blob_path(name, &l.digest),
                l.blob.clone(),
                "application/octet-stream",
                Some(l.digest.clone()),
            );
        }
    }

    /// Serves `image` as `name:tag` (and by digest); returns the reference to pull.
    pub fn serve_image(&self, name: &str, tag: &str, image: &BuiltImage) -> String {
        self.serve_parts(name, image);
        self.route(
            self.manifest_path(name, tag),
            image.manifest.clone(),
            image.manifest_media_type,
            Some(image.manifest_digest.clone()),
        );
        format!("{}/{name}:{tag}", self.addr)
    }

    /// Serves an index and all its images; returns the reference to pull.
    pub fn serve_index(&self, name: &str, tag: &str, index: &BuiltIndex) -> String {
        for i in &index.images {
            self.serve_parts(name, i);
        }
        self.route(
            self.manifest_path(name, tag),
            index.bytes.clone(),
            index.media_type,
            Some(index.digest.clone()),
        );
        format!("{}/{name}:{tag}", self.addr)
    }

    pub fn blob_path(&self, name: &str, digest: &str) -> String {
        format!("/v2/{name}/blobs/{digest}")
    }

    pub fn manifest_path(&self, name: &str, reference: &str) -> String {
        format!("/v2/{name}/manifests/{reference}")
    }

    /// The next request to `path` gets `fault` (faults queue up in order).
    pub fn once(&self, path: &str, fault: Fault) {
        self.arm(path, fault, Some(1));
    }

    /// Every request to `path` gets `fault`, after any queued before it.
    pub fn always(&self, path: &str, fault: Fault) {
        self.arm(path, fault, None);
    }

    fn arm(&self, path: &str, fault: Fault, left: Option<usize>) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.into())
            .or_default()
            .push(Armed { fault, left });
    }

    /// Demand `Authorization: Bearer <token>` on `/v2/…`, answering 401 with a challenge whose
    /// realm is this server's `/token`, which hands out `token` (to anyone, or only with basic
    /// credentials `user:pass` when given).
    pub fn require_bearer(&self, token: &str, basic: Option<(&str, &str)>) {
        use base64::Engine as _;
        self.state.lock().unwrap().bearer = Some(Bearer {
            token: token.into(),
            basic: basic
                .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))),
        });
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many GET requests `path` received.
    pub fn gets(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>, addr: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    // Drain a request body (a token POST) so closing does not reset the connection early.
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; n];
        std::io::Read::read_exact(&mut reader, &mut body)?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.clone(), String::new()),
    };
    let req = Request {
        method: method.clone(),
        path: path.clone(),
        query,
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };

    let mut st = state.lock().unwrap();
    st.log.push(req.clone());
    let mut w = conn;

    // The token endpoint.
    if path == "/token" {
        let Some(bearer) = st.bearer.clone() else {
            drop(st);
            return respond(&mut w, 404, &[], b"", &method);
        };
        drop(st);
        if let Some(b) = bearer.basic
            && req.authorization.as_deref() != Some(&format!("Basic {b}"))
        {
            let h = [("WWW-Authenticate", "Basic realm=\"token\"".to_owned())];
            return respond(&mut w, 401, &h, b"", &method);
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "token": bearer.token, "access_token": bearer.token, "expires_in": 300,
        }))
        .unwrap();
        let h = [("Content-Type", "application/json".to_owned())];
        return respond(&mut w, 200, &h, &body, &method);
    }

    if let Some(bearer) = &st.bearer
        && req.authorization.as_deref() != Some(&format!("Bearer {}", bearer.token))
    {
        drop(st);
        let scope = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split_once("/manifests/").or(p.split_once("/blobs/")))
            .map(|(name, _)| format!(",scope=\"repository:{name}:pull\""))
            .unwrap_or_default();
        let challenge = format!("Bearer realm=\"http://{addr}/token\",service=\"test\"{scope}");
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        let h = [
            ("WWW-Authenticate", challenge),
            ("Content-Type", "application/json".to_owned()),
        ];
        return respond(&mut w, 401, &h, body, &method);
    }

    if path == "/v2/" || path == "/v2" {
        drop(st);
        let h = [("Content-Type", "application/json".to_owned())];
        return respond(&mut w, 200, &h, b"{}", &method);
    }

    if method != "GET" && method != "HEAD" {
        drop(st);
        return respond(&mut w, 405, &[], b"", &method);
    }

    let fault = match st.faults.get_mut(&path) {
        Some(queue) if !queue.is_empty() => {
            let f = queue[0].fault.clone();
            if let Some(n) = &mut queue[0].left {
                *n -= 1;
                if *n == 0 {
                    queue.remove(0);
                }
            }
            Some(f)
        }
        _ => None,
    };
    let Some(res) = st.routes.get(&path) else {
        drop(st);
        let code = if path.contains("/manifests/") {
            "MANIFEST_UNKNOWN"
        } else {
            "BLOB_UNKNOWN"
        };
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"unknown"}}]}}"#);
        let h = [("Content-Type", "application/json".to_owned())];
        return respond(&mut w, 404, &h, body.as_bytes(), &method);
    };
    let mut body = res.body.clone();
    let mut headers = vec![
        ("Content-Type", res.content_type.clone()),
        ("Accept-Ranges", "bytes".to_owned()),
    ];
    if let Some(d) = &res.digest {
        headers.push(("Docker-Content-Digest", d.clone()));
    }
    drop(st);

    if let Some(Fault::Status(code)) = &fault {
        let mut h = vec![("Content-Type", "application/json".to_owned())];
        if matches!(code, 429 | 503) {
            h.push(("Retry-After", "0".to_owned()));
        }
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected fault"}]}"#;
        return respond(&mut w, *code, &h, body, &method);
    }
    if let Some(Fault::WrongBytes) = &fault
        && let Some(last) = body.last_mut()
    {
        *last ^= 0xff;
    }

    let mut code = 200;
    if let Some(range) = &req.range {
        match parse_range(range, body.len()) {
            Some((start, end)) => {
                headers.push((
                    "Content-Range",
                    format!("bytes {start}-{}/{}", end - 1, body.len()),
                ));
                body = body[start..end].to_vec();
                code = 206;
            }
            None => {
                headers.push(("Content-Range", format!("bytes */{}", body.len())));
                return respond(&mut w, 416, &headers, b"", &method);
            }
        }
    }

    write_head(&mut w, code, &headers, body.len())?;
    if method == "HEAD" {
        return Ok(());
    }
    match fault {
        Some(Fault::CutAfter(n)) => {
            w.write_all(&body[..n.min(body.len())])?;
            w.flush()?;
            // Reset rather than a clean close, as a dropped connection looks to a client.
            w.shutdown(Shutdown::Both)?;
        }
        Some(Fault::Slow { chunk, delay }) => {
            for c in body.chunks(chunk.max(1)) {
                w.write_all(c)?;
                w.flush()?;
                std::thread::sleep(delay);
            }
        }
        _ => w.write_all(&body)?,
    }
    w.flush()
}

/// `bytes=N-` or `bytes=N-M` → the half-open byte range, if satisfiable.
fn parse_range(h: &str, len: usize) -> Option<(usize, usize)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len
    } else {
        b.trim().parse::<usize>().ok()?.saturating_add(1).min(len)
    };
    (start < end).then_some((start, end))
}

fn write_head(
    w: &mut TcpStream,
    code: u16,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {len}\r\nDocker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n"
    ));
    w.write_all(head.as_bytes())
}

fn respond(
    w: &mut TcpStream,
    code: u16,
    headers: &[(&str, String)],
    body: &[u8],
    method: &str,
) -> std::io::Result<()> {
    write_head(w, code, headers, body.len())?;
    if method != "HEAD" {
        w.write_all(body)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_open_and_closed() {
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 100)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 20)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=1-", 100), None);
    }
}
