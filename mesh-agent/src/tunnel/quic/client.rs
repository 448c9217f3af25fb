//! The client side of the QUIC tunnel: one connection per (source identity, destination
//! identity, destination address), each on its own UDP socket opened in the source pod's netns
//! (so the destination and any NetworkPolicy see the pod's address, as with h2).
//!
//! A connect fails in one of two ways. `Unavailable`: QUIC did not get through (handshake timed
//! out or was refused, socket error); the caller uses h2, and the address is remembered as
//! unreachable so the next connections go straight to h2 while a background probe retries QUIC.
//! `Refused`: QUIC worked and said no (identity check, CONNECT refused); h2 would say the same.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use quinn::{crypto::rustls::QuicClientConfig, Connection, ConnectionError, Endpoint};
use tracing::{debug, info, warn};

use super::{header, QuicStream, ALPN_QUIC_V2, HANDSHAKE_TIMEOUT, REPROBE};
use crate::{
    identity::{CertManager, Identity, WorkloadCert},
    netns::{socket::udp_socket, Netns},
    tls,
    tunnel::{
        pool::same_cert,
        slot::{Slot, Streams},
        RESPONSE_TIMEOUT,
    },
};

/// The source certificate current at a connection's handshake (see `pool::Entry`).
type SourceCert = Option<Arc<WorkloadCert>>;

/// A pooled connection, its stream count and the certificate it was opened with.
type Pooled = (Connection, Streams, SourceCert);

#[derive(Debug)]
pub enum Failure {
    Unavailable(io::Error),
    Refused(io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: Identity,
    destination: Identity,
    addr: SocketAddr,
}

#[derive(Clone)]
pub struct QuicPool {
    inner: Arc<Inner>,
}

struct Inner {
    certs: CertManager,
    /// Several per key once one holds `MAX_STREAMS` streams.
    conns: Mutex<HashMap<Key, Vec<Pooled>>>,
    /// Address → when QUIC may be probed again.
    unreachable: Mutex<HashMap<SocketAddr, Instant>>,
}

fn io_err(kind: io::ErrorKind, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, e.to_string())
}

/// TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100–0x1ff.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn classify(destination: &Identity, e: ConnectionError) -> Failure {
    let crypto = match &e {
        ConnectionError::TransportError(t) => is_crypto(t.code),
        ConnectionError::ConnectionClosed(c) => is_crypto(c.error_code),
        _ => false,
    };
    if crypto {
        Failure::Refused(io_err(
            io::ErrorKind::PermissionDenied,
            format!("mTLS (QUIC) with {destination}: {e}"),
        ))
    } else {
        Failure::Unavailable(io_err(io::ErrorKind::ConnectionRefused, e))
    }
}

/// Whether the peer closed `conn` because it drains (see `server::DRAINING`).
fn drained(conn: &Connection) -> bool {
    matches!(conn.close_reason(), Some(ConnectionError::ApplicationClosed(c))
        if c.error_code == quinn::VarInt::from_u32(super::server::DRAINING))
}

/// Whether the connection negotiated the ALPN whose header carries the connection id.
fn speaks_v2(conn: &Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == ALPN_QUIC_V2)
}

impl QuicPool {
    pub fn new(certs: CertManager) -> Self {
        Self {
            inner: Arc::new(Inner {
                certs,
                conns: Mutex::new(HashMap::new()),
                unreachable: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Opens a tunnel stream to `target` through the QUIC endpoint `addr`, which must present
    /// `destination`; this side presents `source`. The header carries the connection's `id`.
    pub async fn connect(
        &self,
        netns: &Netns,
        source: &Identity,
        destination: &Identity,
        addr: SocketAddr,
        target: SocketAddr,
        id: crate::tunnel::traceparent::ConnectionId,
    ) -> Result<QuicStream, Failure> {
        let key = Key {
            source: source.clone(),
            destination: destination.clone(),
            addr,
        };
        // A stream the peer refused because it drains (an agent being replaced) is opened
        // again, once, on a new connection (`server::DRAINING`).
        let mut retried = false;
        loop {
            let (conn, slot) = self.connection(netns, key.clone()).await?;
            match self.open(&conn, destination, addr, target, id).await {
                Err(_) if !retried && drained(&conn) => {
                    debug!(%addr, "QUIC peer is draining; opening the stream on a new connection");
                    retried = true;
                }
                r => return r.map(|(send, recv)| QuicStream::new(send, recv).holding(slot)),
            }
        }
    }

    /// One CONNECT stream on `conn`, answered 200.
    async fn open(
        &self,
        conn: &Connection,
        destination: &Identity,
        addr: SocketAddr,
        target: SocketAddr,
        id: crate::tunnel::traceparent::ConnectionId,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Failure> {
        // A peer of the previous version negotiated /1: it takes no id (it makes its own).
        let id = speaks_v2(conn).then_some(id);
        let refused = |e: io::Error| Failure::Refused(io_err(io::ErrorKind::ConnectionReset, e));
        // Opening the stream waits for the peer's stream credit; all of it is bounded.
        let status = async {
            let (mut send, mut recv) =
                conn.open_bi().await.map_err(|e| classify(destination, e))?;
            header::write_request(&mut send, &target.to_string(), id)
                .await
                .map_err(refused)?;
            let status = header::read_status(&mut recv).await.map_err(refused)?;
            Ok::<_, Failure>((send, recv, status))
        };
        let (send, recv, status) = tokio::time::timeout(RESPONSE_TIMEOUT, status)
            .await
            .map_err(|_| {
                refused(io_err(
                    io::ErrorKind::TimedOut,
                    format!("no answer to CONNECT from {addr} within {RESPONSE_TIMEOUT:?}"),
                ))
            })??;
        if status != 200 {
            let refusal = crate::tunnel::TunnelRefused {
                destination: destination.to_string(),
                status,
            };
            return Err(Failure::Refused(refusal.into_io()));
        }
        Ok((send, recv))
    }

    async fn connection(&self, netns: &Netns, key: Key) -> Result<(Connection, Slot), Failure> {
        let cert = self.inner.certs.get(&key.source);
        let pooled = {
            let mut conns = self.inner.conns.lock().expect("pool lock");
            let entries = conns.get_mut(&key);
            let live = entries.and_then(|entries| {
                // A connection opened with a certificate since renewed takes no new streams.
                entries.retain(|(c, _, then)| c.close_reason().is_none() && same_cert(then, &cert));
                entries
                    .iter()
                    .find_map(|(c, s, _)| Some((c.clone(), s.take()?)))
            });
            if conns.get(&key).is_some_and(Vec::is_empty) {
                conns.remove(&key);
            }
            live
        };
        if let Some(c) = pooled {
            return Ok(c);
        }
        if let Some(next_probe) = self.unreachable_until(key.addr) {
            if Instant::now() >= next_probe {
                self.probe_in_background(netns, key.clone());
            }
            return Err(Failure::Unavailable(io_err(
                io::ErrorKind::ConnectionRefused,
                format!("{} is unreachable over QUIC", key.addr),
            )));
        }
        let endpoint = self.endpoint(netns, key.addr)?;
        let conn = self.inner.handshake(endpoint, key.clone()).await?;
        let streams = Streams::default();
        let slot = streams.take().expect("a new connection has room");
        self.inner.pool(key, conn.clone(), streams, cert);
        Ok((conn, slot))
    }

    /// Keeps only the connections whose (source, destination, address) `keep` says are still
    /// in the state, and the unreachable marks of addresses `keep_addr` says are; the others
    /// are forgotten (a forgotten connection closes when its last stream ends).
    pub fn retain(
        &self,
        keep: impl Fn(&Identity, &Identity, SocketAddr) -> bool,
        keep_addr: impl Fn(SocketAddr) -> bool,
    ) {
        let mut conns = self.inner.conns.lock().expect("pool lock");
        conns.retain(|k, entries| {
            entries.retain(|(c, _, _)| c.close_reason().is_none());
            !entries.is_empty() && keep(&k.source, &k.destination, k.addr)
        });
        drop(conns);
        let mut unreachable = self.inner.unreachable.lock().expect("pool lock");
        unreachable.retain(|addr, _| keep_addr(*addr));
    }

    /// (live pooled connections, addresses marked unreachable)
    pub fn sizes(&self) -> (usize, usize) {
        let conns = self.inner.conns.lock().expect("pool lock");
        let n = conns
            .values()
            .flatten()
            .filter(|(c, _, _)| c.close_reason().is_none())
            .count();
        drop(conns);
        (n, self.inner.unreachable.lock().expect("pool lock").len())
    }

    fn unreachable_until(&self, addr: SocketAddr) -> Option<Instant> {
        self.inner
            .unreachable
            .lock()
            .expect("pool lock")
            .get(&addr)
            .copied()
    }

    fn probe_in_background(&self, netns: &Netns, key: Key) {
        self.inner.mark_unreachable(key.addr);
        let Ok(endpoint) = self.endpoint(netns, key.addr) else {
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let cert = inner.certs.get(&key.source);
            if let Ok(conn) = inner.handshake(endpoint, key.clone()).await {
                info!(addr = %key.addr, "QUIC reaches this destination again");
                inner.pool(key, conn, Streams::default(), cert);
            }
        });
    }

    fn endpoint(&self, netns: &Netns, addr: SocketAddr) -> Result<Endpoint, Failure> {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = udp_socket(netns, any).map_err(Failure::Unavailable)?;
        Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(Failure::Unavailable)
    }
}

impl Inner {
    fn pool(&self, key: Key, conn: Connection, streams: Streams, cert: SourceCert) {
        let mut conns = self.conns.lock().expect("pool lock");
        conns.entry(key).or_default().push((conn, streams, cert));
    }

    fn mark_unreachable(&self, addr: SocketAddr) {
        self.unreachable
            .lock()
            .expect("pool lock")
            .insert(addr, Instant::now() + REPROBE);
    }

    async fn handshake(&self, endpoint: Endpoint, key: Key) -> Result<Connection, Failure> {
        let mut rustls_cfg =
            (*tls::client_config(&self.certs, &key.source, &key.destination)).clone();
        rustls_cfg.alpn_protocols = super::alpn();
        let crypto = QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| Failure::Refused(io_err(io::ErrorKind::InvalidInput, e)))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(super::transport());
        let connecting = endpoint
            .connect_with(cfg, key.addr, &key.addr.ip().to_string())
            .map_err(|e| Failure::Unavailable(io_err(io::ErrorKind::InvalidInput, e)))?;
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(r) => r.map_err(|e| classify(&key.destination, e)),
            Err(_) => Err(Failure::Unavailable(io_err(
                io::ErrorKind::TimedOut,
                format!("no QUIC handshake within {HANDSHAKE_TIMEOUT:?}"),
            ))),
        };
        match result {
            Ok(conn) => {
                debug!(addr = %key.addr, "QUIC connection established");
                self.unreachable
                    .lock()
                    .expect("pool lock")
                    .remove(&key.addr);
                Ok(conn)
            }
            Err(Failure::Unavailable(e)) => {
                let first = self
                    .unreachable
                    .lock()
                    .expect("pool lock")
                    .insert(key.addr, Instant::now() + REPROBE)
                    .is_none();
                if first {
                    warn!(addr = %key.addr, error = %e, "QUIC does not get through; using h2 for this destination");
                }
                Err(Failure::Unavailable(e))
            }
            Err(refused) => Err(refused),
        }
    }
}
