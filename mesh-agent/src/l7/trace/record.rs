//! A finished span, ready for export: what the worker knows about the request, named after
//! OpenTelemetry's HTTP semantic conventions (stable names: `http.request.method`,
//! `http.response.status_code`, `url.path`, `server.address`, `network.peer.address` ...).

use std::{net::SocketAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{Span, SpanId, SpanKind, TraceId};
use crate::metrics::http::RequestRecord;

/// Attribute values longer than this are cut (at a character boundary): a path is the
/// client's to choose, a span's size is not.
pub const MAX_ATTR_LEN: usize = 1024;

/// Whose span it is: the OTLP resource. Client spans belong to the source workload, server
/// spans to the destination workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    /// `service.name`: the workload's canonical service (Istio's `service.istio.io/canonical-name`
    /// or `app` label, else the workload name).
    pub service_name: String,
    /// `k8s.namespace.name` (and `service.namespace`).
    pub namespace: String,
    /// `k8s.pod.name`.
    pub pod: String,
    /// `k8s.node.name`: the node whose pool recorded the span.
    pub node: String,
}

/// What the worker knows when the request is done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanAttrs {
    pub resource: Resource,
    pub method: String,
    /// The request's authority (`host[:port]`): `server.address`, `server.port`.
    pub authority: String,
    /// Without the query: `url.path`.
    pub path: String,
    /// `1.1` or `2`: `network.protocol.version`.
    pub protocol_version: String,
    /// None when no response came (reset, timeout before headers).
    pub status_code: Option<u16>,
    pub grpc_status: Option<u32>,
    /// The other end of this hop: the chosen endpoint (client) or the caller (server).
    pub peer: Option<SocketAddr>,
    /// `peer.service`: the destination Service (client) or the source workload's canonical
    /// service (server).
    pub peer_service: Option<String>,
    /// The caller's and the callee's SPIFFE identities, when known.
    pub source_principal: Option<String>,
    pub destination_principal: Option<String>,
    /// Envoy's response flags (`-` for none).
    pub response_flags: String,
    /// `namespace/name` of the HTTPRoute, and the rule index.
    pub route: Option<String>,
    pub route_rule: Option<usize>,
    /// `http.request.resend_count`: retries made.
    pub retries: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub user_agent: Option<String>,
    /// The L4 connection id the request came on (`weft.connection_id`).
    pub connection_id: Option<String>,
}

impl SpanAttrs {
    /// The span attributes of a finished request, from the record the worker reports to its
    /// agent: the resource is the source workload for a client span, the destination's for a
    /// server span; `node` and `pod` are where the span was recorded (the source pod for a
    /// client span, the destination pod for a server span). Set `protocol_version` and, for
    /// a server span, `peer` (the caller) on the result when known.
    pub fn from_record(r: &RequestRecord, kind: SpanKind, node: &str, pod: &str) -> Self {
        let known = |v: &str| (!v.is_empty() && v != "unknown").then(|| v.to_owned());
        let (service, namespace, peer_service) = match kind {
            SpanKind::Client => (
                &r.source_canonical_service,
                &r.source_workload_namespace,
                known(&r.destination_service),
            ),
            SpanKind::Server => (
                &r.destination_canonical_service,
                &r.destination_workload_namespace,
                known(&r.source_canonical_service),
            ),
        };
        Self {
            resource: Resource {
                service_name: service.clone(),
                namespace: namespace.clone(),
                pod: pod.to_owned(),
                node: node.to_owned(),
            },
            method: r.method.clone(),
            authority: r.authority.clone(),
            path: r.path.split('?').next().unwrap_or_default().to_owned(),
            protocol_version: String::new(),
            status_code: (r.response_code != 0).then_some(r.response_code),
            grpc_status: r.grpc_response_status,
            peer: match kind {
                SpanKind::Client => r.endpoint.as_deref().and_then(|e| e.parse().ok()),
                SpanKind::Server => None,
            },
            peer_service,
            source_principal: known(&r.source_principal),
            destination_principal: known(&r.destination_principal),
            response_flags: r.response_flags.clone(),
            route: r.route.clone(),
            route_rule: r.route_rule,
            retries: r.retries,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            user_agent: None,
            connection_id: r.connection_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

/// OTLP's status: Error for failed requests (server: 5xx; client: 4xx and 5xx; either: no
/// response), with the reason; else unset, as the semantic conventions ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub kind: SpanKind,
    /// `{method} {host}`, e.g. `GET orders.shop.svc.cluster.local`.
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub tracestate: Option<String>,
    pub resource: Resource,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: SpanStatus,
}

pub(super) fn finish(span: Span, a: SpanAttrs, end: SystemTime) -> SpanRecord {
    let (host, port) = split_authority(&a.authority);
    let name = format!("{} {}", cut(&a.method), cut(host));
    let mut attrs: Vec<(&'static str, AttrValue)> = Vec::with_capacity(20);
    // Empty means unknown: left out rather than sent as "".
    let mut put = |k: &'static str, v: &str| {
        if !v.is_empty() {
            attrs.push((k, AttrValue::Str(cut(v).to_owned())))
        }
    };
    put("http.request.method", &a.method);
    put("url.path", &a.path);
    put("url.scheme", "http");
    put("server.address", host);
    put("network.protocol.name", "http");
    put("network.protocol.version", &a.protocol_version);
    put("weft.response_flags", &a.response_flags);
    for (k, v) in [
        ("peer.service", &a.peer_service),
        ("user_agent.original", &a.user_agent),
        ("weft.source_principal", &a.source_principal),
        ("weft.destination_principal", &a.destination_principal),
        ("weft.route", &a.route),
        ("weft.connection_id", &a.connection_id),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    if let Some(p) = a.peer {
        put("network.peer.address", &p.ip().to_string());
    }
    let mut int = |k: &'static str, v: i64| attrs.push((k, AttrValue::Int(v)));
    if let Some(port) = port {
        int("server.port", port.into());
    }
    if let Some(p) = a.peer {
        int("network.peer.port", p.port().into());
    }
    if let Some(code) = a.status_code {
        int("http.response.status_code", code.into());
    }
    if let Some(g) = a.grpc_status {
        int("rpc.grpc.status_code", g.into());
    }
    if let Some(rule) = a.route_rule {
        int("weft.route_rule", rule as i64);
    }
    if a.retries > 0 {
        int("http.request.resend_count", a.retries.into());
    }
    int("http.request.body.size", clamp(a.request_bytes));
    int("http.response.body.size", clamp(a.response_bytes));
    let status = status(span.kind, &a);
    if let SpanStatus::Error(why) = &status {
        attrs.push(("error.type", AttrValue::Str(why.clone())));
    }
    SpanRecord {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent: span.parent,
        kind: span.kind,
        name,
        start_unix_nanos: unix_nanos(span.start),
        end_unix_nanos: unix_nanos(end).max(unix_nanos(span.start)),
        tracestate: span.tracestate,
        resource: a.resource,
        attributes: attrs,
        status,
    }
}

fn status(kind: SpanKind, a: &SpanAttrs) -> SpanStatus {
    let Some(code) = a.status_code else {
        let why = if a.response_flags.is_empty() || a.response_flags == "-" {
            "no_response".to_owned()
        } else {
            a.response_flags.clone()
        };
        return SpanStatus::Error(why);
    };
    let http_error = match kind {
        SpanKind::Server => code >= 500,
        SpanKind::Client => code >= 400,
    };
    // gRPC: the codes the conventions count as a server's error; any non-OK for a client.
    let grpc_error = a.grpc_status.is_some_and(|g| match kind {
        SpanKind::Server => matches!(g, 2 | 4 | 12 | 13 | 14 | 15),
        SpanKind::Client => g != 0,
    });
    if http_error {
        SpanStatus::Error(code.to_string())
    } else if grpc_error {
        SpanStatus::Error(format!("grpc {}", a.grpc_status.unwrap_or_default()))
    } else {
        SpanStatus::Unset
    }
}

/// `host[:port]`, IPv6 in brackets, to (host, port).
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_ATTR_LEN {
        return s;
    }
    let mut end = MAX_ATTR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
