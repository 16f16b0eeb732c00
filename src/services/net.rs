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
    tx: std::sync::Mutex<Sender<Connect>>,
}

impl Pod {
    /// Make the namespace in a thread of its own; `lo` is up when this returns.
    pub fn new() -> io::Result<Pod> {
        let (tx, rx) = channel::<Connect>();
        let (ready_tx, ready_rx) = channel::<io::Result<OwnedFd>>();
        std::thread::Builder::new()
            .name("pod-net".into())
            .spawn(move || {
                let made = (|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    crate::runtime::loopback_up().map_err(io::Error::from)?;
                    Ok(OwnedFd::from(
                        fs_err::File::open("/proc/thread-self/ns/net")?
                            .into_parts()
                            .0,
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
        let netns = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the pod network thread ended"))??;
        Ok(Pod {
            netns: Arc::new(netns),
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
