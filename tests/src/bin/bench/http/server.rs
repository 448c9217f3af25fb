//! `weft-bench http-serve PORT`: the application in the bench's server pods. One hyper server
//! (HTTP/1.1 and HTTP/2 prior knowledge, auto-detected per connection) that reads each request
//! body and answers `200` with 1 KiB. Single-threaded, as the load generator is, so the server
//! costs the same in every case. Prints `ready` once it listens.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

use super::BODY_BYTES;

/// A request body the server reads before answering; anything larger is the bench's own bug.
const MAX_REQUEST_BODY: usize = 64 << 10;

pub fn serve(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        println!("ready");
        let body = Bytes::from(vec![b'r'; BODY_BYTES]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(req, body.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .expect("static response");
    Ok(resp)
}
