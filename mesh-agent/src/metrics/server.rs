//! Prometheus endpoint: `GET /metrics` on the node's :15020 (all addresses, so Prometheus
//! scrapes the node; the content is counters, no configuration or secrets).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::{net::TcpListener, task::JoinHandle};

use super::Metrics;

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(serve_on(listener, metrics))
}

/// The endpoint on a listener already bound (tests bind port 0 and read the port back).
pub fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    crate::http_server::spawn(listener, crate::http_server::METRICS, move |req| {
        let answer = answer(req.uri().path(), &metrics);
        async move { answer }
    })
}

fn answer(path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (code, body, kind) = match path {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_owned(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(code)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
