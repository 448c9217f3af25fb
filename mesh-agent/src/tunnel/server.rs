//! The HBONE endpoint of a pod (:15008 in its netns): terminate mTLS presenting the pod's
//! identity, verify the client's chain and read its SPIFFE ID, then serve HTTP/2 CONNECT
//! streams, each yielded to the caller's handler as a `Connect` to admit or refuse.
//!
//! Refused here, with a log line naming the reason and the agent unharmed: plaintext or garbage
//! (TLS fails), a certificate from another trust domain, expired or unsigned (verification
//! fails), a handshake that does not finish in `HANDSHAKE_TIMEOUT`, a method other than
//! CONNECT (405), more than `MAX_STREAMS` concurrent streams (REFUSED_STREAM), a header list over
//! `MAX_HEADER_LIST` (431), a peer that stops answering PINGs (connection dropped).

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument as _};

use super::{
    incoming::{refuse_h2, Connect},
    keepalive,
    traceparent::{ConnectionId, TRACEPARENT},
    CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME, MAX_HEADER_LIST, MAX_STREAMS, STREAM_WINDOW,
};
use tokio_util::sync::CancellationToken;

use crate::{identity::Identity, netns::socket};

/// Serves HBONE on `listener`, from when `start` resolves until the task is aborted or `drain`
/// is cancelled; each accepted
/// CONNECT is handed to `handler` in a task of its own (in the caller's span). Without `tls`
/// (no CA on this agent) every connection is reset. On drain the listener closes and every
/// connection gets a GOAWAY: its open streams finish, new ones go to a new connection (which a
/// successor agent accepts).
pub async fn serve<H, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    start: impl Future<Output = ()>,
    drain: CancellationToken,
    handler: H,
) where
    H: Fn(Connect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    socket::accept_loop(listener, start, drain.clone(), move |tcp, peer| {
        connection(tls.clone(), tcp, peer, drain.clone(), handler.clone()).in_current_span()
    })
    .await
}

async fn connection<H, Fut>(
    tls: Option<Arc<rustls::ServerConfig>>,
    tcp: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
    handler: H,
) where
    H: Fn(Connect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(tls) = tls else {
        info!(%peer, "hbone: no CA configured on this agent; reset");
        return socket::reset(&tcp);
    };
    let (source, mut conn) = match handshake(tls, tcp).await {
        Ok(c) => c,
        Err(why) => return warn!(%peer, "hbone: {why}"),
    };
    let dead = match conn.ping_pong() {
        Some(pings) => futures_util::future::Either::Left(keepalive::dead(pings)),
        None => futures_util::future::Either::Right(std::future::pending()),
    };
    tokio::pin!(dead);
    let mut going_away = false;
    loop {
        tokio::select! {
            _ = drain.cancelled(), if !going_away => {
                going_away = true;
                debug!(%peer, %source, "hbone: draining; GOAWAY sent");
                conn.graceful_shutdown();
            }
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let handler = handler.clone();
                    let source = source.clone();
                    tokio::spawn(stream(req, respond, source, peer, handler).in_current_span());
                }
                Some(Err(e)) => {
                    return info!(%peer, %source, error = %e, "hbone: connection ended");
                }
                None => return debug!(%peer, %source, "hbone: connection closed by the peer"),
            },
            why = &mut dead => {
                return warn!(%peer, %source, "hbone: peer dropped: {why}");
            }
        }
    }
}

type ServerConnection = h2::server::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes>;

/// mTLS, the client's verified identity, then HTTP/2 with the server's limits: each step within
/// `HANDSHAKE_TIMEOUT`. The error is the reason to log.
async fn handshake(
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> Result<(Identity, ServerConnection), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "mTLS handshake timed out".to_string())?
        .map_err(|e| format!("mTLS handshake refused: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let source = Identity::from_cert(leaf.ok_or("client presented no certificate")?)
        .map_err(|e| format!("client identity unreadable: {e}"))?;
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls);
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("HTTP/2 handshake with {source} timed out"))?
        .map_err(|e| format!("HTTP/2 handshake with {source} failed: {e}"))?;
    Ok((source, conn))
}

async fn stream<H, Fut>(
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    source: Identity,
    peer: SocketAddr,
    handler: H,
) where
    H: Fn(Connect) -> Fut,
    Fut: Future<Output = ()>,
{
    if req.method() != http::Method::CONNECT {
        warn!(%peer, method = %req.method(), "hbone: stream refused: only CONNECT is served");
        return refuse_h2(respond, StatusCode::METHOD_NOT_ALLOWED);
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    // The source agent's id of this connection (ztunnel sends one too).
    let id = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(ConnectionId::from_traceparent);
    let client =
        super::forwarded::client(req.headers().get(super::forwarded::FORWARDED), peer.ip());
    handler(Connect::h2(
        source,
        peer,
        client,
        authority,
        id,
        respond,
        req.into_body(),
    ))
    .await
}
