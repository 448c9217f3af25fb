//! `weft-probe http-serve`: an HTTP application (HTTP/1.1 and h2c, told apart by the preface)
//! that answers every request with a JSON report of what it received, so L7 tests can assert
//! on what the mesh delivered (the request body is read whole: `body_bytes` is its length and
//! `body_fnv` its FNV-1a 64 digest, in hex). Behaviour on request:
//!   .../status/NNN          answers NNN
//!   .../delay/MS            answers after MS milliseconds
//!   x-fail-key K, x-fail-times N, x-fail-status S
//!                           the first N requests with key K are answered S, then 200
//!   Upgrade: weft-echo      101, then echoes the upgraded bytes
//!   content-type application/grpc
//!                           a gRPC-shaped answer: the body echoed, `grpc-status` in trailers
//!                           (from x-grpc-status, default 0)

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn serve(name: &str, ports: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let name: Arc<str> = name.into();
    let fails: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    rt.block_on(async move {
        for p in ports.split(',') {
            let addr: SocketAddr = ([0, 0, 0, 0], p.parse::<u16>().expect("port")).into();
            let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let (name, fails) = (name.clone(), fails.clone());
            tokio::spawn(async move {
                while let Ok((s, peer)) = l.accept().await {
                    let (name, fails) = (name.clone(), fails.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            answer(name.clone(), fails.clone(), peer, req)
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        }
        println!("ready");
        std::future::pending::<()>().await
    })
}

fn header(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn answer(
    name: Arc<str>,
    fails: Arc<Mutex<HashMap<String, u32>>>,
    peer: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    let mut report = json!({
        "server": &*name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": header(&req, "host").or_else(|| req.uri().authority().map(|a| a.to_string())),
        "version": format!("{:?}", req.version()),
        "peer": peer.to_string(),
        "headers": headers,
    });
    let path = req.uri().path().to_owned();
    let mut status = 200u16;
    // Anywhere in the path, so a route's prefix can come first (`/slow/delay/5000`).
    let after = |key: &str| {
        path.split_once(key)
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_owned())
    };
    if let Some(s) = after("/status/") {
        status = s.parse().unwrap_or(400);
    }
    if let Some(ms) = after("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let (Some(key), Some(times)) = (header(&req, "x-fail-key"), header(&req, "x-fail-times")) {
        let mut f = fails.lock().expect("fails");
        let n = f.entry(key).or_default();
        if *n < times.parse().unwrap_or(0) {
            *n += 1;
            status = header(&req, "x-fail-status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(503);
        }
    }
    if header(&req, "upgrade").as_deref() == Some("weft-echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = hyper::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "weft-echo")
            .body(Full::new(Bytes::new()).boxed())
            .expect("101");
        return Ok(resp);
    }
    if header(&req, "content-type").is_some_and(|c| c.starts_with("application/grpc")) {
        let grpc_status = header(&req, "x-grpc-status").unwrap_or_else(|| "0".into());
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", grpc_status.parse().expect("status"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ];
        let resp = hyper::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-server", &*name)
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .expect("grpc");
        return Ok(resp);
    }
    // Read as it arrives (for `Expect: 100-continue`, reading is what lets hyper send 100).
    let (mut body_bytes, mut digest) = (0u64, super::FNV_START);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            status = 400;
            break;
        };
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
            digest = super::fnv(digest, data);
        }
    }
    report["body_bytes"] = json!(body_bytes);
    report["body_fnv"] = json!(format!("{digest:016x}"));
    let resp = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-server", &*name)
        .body(Full::new(Bytes::from(report.to_string())).boxed())
        .expect("response");
    Ok(resp)
}
