//! The QUIC side of a pod's HBONE endpoint (UDP :15008 in its netns): the same mTLS as the h2
//! endpoint (this pod's certificate, client chain verified against the mesh root and read for
//! its SPIFFE ID), then one tunnel per bidirectional stream, each delivered to a port of this pod.
//! Garbage datagrams are dropped by QUIC itself; a failed handshake, a bad header or a refused
//! target is logged with the reason and the agent goes on.

use std::{sync::Arc, time::Duration};

use quinn::{
    crypto::rustls::QuicServerConfig, Connection, Endpoint, Incoming, RecvStream, SendStream,
};
use rustls::pki_types::CertificateDer;
use tracing::{info, info_span, warn, Instrument as _};

use super::{header, QuicStream};
use crate::{
    identity::Identity,
    proxy::{relay, PodContext},
    tunnel::{deliver::deliver, traceparent::ConnectionId},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

pub async fn serve(ctx: Arc<PodContext>, endpoint: Endpoint) {
    let guard = StopAccepting(endpoint);
    while let Some(incoming) = guard.0.accept().await {
        tokio::spawn(connection(ctx.clone(), incoming));
    }
}

async fn connection(ctx: Arc<PodContext>, incoming: Incoming) {
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
        Err(e) => return warn!(pod = %ctx.key, %peer, error = %e, "hbone-quic: connection refused"),
    };
    let conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return warn!(pod = %ctx.key, %peer, error = %e, "hbone-quic: mTLS handshake refused")
        }
        Err(_) => return warn!(pod = %ctx.key, %peer, "hbone-quic: mTLS handshake timed out"),
    };
    let source = match peer_identity(&conn) {
        Ok(id) => id,
        Err(why) => {
            conn.close(1u32.into(), b"no identity");
            return warn!(pod = %ctx.key, %peer, "hbone-quic: {why}");
        }
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                // The connection id arrives in the stream's header: recorded once read.
                let span = info_span!("inbound", pod = %ctx.key, id = tracing::field::Empty, src = %peer, src_identity = %source, transport = "quic");
                let source = source.clone();
                tokio::spawn(stream(ctx.clone(), send, recv, source, peer.ip()).instrument(span));
            }
            Err(e) => {
                info!(pod = %ctx.key, %peer, %source, error = %e, "hbone-quic: connection ended");
                break;
            }
        }
    }
}

fn peer_identity(conn: &Connection) -> Result<Identity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("client presented no certificate")?;
    let leaf = certs.first().ok_or("client presented no certificate")?;
    Identity::from_cert(leaf).map_err(|e| format!("client identity unreadable: {e}"))
}

async fn stream(
    ctx: Arc<PodContext>,
    mut send: SendStream,
    mut recv: RecvStream,
    source: Identity,
    source_ip: std::net::IpAddr,
) {
    let req = match tokio::time::timeout(HANDSHAKE_TIMEOUT, header::read_request(&mut recv)).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => return refuse(send, recv, 400, &why).await,
        Err(_) => return refuse(send, recv, 408, "no tunnel header in time").await,
    };
    let id = req.id.unwrap_or_else(ConnectionId::new);
    tracing::Span::current().record("id", tracing::field::display(id));
    let d = match deliver(&ctx, &req.authority, &source, source_ip, "quic", id).await {
        Ok(d) => d,
        Err(r) => return refuse(send, recv, r.status.as_u16(), &r.reason).await,
    };
    if let Err(e) = header::write_status(&mut send, 200).await {
        return info!(error = %e, "hbone-quic: client went away");
    }
    let down = QuicStream::new(send, recv);
    let span = info_span!("deliver", dst = %d.target);
    relay(&ctx.shared, down, d.up, d.record, Some(d.watch))
        .instrument(span)
        .await
}

async fn refuse(mut send: SendStream, mut recv: RecvStream, status: u16, why: &str) {
    warn!(status, "hbone: stream refused: {why}");
    let _ = header::write_status(&mut send, status).await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
}
