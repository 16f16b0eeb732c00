//! The env's pod network and the ports published from it, inside the supervisor.
//!
//! A thread unshares a network namespace (the supervisor's user namespace owns it), brings `lo`
//! up and stays there: it opens every connection into the pod, since a socket keeps the
//! namespace it was made in, and a thread that left the host's namespace cannot go back (that
//! one is owned by the host's user namespace: setns gives EPERM). The supervisor's other
//! threads stay in the host's namespace, where the published ports listen on 127.0.0.1.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

type Connect = (u16, Sender<io::Result<TcpStream>>);

/// The pod network: its namespace, and the thread that connects into it.
pub struct Pod {
    /// `/proc/thread-self/ns/net` of the pod thread.
    pub netns: Arc<OwnedFd>,
    /// The pod thread's id (`/proc/PID/task/TID/ns/net` names the namespace).
    pub tid: i32,
    tx: std::sync::Mutex<Sender<Connect>>,
}

impl Pod {
    /// Make the namespace in a thread of its own; `lo` is up when this returns.
    pub fn new() -> io::Result<Pod> {
        let (tx, rx) = channel::<Connect>();
        let (ready_tx, ready_rx) = channel::<io::Result<(OwnedFd, i32)>>();
        std::thread::Builder::new()
            .name("pod-net".into())
            .spawn(move || {
                let made = (|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    crate::runtime::loopback_up().map_err(io::Error::from)?;
                    let ns = fs_err::File::open("/proc/thread-self/ns/net")?;
                    Ok((
                        OwnedFd::from(ns.into_parts().0),
                        nix::unistd::gettid().as_raw(),
                    ))
                })();
                let ok = made.is_ok();
                let _ = ready_tx.send(made);
                if !ok {
                    return;
                }
                for (port, reply) in rx {
                    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
                }
            })?;
        let (netns, tid) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the pod network thread ended"))??;
        Ok(Pod {
            netns: Arc::new(netns),
            tid,
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// A connection to `port` on the pod's loopback.
    pub fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let (reply_tx, reply_rx) = channel();
        self.tx
            .lock()
            .map_err(|_| io::Error::other("pod network lock"))?
            .send((port, reply_tx))
            .map_err(|_| io::Error::other("the pod network thread ended"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the pod network thread ended"))?
    }
}

/// Listen on the host's `127.0.0.1:host` (from a thread in the host's namespace) and relay
/// each connection to `container` in the pod.
pub fn publish(pod: Arc<Pod>, host: u16, container: u16) -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, host))?;
    std::thread::Builder::new()
        .name(format!("port-{host}"))
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let pod = pod.clone();
                let _ = std::thread::Builder::new().spawn(move || relay(&pod, conn, container));
            }
        })?;
    Ok(())
}

fn relay(pod: &Pod, outside: TcpStream, port: u16) {
    // Nothing listens yet: the client sees the connection closed, as it would a refusal.
    let Ok(inside) = pod.connect(port) else {
        return;
    };
    let _ = outside.set_nodelay(true);
    let _ = inside.set_nodelay(true);
    let (Ok(mut out2), Ok(mut in2)) = (outside.try_clone(), inside.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut out2, &mut in2);
        let _ = in2.shutdown(std::net::Shutdown::Write);
    });
    let (mut outside, mut inside) = (outside, inside);
    let _ = io::copy(&mut inside, &mut outside);
    let _ = outside.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Outbound traffic for the pod: slirp4netns, started from a process forked before the
/// supervisor made its user namespace. It must join the pod from the host's user namespace:
/// in ours, after exec, the user has no capability left (ids map to themselves, not to root),
/// and setns into the pod's network would fail with EPERM.
pub struct Outbound {
    /// The launcher waits for one line here: the pod's network namespace, or EOF for none.
    go: Option<std::fs::File>,
    /// slirp4netns writes `1` here once the pod's interface is configured.
    ready: Option<std::fs::File>,
    /// slirp4netns exits when this closes (with us, whatever kills us).
    _exit: Option<OwnedFd>,
    /// Why there is no outbound traffic, with the fix; `None` when slirp4netns can start.
    pub missing: Option<String>,
}

impl Outbound {
    /// Fork the launcher: before the user namespace, while the process has one thread (a
    /// process with more gets no way out, and a note).
    pub fn prepare() -> Outbound {
        let missing = outbound_missing().or_else(|| {
            (!crate::runtime::single_threaded())
                .then(|| "outbound traffic is off: the supervisor had threads".to_string())
        });
        if missing.is_some() {
            return Outbound {
                go: None,
                ready: None,
                _exit: None,
                missing,
            };
        }
        let pipes = (|| -> nix::Result<_> {
            let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
            Ok((
                nix::unistd::pipe2(cloexec)?,
                nix::unistd::pipe2(cloexec)?,
                nix::unistd::pipe2(cloexec)?,
            ))
        })();
        let Ok(((go_r, go_w), (ready_r, ready_w), (exit_r, exit_w))) = pipes else {
            return Outbound::none("pipes for slirp4netns");
        };
        // SAFETY: the process has one thread (checked above): the child may do anything.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop((go_w, ready_r, exit_w));
                launcher(go_r, ready_w, exit_r)
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => Outbound {
                go: Some(std::fs::File::from(go_w)),
                ready: Some(std::fs::File::from(ready_r)),
                _exit: Some(exit_w),
                missing: None,
            },
            Err(_) => Outbound::none("fork"),
        }
    }

    fn none(what: &str) -> Outbound {
        Outbound {
            go: None,
            ready: None,
            _exit: None,
            missing: Some(format!("outbound traffic is off: {what} failed")),
        }
    }

    /// Start slirp4netns on the pod whose namespace is `netns` (a /proc path), owned by the
    /// user namespace at `userns`; wait until it has configured the interface.
    pub fn start(&mut self, userns: &str, netns: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        let (Some(mut go), Some(mut ready)) = (self.go.take(), self.ready.take()) else {
            return Err(self.missing.clone().unwrap_or_default());
        };
        writeln!(go, "{userns}\n{netns}").map_err(|e| e.to_string())?;
        drop(go);
        let mut byte = [0u8; 1];
        match ready.read(&mut byte) {
            Ok(1) => Ok(()),
            _ => Err("slirp4netns did not start (its output is in supervisor.log)".into()),
        }
    }
}

/// Why slirp4netns cannot give the pod a way out here, with the fix (`devenv doctor` says it
/// too).
pub fn outbound_missing() -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("slirp4netns").is_file()));
    if !found {
        return Some(
            "the env's private network has no way out (pip, apt and downloads inside fail): \
             slirp4netns is not installed; install it (Debian/Ubuntu: apt install slirp4netns)"
                .into(),
        );
    }
    match fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => None,
        Err(e) => Some(format!(
            "the env's private network has no way out (pip, apt and downloads inside fail): \
             /dev/net/tun is not usable by this user ({e}); as root, `chmod 0666 /dev/net/tun` \
             (what udev does on a normal install)"
        )),
    }
}

/// The forked launcher: wait for the pod's namespaces, then become slirp4netns.
fn launcher(go: OwnedFd, ready: OwnedFd, exit: OwnedFd) -> ! {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut text = String::new();
    let _ = std::fs::File::from(go).read_to_string(&mut text);
    let mut lines = text.lines();
    let (Some(userns), Some(netns)) = (lines.next(), lines.next()) else {
        // SAFETY: _exit(2) in a forked child: no destructor of the parent's runs twice.
        unsafe { libc::_exit(0) }
    };
    let (ready_fd, exit_fd) = (ready.as_raw_fd(), exit.as_raw_fd());
    let mut cmd = std::process::Command::new("slirp4netns");
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        &format!("--ready-fd={ready_fd}"),
        &format!("--exit-fd={exit_fd}"),
        "--netns-type=path",
        &format!("--userns-path={userns}"),
        netns,
        "tap0",
    ]);
    // SAFETY: fcntl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [ready_fd, exit_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let err = cmd.exec();
    say(&format!("starting slirp4netns: {err}"));
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

/// A line in the supervisor's log (its stderr).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
