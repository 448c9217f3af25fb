//! The L7 pool's span export against the OTLP collector stand-in (tests/src/otlp.rs), which
//! decodes the real OTLP protobuf: batches arrive whole, the parent/child chain the trace
//! context carries survives export, and a failing collector costs only counted spans. Most
//! cases need no agent; the netns cases need root, and the last runs a real agent whose
//! workers' span counts must show on its :15020.

use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use mesh_agent::l7::{
    otlp::{Exporter, Limits},
    trace::{Resource, Span, SpanAttrs, SpanKind, SpanRecord},
};
use weft_tests::{
    eventually, features,
    http::curl,
    netns,
    otlp::{assert_chain, Collector},
    Agent, Ca, Topology,
};

fn attrs(service: &str, node: &str, status: u16) -> SpanAttrs {
    SpanAttrs {
        resource: Resource {
            service_name: service.into(),
            namespace: "shop".into(),
            pod: format!("{service}-0"),
            node: node.into(),
        },
        method: "POST".into(),
        authority: "orders.shop.svc.cluster.local:8080".into(),
        path: "/v1/orders".into(),
        protocol_version: "1.1".into(),
        status_code: Some(status),
        peer: Some("10.2.0.7:8080".parse().expect("addr")),
        response_flags: "-".into(),
        ..Default::default()
    }
}

fn span(service: &str) -> SpanRecord {
    let now = SystemTime::now();
    Span::start(&HeaderMap::new(), SpanKind::Client, 100.0, now)
        .finish(attrs(service, "n1", 200), now)
        .expect("sampled at 100%")
}

fn fast() -> Limits {
    Limits {
        batch: 100,
        interval: Duration::from_millis(100),
        backoff_min: Duration::from_millis(50),
        ..Limits::default()
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn spans_arrive_as_otlp_protobuf_in_bounded_batches() {
    let collector = Collector::start("127.0.0.1:0".parse().unwrap());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_rt = rt.enter();
    let exporter = Exporter::start(collector.addr(), fast());
    let mut sent = Vec::new();
    for i in 0..250 {
        let s = span(if i % 2 == 0 { "web" } else { "orders" });
        sent.push(s.span_id.to_string());
        exporter.record(s);
    }
    let got = collector.wait_for_spans(250, WAIT);
    assert_eq!(collector.errors(), Vec::<String>::new(), "valid OTLP/HTTP");
    assert_eq!(got.len(), 250);
    // 250 spans, at most 100 per request.
    assert!(collector.posts() >= 3, "{} posts", collector.posts());
    let mut ids: Vec<String> = got.iter().map(|s| s.span_id.clone()).collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "every span, once");
    let web = got.iter().filter(|s| s.service_name == "web").count();
    assert_eq!(web, 125, "resource service.name per workload");
    let s = &got[0];
    assert_eq!(s.kind, "client");
    assert_eq!(s.scope, "weft-l7");
    assert_eq!(
        s.resource.get("k8s.node.name").map(String::as_str),
        Some("n1")
    );
    assert_eq!(s.attr("http.request.method"), Some("POST"));
    assert_eq!(s.attr("http.response.status_code"), Some("200"));
    assert_eq!(s.attr("url.path"), Some("/v1/orders"));
    assert_eq!(
        s.attr("server.address"),
        Some("orders.shop.svc.cluster.local")
    );
    assert_eq!(s.attr("server.port"), Some("8080"));
    assert_eq!(s.attr("network.peer.address"), Some("10.2.0.7"));
    assert!(s.end_unix_nanos >= s.start_unix_nanos && s.start_unix_nanos > 0);
    eventually("the exporter to count them", WAIT, || {
        (exporter.exported() == 250).then_some(())
    });
    assert_eq!(exporter.dropped(), 0);
}

#[test]
fn the_parent_child_chain_reaches_the_collector() {
    let collector = Collector::start("127.0.0.1:0".parse().unwrap());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_rt = rt.enter();
    let exporter = Exporter::start(collector.addr(), fast());
    // The app's request, with its own span and a tracestate.
    let app_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let mut from_app = HeaderMap::new();
    from_app.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{app_trace}-{app_span}-01")).unwrap(),
    );
    from_app.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
    // Source node: the client span; it writes the context onward.
    let client = Span::start(&from_app, SpanKind::Client, 0.0, SystemTime::now());
    let mut on_the_wire = from_app.clone();
    client.inject(&mut on_the_wire);
    // Destination node: the server span, from what crossed.
    let server = Span::start(&on_the_wire, SpanKind::Server, 0.0, SystemTime::now());
    let mut to_app = on_the_wire.clone();
    server.inject(&mut to_app);
    let (client_id, server_id) = (client.span_id_hex(), server.span_id_hex());
    exporter.record(
        server
            .finish(attrs("orders", "n2", 503), SystemTime::now())
            .expect("sampled by the app"),
    );
    exporter.record(
        client
            .finish(attrs("web", "n1", 503), SystemTime::now())
            .expect("sampled by the app"),
    );
    let spans = collector.wait_for_trace(app_trace, 2, WAIT);
    let c = spans
        .iter()
        .find(|s| s.span_id == client_id)
        .expect("client span");
    let s = spans
        .iter()
        .find(|s| s.span_id == server_id)
        .expect("server span");
    assert_eq!(
        c.parent_span_id.as_deref(),
        Some(app_span),
        "child of the app's span"
    );
    assert_chain(&[c, s]);
    assert_eq!((c.kind, s.kind), ("client", "server"));
    assert_eq!(
        (c.service_name.as_str(), s.service_name.as_str()),
        ("web", "orders")
    );
    assert_eq!(c.trace_state, "congo=t61rcWkgMzE");
    // Both sides count a 503 as an error.
    assert_eq!((c.status_code, s.status_code), (2, 2));
    assert_eq!(s.attr("error.type"), Some("503"));
    // The parent is in another process: OTLP's is-remote flags are set.
    assert_eq!(s.flags & 0x300, 0x300);
    // And the destination app sees the server span as its parent.
    assert_eq!(
        to_app.get("traceparent").and_then(|v| v.to_str().ok()),
        Some(format!("00-{app_trace}-{server_id}-01").as_str())
    );
}

#[test]
fn a_failing_collector_costs_counted_spans_and_export_resumes() {
    let collector = Collector::start("127.0.0.1:0".parse().unwrap());
    collector.answer_with(503);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_rt = rt.enter();
    let exporter = Exporter::start(collector.addr(), fast());
    let t = Instant::now();
    for _ in 0..10 {
        exporter.record(span("web"));
    }
    assert!(t.elapsed() < Duration::from_millis(100), "record waited");
    eventually("the rejected batch to be counted", WAIT, || {
        (exporter.dropped() == 10 && exporter.failed_exports() >= 1).then_some(())
    });
    assert!(collector.posts() >= 1, "it did try");
    assert_eq!(exporter.exported(), 0);
    collector.answer_with(200);
    for _ in 0..5 {
        exporter.record(span("web"));
    }
    collector.wait_for_spans(5, WAIT);
    eventually("the exporter to count them", WAIT, || {
        (exporter.exported() == 5).then_some(())
    });
    assert_eq!(exporter.dropped(), 10);
}

#[test]
fn a_collector_that_closes_connections_loses_nothing() {
    let collector = Collector::start("127.0.0.1:0".parse().unwrap());
    collector.close_after_each_answer();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_rt = rt.enter();
    let exporter = Exporter::start(collector.addr(), fast());
    for n in 1..=3 {
        exporter.record(span("web"));
        collector.wait_for_spans(n, WAIT);
    }
    eventually("three exported", WAIT, || {
        (exporter.exported() == 3).then_some(())
    });
    assert_eq!((exporter.dropped(), exporter.failed_exports()), (0, 0));
}

#[test]
fn the_stand_in_serves_inside_a_network_namespace() {
    let mut topo = Topology::new();
    let node = topo.node("n1");
    let collector = Collector::start_in(&node.netns, "10.1.0.1:0".parse().unwrap());
    let addr = collector.addr();
    // The exporter's socket is made where its runtime runs: inside the node's netns, as a
    // worker's is inside the node's.
    let exported = netns::run_in(&node.netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let exporter = Exporter::start(addr, fast());
                exporter.record(span("web"));
                let deadline = Instant::now() + WAIT;
                while exporter.exported() == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                exporter.exported()
            })
    })
    .expect("netns");
    assert_eq!(exported, 1);
    assert_eq!(collector.wait_for_spans(1, WAIT)[0].service_name, "web");
}

/// A counter without labels in Prometheus text (None when the family is not there at all).
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The workers' pids once every one is ready (`/config_dump` `l7_pool`).
fn ready_workers(agent: &Agent, n: usize) -> Vec<u64> {
    eventually("the L7 workers ready", WAIT, || {
        let dump = agent.config_dump();
        let workers = dump["l7_pool"]["workers"].as_array()?.clone();
        let pids: Vec<u64> = workers
            .iter()
            .filter(|w| w["ready"] == true)
            .filter_map(|w| w["pid"].as_u64())
            .collect();
        (pids.len() == n).then_some(pids)
    })
}

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh, labels: {weft.dev/l7: enabled}}
spec:
  clusterIP: 10.96.0.30
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: default, namespace: weft-system}
spec: {tracing: {otlp: '127.0.0.1:4318', sampling: 100}}
";

#[test]
fn the_workers_span_counts_show_on_the_agents_metrics_across_worker_restarts() {
    if !features::require(
        "the_workers_span_counts_show_on_the_agents_metrics_across_worker_restarts",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.pod(&node, "mesh", "client");
    let web = topo.pod(&node, "mesh", "web");
    topo.set_pod_label(&web.name, "app", "web");
    weft_tests::http::serve(&mut topo, &web, &[8080]);
    topo.apply("web", WEB);
    let ca = Ca::start(&topo, &node, 15012, 3600, "cluster.local");
    // Two workers: the totals are sums over both.
    let agent = Agent::start_meshed(&topo, &node, &ca, &["--l7-workers", "2"]);
    agent.wait_enrolled(&client);
    agent.wait_enrolled(&web);
    agent.wait_certificates();
    let pids = ready_workers(&agent, 2);
    let requests = |n: usize| {
        for i in 0..n {
            let r = curl(&client, &[&format!("http://10.96.0.30/span/{i}")]);
            assert_eq!(r.status, 200, "{r:?}");
        }
    };
    let metrics = || agent.metrics();
    let before = metrics();
    assert_eq!(counter(&before, "weft_l7_spans_exported_total"), Some(0));
    assert_eq!(counter(&before, "weft_l7_spans_dropped_total"), Some(0));
    assert_eq!(counter(&before, "weft_l7_reports_dropped_total"), Some(0));

    // Nothing listens on the collector's address: the workers' spans are dropped, and counted.
    requests(4);
    let dropped = eventually("dropped spans on :15020", WAIT, || {
        let n = counter(&metrics(), "weft_l7_spans_dropped_total")?;
        (n >= 4).then_some(n)
    });
    assert_eq!(counter(&metrics(), "weft_l7_spans_exported_total"), Some(0));

    // A worker killed and replaced starts counting from zero: the totals do not go back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a worker");
    eventually("the worker replaced", WAIT, || {
        let now = ready_workers(&agent, 2);
        (!now.contains(&pids[0])).then_some(())
    });
    eventually("the restart counted", WAIT, || {
        (counter(&metrics(), "weft_l7_worker_restarts_total")? >= 1).then_some(())
    });
    let after_restart = counter(&metrics(), "weft_l7_spans_dropped_total").unwrap();
    assert!(
        after_restart >= dropped,
        "the dropped total went back when a worker restarted: {after_restart} < {dropped}"
    );

    // The collector comes up: what it receives is what the agent counts as exported.
    let collector = Collector::start_in(&node.netns, "127.0.0.1:4318".parse().unwrap());
    requests(4);
    let exported = eventually("exported spans on :15020", Duration::from_secs(45), || {
        let got = collector.spans().len() as u64;
        let counted = counter(&metrics(), "weft_l7_spans_exported_total")?;
        (got >= 4 && counted == got).then_some(counted)
    });
    assert_eq!(collector.errors(), Vec::<String>::new());
    let text = metrics();
    assert!(
        counter(&text, "weft_l7_spans_dropped_total").unwrap() >= after_restart,
        "dropped went back: {text}"
    );
    assert!(counter(&text, "weft_l7_spans_exported_total").unwrap() >= exported);
    assert_eq!(counter(&text, "weft_l7_reports_dropped_total"), Some(0));
    let pool = &agent.config_dump()["l7_pool"];
    assert!(
        pool["spans_exported"].as_u64() >= Some(exported),
        "/config_dump says what /metrics says: {pool:#}"
    );
}
