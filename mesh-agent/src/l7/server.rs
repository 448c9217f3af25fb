//! HTTP on a handed-over connection: hyper's server (HTTP/1.1 with keep-alive, chunked and
//! `Expect: 100-continue`, or HTTP/2 with prior knowledge, told apart by the preface; HTTP/2
//! only for http2/grpc ports), every request through `forward`. Bounded as the tunnel is:
//! header size, concurrent streams, time to send a request's headers.

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, info_span, Instrument as _};

use super::{
    context::Context,
    forward::{self, Conn},
    handoff::{Handoff, Protocol},
};
use crate::{netns::Netns, tunnel::traceparent::ConnectionId};

/// Largest request head (and HTTP/2 header list) a client may send.
const MAX_HEADERS_BYTES: usize = 64 * 1024;
/// Concurrent HTTP/2 streams per downstream connection.
const MAX_STREAMS: u32 = 200;
/// How long a client may take to send a request's headers (also the idle keep-alive bound
/// of an HTTP/1.1 connection between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP on `io` until the client is done. `netns` is the pod's (`h.pod`).
pub async fn serve<I>(ctx: Arc<Context>, io: I, netns: Netns, h: Handoff)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = ConnectionId::from_traceparent(&h.id).unwrap_or_else(ConnectionId::new);
    let span = info_span!("l7", side = ?h.side, pod = %h.pod, %id, dst = %h.dst);
    let source = h.source_identity.as_deref().and_then(|s| s.parse().ok());
    let protocol = h.protocol;
    let conn_drain = ctx.drain.clone();
    let conn = Arc::new(Conn {
        ctx,
        netns,
        h,
        id,
        source,
    });
    // Set at the connection's first request: from then on the protocol is known, and a
    // graceful shutdown lets requests finish (before it, hyper-util's version detection would
    // just close the connection, resetting a request already on its way).
    let (first, mut first_seen) = tokio::sync::watch::channel(false);
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        first.send_if_modified(|seen| !std::mem::replace(seen, true));
        async move { Ok::<_, std::convert::Infallible>(forward::handle(conn, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADERS_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if protocol != Protocol::Http {
        builder = builder.http2_only();
    }
    let io = TokioIo::new(io);
    let drain = conn_drain.clone();
    async move {
        let served = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(served);
        // Draining: the request in flight finishes, then HTTP/1.1 closes the connection and
        // HTTP/2 sends GOAWAY; the client's next request goes to a new connection (the new
        // agent's pool).
        // A connection handed over just before the drain gets its first request served too.
        let result = tokio::select! {
            r = served.as_mut() => r,
            _ = drain.cancelled() => {
                let first = tokio::time::timeout(HEADER_TIMEOUT, async {
                    let _ = first_seen.wait_for(|s| *s).await;
                });
                tokio::select! {
                    r = served.as_mut() => r,
                    _ = first => {
                        served.as_mut().graceful_shutdown();
                        served.await
                    }
                }
            }
        };
        if let Err(e) = result {
            match e.downcast_ref::<hyper::Error>() {
                Some(he) if he.is_parse() || he.is_parse_too_large() => {
                    info!(error = %e, "connection closed: the bytes on this HTTP port are not HTTP")
                }
                _ => debug!(error = %e, "connection ended"),
            }
        }
    }
    .instrument(span)
    .await
}
