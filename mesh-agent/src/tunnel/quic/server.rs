//! The QUIC side of a pod's HBONE endpoint (UDP :15008 in its netns): the same mTLS as the h2
//! endpoint (this pod's certificate, client chain verified against the mesh root and read for
//! its SPIFFE ID), then one tunnel per bidirectional stream, each yielded to the caller's
//! handler as a `Connect`. Garbage datagrams are dropped by QUIC itself; a failed handshake or
//! a bad header is logged with the reason and the agent goes on. Streams per connection are
//! capped by the transport (`MAX_STREAMS`); the header is at most 257 bytes.

use std::{future::Future, sync::Arc};

use quinn::{crypto::rustls::QuicServerConfig, Connection, Endpoint, Incoming};
use rustls::pki_types::CertificateDer;
use tracing::{info, warn, Instrument as _};

use super::header;
use crate::{
    identity::Identity,
    tunnel::{incoming::refuse_quic, Connect, HANDSHAKE_TIMEOUT, RESPONSE_TIMEOUT},
};

/// A server endpoint on `socket` with the pod's HBONE TLS settings (ALPN changed to QUIC's).
pub fn endpoint(
    socket: std::net::UdpSocket,
    hbone_tls: &rustls::ServerConfig,
) -> std::io::Result<Endpoint> {
    let mut tls = hbone_tls.clone();
    tls.alpn_protocols = super::alpn();
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(super::transport());
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Stops taking new connections when the pod's listeners are closed (its task aborted);
/// connections already up run on, as their TCP counterparts do.
struct StopAccepting(Endpoint);

impl Drop for StopAccepting {
    fn drop(&mut self) {
        self.0.set_server_config(None);
    }
}

/// Serves QUIC tunnels on `endpoint` until the task is aborted; each accepted stream is handed
/// to `handler` in a task of its own (in the caller's span).
pub async fn serve<H, Fut>(endpoint: Endpoint, handler: H)
where
    H: Fn(Connect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let guard = StopAccepting(endpoint);
    while let Some(incoming) = guard.0.accept().await {
        tokio::spawn(connection(incoming, handler.clone()).in_current_span());
    }
}

async fn connection<H, Fut>(incoming: Incoming, handler: H)
where
    H: Fn(Connect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
        Err(e) => return warn!(%peer, error = %e, "hbone-quic: connection refused"),
    };
    let conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return warn!(%peer, error = %e, "hbone-quic: mTLS handshake refused"),
        Err(_) => return warn!(%peer, "hbone-quic: mTLS handshake timed out"),
    };
    let source = match peer_identity(&conn) {
        Ok(id) => id,
        Err(why) => {
            conn.close(1u32.into(), b"no identity");
            return warn!(%peer, "hbone-quic: {why}");
        }
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let task = stream(send, recv, source.clone(), peer, handler.clone());
                tokio::spawn(task.in_current_span());
            }
            Err(e) => {
                return info!(%peer, %source, error = %e, "hbone-quic: connection ended");
            }
        }
    }
}

/// Reads the stream's CONNECT header (bounded in time and size) and yields it.
async fn stream<H, Fut>(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    source: Identity,
    peer: std::net::SocketAddr,
    handler: H,
) where
    H: Fn(Connect) -> Fut,
    Fut: Future<Output = ()>,
{
    let read = header::read_request(&mut recv);
    let req = match tokio::time::timeout(RESPONSE_TIMEOUT, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => {
            warn!(%peer, "hbone-quic: stream refused: {why}");
            return refuse_quic(send, recv, 400).await;
        }
        Err(_) => {
            warn!(%peer, "hbone-quic: stream refused: no tunnel header in time");
            return refuse_quic(send, recv, 408).await;
        }
    };
    handler(Connect::quic(
        source,
        peer,
        req.authority,
        req.id,
        send,
        recv,
    ))
    .await
}

fn peer_identity(conn: &Connection) -> Result<Identity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("client presented no certificate")?;
    let leaf = certs.first().ok_or("client presented no certificate")?;
    Identity::from_cert(leaf).map_err(|e| format!("client identity unreadable: {e}"))
}
