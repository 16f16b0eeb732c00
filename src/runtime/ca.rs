//! The host's CA certificates, trusted inside every container.
//!
//! Behind a TLS-intercepting proxy the proxy's CA is in the host's store, not in the image's,
//! and pip trusts only its own bundle: every index would look self-signed. So the runtime binds
//! the host bundle read-only into the container's `/tmp` tmpfs (never into a layer a build
//! keeps) and points the usual variables at it, unless the image or env.toml set them.

use std::path::PathBuf;

/// Where the host bundle appears inside.
pub const IN_CONTAINER: &str = "/tmp/.devenv-host-ca.crt";

/// Variables that name a CA bundle for pip, requests, OpenSSL, curl and Node.
const VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// The host's CA bundle: `SSL_CERT_FILE` when set, else the usual places of Debian/Ubuntu,
/// Fedora/RHEL and Alpine/macOS-style systems.
pub fn host_bundle() -> Option<PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let usual = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from);
    from_env
        .into_iter()
        .chain(usual)
        .filter_map(|p| fs_err::canonicalize(p).ok())
        .find(|p| p.is_file())
}

/// Add the bind mount and the variables the container needs to trust `bundle`.
pub fn trust(
    bundle: PathBuf,
    mounts: &mut Vec<crate::config::Mount>,
    env: &mut Vec<(String, String)>,
) {
    mounts.push(crate::config::Mount {
        source: bundle,
        target: PathBuf::from(IN_CONTAINER),
        read_only: true,
    });
    for var in VARS {
        if !env.iter().any(|(k, _)| k == var) {
            env.push((var.to_string(), IN_CONTAINER.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_binds_read_only_and_keeps_variables_already_set() {
        let mut mounts = Vec::new();
        let mut env = vec![("PIP_CERT".to_string(), "/etc/mine.pem".to_string())];
        trust(
            PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            &mut mounts,
            &mut env,
        );
        assert_eq!(
            mounts,
            vec![crate::config::Mount {
                source: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
                target: PathBuf::from(IN_CONTAINER),
                read_only: true,
            }]
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PIP_CERT"), Some("/etc/mine.pem"));
        assert_eq!(get("SSL_CERT_FILE"), Some(IN_CONTAINER));
        assert_eq!(get("REQUESTS_CA_BUNDLE"), Some(IN_CONTAINER));
    }
}
