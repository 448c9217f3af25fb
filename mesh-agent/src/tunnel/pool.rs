//! The client side of HBONE: one mTLS + HTTP/2 connection per (source identity, destination
//! identity, destination address), opened from inside the source pod's netns and shared by
//! every stream between them.

use std::{collections::HashMap, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tokio::sync::Mutex;
use tracing::debug;

use super::{
    traceparent::{ConnectionId, TRACEPARENT},
    H2Stream,
};
use crate::{
    identity::{CertManager, Identity},
    netns::Netns,
    proxy::listeners::connect_from_pod,
    tls,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-stream and per-connection receive windows: enough for a fast stream, bounded memory.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: Identity,
    destination: Identity,
    addr: SocketAddr,
}

pub struct Pool {
    certs: CertManager,
    conns: Mutex<HashMap<Key, SendRequest<Bytes>>>,
}

fn io_err(kind: io::ErrorKind, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, e.to_string())
}

impl Pool {
    pub fn new(certs: CertManager) -> Self {
        Self {
            certs,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a CONNECT stream to `target` through the HBONE endpoint `hbone`, which must present
    /// `destination`; this side presents `source`. The request carries the connection's `id`
    /// (as a `traceparent`, see `traceparent`).
    pub async fn connect(
        &self,
        netns: &Netns,
        source: &Identity,
        destination: &Identity,
        hbone: SocketAddr,
        target: SocketAddr,
        id: ConnectionId,
    ) -> io::Result<H2Stream> {
        let mut sender = self.sender(netns, source, destination, hbone).await?;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string())
            .header(TRACEPARENT, id.traceparent())
            .body(())
            .map_err(|e| io_err(io::ErrorKind::InvalidInput, e))?;
        let (resp, send) = sender
            .send_request(req, false)
            .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))?;
        let resp = resp
            .await
            .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(super::TunnelRefused {
                destination: destination.to_string(),
                status: resp.status().as_u16(),
            }
            .into_io());
        }
        Ok(H2Stream::new(send, resp.into_body()))
    }

    async fn sender(
        &self,
        netns: &Netns,
        source: &Identity,
        destination: &Identity,
        addr: SocketAddr,
    ) -> io::Result<SendRequest<Bytes>> {
        let key = Key {
            source: source.clone(),
            destination: destination.clone(),
            addr,
        };
        let cached = self.conns.lock().await.get(&key).cloned();
        if let Some(s) = cached {
            match s.ready().await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    debug!(%addr, error = %e, "pooled hbone connection is gone; reconnecting")
                }
            }
        }
        let fresh = self.open(netns, &key).await?;
        self.conns.lock().await.insert(key, fresh.clone());
        fresh
            .ready()
            .await
            .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))
    }

    async fn open(&self, netns: &Netns, key: &Key) -> io::Result<SendRequest<Bytes>> {
        let handshake = async {
            let tls =
                mtls_connect(&self.certs, netns, &key.source, &key.destination, key.addr).await?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(crate::tunnel::MAX_FRAME)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| io_err(io::ErrorKind::ConnectionReset, e))
        };
        let (sender, conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io_err(io::ErrorKind::TimedOut, "hbone handshake timed out"))??;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "hbone connection ended");
            }
        });
        Ok(sender)
    }
}

/// The client side of an HBONE endpoint's mTLS, from inside the source pod's netns: presents
/// `source`'s certificate and requires `destination`'s identity. Shared by the pool and by
/// `probe` (explain), so both prove certificates the same way.
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
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            io_err(
                io::ErrorKind::PermissionDenied,
                format!("mTLS with {destination}: {e}"),
            )
        })
}
