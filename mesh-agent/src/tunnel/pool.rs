//! The client side of HBONE: mTLS + HTTP/2 connections per (source identity, destination
//! identity, destination address), opened from inside the source pod's netns and shared by
//! every stream between them (a second connection once one holds `MAX_STREAMS`).
//!
//! Every step the peer controls is bounded: TCP connect (`config::CONNECT_TIMEOUT`), TLS and
//! HTTP/2 handshakes (`HANDSHAKE_TIMEOUT`), the CONNECT answer (`RESPONSE_TIMEOUT`), and a
//! pooled connection is dropped as soon as its peer stops answering PINGs (`keepalive`), so a
//! new stream never waits on a dead peer. Entries follow the state: `retain` drops those of
//! pods and identities that left.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tracing::{debug, warn, Instrument as _};

use super::{
    keepalive,
    slot::{Slot, Streams},
    traceparent::{ConnectionId, TRACEPARENT},
    H2Stream, CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME, RESPONSE_TIMEOUT, STREAM_WINDOW,
};
use crate::{
    identity::{CertManager, Identity, WorkloadCert},
    netns::{socket::connect_from_pod, Netns},
    tls,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: Identity,
    destination: Identity,
    addr: SocketAddr,
}

/// One pooled connection: the handle to open streams on it, how many are open, and the source
/// certificate current when it was opened. A client certificate is presented once, at the
/// handshake: after a renewal, new streams go over a new connection (so the peer sees the
/// renewed certificate, and an expired one is never kept in use); streams on the old one
/// finish there, and it closes once they have.
#[derive(Clone)]
struct Entry {
    id: u64,
    sender: SendRequest<Bytes>,
    streams: Streams,
    cert: Option<Arc<WorkloadCert>>,
}

/// Whether a connection opened with certificate `then` still presents the current one.
pub(crate) fn same_cert(then: &Option<Arc<WorkloadCert>>, now: &Option<Arc<WorkloadCert>>) -> bool {
    match (then, now) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    certs: CertManager,
    conns: Mutex<HashMap<Key, Vec<Entry>>>,
    next_id: AtomicU64,
}

fn io_err(kind: io::ErrorKind, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, e.to_string())
}

impl Pool {
    pub fn new(certs: CertManager) -> Self {
        Self {
            inner: Arc::new(Inner {
                certs,
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a CONNECT stream to `target` through the HBONE endpoint `hbone`, which must present
    /// `destination`; this side presents `source`. The request carries the connection's `id`
    /// (as a `traceparent`, see `traceparent`) and, for a captured application socket, its
    /// address `client` (as `Forwarded`, see `forwarded`), which the destination delivers from.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        &self,
        netns: &Netns,
        source: &Identity,
        destination: &Identity,
        hbone: SocketAddr,
        target: SocketAddr,
        id: ConnectionId,
        client: Option<SocketAddr>,
    ) -> io::Result<H2Stream> {
        let key = Key {
            source: source.clone(),
            destination: destination.clone(),
            addr: hbone,
        };
        // A pooled connection whose peer is draining (GOAWAY: an agent being replaced) refuses
        // streams it never started: those are opened again, once, on a new connection, which
        // the peer's successor accepts. A stream the peer did start is never retried.
        let mut retried = false;
        loop {
            let (mut sender, slot, conn) = self.sender(netns, key.clone()).await?;
            let mut req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(target.to_string())
                .header(TRACEPARENT, id.traceparent());
            if let Some(client) = client {
                req = req.header(super::forwarded::FORWARDED, super::forwarded::value(client));
            }
            let req = req
                .body(())
                .map_err(|e| io_err(io::ErrorKind::InvalidInput, e))?;
            let answer = match sender.send_request(req, false) {
                Ok((resp, send)) => {
                    // Dropping the unanswered stream resets it, so the peer does not keep it either.
                    match tokio::time::timeout(RESPONSE_TIMEOUT, resp).await {
                        Err(_) => {
                            return Err(io_err(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "no answer to CONNECT from {hbone} within {RESPONSE_TIMEOUT:?}"
                                ),
                            ))
                        }
                        Ok(r) => r.map(|resp| (resp, send)),
                    }
                }
                Err(e) => Err(e),
            };
            let (resp, send) = match answer {
                Ok(a) => a,
                Err(e) if !retried && never_started(&e) => {
                    debug!(addr = %hbone, error = %e, "hbone peer is going away; opening a new connection");
                    self.inner.forget(&key, conn);
                    retried = true;
                    continue;
                }
                Err(e) => return Err(io_err(io::ErrorKind::ConnectionReset, e)),
            };
            if resp.status() != http::StatusCode::OK {
                return Err(super::TunnelRefused {
                    destination: destination.to_string(),
                    status: resp.status().as_u16(),
                }
                .into_io());
            }
            return Ok(H2Stream::new(send, resp.into_body()).holding(slot));
        }
    }

    /// Keeps only the connections whose (source, destination, address) `keep` says are still
    /// in the state; the others are forgotten (their open streams finish, then they close).
    pub fn retain(&self, keep: impl Fn(&Identity, &Identity, SocketAddr) -> bool) {
        let mut conns = self.inner.conns.lock().expect("pool lock");
        conns.retain(|k, _| keep(&k.source, &k.destination, k.addr));
    }

    /// How many connections are pooled.
    pub fn size(&self) -> usize {
        let conns = self.inner.conns.lock().expect("pool lock");
        conns.values().map(Vec::len).sum()
    }

    /// A live pooled connection with room for one more stream, or a new one; with its id.
    async fn sender(&self, netns: &Netns, key: Key) -> io::Result<(SendRequest<Bytes>, Slot, u64)> {
        let cert = self.inner.certs.get(&key.source);
        let pooled = {
            let mut conns = self.inner.conns.lock().expect("pool lock");
            conns.get_mut(&key).and_then(|entries| {
                // Connections opened with a certificate since renewed take no new streams.
                entries.retain(|e| same_cert(&e.cert, &cert));
                entries
                    .iter()
                    .find_map(|e| Some((e.sender.clone(), e.streams.take()?, e.id)))
            })
        };
        if let Some((sender, slot, id)) = pooled {
            match sender.ready().await {
                Ok(s) => return Ok((s, slot, id)),
                Err(e) => {
                    debug!(addr = %key.addr, error = %e, "pooled hbone connection is gone; reconnecting")
                }
            }
        }
        let entry = self.open(netns, &key, cert).await?;
        let slot = entry.streams.take().expect("a new connection has room");
        let sender = entry.sender.clone();
        let id = entry.id;
        self.inner
            .conns
            .lock()
            .expect("pool lock")
            .entry(key)
            .or_default()
            .push(entry);
        let sender = sender
            .ready()
            .await
            .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))?;
        Ok((sender, slot, id))
    }

    async fn open(
        &self,
        netns: &Netns,
        key: &Key,
        cert: Option<Arc<WorkloadCert>>,
    ) -> io::Result<Entry> {
        let tls = mtls_connect(
            &self.inner.certs,
            netns,
            &key.source,
            &key.destination,
            key.addr,
        )
        .await?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls);
        let (sender, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io_err(io::ErrorKind::TimedOut, "HTTP/2 handshake timed out"))?
            .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))?;
        let id = self.inner.next_id.fetch_add(1, Relaxed);
        let pings = conn.ping_pong();
        let (inner, key_) = (self.inner.clone(), key.clone());
        let span = tracing::debug_span!("hbone_client", addr = %key.addr);
        tokio::spawn(
            async move {
                let dead = async {
                    match pings {
                        Some(p) => keepalive::dead(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut conn => match r {
                        Ok(()) => debug!("hbone connection closed"),
                        Err(e) => debug!(error = %e, "hbone connection ended"),
                    },
                    why = dead => warn!(destination = %key_.destination, "hbone connection dropped: {why}"),
                }
                inner.forget(&key_, id);
            }
            .instrument(span),
        );
        Ok(Entry {
            id,
            sender,
            streams: Streams::default(),
            cert,
        })
    }
}

/// Whether a failed CONNECT never reached the peer's handler: the connection was going away
/// (GOAWAY before this stream) or the peer refused the stream unprocessed (REFUSED_STREAM).
fn never_started(e: &h2::Error) -> bool {
    e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

impl Inner {
    /// Removes the ended connection `id` (not a newer one of the same key).
    fn forget(&self, key: &Key, id: u64) {
        let mut conns = self.conns.lock().expect("pool lock");
        if let Some(entries) = conns.get_mut(key) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                conns.remove(key);
            }
        }
    }
}

/// The client side of an HBONE endpoint's mTLS, from inside the source pod's netns: presents
/// `source`'s certificate and requires `destination`'s identity. Shared by the pool and by
/// `probe` (explain), so both prove certificates the same way. The TCP connect and the TLS
/// handshake are each bounded.
pub async fn mtls_connect(
    certs: &CertManager,
    netns: &Netns,
    source: &Identity,
    destination: &Identity,
    addr: SocketAddr,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = connect_from_pod(netns, addr, None).await?;
    let _ = tcp.set_nodelay(true);
    let cfg = tls::client_config(certs, source, destination);
    let name = ServerName::IpAddress(addr.ip().into());
    let handshake = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            io_err(
                io::ErrorKind::TimedOut,
                format!("mTLS handshake with {addr} timed out after {HANDSHAKE_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| {
            io_err(
                io::ErrorKind::PermissionDenied,
                format!("mTLS with {destination}: {e}"),
            )
        })
}
