//! `weft-probe grpc-serve` and `grpc-call`: a gRPC server and client on tonic, so L7 tests
//! use a real gRPC stack at both ends (HTTP/2 framing, length-prefixed messages, status in
//! trailers). Messages are raw bytes (a codec of our own, no protobuf needed). The service
//! `weft.probe.Echo`, which answers with the `x-server` metadata naming the pod:
//!   Unary(m)            m back
//!   Fail("CODE TEXT")   the status CODE with message TEXT
//!   Count("N SIZE")     N messages of SIZE bytes (`message(i, SIZE)`), then OK
//!   Chat(stream)        each message back as it arrives
//!
//! `grpc-call ADDR CASE ...` prints one JSON line (`code` is the gRPC status the client got):
//!   unary TEXT          {"reply", "server"}
//!   fail CODE TEXT      {"message"}
//!   count N SIZE        {"received", "in_order"}
//!   chat N              ping-pong of N messages of several sizes: {"sent", "echoed", "in_order"}

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, BufMut as _, Bytes};
use futures_util::StreamExt as _;
use http::uri::PathAndQuery;
use serde_json::{json, Value};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming},
    transport::{server::TcpIncoming, Channel, Endpoint},
    Code, Status,
};
use tower::service_fn;
use weft_tests::pattern;

const SERVICE: &str = "/weft.probe.Echo/";
const TIMEOUT: Duration = Duration::from_secs(20);
/// The sizes the chat cycles through: below and above HTTP/2's default frame (16 KiB) and
/// window (64 KiB).
const CHAT_SIZES: [usize; 5] = [1, 100, 16_384, 70_000, 262_144];

/// Message `i` of a stream: its index, then `size` deterministic bytes.
fn message(i: u32, size: usize) -> Bytes {
    let mut b = Vec::with_capacity(4 + size);
    b.put_u32(i);
    b.extend((0..size as u64).map(|k| pattern((u64::from(i) << 32) | k)));
    b.into()
}

// ---- the codec: a message is its bytes ----

#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// ---- server ----

#[derive(Clone)]
struct Echo {
    name: Arc<str>,
}

type Reply = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let name = self.name.clone();
        Box::pin(async move {
            let mut resp = dispatch(req).await;
            if let Ok(v) = http::HeaderValue::from_str(&name) {
                resp.headers_mut().insert("x-server", v);
            }
            Ok(resp)
        })
    }
}

async fn dispatch(req: http::Request<tonic::body::Body>) -> Reply {
    let method = req.uri().path().strip_prefix(SERVICE).unwrap_or_default();
    let mut grpc = tonic::server::Grpc::new(Raw);
    match method {
        "Unary" => {
            let svc = service_fn(|r: tonic::Request<Bytes>| async move {
                Ok::<_, Status>(tonic::Response::new(r.into_inner()))
            });
            grpc.unary(svc, req).await
        }
        "Fail" => {
            let svc = service_fn(|r: tonic::Request<Bytes>| async move {
                let text = String::from_utf8_lossy(r.get_ref()).into_owned();
                let (code, msg) = text.split_once(' ').unwrap_or((&text, ""));
                let code = Code::from_i32(code.parse().unwrap_or(2));
                Err::<tonic::Response<Bytes>, _>(Status::new(code, msg))
            });
            grpc.unary(svc, req).await
        }
        "Count" => {
            let svc = service_fn(|r: tonic::Request<Bytes>| async move {
                let text = String::from_utf8_lossy(r.get_ref()).into_owned();
                let mut w = text.split_whitespace().map(|x| x.parse().unwrap_or(0));
                let (n, size) = (w.next().unwrap_or(0), w.next().unwrap_or(0));
                let items = (0..n as u32).map(move |i| Ok::<_, Status>(message(i, size)));
                Ok::<_, Status>(tonic::Response::new(futures_util::stream::iter(items)))
            });
            grpc.server_streaming(svc, req).await
        }
        "Chat" => {
            let svc = service_fn(|r: tonic::Request<Streaming<Bytes>>| async move {
                Ok::<_, Status>(tonic::Response::new(r.into_inner()))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented(format!("no method {method:?}")).into_http(),
    }
}

pub fn serve(name: &str, ports: &str) {
    let rt = runtime();
    let name: Arc<str> = name.into();
    rt.block_on(async move {
        for p in ports.split(',') {
            let addr: SocketAddr = ([0, 0, 0, 0], p.parse::<u16>().expect("port")).into();
            let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let svc = Echo { name: name.clone() };
            tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .serve_with_incoming(svc, TcpIncoming::from(l))
                    .await;
                if let Err(e) = served {
                    eprintln!("grpc server: {e}");
                }
            });
        }
        println!("ready");
        std::future::pending::<()>().await
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- client ----

pub fn call(addr: &str, case: &[String]) {
    let out = runtime().block_on(async {
        match tokio::time::timeout(TIMEOUT, run(addr, case)).await {
            Ok(Ok(v)) => v,
            Ok(Err(s)) => json!({"code": s.code() as i32, "message": s.message()}),
            Err(_) => json!({"code": -1, "message": "the call timed out"}),
        }
    });
    println!("{out}");
}

async fn run(addr: &str, case: &[String]) -> Result<Value, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let arg = |i: usize| case.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "unary" => unary(&mut grpc, "Unary", arg(1)).await,
        "fail" => unary(&mut grpc, "Fail", &format!("{} {}", arg(1), arg(2))).await,
        "count" => count(&mut grpc, arg(1).parse().unwrap_or(0), arg(2)).await,
        "chat" => chat(&mut grpc, arg(1).parse().unwrap_or(0)).await,
        other => Err(Status::invalid_argument(format!("unknown case {other:?}"))),
    }
}

fn path(method: &str) -> PathAndQuery {
    format!("{SERVICE}{method}").parse().expect("path")
}

fn server(md: &tonic::metadata::MetadataMap) -> String {
    md.get("x-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    method: &str,
    text: &str,
) -> Result<Value, Status> {
    let req = tonic::Request::new(Bytes::from(text.to_owned()));
    let resp = grpc.unary(req, path(method), Raw).await?;
    let server = server(resp.metadata());
    let reply = String::from_utf8_lossy(resp.get_ref()).into_owned();
    Ok(json!({"code": 0, "reply": reply, "server": server}))
}

async fn count(
    grpc: &mut tonic::client::Grpc<Channel>,
    n: u32,
    size: &str,
) -> Result<Value, Status> {
    let req = tonic::Request::new(Bytes::from(format!("{n} {size}")));
    let size: usize = size.parse().unwrap_or(0);
    let resp = grpc.server_streaming(req, path("Count"), Raw).await?;
    let server = server(resp.metadata());
    let mut stream = resp.into_inner();
    let (mut received, mut in_order) = (0u32, true);
    while let Some(m) = stream.message().await? {
        in_order &= m == message(received, size);
        received += 1;
    }
    Ok(json!({"code": 0, "received": received, "in_order": in_order, "server": server}))
}

/// Sends message i only once message i-1 came back: both directions stream at once, so a
/// proxy that held the request body (or the response) until it ended would stall here.
async fn chat(grpc: &mut tonic::client::Grpc<Channel>, n: u32) -> Result<Value, Status> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let size = |i: u32| CHAT_SIZES[i as usize % CHAT_SIZES.len()];
    let send = |i: u32| {
        let tx = tx.clone();
        async move { tx.send(message(i, size(i))).await.is_ok() }
    };
    if n > 0 {
        send(0).await;
    }
    let resp = grpc
        .streaming(tonic::Request::new(outgoing.boxed()), path("Chat"), Raw)
        .await?;
    let server = server(resp.metadata());
    let mut incoming = resp.into_inner();
    let (mut echoed, mut in_order) = (0u32, true);
    while echoed < n {
        let Some(m) = incoming.message().await? else {
            break;
        };
        in_order &= m == message(echoed, size(echoed));
        echoed += 1;
        if echoed < n {
            send(echoed).await;
        }
    }
    // End of our stream: the server ends its own, with the status in trailers.
    drop(tx);
    let trailing = incoming.message().await?;
    Ok(json!({
        "code": 0, "sent": n, "echoed": echoed, "in_order": in_order,
        "extra": trailing.is_some(), "server": server,
    }))
}
