use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
};
use prost::Message as _;

use super::*;
use crate::l7::trace::{Resource, Span, SpanAttrs, SpanKind};

fn span(service: &str) -> SpanRecord {
    let attrs = SpanAttrs {
        resource: Resource {
            service_name: service.into(),
            namespace: "shop".into(),
            pod: format!("{service}-0"),
            node: "node-a".into(),
        },
        method: "GET".into(),
        authority: "orders:80".into(),
        path: "/".into(),
        status_code: Some(503),
        ..Default::default()
    };
    let now = SystemTime::now();
    Span::start(&http::HeaderMap::new(), SpanKind::Server, 100.0, now)
        .finish(attrs, now)
        .expect("sampled")
}

/// An address nothing listens on: connects are refused.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_down_collector_never_blocks_and_its_spans_are_counted_as_dropped() {
    let limits = Limits {
        interval: Duration::from_millis(20),
        ..Limits::default()
    };
    let exporter = Exporter::start(closed_port(), limits);
    let t = Instant::now();
    for _ in 0..100 {
        exporter.record(span("web"));
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "record waited: {:?}",
        t.elapsed()
    );
    until("the failed export to be counted", || {
        exporter.dropped() == 100
    })
    .await;
    assert_eq!(exporter.exported(), 0);
    assert!(exporter.failed_exports() >= 1);
}

#[tokio::test]
async fn the_queue_bound_holds_while_the_collector_hangs() {
    // Connects succeed (the listen backlog) but nothing ever answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        queue: 10,
        batch: 5,
        interval: Duration::from_millis(10),
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let exporter = Exporter::start(hanging.local_addr().unwrap(), limits);
    exporter.record(span("web"));
    // Let the task take its first batch and block on the export.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    for _ in 0..1000 {
        exporter.record(span("web"));
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "record waited: {:?}",
        t.elapsed()
    );
    // At most `queue` wait; one span is in the hung export; the rest are dropped, counted.
    assert!(
        exporter.dropped() >= 1000 - 10,
        "dropped {}",
        exporter.dropped()
    );
    assert_eq!(exporter.exported(), 0);
}

#[tokio::test]
async fn a_hung_export_times_out_and_the_next_batch_still_goes() {
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let limits = Limits {
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(100),
        backoff_min: Duration::from_millis(10),
        ..Limits::default()
    };
    let exporter = Exporter::start(hanging.local_addr().unwrap(), limits);
    exporter.record(span("web"));
    until("the timed-out export", || exporter.failed_exports() == 1).await;
    exporter.record(span("web"));
    until("a second try", || exporter.failed_exports() == 2).await;
    assert_eq!(exporter.dropped(), 2);
}

#[test]
fn spans_are_grouped_by_workload_and_encoded_as_otlp() {
    let spans = vec![span("web"), span("orders"), span("web")];
    let bytes = encode::request(&spans).encode_to_vec();
    let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(req.resource_spans.len(), 2);
    let service = |rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans| {
        rs.resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref()?.value.clone())
    };
    let web = req
        .resource_spans
        .iter()
        .find(|rs| service(rs) == Some(Value::StringValue("web".into())))
        .expect("web's resource");
    let got = &web.scope_spans[0].spans;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].trace_id, spans[0].trace_id.to_bytes().to_vec());
    assert_eq!(got[0].span_id, spans[0].span_id.to_bytes().to_vec());
    assert!(got[0].parent_span_id.is_empty(), "a root span");
    assert_eq!(got[0].kind, 2, "SERVER");
    assert_eq!(
        got[0].status.as_ref().map(|s| s.code),
        Some(2),
        "ERROR for a 503"
    );
    assert_eq!(got[0].flags & 0xff, 1, "sampled");
    let code = got[0]
        .attributes
        .iter()
        .find(|kv| kv.key == "http.response.status_code")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(code, Some(Value::IntValue(503)));
}

#[tokio::test]
async fn the_tracer_follows_mesh_config() {
    let tracer = Tracer::new(Limits::default());
    assert_eq!(tracer.sampling_percent(), 0.0);
    tracer.record(span("web")); // off: nothing happens
    let config = |port: u16, sampling: f64| state::Tracing {
        otlp: format!("127.0.0.1:{port}").parse().unwrap(),
        sampling,
    };
    tracer.update(Some(&config(1, 10.0)));
    assert_eq!(tracer.sampling_percent(), 10.0);
    let first = tracer.active.load_full().expect("on");
    tracer.update(Some(&config(1, 50.0)));
    let second = tracer.active.load_full().expect("on");
    assert_eq!(tracer.sampling_percent(), 50.0);
    assert!(
        first.exporter.tx.same_channel(&second.exporter.tx),
        "same collector, same exporter"
    );
    tracer.update(Some(&config(2, 50.0)));
    let third = tracer.active.load_full().expect("on");
    assert_eq!(third.exporter.target().port, 2);
    assert!(!third.exporter.tx.same_channel(&second.exporter.tx));
    tracer.update(None);
    assert_eq!(tracer.sampling_percent(), 0.0);
}
