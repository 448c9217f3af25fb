//! An OTLP/HTTP collector stand-in: an HTTP/1.1 server (in the test's network namespace, or
//! in a given one) that takes `POST /v1/traces` with `content-type: application/x-protobuf`,
//! decodes the body as OTLP's `ExportTraceServiceRequest` with the opentelemetry-proto types
//! (the real protobuf, not our encoder's idea of it), and keeps every span for assertions.
//! Anything else (wrong path, method, content type, undecodable body) is answered 4xx and
//! recorded in `errors()`, so a test can assert the exporter spoke the protocol.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{any_value::Value, KeyValue},
};
use prost::Message as _;

use crate::{eventually, netns, peer::runtime};

/// The OTLP/HTTP traces path the stand-in serves.
pub const TRACES_PATH: &str = "/v1/traces";
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One span as the collector received it; ids in lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub trace_id: String,
    pub span_id: String,
    /// None for a root span (empty `parent_span_id`).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `client`, `server`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    pub flags: u32,
    pub trace_state: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Values as text (integers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Same trace, and `parent` is this span's parent.
    pub fn is_child_of(&self, parent: &ReceivedSpan) -> bool {
        self.trace_id == parent.trace_id
            && self.parent_span_id.as_deref() == Some(parent.span_id.as_str())
    }
}

/// Panics unless each span is the child of the one before it (one trace, linked parents).
pub fn assert_chain(spans: &[&ReceivedSpan]) {
    for pair in spans.windows(2) {
        assert!(
            pair[1].is_child_of(pair[0]),
            "{} {} (parent {:?}) is not a child of {} {}\nchain: {spans:#?}",
            pair[1].name,
            pair[1].span_id,
            pair[1].parent_span_id,
            pair[0].name,
            pair[0].span_id
        );
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    posts: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// What to answer export requests with (200 unless a test says otherwise).
    status: AtomicU16,
    /// Close each connection after one answer (no keep-alive).
    one_shot: std::sync::atomic::AtomicBool,
}

/// The running stand-in; stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Collector {
    /// Serves on `addr` (port 0 picks one) in the calling thread's network namespace.
    pub fn start(addr: SocketAddr) -> Self {
        Self::serve(std::net::TcpListener::bind(addr).expect("bind the collector"))
    }

    /// Serves on `addr` inside network namespace `ns` (/run/netns/NAME).
    pub fn start_in(ns: &str, addr: SocketAddr) -> Self {
        let listener = netns::run_in(ns, move || std::net::TcpListener::bind(addr))
            .expect("netns")
            .expect("bind the collector in its netns");
        Self::serve(listener)
    }

    fn serve(listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            status: AtomicU16::new(200),
            ..Shared::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = stopped => {}
                    _ = accept(listener, state) => {}
                }
            })
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().expect("spans").clone()
    }

    /// Export requests received (decoded or not).
    pub fn posts(&self) -> usize {
        self.shared.posts.load(Ordering::SeqCst)
    }

    /// Requests that were not valid OTLP/HTTP trace exports, with why.
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().expect("errors").clone()
    }

    /// Answers later export requests with `status` (after decoding and keeping them only when
    /// it is 2xx): 503 makes a collector that is failing.
    pub fn answer_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Closes every later connection after its first answer, as a collector with keep-alive
    /// off (or a short idle timeout) does.
    pub fn close_after_each_answer(&self) {
        self.shared.one_shot.store(true, Ordering::SeqCst);
    }

    /// Waits until at least `n` spans have arrived; returns all of them.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        eventually(&format!("{n} spans at the collector"), timeout, || {
            let spans = self.spans();
            (spans.len() >= n).then_some(spans)
        })
    }

    /// The spans of one trace (id in hex).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until trace `trace_id` has at least `n` spans; returns them.
    pub fn wait_for_trace(&self, trace_id: &str, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        eventually(&format!("{n} spans of trace {trace_id}"), timeout, || {
            let spans = self.trace(trace_id);
            (spans.len() >= n).then_some(spans)
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, state: Arc<Shared>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let state = state.clone();
        let keep_alive = !state.one_shot.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    state: &Shared,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    let refuse = |status: u16, why: String| {
        state.errors.lock().expect("errors").push(why);
        reply(status, Vec::new())
    };
    state.posts.fetch_add(1, Ordering::SeqCst);
    if req.method() != hyper::Method::POST || req.uri().path() != TRACES_PATH {
        return refuse(
            404,
            format!("{} {}: not an OTLP trace export", req.method(), req.uri()),
        );
    }
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    if ctype != Some("application/x-protobuf") {
        return refuse(
            415,
            format!("content-type {ctype:?}, expected application/x-protobuf"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return refuse(400, format!("body: {e}")),
    };
    let export = match ExportTraceServiceRequest::decode(body) {
        Ok(e) => e,
        Err(e) => return refuse(400, format!("not an ExportTraceServiceRequest: {e}")),
    };
    let status = state.status.load(Ordering::SeqCst);
    if (200..300).contains(&status) {
        state.spans.lock().expect("spans").extend(received(export));
    }
    reply(
        status,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn received(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let resource = attributes(rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    name: s.name,
                    kind: match s.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    flags: s.flags,
                    trace_state: s.trace_state,
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    attributes: attributes(s.attributes),
                    status_code: status.code,
                    status_message: status.message,
                });
            }
        }
    }
    out
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, String> {
    kvs.into_iter()
        .map(|kv| {
            let v = match kv.value.and_then(|v| v.value) {
                Some(Value::StringValue(s)) => s,
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key, v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
