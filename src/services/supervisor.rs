//! `devenv __services`: one env's supervisor (see the module above for the design).
//!
//! In order: read the plan (stdin); make the user namespace (the host user mapped to itself,
//! so sessions that join it keep their ids) while the process has one thread; block the
//! signals it handles (a `signalfd` in its loop); make the pod network; write `etc/hosts`;
//! listen on the published ports; start every service and wait until each is ready; then
//! answer sessions on the socket until the last one is gone (unless `devenv up` pinned them)
//! or `devenv down`; stop the services (SIGTERM, then SIGKILL after 10 s) and exit.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use super::net::Pod;
use super::{Op, Plan, Reply, Request, ServicePlan, ServiceState};
use crate::ExitCode;
use crate::config::Ready;

/// The listening socket, bound by the session that started us.
pub const LISTEN_FD: RawFd = 3;

/// How long a service has to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Exited(String),
    Stopping,
}

struct Running {
    plan: ServicePlan,
    state: State,
    /// The helper's pid while it runs.
    pid: Option<u32>,
}

type Table = Arc<Mutex<Vec<Running>>>;

fn log(msg: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "devenv-services[{}]: {msg}",
        std::process::id()
    );
}

pub fn main() -> ExitCode {
    let mut text = Vec::new();
    if std::io::stdin().read_to_end(&mut text).is_err() {
        return ExitCode::from(2);
    }
    let Ok(plan) = serde_json::from_slice::<Plan>(&text) else {
        log("`devenv __services` is internal to devenv; no plan on stdin");
        return ExitCode::from(2);
    };
    // SAFETY: fstat(2) fills the zeroed plain-data struct; a closed descriptor fails (EBADF).
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(LISTEN_FD, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        log("`devenv __services` is internal to devenv; no socket on descriptor 3");
        return ExitCode::from(2);
    }
    // SAFETY: descriptor 3 is a socket, the one the session that started us bound for us.
    let listener = unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(LISTEN_FD) };
    let _ = nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // One supervisor per env at a time: a stopping one finishes before we start.
    let lock = crate::store::lock_file(
        &plan.dir.join("supervisor.lock"),
        crate::store::LockMode::Exclusive,
    );
    if let Err(e) = &lock {
        refuse_all(&listener, &e.to_string());
        return ExitCode::from(1);
    }
    match run(&plan, &listener) {
        Ok(()) => ExitCode::from(0),
        Err(e) => {
            log(&e);
            refuse_all(&listener, &e);
            let _ = fs_err::remove_file(plan.socket());
            ExitCode::from(1)
        }
    }
}

/// Answer every session waiting on `listener` with `error`.
fn refuse_all(listener: &UnixListener, error: &str) {
    let _ = listener.set_nonblocking(true);
    while let Ok((mut conn, _)) = listener.accept() {
        let _ = conn.set_nonblocking(false);
        let _ = read_request(&mut conn);
        let reply = Reply {
            error: Some(error.to_string()),
            ..Reply::default()
        };
        let _ = answer(&conn, &reply, &[]);
    }
}

fn user_namespace() -> Result<(), String> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| crate::runtime::RuntimeError::user_namespace(e).to_string())?;
    for (path, text) in [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{uid} {uid} 1\n")),
        ("/proc/self/gid_map", format!("{gid} {gid} 1\n")),
    ] {
        fs_err::write(path, text).map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(())
}

fn run(plan: &Plan, listener: &UnixListener) -> Result<(), String> {
    // Before the user namespace and before any thread (see `Outbound`).
    let mut outbound = super::net::Outbound::prepare();
    user_namespace()?;
    let userns = OwnedFd::from(
        fs_err::File::open("/proc/self/ns/user")
            .map_err(|e| e.to_string())?
            .into_parts()
            .0,
    );
    // Blocked in every thread (they inherit the mask); read from the loop's signalfd.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| e.to_string())?;
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &signals,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| e.to_string())?;

    let pod = Arc::new(Pod::new().map_err(|e| format!("making the env's network: {e}"))?);
    let mut notes = Vec::new();
    let out = match &outbound.missing {
        Some(why) => Err(why.clone()),
        None => outbound.start(
            &format!("/proc/{}/ns/user", std::process::id()),
            &format!("/proc/{}/task/{}/ns/net", std::process::id(), pod.tid),
        ),
    };
    if let Err(why) = &out {
        log(why);
        notes.push(why.clone());
    }
    write_etc(plan, out.is_ok())
        .map_err(|e| format!("writing {}: {e}", plan.dir.join("etc").display()))?;
    for (owner, port) in &plan.ports {
        super::net::publish(pod.clone(), port.host, port.container).map_err(|e| {
            format!(
                "publishing port {} of {owner} on the host's 127.0.0.1:{}: {e}{}",
                port.container,
                port.host,
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another program listens there: publish another host port, \"HOST:CONTAINER\")"
                } else {
                    ""
                }
            )
        })?;
    }
    let table: Table = Arc::new(Mutex::new(
        plan.services
            .iter()
            .map(|s| Running {
                plan: s.clone(),
                state: State::Starting,
                pid: None,
            })
            .collect(),
    ));
    for i in 0..plan.services.len() {
        start_service(plan, &pod, &table, i)?;
    }
    if let Err(e) = wait_ready(plan, &pod, &table) {
        stop(&table);
        return Err(e);
    }
    log("ready");
    serve(plan, listener, &sigfd, &table, &userns, &pod, notes);
    let _ = fs_err::remove_file(plan.socket());
    stop(&table);
    log("stopped");
    Ok(())
}

/// `etc/hosts` (every service's name and the project's on the pod's loopback) and
/// `etc/resolv.conf`: slirp4netns's resolver when the pod has a way out, else the host's
/// (unreachable from the pod, so names outside fail at once).
fn write_etc(plan: &Plan, outbound: bool) -> std::io::Result<()> {
    let etc = plan.dir.join("etc");
    fs_err::create_dir_all(&etc)?;
    let mut names = vec![
        "localhost".to_string(),
        crate::runtime::host_name(&plan.project),
    ];
    names.extend(plan.services.iter().map(|s| s.name.clone()));
    let hosts = format!(
        "127.0.0.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        names.join(" ")
    );
    fs_err::write(etc.join("hosts"), hosts)?;
    let resolv = if outbound {
        "nameserver 10.0.2.3\n".to_string()
    } else {
        fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default()
    };
    fs_err::write(etc.join("resolv.conf"), resolv)?;
    Ok(())
}

/// The spec of service `i` as the supervisor runs it: joined to the pod, output to its log.
fn service_spec(
    plan: &Plan,
    pod: &Pod,
    spec: &crate::runtime::Spec,
    log: &Path,
) -> std::io::Result<crate::runtime::Spec> {
    let out = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut spec = spec.clone();
    spec.output = Some(Arc::new(OwnedFd::from(out.into_parts().0)));
    let p = spec.pod.get_or_insert_with(Default::default);
    p.join = Some(crate::runtime::Join {
        user: None,
        net: pod.netns.clone(),
    });
    p.etc = Some(plan.dir.join("etc"));
    Ok(spec)
}

fn start_service(plan: &Plan, pod: &Pod, table: &Table, i: usize) -> Result<(), String> {
    let sp = plan.services[i].clone();
    let log_path = super::log_path(&plan.dir, &sp.name);
    // A fresh log per start.
    let _ = fs_err::write(&log_path, "");
    let spec = service_spec(plan, pod, &sp.spec, &log_path).map_err(|e| e.to_string())?;
    let table2 = table.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    // The helper dies with this thread (its parent-death signal): it lives as long as the
    // service does.
    std::thread::Builder::new()
        .name(format!("service-{}", sp.name))
        .spawn(move || {
            let bg = match crate::runtime::start(&spec) {
                Ok(bg) => bg,
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                    return;
                }
            };
            if let Ok(mut t) = table2.lock() {
                t[i].pid = Some(bg.pid());
            }
            let _ = started_tx.send(Ok(()));
            let end = match bg.wait() {
                Ok(code) => format!("status {code}"),
                Err(e) => e.to_string(),
            };
            if let Ok(mut t) = table2.lock() {
                t[i].state = State::Exited(end);
                t[i].pid = None;
            }
        })
        .map_err(|e| e.to_string())?;
    started_rx
        .recv()
        .map_err(|_| format!("service {}: its thread ended", sp.name))?
        .map_err(|e| format!("service {}: {e}", sp.name))
}

fn wait_ready(plan: &Plan, pod: &Pod, table: &Table) -> Result<(), String> {
    let start = Instant::now();
    let mut pending: Vec<usize> = (0..plan.services.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &i in &pending {
            let sp = &plan.services[i];
            let state = table
                .lock()
                .map(|t| t[i].state.clone())
                .unwrap_or(State::Starting);
            if let State::Exited(how) = state {
                return Err(failed(
                    plan,
                    sp,
                    &format!("exited ({how}) before it was ready"),
                ));
            }
            let ready = match &sp.ready {
                None => start.elapsed() >= Duration::from_millis(200),
                Some(Ready::Tcp(port)) => pod.connect(*port).is_ok(),
                Some(Ready::Command(argv)) => ready_command(plan, pod, sp, argv),
            };
            if ready {
                if let Ok(mut t) = table.lock() {
                    t[i].state = State::Ready;
                }
            } else if start.elapsed() > Duration::from_secs(u64::from(sp.ready_timeout)) {
                let what = match &sp.ready {
                    Some(Ready::Tcp(p)) => format!("nothing listened on port {p}"),
                    Some(Ready::Command(a)) => format!("`{}` did not succeed", a.join(" ")),
                    None => "it did not start".into(),
                };
                return Err(failed(
                    plan,
                    sp,
                    &format!("was not ready after {} s ({what})", sp.ready_timeout),
                ));
            } else {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn failed(plan: &Plan, sp: &ServicePlan, what: &str) -> String {
    let log = super::last_lines(&super::log_path(&plan.dir, &sp.name), 15);
    let shown = if log.trim().is_empty() {
        "(its log is empty)".to_string()
    } else {
        format!("its last log lines:\n{log}")
    };
    format!("service `{}` {what}; {shown}", sp.name)
}

/// The readiness command in a fresh container of the service's image, on the pod network.
fn ready_command(plan: &Plan, pod: &Pod, sp: &ServicePlan, argv: &[String]) -> bool {
    let log = super::log_path(&plan.dir, &sp.name);
    let Ok(mut spec) = service_spec(plan, pod, &sp.spec, &log) else {
        return false;
    };
    spec.argv = argv.to_vec();
    crate::runtime::start(&spec)
        .and_then(|bg| bg.wait())
        .is_ok_and(|code| code == 0)
}

fn read_request(conn: &mut UnixStream) -> Option<Request> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    serde_json::from_slice(&line).ok()
}

fn answer(conn: &UnixStream, reply: &Reply, fds: &[RawFd]) -> std::io::Result<()> {
    super::send_fds(conn.as_raw_fd(), fds)?;
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&*conn).write_all(&line)
}

fn states(table: &Table) -> Vec<ServiceState> {
    let Ok(t) = table.lock() else {
        return Vec::new();
    };
    t.iter()
        .map(|r| ServiceState {
            name: r.plan.name.clone(),
            state: match &r.state {
                State::Starting => "starting".into(),
                State::Ready => "ready".into(),
                State::Exited(how) => format!("exited ({how})"),
                State::Stopping => "stopping".into(),
            },
        })
        .collect()
}

fn exited_notes(table: &Table) -> Vec<String> {
    let Ok(t) = table.lock() else {
        return Vec::new();
    };
    t.iter()
        .filter_map(|r| match &r.state {
            State::Exited(how) => Some(format!(
                "service `{}` exited ({how}) after it was ready; `devenv logs {}` shows why, \
                 `devenv down` and a new session start it again",
                r.plan.name, r.plan.name
            )),
            _ => None,
        })
        .collect()
}

/// Answer sessions until the last is gone (and none pinned them) or `down`.
fn serve(
    plan: &Plan,
    listener: &UnixListener,
    sigfd: &nix::sys::signalfd::SignalFd,
    table: &Table,
    userns: &OwnedFd,
    pod: &Pod,
    mut start_notes: Vec<String>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut sessions: Vec<UnixStream> = Vec::new();
    let mut pinned = false;
    loop {
        let mut fds = vec![
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            sessions
                .iter()
                .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log(&format!("poll: {e}"));
                return;
            }
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let new_conn = ready(&fds[0]);
        let signalled = ready(&fds[1]);
        let gone: Vec<usize> = fds[2..]
            .iter()
            .enumerate()
            .filter(|(_, f)| ready(f))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        if signalled {
            log("signalled: stopping");
            return;
        }
        // A session's only traffic is its end (EOF, or a reset when it was killed).
        for i in gone.into_iter().rev() {
            sessions.remove(i);
        }
        if new_conn && let Ok((mut conn, _)) = listener.accept() {
            let Some(req) = read_request(&mut conn) else {
                continue;
            };
            let mut reply = Reply {
                services: states(table),
                notes: exited_notes(table),
                ..Reply::default()
            };
            // Said once: to the request that started us.
            reply.notes.append(&mut start_notes);
            if req.op == Op::Attach && !req.hash.is_empty() && req.hash != plan.hash {
                reply.notes.push(
                    "the env's services were started from another env.toml; `devenv down` \
                     and a new session start them from this one"
                        .into(),
                );
            }
            match req.op {
                Op::Attach => {
                    let fds = [userns.as_raw_fd(), pod.netns.as_raw_fd()];
                    if answer(&conn, &reply, &fds).is_ok() {
                        let _ = conn.set_read_timeout(None);
                        sessions.push(conn);
                    }
                }
                Op::Up => {
                    pinned = true;
                    let _ = answer(&conn, &reply, &[]);
                }
                Op::Status => {
                    let _ = answer(&conn, &reply, &[]);
                }
                Op::Down => {
                    // Answered once everything is stopped: `devenv down` returns then.
                    let _ = fs_err::remove_file(plan.socket());
                    stop(table);
                    reply.services = states(table);
                    let _ = answer(&conn, &reply, &[]);
                    return;
                }
            }
        }
        if sessions.is_empty() && !pinned {
            return;
        }
    }
}

/// SIGTERM to every service (its helper forwards it to the command), SIGKILL to those still
/// running after [`STOP_GRACE`]; returns when all have ended.
fn stop(table: &Table) {
    let pids = |t: &Table| -> Vec<u32> {
        t.lock()
            .map(|t| t.iter().filter_map(|r| r.pid).collect())
            .unwrap_or_default()
    };
    if let Ok(mut t) = table.lock() {
        for r in t.iter_mut().filter(|r| r.pid.is_some()) {
            r.state = State::Stopping;
        }
    }
    for pid in pids(table) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !pids(table).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids(table) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids(table).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
