//! Accepting connections without letting a peer, or a shortage of descriptors, take the server
//! down. Accept errors are handled as for every listener of the agent (`crate::accept`: never
//! ending the loop, backing off on errors of the process, logged at most once per
//! `LOG_INTERVAL`). Accepted connections take a slot: over the server's cap, or over the share
//! one peer address may hold, a new connection is closed at once rather than left queueing.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::accept::{AcceptErrors, LogLimit, LOG_INTERVAL};

/// How many connections a server holds at once.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// All peers together.
    pub total: usize,
    /// One peer address, so that one host cannot take every slot.
    pub per_peer: usize,
}

/// What the accept loop reads from: a TCP listener, or a fake in tests.
pub trait Listen {
    type Conn: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Listen for TcpListener {
    type Conn = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// One accepted connection and the slot it holds until dropped.
pub struct Accepted<C> {
    pub conn: C,
    pub peer: SocketAddr,
    pub slot: Slot,
}

pub struct Acceptor<L> {
    listener: L,
    server: &'static str,
    slots: Slots,
    errors: AcceptErrors,
    refusals: LogLimit,
}

impl<L: Listen> Acceptor<L> {
    /// `server` names the server in log lines ("admin", "metrics", "ca").
    pub fn new(listener: L, server: &'static str, caps: Caps) -> Self {
        Self {
            listener,
            server,
            slots: Slots::new(caps),
            errors: AcceptErrors::new(server),
            refusals: LogLimit::new(LOG_INTERVAL),
        }
    }

    /// The next connection that fits under the caps. Never fails: see the module comment.
    pub async fn next(&mut self) -> Accepted<L::Conn> {
        loop {
            match self.listener.accept().await {
                Ok((conn, peer)) => {
                    self.errors.accepted();
                    match self.slots.take(peer.ip()) {
                        Ok(slot) => return Accepted { conn, peer, slot },
                        Err(full) => {
                            drop(conn);
                            self.refused(peer, full);
                        }
                    }
                }
                Err(e) => self.errors.failed(&e).await,
            }
        }
    }

    fn refused(&mut self, peer: SocketAddr, full: Full) {
        if let Some(suppressed) = self.refusals.allow(Instant::now()) {
            let caps = self.slots.caps;
            warn!(server = self.server, %peer, reason = %full, max_connections = caps.total,
                max_per_peer = caps.per_peer, suppressed,
                "connection limit reached; closing new connections at once");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Server,
    Peer,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Full::Server => "server at its connection cap",
            Full::Peer => "peer at its share of connections",
        })
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Open connections, in total and per peer address (at most `caps.total` entries).
#[derive(Clone)]
struct Slots {
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

impl Slots {
    fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    fn take(&self, peer: IpAddr) -> Result<Slot, Full> {
        let mut c = self.counts.lock().expect("slots lock");
        if c.total >= self.caps.total {
            return Err(Full::Server);
        }
        let mine = c.per_peer.entry(peer).or_default();
        if *mine >= self.caps.per_peer {
            return Err(Full::Peer);
        }
        *mine += 1;
        c.total += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            peer,
        })
    }
}

/// A held connection slot, given back on drop.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("slots lock");
        c.total -= 1;
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    const CAPS: Caps = Caps {
        total: 4,
        per_peer: 2,
    };

    /// Fails with `error` until `until`, then hands out connections (the call number).
    struct Failing {
        calls: Arc<AtomicUsize>,
        until: Instant,
        error: fn() -> io::Error,
    }

    impl Listen for Failing {
        type Conn = usize;
        async fn accept(&self) -> io::Result<(usize, SocketAddr)> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if Instant::now() < self.until {
                return Err((self.error)());
            }
            Ok((n, "127.0.0.1:1".parse().expect("addr")))
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test]
    async fn descriptor_exhaustion_backs_off_and_serving_resumes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = Failing {
            calls: calls.clone(),
            until: Instant::now() + Duration::from_millis(400),
            error: emfile,
        };
        let mut acceptor = Acceptor::new(failing, "test", CAPS);
        let first = tokio::time::timeout(Duration::from_secs(5), acceptor.next())
            .await
            .expect("serving resumes once descriptors are back");
        // 400 ms of EMFILE at 10, 20, 40, 80, 160, 320 ms pauses: a handful of tries, where an
        // immediate retry would make hundreds of thousands.
        let tries = calls.load(Ordering::SeqCst);
        assert!(tries <= 8, "accept retried {tries} times in 400 ms");
        assert_eq!(
            first.conn,
            tries - 1,
            "the first connection after the errors"
        );
        // The backoff is reset: the next connection comes at once.
        let second = tokio::time::timeout(Duration::from_millis(50), acceptor.next())
            .await
            .expect("no pause after a success");
        assert_eq!(second.conn, tries);
    }

    #[tokio::test]
    async fn a_reset_connection_is_skipped_without_pause() {
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = Failing {
            calls: calls.clone(),
            until: Instant::now() + Duration::from_millis(100),
            error: || io::Error::from(io::ErrorKind::ConnectionAborted),
        };
        let mut acceptor = Acceptor::new(failing, "test", CAPS);
        tokio::time::timeout(Duration::from_secs(5), acceptor.next())
            .await
            .expect("keeps serving");
        assert!(calls.load(Ordering::SeqCst) > 1);
    }

    #[test]
    fn slots_cap_the_server_and_each_peer() {
        let slots = Slots::new(CAPS);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = slots.take(a).expect("a 1");
        let _a2 = slots.take(a).expect("a 2");
        assert_eq!(slots.take(a).err(), Some(Full::Peer));
        let _b1 = slots.take(b).expect("b 1");
        let _b2 = slots.take(b).expect("b 2");
        assert_eq!(slots.take(c).err(), Some(Full::Server));
        drop(a1);
        assert!(slots.take(c).is_ok(), "a closed connection frees its slot");
        assert_eq!(
            slots.counts.lock().unwrap().per_peer.len(),
            2,
            "c's slot given back"
        );
    }

    #[tokio::test]
    async fn over_the_cap_a_new_connection_is_closed_at_once() {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, "test", CAPS);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(acceptor.next().await);
            }
        });
        let mut clients = Vec::new();
        for _ in 0..CAPS.per_peer {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
            .await
            .expect("closed at once, not left waiting")
            .unwrap_or(0);
        assert_eq!(n, 0);
        for c in &mut clients {
            let held = tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await;
            assert!(held.is_err(), "connections within the cap stay open");
        }
        server.abort();
    }
}
