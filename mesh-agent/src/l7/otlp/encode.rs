//! Finished spans to OTLP's `ExportTraceServiceRequest` (the opentelemetry-proto messages):
//! one ResourceSpans per workload, since one worker records spans for every pod of its node.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource as ProtoResource,
    trace::v1::{
        span::SpanKind as ProtoKind, status::StatusCode, ResourceSpans, ScopeSpans, Span,
        SpanFlags, Status,
    },
};

use crate::l7::trace::{AttrValue, Resource, SpanKind, SpanRecord, SpanStatus};

/// The instrumentation scope every span names.
pub const SCOPE: &str = "weft-l7";

pub fn request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut by_resource: BTreeMap<&Resource, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_resource.entry(&s.resource).or_default().push(span(s));
    }
    ExportTraceServiceRequest {
        resource_spans: by_resource
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: resource_attributes(resource),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn resource_attributes(r: &Resource) -> Vec<KeyValue> {
    [
        ("service.name", &r.service_name),
        ("k8s.namespace.name", &r.namespace),
        ("k8s.pod.name", &r.pod),
        ("k8s.node.name", &r.node),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| kv(k, Value::StringValue(v.clone())))
    .collect()
}

fn span(s: &SpanRecord) -> Span {
    // The parent is always in another process (the caller's, or the other node's worker).
    let remote = match s.parent {
        Some(_) => SpanFlags::ContextHasIsRemoteMask as u32 | SpanFlags::ContextIsRemoteMask as u32,
        None => 0,
    };
    Span {
        trace_id: s.trace_id.to_bytes().to_vec(),
        span_id: s.span_id.to_bytes().to_vec(),
        parent_span_id: s.parent.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
        trace_state: s.tracestate.clone().unwrap_or_default(),
        flags: 0x01 | remote,
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Client => ProtoKind::Client,
            SpanKind::Server => ProtoKind::Server,
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| {
                kv(
                    k,
                    match v {
                        AttrValue::Str(s) => Value::StringValue(s.clone()),
                        AttrValue::Int(i) => Value::IntValue(*i),
                    },
                )
            })
            .collect(),
        status: Some(match &s.status {
            SpanStatus::Unset => Status::default(),
            SpanStatus::Error(why) => Status {
                code: StatusCode::Error as i32,
                message: why.clone(),
            },
        }),
        ..Default::default()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
