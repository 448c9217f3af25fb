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
    identity::{CertManager, Identity},
    netns::Netns,
    tls,
};

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
    conns: Mutex<HashMap<Key, Connection>>,
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
        let conn = self.connection(netns, key).await?;
        // A peer of the previous version negotiated /1: it takes no id (it makes its own).
        let id = speaks_v2(&conn).then_some(id);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(destination, e))?;
        let refused = |e: io::Error| Failure::Refused(io_err(io::ErrorKind::ConnectionReset, e));
        let status = async {
            header::write_request(&mut send, &target.to_string(), id).await?;
            header::read_status(&mut recv).await
        };
        let status = tokio::time::timeout(crate::config::CONNECT_TIMEOUT, status)
            .await
            .map_err(|_| refused(io_err(io::ErrorKind::TimedOut, "no answer to CONNECT")))?
            .map_err(refused)?;
        if status != 200 {
            let refusal = crate::tunnel::TunnelRefused {
                destination: destination.to_string(),
                status,
            };
            return Err(Failure::Refused(refusal.into_io()));
        }
        Ok(QuicStream::new(send, recv))
    }

    async fn connection(&self, netns: &Netns, key: Key) -> Result<Connection, Failure> {
        let cached = self
            .inner
            .conns
            .lock()
            .expect("pool lock")
            .get(&key)
            .cloned();
        if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
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
        self.inner.handshake(endpoint, key).await
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
            if inner.handshake(endpoint, key.clone()).await.is_ok() {
                info!(addr = %key.addr, "QUIC reaches this destination again");
            }
        });
    }

    fn endpoint(&self, netns: &Netns, addr: SocketAddr) -> Result<Endpoint, Failure> {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = super::udp_socket(netns, any).map_err(Failure::Unavailable)?;
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
                self.conns
                    .lock()
                    .expect("pool lock")
                    .insert(key, conn.clone());
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
