//! The listener hand-over between two agents of one node, over `<state-dir>/handover.sock`.
//!
//! New → old: `Hello { protocol, pid }`.
//! Old → new: `Offer { protocol, pid, sockets: N }`, then N × `Socket { owner, kind }`, each
//! with its descriptor (or `Refused { reason }`).
//! New → old, once it accepts on them: `Drain`.
//! Old → new: `Draining { deadline_ms, carrying }`, sent once the old agent stopped accepting
//! and no longer reads the pods' UDP sockets.
//!
//! The old agent keeps serving through all of it: a successor that dies before `Drain` (the
//! socket closes) costs nothing, the old agent carries on and offers again to the next.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{mpsc as std_mpsc, Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::wire::{self, WireError};
use crate::{proxy::InpodListeners, state::PodKey};

/// How long either side waits for the other's next message during the exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old agent waits for `Drain` after its offer: the successor loads its
/// configuration and enrolls every pod in between (a large cluster's first sync included).
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the old agent may take to stop accepting and let go of the UDP sockets.
const DRAIN_ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Whose socket it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Node,
    /// A pod, by key and netns inode: a pod recreated under the same name is another owner.
    Pod {
        pod: String,
        netns: u64,
    },
}

impl Owner {
    pub fn pod(key: &PodKey, netns: u64) -> Self {
        Self::Pod {
            pod: key.to_string(),
            netns,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Admin,
    Metrics,
    Outbound,
    Inbound,
    Hbone,
    Quic,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToOld {
    Hello { protocol: u32, pid: u32 },
    Drain,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToNew {
    Offer {
        protocol: u32,
        pid: u32,
        sockets: usize,
    },
    Refused {
        reason: String,
    },
    Socket {
        owner: Owner,
        kind: Kind,
    },
    Draining {
        deadline_ms: u64,
        carrying: usize,
    },
}

/// The listening sockets this agent would hand to a successor (duplicates of its own).
#[derive(Default)]
pub struct Registry {
    sockets: Mutex<BTreeMap<Owner, Vec<(Kind, OwnedFd)>>>,
}

impl Registry {
    pub fn add_pod(&self, key: &PodKey, netns: u64, l: &InpodListeners) -> io::Result<()> {
        let mut socks = Vec::new();
        let groups: [(Kind, Vec<BorrowedFd<'_>>); 4] = [
            (Kind::Outbound, l.outbound.iter().map(AsFd::as_fd).collect()),
            (Kind::Inbound, l.inbound.iter().map(AsFd::as_fd).collect()),
            (Kind::Hbone, l.hbone.iter().map(AsFd::as_fd).collect()),
            (Kind::Quic, l.quic.iter().map(AsFd::as_fd).collect()),
        ];
        for (kind, fds) in groups {
            for fd in fds {
                socks.push((kind, fd.try_clone_to_owned()?));
            }
        }
        self.lock().insert(Owner::pod(key, netns), socks);
        Ok(())
    }

    pub fn remove_pod(&self, key: &PodKey, netns: u64) {
        self.lock().remove(&Owner::pod(key, netns));
    }

    pub fn add_node(&self, kind: Kind, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fd = fd.try_clone_to_owned()?;
        let mut socks = self.lock();
        let node = socks.entry(Owner::Node).or_default();
        node.retain(|(k, _)| *k != kind);
        node.push((kind, fd));
        Ok(())
    }

    /// Duplicates of every socket, with whose and what each is.
    fn snapshot(&self) -> io::Result<Vec<(Owner, Kind, OwnedFd)>> {
        let socks = self.lock();
        let mut all = Vec::new();
        for (owner, list) in socks.iter() {
            for (kind, fd) in list {
                all.push((owner.clone(), *kind, fd.try_clone()?));
            }
        }
        Ok(all)
    }

    /// Forgets every socket (a draining agent: its successor holds its own copies).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Owner, Vec<(Kind, OwnedFd)>>> {
        self.sockets.lock().expect("hand-over registry lock")
    }
}

/// The sockets received from the predecessor, claimed as pods are enrolled.
#[derive(Default)]
pub struct Inherited {
    sockets: BTreeMap<Owner, Vec<(Kind, OwnedFd)>>,
}

impl Inherited {
    /// The pod's listeners as the predecessor held them. `None`: it held none for this pod
    /// (new, or recreated with another netns); an error: what it sent is not the pod's
    /// listeners (the caller opens fresh ones).
    pub fn take_pod(&mut self, key: &PodKey, netns: u64) -> Option<io::Result<InpodListeners>> {
        let socks = self.sockets.remove(&Owner::pod(key, netns))?;
        Some(listeners(socks))
    }

    /// The node listener of `kind`, if the predecessor's is bound to `addr` (a changed flag
    /// means a fresh bind).
    pub fn take_node(&mut self, kind: Kind, addr: std::net::SocketAddr) -> Option<OwnedFd> {
        let node = self.sockets.get_mut(&Owner::Node)?;
        let i = node.iter().position(|(k, fd)| {
            *k == kind && local_addr(fd.as_fd()).is_ok_and(|a| a == addr) && listening(fd)
        })?;
        Some(node.remove(i).1)
    }

    /// How many owners' sockets were not claimed (dropped with this).
    pub fn unclaimed(&self) -> usize {
        self.sockets.values().filter(|v| !v.is_empty()).count()
    }
}

fn local_addr(fd: BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

fn listening(fd: &OwnedFd) -> bool {
    nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false)
}

fn listeners(socks: Vec<(Kind, OwnedFd)>) -> io::Result<InpodListeners> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut l = InpodListeners {
        outbound: vec![],
        inbound: vec![],
        hbone: vec![],
        quic: vec![],
    };
    for (kind, fd) in socks {
        let addr = local_addr(fd.as_fd())?;
        let tcp = |fd: OwnedFd| -> io::Result<tokio::net::TcpListener> {
            if !listening(&fd) {
                return Err(bad(format!("{kind:?} socket on {addr} is not listening")));
            }
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)
        };
        match kind {
            Kind::Outbound => l.outbound.push(tcp(fd)?),
            Kind::Inbound => l.inbound.push(tcp(fd)?),
            Kind::Hbone => l.hbone.push(tcp(fd)?),
            Kind::Quic => {
                let udp = std::net::UdpSocket::from(fd);
                udp.set_nonblocking(true)?;
                l.quic.push(udp)
            }
            Kind::Admin | Kind::Metrics => {
                return Err(bad(format!("a node {kind:?} socket among a pod's")))
            }
        }
    }
    if l.outbound.is_empty() || l.hbone.is_empty() {
        return Err(bad("the outbound or HBONE listener is missing".into()));
    }
    Ok(l)
}

/// The agent this one is taking over from, between the offer and the drain.
pub struct Predecessor {
    fd: OwnedFd,
    pub pid: u32,
}

/// What the predecessor said when it started draining.
#[derive(Debug)]
pub struct Draining {
    pub deadline: Duration,
    /// Connections it was carrying then.
    pub carrying: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the running agent refused the hand-over: {reason}")]
    Refused { reason: String },
    #[error("the running agent speaks hand-over protocol {theirs}, this one {ours}")]
    Protocol { theirs: u32, ours: u32 },
    #[error("unexpected message from the other agent: {0}")]
    Unexpected(String),
}

/// Connects to the running agent, if any, and receives its listening sockets (blocking; the
/// caller holds the hand-over lock).
pub fn take_over(dir: &Path) -> Result<Option<(Predecessor, Inherited)>, HandoverError> {
    let Some(fd) = wire::connect(&dir.join(super::SOCKET))? else {
        return Ok(None);
    };
    wire::set_timeout(&fd, EXCHANGE_TIMEOUT)?;
    let hello = ToOld::Hello {
        protocol: super::PROTOCOL,
        pid: std::process::id(),
    };
    wire::send(&fd, &hello, None)?;
    let (pid, count) = match wire::recv(&fd)?.0 {
        ToNew::Offer {
            protocol,
            pid,
            sockets,
        } if protocol == super::PROTOCOL => (pid, sockets),
        ToNew::Offer { protocol, .. } => {
            return Err(HandoverError::Protocol {
                theirs: protocol,
                ours: super::PROTOCOL,
            })
        }
        ToNew::Refused { reason } => return Err(HandoverError::Refused { reason }),
        other => return Err(HandoverError::Unexpected(format!("{other:?}"))),
    };
    let mut inherited = Inherited::default();
    for _ in 0..count {
        match wire::recv(&fd)? {
            (ToNew::Socket { owner, kind }, Some(sock)) => inherited
                .sockets
                .entry(owner)
                .or_default()
                .push((kind, sock)),
            (other, _) => {
                return Err(HandoverError::Unexpected(format!(
                    "{other:?} without a descriptor"
                )))
            }
        }
    }
    info!(
        from_pid = pid,
        sockets = count,
        "received the running agent's listening sockets"
    );
    Ok(Some((Predecessor { fd, pid }, inherited)))
}

impl Predecessor {
    /// Tells the predecessor to drain; returns once it no longer accepts nor reads the UDP
    /// sockets (blocking).
    pub fn drain(self) -> Result<Draining, HandoverError> {
        wire::set_timeout(&self.fd, DRAIN_ACK_TIMEOUT)?;
        wire::send(&self.fd, &ToOld::Drain, None)?;
        match wire::recv(&self.fd)?.0 {
            ToNew::Draining {
                deadline_ms,
                carrying,
            } => Ok(Draining {
                deadline: Duration::from_millis(deadline_ms),
                carrying,
            }),
            other => Err(HandoverError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A successor's request to drain; answered on `ack` once this agent stopped accepting and let
/// go of the UDP sockets.
pub struct DrainRequest {
    pub from_pid: u32,
    pub ack: std_mpsc::SyncSender<Draining>,
}

/// Publishes this agent's hand-over socket (bound beside the path, then renamed over it, so a
/// predecessor's stale socket never shadows it) and answers successors until one takes over.
pub fn serve(
    dir: &Path,
    registry: Arc<Registry>,
    drains: mpsc::Sender<DrainRequest>,
) -> io::Result<JoinHandle<()>> {
    let path = dir.join(super::SOCKET);
    let tmp = dir.join(format!("{}.{}", super::SOCKET, std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let fd = wire::listen(&tmp).map_err(io::Error::other)?;
    std::fs::rename(&tmp, &path)?;
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    // Safety: the AsyncFd owns the descriptor, which stays open and the same until it drops.
    #[allow(unsafe_code)]
    let listener = unsafe { AsyncFd::register(fd) }?;
    Ok(tokio::spawn(async move {
        loop {
            let session = match accept(&listener).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "hand-over socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (registry, drains) = (registry.clone(), drains.clone());
            match tokio::task::spawn_blocking(move || session_with(session, &registry, &drains))
                .await
            {
                Ok(Ok(true)) => return,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!("hand-over to a new agent failed, carrying on: {e}"),
                Err(e) => warn!(error = %e, "hand-over session panicked"),
            }
        }
    }))
}

async fn accept(listener: &AsyncFd<OwnedFd>) -> io::Result<OwnedFd> {
    loop {
        let mut ready = listener.readable().await?;
        match nix::sys::socket::accept4(
            listener.get_ref().as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(fd) => {
                // Safety: accept4 returned a new descriptor that nothing else owns.
                #[allow(unsafe_code)]
                return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
            }
            Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One successor: offer, then wait for its `Drain`. True once it has taken over.
fn session_with(
    fd: OwnedFd,
    registry: &Registry,
    drains: &mpsc::Sender<DrainRequest>,
) -> Result<bool, HandoverError> {
    wire::set_timeout(&fd, EXCHANGE_TIMEOUT)?;
    let pid = match wire::recv(&fd)?.0 {
        ToOld::Hello { protocol, pid } if protocol == super::PROTOCOL => pid,
        ToOld::Hello { protocol, pid } => {
            let reason = format!(
                "hand-over protocol {protocol} asked, this agent speaks {}",
                super::PROTOCOL
            );
            wire::send(&fd, &ToNew::Refused { reason }, None)?;
            return Err(HandoverError::Protocol {
                theirs: protocol,
                ours: super::PROTOCOL,
            })
            .inspect_err(|_| warn!(new_pid = pid, "refused a hand-over"));
        }
        other => return Err(HandoverError::Unexpected(format!("{other:?}"))),
    };
    // A consistent set, copied under the lock (enrollment takes it too, on the runtime) and
    // sent after it is released: the successor's pace never holds up enrollment.
    let socks = registry
        .snapshot()
        .map_err(|e| HandoverError::Unexpected(format!("duplicating our sockets: {e}")))?;
    let count = socks.len();
    let offer = ToNew::Offer {
        protocol: super::PROTOCOL,
        pid: std::process::id(),
        sockets: count,
    };
    wire::send(&fd, &offer, None)?;
    for (owner, kind, sock) in socks {
        wire::send(&fd, &ToNew::Socket { owner, kind }, Some(sock.as_fd()))?;
    }
    info!(
        new_pid = pid,
        sockets = count,
        "sent our listening sockets to a new agent; it takes over once ready"
    );
    wire::set_timeout(&fd, TAKE_OVER_TIMEOUT)?;
    match wire::recv(&fd) {
        Ok((ToOld::Drain, _)) => {}
        Ok((other, _)) => return Err(HandoverError::Unexpected(format!("{other:?}"))),
        Err(WireError::Closed) => {
            warn!(
                new_pid = pid,
                "the new agent went away before taking over; carrying on"
            );
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    let (ack, acked) = std_mpsc::sync_channel(1);
    if drains
        .blocking_send(DrainRequest { from_pid: pid, ack })
        .is_err()
    {
        return Err(HandoverError::Unexpected(
            "this agent is shutting down".into(),
        ));
    }
    let draining = acked
        .recv_timeout(DRAIN_ACK_TIMEOUT)
        .map_err(|_| HandoverError::Wire(WireError::TimedOut))?;
    let msg = ToNew::Draining {
        deadline_ms: draining.deadline.as_millis() as u64,
        carrying: draining.carrying,
    };
    wire::send(&fd, &msg, None)?;
    Ok(true)
}

/// Where the hand-over socket of `dir` is (for messages).
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(super::SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry holding one node listener, served from a temporary state directory.
    async fn old_agent() -> (
        tempfile::TempDir,
        std::net::TcpListener,
        mpsc::Receiver<DrainRequest>,
        JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let registry = Arc::new(Registry::default());
        registry.add_node(Kind::Admin, listener.as_fd()).unwrap();
        let (tx, rx) = mpsc::channel(1);
        let server = serve(dir.path(), registry, tx).unwrap();
        (dir, listener, rx, server)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_successor_gets_the_same_socket_and_its_drain_is_answered() {
        let (dir, listener, mut drains, server) = old_agent().await;
        let addr = listener.local_addr().unwrap();
        let path = dir.path().to_owned();
        let (pred, mut inherited) = tokio::task::spawn_blocking(move || take_over(&path))
            .await
            .unwrap()
            .unwrap()
            .expect("an agent listens");
        assert_eq!(pred.pid, std::process::id());
        let fd = inherited
            .take_node(Kind::Admin, addr)
            .expect("the admin listener");
        // The same socket: a connection queued on it is accepted through the inherited copy.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let same = std::net::TcpListener::from(fd);
        same.accept().expect("accepted on the inherited socket");
        assert!(inherited.take_node(Kind::Metrics, addr).is_none());
        let asked = tokio::task::spawn_blocking(move || pred.drain());
        let req = drains.recv().await.expect("drain request");
        req.ack
            .send(Draining {
                deadline: Duration::from_secs(7),
                carrying: 3,
            })
            .unwrap();
        let d = asked.await.unwrap().unwrap();
        assert_eq!((d.deadline, d.carrying), (Duration::from_secs(7), 3));
        // Taken over: the old agent answers no more successors.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server done")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_and_a_successor_that_dies_leave_the_old_agent_serving() {
        let (dir, _listener, _drains, server) = old_agent().await;
        let path = socket_path(dir.path());
        let garbage = wire::connect(&path).unwrap().expect("listening");
        nix::sys::socket::send(
            garbage.as_raw_fd(),
            b"\x00\x01 not a hello",
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        drop(garbage);
        // A successor that takes the sockets and dies before Drain.
        let p = dir.path().to_owned();
        let (pred, _) = tokio::task::spawn_blocking(move || take_over(&p))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(pred);
        // The next one is served as if nothing happened.
        let p = dir.path().to_owned();
        let again = tokio::task::spawn_blocking(move || take_over(&p))
            .await
            .unwrap()
            .unwrap();
        assert!(again.is_some());
        assert!(!server.is_finished());
    }

    #[test]
    fn nobody_listening_is_no_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take_over(dir.path()).unwrap().is_none());
        // A stale socket file of a crashed agent is the same.
        let stale = wire::listen(&socket_path(dir.path())).unwrap();
        drop(stale);
        assert!(take_over(dir.path()).unwrap().is_none());
    }
}
