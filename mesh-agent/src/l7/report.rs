//! The record of one request, filled as the worker handles it and reported to the agent when
//! the response has been sent (or the client went away): Istio's HTTP metrics and the
//! request's access-log line come from it.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context as TaskContext, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};

use super::{
    context::Context,
    handoff::{Handoff, Protocol, Side},
    trace::{Span, SpanAttrs, SpanKind},
    upstream::{Body, BoxError},
};
use crate::{
    metrics::{access_log::rfc3339, flags, http::RequestRecord, Reporter, UNKNOWN},
    state::{ServiceKey, State},
};

/// The DNS suffix of Services in `destination_service` (as the TCP metrics use).
const CLUSTER_DOMAIN: &str = "cluster.local";

/// The record of a request that has just arrived on the connection `h`.
pub fn begin(state: &State, h: &Handoff, parts: &http::request::Parts) -> RequestRecord {
    let pod_labels = |ip: Option<IpAddr>| {
        let pod = ip.and_then(|ip| state.pod_by_ip(ip));
        match pod {
            Some(p) => (p.workload(), p.canonical_service(), p.key.namespace.clone()),
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        }
    };
    let local = state.pods.get(&h.pod).and_then(|p| p.ip);
    let (src_ip, dst_ip) = match h.side {
        Side::Outbound => (local.or(Some(h.source_ip)), None),
        Side::Inbound => (Some(h.source_ip), local),
    };
    let (sw, sc, sn) = pod_labels(src_ip);
    let (dw, dc, dn) = pod_labels(dst_ip);
    let mut r = RequestRecord {
        reporter: Some(match h.side {
            Side::Outbound => Reporter::Source,
            Side::Inbound => Reporter::Destination,
        }),
        start_time: rfc3339(SystemTime::now()),
        source_workload: sw,
        source_canonical_service: sc,
        source_workload_namespace: sn,
        source_principal: h.source_identity.clone().unwrap_or_else(|| UNKNOWN.into()),
        destination_workload: dw,
        destination_canonical_service: dc,
        destination_workload_namespace: dn,
        destination_principal: UNKNOWN.into(),
        request_protocol: match h.protocol {
            Protocol::Grpc => "grpc",
            _ => "http",
        }
        .into(),
        method: parts.method.to_string(),
        authority: authority(parts).unwrap_or_default(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.to_string()),
        response_flags: flags::NONE.into(),
        connection_security_policy: if h.source_identity.is_some() {
            "mutual_tls"
        } else {
            "none"
        }
        .into(),
        connection_id: Some(h.id.clone()),
        ..Default::default()
    };
    let service = match h.side {
        Side::Outbound => h.service.clone(),
        Side::Inbound => state.service_of_endpoint(h.dst),
    };
    set_service(&mut r, service.as_ref());
    r
}

/// The destination Service labels (the frontend the client named, or the backend chosen).
pub fn set_service(r: &mut RequestRecord, service: Option<&ServiceKey>) {
    match service {
        Some(s) => {
            r.destination_service = format!("{}.{}.svc.{CLUSTER_DOMAIN}", s.name, s.namespace);
            r.destination_service_name = s.name.clone();
            r.destination_service_namespace = s.namespace.clone();
        }
        // Not the authority: a client could mint a series per Host header.
        None => {
            r.destination_service = UNKNOWN.into();
            r.destination_service_name = UNKNOWN.into();
            r.destination_service_namespace = UNKNOWN.into();
        }
    }
}

/// The destination pod's labels, once an endpoint is chosen (source side).
pub fn set_destination(r: &mut RequestRecord, state: &State, ip: IpAddr) {
    if let Some(p) = state.pod_by_ip(ip) {
        r.destination_workload = p.workload();
        r.destination_canonical_service = p.canonical_service();
        r.destination_workload_namespace = p.key.namespace.clone();
    }
}

/// The request's authority: the URI's (HTTP/2) or the Host header (HTTP/1.1).
pub fn authority(parts: &http::request::Parts) -> Option<String> {
    parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// Counts a request body's bytes as they pass, keeping its size hint (which says whether the
/// request is small enough to buffer for retries).
pub fn count_request(body: Body, counter: Arc<AtomicU64>) -> Body {
    Counted {
        inner: body,
        counter,
    }
    .boxed()
}

struct Counted {
    inner: Body,
    counter: Arc<AtomicU64>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.counter.fetch_add(d.len() as u64, Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that reports its request when it ends: bytes counted, gRPC status read from
/// the trailers, the duration taken at the last byte. A client that goes away first (the body
/// is dropped unfinished) is reported with flag DC.
pub struct Reported {
    inner: Body,
    traced: Option<Traced>,
    record: Option<RequestRecord>,
    ctx: Arc<Context>,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
}

impl Reported {
    /// Wraps `resp`'s body so the request is reported when it ends.
    pub fn wrap(
        resp: http::Response<Body>,
        mut record: RequestRecord,
        ctx: Arc<Context>,
        started: Instant,
        request_bytes: Arc<AtomicU64>,
        traced: Traced,
    ) -> http::Response<Body> {
        let (parts, inner) = resp.into_parts();
        record.response_code = parts.status.as_u16();
        if let Some(s) = grpc_status(&parts.headers) {
            record.grpc_response_status = Some(s);
        }
        let body = Reported {
            inner,
            traced: Some(traced),
            record: Some(record),
            ctx,
            started,
            request_bytes,
        };
        http::Response::from_parts(parts, body.boxed())
    }

    fn finish(&mut self, flag: Option<&'static str>) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        r.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        r.request_bytes = self.request_bytes.load(Relaxed);
        if let Some(flag) = flag {
            add_flag(&mut r, flag);
        }
        if let Some(t) = self.traced.take() {
            let mut attrs = SpanAttrs::from_record(&r, t.kind, &self.ctx.node, &t.pod);
            attrs.protocol_version = match t.version {
                http::Version::HTTP_2 => "2",
                _ => "1.1",
            }
            .into();
            attrs.peer = t.peer.or(attrs.peer);
            if let Some(done) = t.span.finish(attrs, SystemTime::now()) {
                self.ctx.tracer.record(done);
            }
        }
        self.ctx.report(r);
    }
}

/// The span of one request, finished with its record.
pub struct Traced {
    pub span: Span,
    pub kind: SpanKind,
    /// The caller (server spans).
    pub peer: Option<std::net::SocketAddr>,
    /// The local pod's name.
    pub pod: String,
    pub version: http::Version,
}

/// Adds an Envoy response flag to a record (`-` is none; several are comma-separated).
pub fn add_flag(r: &mut RequestRecord, flag: &str) {
    if r.response_flags == flags::NONE || r.response_flags.is_empty() {
        r.response_flags = flag.into();
    } else if !r.response_flags.split(',').any(|f| f == flag) {
        r.response_flags = format!("{},{flag}", r.response_flags);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl hyper::body::Body for Reported {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(r) = this.record.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        r.response_bytes += d.len() as u64;
                    }
                    if let Some(s) = frame.trailers_ref().and_then(grpc_status) {
                        r.grpc_response_status = Some(s);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The upstream ended the response early.
                this.finish(Some(flags::UPSTREAM_RESET));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        if self.record.is_some() {
            // An empty body that was never polled ends here too; only a body with more to
            // send is a client that went away.
            let flag = (!self.inner.is_end_stream()).then_some(flags::DOWNSTREAM_RESET);
            self.finish(flag);
        }
    }
}
