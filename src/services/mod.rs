//! Services: the env's sidecar containers (`[services.NAME]`), its private network, and the
//! ports it publishes on the host's 127.0.0.1.
//!
//! One process per env owns them: the *supervisor* (`devenv __services`, [`supervisor`]),
//! started by the first `devenv shell`/`run`/`up` that needs it and gone with the last session
//! (or at `devenv down`). It makes a user namespace of its own (the host user mapped to itself)
//! and, in one thread, a network namespace owned by it with only `lo`: the pod network every
//! container of the env joins, so they reach each other by name over loopback (a generated
//! `/etc/hosts`). The supervisor stays in the host's network namespace itself, where it listens
//! on the published ports and relays each connection through that thread into the pod
//! (`net`): no tun device, no setuid helper, no daemon beyond the env's own lifetime.
//!
//! A session talks to the supervisor over a Unix socket in the env's directory
//! (`envs/<id>/services/sock`): it sends one request line, gets the namespaces as descriptors
//! (SCM_RIGHTS) and keeps the connection open while it runs. The supervisor counts those
//! connections; a session killed with SIGKILL closes its end like any other. Every service
//! container is started by a helper that dies with the supervisor's thread that started it
//! (parent-death signal), and its PID 1 with the helper: a supervisor killed with SIGKILL
//! leaves no service behind.
//!
//! What the client side here does: build the [`Plan`] from the materialized env, find or start
//! the supervisor, and the `up`/`down`/`status`/`logs` requests.

pub mod net;
pub mod supervisor;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Port, Ready};
use crate::runtime::Spec;

/// argv[1] that makes the binary an env's supervisor.
pub const SUPERVISOR_ARG: &str = "__services";

/// What the supervisor runs, as the session that started it decided it (JSON on its stdin).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// `envs/<id>/services`: the socket, logs, `etc/`, volumes.
    pub dir: PathBuf,
    /// The project's name, the shell's host name.
    pub project: String,
    /// A hash of everything else: a session whose plan differs gets a note (env.toml changed
    /// since the services started).
    pub hash: String,
    /// Published ports: who listens inside (`[container]` or a service), and where.
    pub ports: Vec<(String, Port)>,
    pub services: Vec<ServicePlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub spec: Spec,
    pub ready: Option<Ready>,
    pub ready_timeout: u32,
}

/// The supervisor's socket in the services directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("sock")
}

impl Plan {
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.dir)
    }

    /// Seal the plan: its hash over everything but the hash.
    pub fn sealed(mut self) -> Plan {
        self.hash.clear();
        let bytes = serde_json::to_vec(&self).unwrap_or_default();
        self.hash = crate::reference::Digest::of(&bytes).to_string();
        self
    }
}

/// The log of service `name` under the services directory `dir`.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// The last `n` lines of a service's log, for an error.
pub fn last_lines(path: &Path, n: usize) -> String {
    let text = fs_err::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One request to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A session: the namespaces, and the services kept while the connection is open.
    Attach,
    /// Keep the services running without a session (`devenv up`).
    Up,
    /// Stop everything now (`devenv down`).
    Down,
    /// The services and their state (`devenv status`).
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    pub hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed (a service that never became ready, with its last log lines).
    pub error: Option<String>,
    /// Something to tell the user (a service that exited since).
    pub notes: Vec<String>,
    pub services: Vec<ServiceState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    /// `starting`, `ready`, `exited (status N)`, `stopping`.
    pub state: String,
}

/// A live session with the supervisor: the namespaces to join, and the connection that keeps
/// the services up while it is open.
pub struct Attached {
    pub join: crate::runtime::Join,
    _conn: UnixStream,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("{0}")]
    Failed(String),
    #[error("starting the env's services: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no services are running for this project")]
    NotRunning,
}

impl crate::error::Hint for ServiceError {
    fn hint(&self) -> Option<String> {
        match self {
            ServiceError::Failed(_) => Some(
                "the whole log: `devenv logs NAME`; fix env.toml's [services] and start again"
                    .into(),
            ),
            ServiceError::NotRunning => Some("`devenv up` starts them".into()),
            _ => None,
        }
    }
}

/// A proxy in `env` (the session's environment) on the host's loopback, which the env's
/// private network cannot reach: what to tell the user.
pub fn loopback_proxy_note(env: &[(String, String)]) -> Option<String> {
    let (name, value) = env.iter().find(|(k, v)| {
        matches!(
            k.to_ascii_uppercase().as_str(),
            "HTTPS_PROXY" | "HTTP_PROXY" | "ALL_PROXY"
        ) && {
            let rest = v.split_once("://").map_or(v.as_str(), |(_, r)| r);
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            ["127.", "localhost", "[::1]"]
                .iter()
                .any(|l| host.starts_with(l))
        }
    })?;
    Some(format!(
        "{name}={value} is on the host's loopback, which the env's private network does not \
         reach: downloads inside through it fail; use the proxy's address on the network, or \
         network = \"host\" without services"
    ))
}

/// A path for connect/bind that fits `sun_path` (108 bytes): the path itself, or the same file
/// through an `O_PATH` descriptor of its directory (kept open by the returned guard).
fn short(path: &Path) -> std::io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let name = path.file_name().unwrap_or_default();
    let p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
    Ok((p, Some(fd)))
}

pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let (p, _guard) = short(path)?;
    UnixStream::connect(p)
}

pub(crate) fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let (p, _guard) = short(path)?;
    std::os::unix::net::UnixListener::bind(p)
}

/// Send `request`, read the reply: a tag byte (`F` with the namespaces' descriptors, `-`
/// without), then one JSON line.
fn ask(conn: &mut UnixStream, request: &Request) -> std::io::Result<(Reply, Vec<OwnedFd>)> {
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let fds = recv_fds(conn.as_raw_fd())?;
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => text.push(byte[0]),
        }
    }
    if text.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the supervisor closed the connection",
        ));
    }
    let reply = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
    Ok((reply, fds))
}

fn recv_fds(fd: RawFd) -> std::io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut tag = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut tag)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    if msg.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the supervisor closed the connection",
        ));
    }
    let mut out = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            out.extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok(out)
}

/// Send the tag byte (and `fds`, when any) on `conn`.
pub(crate) fn send_fds(conn: RawFd, fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let tag = if fds.is_empty() { [b'-'] } else { [b'F'] };
    let iov = [std::io::IoSlice::new(&tag)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(conn, &iov, cmsgs, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    Ok(())
}

/// The env's supervisor for `plan`, started when none runs, and `op` sent to it. Waits for the
/// services to be ready (or to fail). `Attach` returns the namespaces to join.
pub fn request(
    plan: &Plan,
    op: Op,
    ui: &dyn crate::progress::Reporter,
) -> Result<(Reply, Option<Attached>), ServiceError> {
    fs_err::create_dir_all(plan.dir.join("logs"))?;
    let req = Request {
        op,
        hash: plan.hash.clone(),
    };
    let mut last = None;
    // A supervisor that is stopping closes connections it has not answered: start again.
    for _ in 0..5 {
        let mut conn = match connect(&plan.socket()) {
            Ok(c) => c,
            Err(_) => {
                // Concurrent first sessions start one supervisor.
                let _lock = crate::store::lock_file(
                    &plan.dir.join("spawn.lock"),
                    crate::store::LockMode::Exclusive,
                )?;
                match connect(&plan.socket()) {
                    Ok(c) => c,
                    Err(_) => {
                        if !plan.services.is_empty() {
                            let names: Vec<&str> =
                                plan.services.iter().map(|s| s.name.as_str()).collect();
                            ui.status("Starting", &format!("services {}", names.join(", ")));
                        }
                        spawn_supervisor(plan)?;
                        connect(&plan.socket())?
                    }
                }
            }
        };
        match ask(&mut conn, &req) {
            Ok((reply, fds)) => {
                if let Some(e) = &reply.error {
                    return Err(ServiceError::Failed(e.clone()));
                }
                let attached = match (op, <[OwnedFd; 2]>::try_from(fds)) {
                    (Op::Attach, Ok([user, net])) => Some(Attached {
                        join: crate::runtime::Join {
                            user: Some(std::sync::Arc::new(user)),
                            net: std::sync::Arc::new(net),
                        },
                        _conn: conn,
                    }),
                    (Op::Attach, _) => {
                        return Err(ServiceError::Failed(
                            "the env's supervisor sent no namespaces".into(),
                        ));
                    }
                    _ => None,
                };
                return Ok((reply, attached));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let why = last.map_or_else(String::new, |e| e.to_string());
    let log = last_lines(&plan.dir.join("supervisor.log"), 20);
    Err(ServiceError::Failed(format!(
        "the env's supervisor ended without answering ({why}); its log:\n{log}"
    )))
}

/// This session's share of the env's services (started and ready when this returns), and the
/// namespaces it joins; notes from the supervisor are shown.
pub fn attach(plan: &Plan, ui: &dyn crate::progress::Reporter) -> Result<Attached, ServiceError> {
    let (reply, attached) = request(plan, Op::Attach, ui)?;
    for n in &reply.notes {
        ui.note(n);
    }
    attached.ok_or_else(|| ServiceError::Failed("the env's supervisor sent no namespaces".into()))
}

/// Ask a running supervisor only (`down`, `status`): `NotRunning` when there is none.
pub fn ask_running(dir: &Path, op: Op) -> Result<Reply, ServiceError> {
    let Ok(mut conn) = connect(&socket_path(dir)) else {
        return Err(ServiceError::NotRunning);
    };
    let req = Request {
        op,
        hash: String::new(),
    };
    match ask(&mut conn, &req) {
        Ok((reply, _)) => match reply.error {
            Some(e) => Err(ServiceError::Failed(e)),
            None => Ok(reply),
        },
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(ServiceError::NotRunning),
        Err(e) => Err(e.into()),
    }
}

/// Bind the socket (replacing a dead one's) and start `devenv __services` on it, detached: its
/// own session, stdin the plan, output to `supervisor.log`. Called under the env's spawn lock.
fn spawn_supervisor(plan: &Plan) -> Result<(), ServiceError> {
    use std::os::unix::process::CommandExt;
    let sock = plan.socket();
    let _ = fs_err::remove_file(&sock);
    let listener = bind(&sock)?;
    // Each supervisor's log starts empty (appended to, so a stopping one's last lines land at
    // the end rather than over the new one's).
    let log = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(plan.dir.join("supervisor.log"))?;
    log.set_len(0)?;
    let json = serde_json::to_vec(plan).map_err(std::io::Error::other)?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(SUPERVISOR_ARG)
        .stdin(std::process::Stdio::piped())
        .stdout(log.file().try_clone()?)
        .stderr(log.into_parts().0);
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
            let done = if fd == supervisor::LISTEN_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, supervisor::LISTEN_FD)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&json)?;
    }
    drop(listener);
    // Not waited for: reaped by init once we exit.
    drop(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_longer_than_sun_path_still_binds_and_connects() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("d".repeat(60)).join("e".repeat(60));
        fs_err::create_dir_all(&deep).unwrap();
        let sock = deep.join("sock");
        assert!(sock.as_os_str().len() > 108);
        let listener = bind(&sock).unwrap();
        assert!(sock.exists(), "bound at the real path");
        let _client = connect(&sock).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn a_proxy_on_the_host_loopback_is_named() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        for v in [
            "http://127.0.0.1:3128",
            "http://user:pw@localhost:8080/",
            "socks5://[::1]:1080",
        ] {
            let note = loopback_proxy_note(&env("HTTPS_PROXY", v)).expect(v);
            assert!(note.starts_with(&format!("HTTPS_PROXY={v} is on the host's loopback")));
        }
        assert!(loopback_proxy_note(&env("https_proxy", "http://127.0.0.1:1")).is_some());
        assert!(loopback_proxy_note(&env("HTTPS_PROXY", "http://proxy.example:3128")).is_none());
        assert!(loopback_proxy_note(&env("NO_PROXY", "127.0.0.1")).is_none());
    }

    #[test]
    fn a_plan_hash_covers_everything_but_itself() {
        let plan = Plan {
            dir: "/s".into(),
            project: "p".into(),
            hash: String::new(),
            ports: vec![],
            services: vec![],
        };
        let a = plan.clone().sealed();
        assert_eq!(a.clone().sealed().hash, a.hash, "sealing twice is stable");
        let b = Plan {
            project: "q".into(),
            ..plan
        }
        .sealed();
        assert_ne!(a.hash, b.hash);
    }
}
