//! The HBONE endpoint of a pod (:15008 in its netns): terminate mTLS presenting the pod's
//! identity, verify the client's chain and read its SPIFFE ID, then serve HTTP/2 CONNECT
//! streams, each to a port of this pod, delivered inside the pod's netns.
//!
//! Refused, with a log line naming the reason and the agent unharmed: plaintext or garbage
//! (TLS fails), a certificate from another trust domain, expired or unsigned (verification
//! fails), a method other than CONNECT (405), a target that is not this pod (403), a port
//! nothing listens on (503).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument as _};

use super::{
    deliver::deliver,
    traceparent::{ConnectionId, TRACEPARENT},
    H2Stream,
};
use crate::{
    identity::Identity,
    proxy::{listeners::accept_loop, relay, reset, PodContext},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    accept_loop(listener, move |stream, peer| {
        handle(ctx.clone(), stream, peer)
    })
    .await
}

async fn handle(ctx: Arc<PodContext>, tcp: TcpStream, peer: SocketAddr) {
    let Some(tls) = ctx.hbone_tls.clone() else {
        info!(pod = %ctx.key, %peer, "hbone: no CA configured on this agent; reset");
        return reset(tcp);
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return warn!(pod = %ctx.key, %peer, error = %e, "hbone: mTLS handshake refused")
        }
        Err(_) => return warn!(pod = %ctx.key, %peer, "hbone: mTLS handshake timed out"),
    };
    let source = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Identity::from_cert(leaf),
        None => return warn!(pod = %ctx.key, %peer, "hbone: client presented no certificate"),
    };
    let source = match source {
        Ok(id) => id,
        Err(e) => {
            return warn!(pod = %ctx.key, %peer, error = %e, "hbone: client identity unreadable")
        }
    };
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(crate::tunnel::MAX_FRAME)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return warn!(pod = %ctx.key, %peer, %source, error = %e, "hbone: HTTP/2 handshake failed")
        }
    };
    while let Some(next) = conn.accept().await {
        match next {
            Ok((req, respond)) => {
                // The source agent's id of this connection (ztunnel sends one too); else ours.
                let id = req
                    .headers()
                    .get(TRACEPARENT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ConnectionId::from_traceparent)
                    .unwrap_or_else(ConnectionId::new);
                let span =
                    info_span!("inbound", pod = %ctx.key, %id, src = %peer, src_identity = %source);
                let source = source.clone();
                tokio::spawn(stream(ctx.clone(), req, respond, source, peer, id).instrument(span));
            }
            Err(e) => {
                info!(pod = %ctx.key, %peer, %source, error = %e, "hbone: connection ended");
                break;
            }
        }
    }
}

fn refuse(mut respond: SendResponse<Bytes>, code: StatusCode, why: &str) {
    warn!(status = code.as_u16(), "hbone: stream refused: {why}");
    let resp = Response::builder()
        .status(code)
        .body(())
        .expect("static response");
    let _ = respond.send_response(resp, true);
}

async fn stream(
    ctx: Arc<PodContext>,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    source: Identity,
    peer: SocketAddr,
    id: ConnectionId,
) {
    if req.method() != http::Method::CONNECT {
        return refuse(
            respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "only CONNECT is served",
        );
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let d = match deliver(&ctx, authority, &source, peer.ip(), "hbone", id).await {
        Ok(d) => d,
        Err(r) => return refuse(respond, r.status, &r.reason),
    };
    let ok = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .expect("static response");
    let send = match respond.send_response(ok, false) {
        Ok(s) => s,
        Err(e) => return info!(error = %e, "hbone: client went away"),
    };
    let down = H2Stream::new(send, req.into_body());
    let span = info_span!("deliver", dst = %d.target);
    relay(&ctx.shared, down, d.up, d.record, Some(d.watch))
        .instrument(span)
        .await
}
