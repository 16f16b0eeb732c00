//! The HTTP layer under the client: TLS roots, proxies and `NO_PROXY`, the retry schedule, and
//! the small URL arithmetic redirects need.
//!
//! One `ureq` agent per proxy choice (ureq 2 takes one proxy per agent), chosen per request from
//! the URL's scheme and host. Loopback hosts never go through a proxy, as in Go's `net/http`.
//! Nothing here retries or authenticates; `super::Client` does.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::RegistryError;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Proxy settings, normally from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    pub https: Option<String>,
    pub http: Option<String>,
    pub no_proxy: Vec<String>,
}

impl ProxyConfig {
    pub fn from_env() -> ProxyConfig {
        ProxyConfig::from_vars(|k| std::env::var(k).ok())
    }

    /// Upper case wins over lower case for each variable, as curl and Go disagree otherwise;
    /// `ALL_PROXY` (curl's; `socks5://` too) serves a scheme that has no variable of its own.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> ProxyConfig {
        let var = |upper: &str, lower: &str| {
            get(upper)
                .or_else(|| get(lower))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let all = var("ALL_PROXY", "all_proxy");
        ProxyConfig {
            https: var("HTTPS_PROXY", "https_proxy").or_else(|| all.clone()),
            http: var("HTTP_PROXY", "http_proxy").or(all),
            no_proxy: var("NO_PROXY", "no_proxy")
                .map(|v| {
                    v.split(',')
                        .map(|e| e.trim().to_ascii_lowercase())
                        .filter(|e| !e.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether a request to `host` (no brackets around IPv6) on `port` bypasses the proxy.
    pub fn bypass(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.no_proxy.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            // CIDR ranges match IP literals only.
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), bits.parse::<u32>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            let (name, entry_port) = split_entry_port(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            if let (Some(ip), Ok(e)) = (ip, name.parse::<IpAddr>()) {
                return ip == e;
            }
            host == name || host.ends_with(&format!(".{name}"))
        })
    }
}

/// `host:port` → (`host`, Some(port)); `[::1]:80` and bare IPv6 literals handled.
fn split_entry_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    if entry.matches(':').count() == 1
        && let Some((h, p)) = entry.split_once(':')
        && let Ok(p) = p.parse()
    {
        return (h, Some(p));
    }
    (entry, None)
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The agents a client sends through: direct, and one per configured proxy.
pub struct Agents {
    direct: ureq::Agent,
    https_proxy: Option<ureq::Agent>,
    http_proxy: Option<ureq::Agent>,
    proxies: ProxyConfig,
}

impl Agents {
    /// For the registry client, which follows redirects itself, hop by hop, so it can choose
    /// the proxy and drop credentials per host.
    pub fn new(
        proxies: ProxyConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Agents, RegistryError> {
        Agents::build(proxies, tls, 0)
    }

    /// For plain downloads (package files, an index's pages): redirects followed by ureq, up to
    /// five, through the agent the first URL chose.
    pub fn following_redirects(
        proxies: ProxyConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Agents, RegistryError> {
        Agents::build(proxies, tls, 5)
    }

    fn build(
        proxies: ProxyConfig,
        tls: Arc<rustls::ClientConfig>,
        redirects: u32,
    ) -> Result<Agents, RegistryError> {
        let builder = || {
            ureq::AgentBuilder::new()
                .tls_config(tls.clone())
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_TIMEOUT)
                .timeout_write(READ_TIMEOUT)
                .redirects(redirects)
                .user_agent(concat!("devenv/", env!("CARGO_PKG_VERSION")))
        };
        let with_proxy =
            |url: &Option<String>, var: &str| -> Result<Option<ureq::Agent>, RegistryError> {
                let Some(url) = url else { return Ok(None) };
                let proxy = ureq::Proxy::new(url).map_err(|e| RegistryError::Proxy {
                    variable: var.into(),
                    message: e.to_string(),
                })?;
                Ok(Some(builder().proxy(proxy).build()))
            };
        Ok(Agents {
            direct: builder().build(),
            https_proxy: with_proxy(&proxies.https, "HTTPS_PROXY or ALL_PROXY")?,
            http_proxy: with_proxy(&proxies.http, "HTTP_PROXY or ALL_PROXY")?,
            proxies,
        })
    }

    /// The agent for `url`.
    pub fn for_url(&self, url: &str) -> &ureq::Agent {
        let parts = UrlParts::parse(url);
        let proxied = match parts.as_ref().map(|p| p.scheme) {
            Some("https") => self.https_proxy.as_ref(),
            Some("http") => self.http_proxy.as_ref(),
            _ => None,
        };
        match (proxied, parts) {
            (Some(agent), Some(p)) if !self.proxies.bypass(p.host(), p.port()) => agent,
            _ => &self.direct,
        }
    }
}

/// The system's CA roots plus the PEM bundle in `SSL_CERT_FILE`, if set.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    // rustls-native-certs reads SSL_CERT_FILE *instead of* the system store; read the system
    // bundle ourselves too so that setting it only ever adds roots.
    match rustls_native_certs::load_native_certs() {
        Ok(certs) => {
            roots.add_parsable_certificates(certs);
        }
        Err(e) => tracing::debug!("loading the system CA certificates: {e}"),
    }
    let extra = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    if let Some(file) = &extra {
        add_pem_file(&mut roots, std::path::Path::new(file))?;
        for system in [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ] {
            if std::path::Path::new(system).exists() {
                if let Err(e) = add_pem_file(&mut roots, std::path::Path::new(system)) {
                    tracing::debug!("{e}");
                }
                break;
            }
        }
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates found; HTTPS registries will fail to verify");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RegistryError::CaFile {
        path: "(TLS setup)".into(),
        message: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_pem_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), RegistryError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let err = |message: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = fs_err::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificates".into()));
    }
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err("none of its certificates could be used".into()));
    }
    Ok(())
}

/// When to try again: exponential backoff from `base`, `tries` attempts in all, and a cap on
/// how long a `Retry-After` may make us wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub tries: u32,
    pub base: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            tries: 5,
            base: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt number `attempt + 1`, after `attempt` failures (1-based):
    /// `base`, `2·base`, `4·base`, … unless the server named a (capped) `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_retry_after),
            None => self.base * 2u32.saturating_pow(attempt.saturating_sub(1).min(16)),
        }
    }
}

/// `Retry-After: <seconds>`; the HTTP-date form falls back to our own schedule.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether a status is worth asking again for.
pub fn retryable_status(status: u16) -> bool {
    status == 429
        || status == 408
        || (500..=599).contains(&status) && status != 501 && status != 505
}

/// Whether an I/O error is the kind a second try can fix.
pub fn retryable_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | TimedOut
            | WouldBlock
            | UnexpectedEof
            | Interrupted
            | NotConnected
    )
}

/// Whether a transport failure is the kind a second try can fix.
pub fn retryable_transport(t: &ureq::Transport) -> bool {
    use ureq::ErrorKind::*;
    match t.kind() {
        ConnectionFailed => !is_tls(t),
        Io => !is_tls(t) && io_source(t).is_none_or(retryable_io),
        BadStatus | BadHeader => true,
        _ => false,
    }
}

fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = e.source();
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = c.source();
    }
    None
}

/// Whether a failure came from TLS (a certificate, a handshake) rather than from the network.
pub fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The parts of an absolute URL that redirects and proxies need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    /// `host` or `host:port`, as written.
    pub authority: &'a str,
    /// From the first `/` on; empty when the URL has no path.
    pub rest: &'a str,
}

impl<'a> UrlParts<'a> {
    pub fn parse(url: &'a str) -> Option<UrlParts<'a>> {
        let (scheme, after) = url.split_once("://")?;
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return None;
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..end];
        // Credentials in a URL would be sent where we did not decide to send them.
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        Some(UrlParts {
            scheme,
            authority,
            rest: &after[end..],
        })
    }

    pub fn host(&self) -> &'a str {
        crate::reference::host_of(self.authority)
    }

    pub fn port(&self) -> u16 {
        let after_host = &self.authority[self.host().len()..];
        after_host
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(if self.scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            })
    }

    /// Scheme and authority, compared case-insensitively with the default port spelled out:
    /// what decides whether a redirect leaves the origin.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}:{}",
            self.scheme.to_ascii_lowercase(),
            self.host().to_ascii_lowercase(),
            self.port()
        )
    }
}

/// Resolve a `Location` header against the URL it answered.
pub fn join_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if UrlParts::parse(location).is_some() {
        return Some(location.to_string());
    }
    let b = UrlParts::parse(base)?;
    if let Some(rest) = location.strip_prefix("//") {
        let joined = format!("{}://{rest}", b.scheme);
        return UrlParts::parse(&joined).map(|_| joined.clone());
    }
    if location.starts_with('/') {
        return Some(format!("{}://{}{location}", b.scheme, b.authority));
    }
    if location.contains("://") || location.is_empty() {
        return None;
    }
    // Relative to the base's directory.
    let path = b.rest.split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{}://{}{dir}{location}", b.scheme, b.authority))
}

/// `bytes 100-199/200` → (100, Some(200)).
pub fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(no_proxy: &str) -> ProxyConfig {
        ProxyConfig::from_vars(|k| match k {
            "https_proxy" => Some("http://proxy:3128".into()),
            "NO_PROXY" => Some(no_proxy.into()),
            _ => None,
        })
    }

    #[test]
    fn all_proxy_serves_schemes_without_their_own() {
        let p = ProxyConfig::from_vars(|k| match k {
            "all_proxy" => Some("socks5://127.0.0.1:1080".into()),
            "HTTP_PROXY" => Some("http://own".into()),
            _ => None,
        });
        assert_eq!(p.https.as_deref(), Some("socks5://127.0.0.1:1080"));
        assert_eq!(p.http.as_deref(), Some("http://own"));
        assert!(
            Agents::new(p, tls_config().unwrap()).is_ok(),
            "socks5 proxies are understood"
        );
    }

    #[test]
    fn reads_proxy_variables() {
        let p = proxies("a");
        assert_eq!(p.https.as_deref(), Some("http://proxy:3128"));
        assert_eq!(p.http, None);
        let p = ProxyConfig::from_vars(|k| match k {
            "HTTP_PROXY" => Some("http://upper".into()),
            "http_proxy" => Some("http://lower".into()),
            "no_proxy" => Some(" A.example , ,b ".into()),
            _ => None,
        });
        assert_eq!(p.http.as_deref(), Some("http://upper"));
        assert_eq!(p.no_proxy, ["a.example", "b"]);
    }

    #[test]
    fn no_proxy_matching() {
        let p = proxies(
            "example.com,.corp.internal,*.wild.test,10.0.0.0/8,fd00::/8,192.168.1.5,reg.io:5000",
        );
        for (host, port) in [
            ("example.com", 443),
            ("sub.example.com", 443),
            ("EXAMPLE.com", 443),
            ("corp.internal", 443),
            ("a.corp.internal", 443),
            ("x.wild.test", 443),
            ("10.1.2.3", 443),
            ("[fd00::1]", 443),
            ("192.168.1.5", 443),
            ("reg.io", 5000),
            // Loopback always bypasses.
            ("localhost", 5000),
            ("127.0.0.1", 5000),
            ("::1", 5000),
        ] {
            assert!(p.bypass(host, port), "{host}:{port} should bypass");
        }
        for (host, port) in [
            ("notexample.com", 443),
            ("example.com.evil", 443),
            ("11.0.0.1", 443),
            ("192.168.1.6", 443),
            ("reg.io", 443),
            ("fe80::1", 443),
            ("registry-1.docker.io", 443),
        ] {
            assert!(!p.bypass(host, port), "{host}:{port} should use the proxy");
        }
        assert!(proxies("*").bypass("anything", 1));
        assert!(!proxies("").bypass("anything", 1));
    }

    #[test]
    fn backoff_schedule() {
        let r = RetryPolicy::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            (1..=4).map(|a| ms(r.delay(a, None))).collect::<Vec<_>>(),
            [200, 400, 800, 1600]
        );
        assert_eq!(ms(r.delay(1, Some(Duration::from_secs(3)))), 3000);
        assert_eq!(
            r.delay(1, Some(Duration::from_secs(3600))),
            r.max_retry_after
        );
        assert!(r.delay(1000, None) > Duration::ZERO);
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
        assert!(retryable_status(429) && retryable_status(503) && retryable_status(500));
        assert!(!retryable_status(404) && !retryable_status(501) && !retryable_status(401));
    }

    #[test]
    fn urls_and_redirects() {
        let u = UrlParts::parse("https://Reg.io:5000/v2/x?y").unwrap();
        assert_eq!((u.host(), u.port(), u.rest), ("Reg.io", 5000, "/v2/x?y"));
        assert_eq!(u.origin(), "https://reg.io:5000");
        assert_eq!(
            UrlParts::parse("https://reg.io").unwrap().origin(),
            "https://reg.io:443"
        );
        assert_eq!(UrlParts::parse("http://[::1]:80/").unwrap().host(), "[::1]");
        assert!(UrlParts::parse("ftp://x/").is_none());
        assert!(UrlParts::parse("https://user:pw@x/").is_none());
        let base = "https://reg.io/v2/a/blobs/sha256:1";
        assert_eq!(
            join_location(base, "https://s3.example/b?sig=1").as_deref(),
            Some("https://s3.example/b?sig=1")
        );
        assert_eq!(
            join_location(base, "//cdn.example/x").as_deref(),
            Some("https://cdn.example/x")
        );
        assert_eq!(
            join_location(base, "/other").as_deref(),
            Some("https://reg.io/other")
        );
        assert_eq!(
            join_location(base, "rel").as_deref(),
            Some("https://reg.io/v2/a/blobs/rel")
        );
        assert_eq!(join_location(base, "file:///etc/passwd"), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        for bad in ["bytes 9-5/10", "items 0-1/2", "bytes x-1/2", "bytes 0-1"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
