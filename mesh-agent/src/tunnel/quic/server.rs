//! The QUIC side of a pod's HBONE endpoint (UDP :15008 in its netns): the same mTLS as the h2
//! endpoint (this pod's certificate, client chain verified against the mesh root and read for
//! its SPIFFE ID), then one tunnel per bidirectional stream, each yielded to the caller's
//! handler as a `Connect`. Garbage datagrams are dropped by QUIC itself; a failed handshake or
//! a bad header is logged with the reason and the agent goes on. Streams per connection are
//! capped by the transport (`MAX_STREAMS`); the header is at most 257 bytes.

use std::{future::Future, sync::Arc, time::Duration};

use quinn::{crypto::rustls::QuicServerConfig, Connection, Endpoint, Incoming};
use rustls::pki_types::CertificateDer;
use tracing::{info, warn, Instrument as _};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// The application error code a draining agent closes its QUIC connections with. A client
/// whose stream was refused this way (its CONNECT unanswered) opens it again on a new
/// connection: the successor's, or h2 while the successor's QUIC is not up yet.
pub const DRAINING: u32 = 0x5746;
/// How long a draining endpoint lets its connections' open streams finish. QUIC has no GOAWAY
/// of its own: the endpoint stops taking streams and connections at once, and the successor
/// reads the shared UDP socket only once this endpoint has let go of it, so this is kept short
/// (new QUIC connections use h2 meanwhile). Streams still open then are cut; h2 tunnels get
/// the whole drain deadline instead.
pub const QUIC_GRACE: Duration = Duration::from_secs(2);
/// How long a draining endpoint waits for its closed connections to go quiet.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Serves QUIC tunnels on `endpoint` until the task is aborted or `drain` is cancelled; each
/// accepted stream is handed to `handler` in a task of its own (in the caller's span).
///
/// On drain: no new connection (refused) nor stream (left unaccepted) is taken; open streams
/// get `QUIC_GRACE` to finish; every connection is then closed (`DRAINING`, "agent draining"),
/// and this returns once the endpoint no longer reads its socket, so that a successor holding
/// the same UDP socket reads every packet from then on.
pub async fn serve<H, Fut>(endpoint: Endpoint, drain: CancellationToken, handler: H)
where
    H: Fn(Connect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let guard = StopAccepting(endpoint);
    let mut conns = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = drain.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            i = guard.0.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let task = connection(incoming, drain.clone(), handler.clone());
        conns.spawn(task.in_current_span());
    }
    let endpoint = guard.0.clone();
    drop(guard);
    let open = conns.len();
    let finished = tokio::time::timeout(QUIC_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !finished {
        warn!(
            connections = conns.len(),
            of = open,
            "QUIC streams still open after {QUIC_GRACE:?} of draining; closing them"
        );
    }
    endpoint.close(DRAINING.into(), b"agent draining");
    // Closed connections linger a few round trips to answer their peers' retransmissions.
    if tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("QUIC connections still closing after {CLOSE_WAIT:?}; letting go of the socket");
    }
}

async fn connection<H, Fut>(incoming: Incoming, drain: CancellationToken, handler: H)
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
    let mut streams = JoinSet::new();
    loop {
        let next = tokio::select! {
            _ = drain.cancelled() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            n = conn.accept_bi() => n,
        };
        match next {
            Ok((send, recv)) => {
                let task = stream(send, recv, source.clone(), peer, handler.clone());
                streams.spawn(task.in_current_span());
            }
            Err(e) => {
                // Its streams run on: they end with the connection.
                streams.detach_all();
                return info!(%peer, %source, error = %e, "hbone-quic: connection ended");
            }
        }
    }
    // Draining: the open streams finish (the endpoint bounds how long), then the connection
    // closes; streams the client opened meanwhile were never accepted, and it retries them.
    while streams.join_next().await.is_some() {}
    // A close discards what the peer has not acknowledged yet: the streams' last bytes and
    // FINs get a few round trips to arrive first.
    let acked = conn.rtt() * 3 + Duration::from_millis(30);
    let _ = tokio::time::timeout(acked, conn.closed()).await;
    conn.close(DRAINING.into(), b"agent draining");
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
