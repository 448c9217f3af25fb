//! HTTP on a handed-over connection (the lead owns this file). Placeholder until the
//! forwarding lands: every request is answered 503 naming the worker, so the pool's transport
//! can be tested end to end.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpStream;

use super::{context::Context, handoff::Handoff};
use crate::netns::Netns;

/// Serves HTTP on `stream` until the client is done. `netns` is the pod's (`h.pod`).
pub async fn serve(_ctx: Arc<Context>, stream: TcpStream, _netns: Netns, _h: Handoff) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let svc = hyper::service::service_fn(|_req| async {
        let body = format!("weft l7 worker {}\n", std::process::id());
        let resp = hyper::Response::builder()
            .status(503)
            .body(Full::new(Bytes::from(body)))
            .expect("static response");
        Ok::<_, std::convert::Infallible>(resp)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}
