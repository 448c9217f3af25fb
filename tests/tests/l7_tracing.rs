//! Tracing across two hops of the L7 pool: curl in `mesh/client` (node n1) calls Service
//! `orders` (appProtocol http, `weft.dev/l7: enabled`), served by `mesh/server` (node n2).
//! n1's pool records the CLIENT span, n2's the SERVER span, both exported over OTLP to the
//! collector stand-in on n1, which decodes the real protobuf; the chain app → client → server
//! → app must hold, with the app's trace id, and B3 callers must get B3 back.
//!
//! Run as root (`cargo xtask test`).

use std::{
    net::SocketAddr,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use weft_tests::{
    features, netns,
    otlp::{assert_chain, Collector},
    peer::runtime,
    Pod, TwoNodeMesh,
};

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";
const HTTP_PORT: u16 = 8081;
/// n1's address on the wire between the nodes: both nodes' workers reach the collector there.
const COLLECTOR: &str = "10.255.0.1:4318";

fn config() -> String {
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{name: orders, namespace: mesh, labels: {{weft.dev/l7: enabled}}}}\n\
         spec:\n  clusterIP: 10.96.0.20\n  selector: {{app: orders}}\n\
         \x20 ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}, appProtocol: http}}]\n\
         ---\n\
         apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\n\
         metadata: {{name: default, namespace: weft-system}}\n\
         spec: {{tracing: {{otlp: '{COLLECTOR}', sampling: 100}}}}\n"
    )
}

/// An HTTP/1.1 server in `pod` answering every request with the trace headers it received,
/// one `name: value` per line: what the destination application sees.
fn trace_echo(pod: &Pod) {
    let addr: SocketAddr = format!("0.0.0.0:{HTTP_PORT}").parse().unwrap();
    let listener = netns::run_in(&pod.netns, move || std::net::TcpListener::bind(addr))
        .expect("netns")
        .expect("bind the app");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                        let mut seen = String::new();
                        for (k, v) in req.headers() {
                            let k = k.as_str();
                            if k == "traceparent"
                                || k == "tracestate"
                                || k.starts_with("b3")
                                || k.starts_with("x-b3-")
                            {
                                seen.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(seen),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        })
    });
}

/// curl from inside the pod (its netns and cgroup, so the mesh captures it); the body.
fn curl(pod: &Pod, url: &str, headers: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert_eq!(
        code,
        "200",
        "curl {url}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    body.to_owned()
}

fn header<'a>(echoed: &'a str, name: &str) -> Option<&'a str> {
    echoed
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn a_trace_crosses_both_nodes_pools_as_a_parent_child_chain() {
    if !features::require(
        "a_trace_crosses_both_nodes_pools_as_a_parent_child_chain",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[("l7-tracing", &config())]);
    m.topo.set_pod_label(&m.server.name, "app", "orders");
    let collector = Arc::new(Collector::start_in(
        &m.topo.nodes()[0].netns,
        COLLECTOR.parse().unwrap(),
    ));
    trace_echo(&m.server);
    // The label reaches both agents' state: wait until the Service has its endpoint.
    weft_tests::eventually("n1 sees orders' endpoint", Duration::from_secs(10), || {
        let dump = m.a1.config_dump();
        let pods = dump["state"]["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        pods.iter()
            .any(|p| p["labels"]["app"] == "orders")
            .then_some(())
    });
    weft_tests::eventually("n2 sees orders' endpoint", Duration::from_secs(10), || {
        let dump = m.a2.config_dump();
        let pods = dump["state"]["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        pods.iter()
            .any(|p| p["labels"]["app"] == "orders")
            .then_some(())
    });

    // W3C from the app: kept trace id, a new span per hop.
    let tp = format!("traceparent: 00-{APP_TRACE}-{APP_SPAN}-01");
    let echoed = curl(
        &m.client,
        "http://10.96.0.20/orders",
        &[&tp, "tracestate: congo=t61rcWkgMzE"],
    );
    let got = header(&echoed, "traceparent").expect("the app got a traceparent");
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!((parts[1], parts[3]), (APP_TRACE, "01"), "{got}");
    assert_eq!(header(&echoed, "tracestate"), Some("congo=t61rcWkgMzE"));
    let spans = collector.wait_for_trace(APP_TRACE, 2, Duration::from_secs(15));
    let client = spans
        .iter()
        .find(|s| s.kind == "client")
        .expect("n1's client span");
    let server = spans
        .iter()
        .find(|s| s.kind == "server")
        .expect("n2's server span");
    assert_eq!(
        client.parent_span_id.as_deref(),
        Some(APP_SPAN),
        "child of the app's span"
    );
    assert_chain(&[client, server]);
    assert_eq!(
        server.span_id, parts[2],
        "the app's parent is n2's server span"
    );
    assert_eq!(
        client.resource.get("k8s.node.name").map(String::as_str),
        Some("n1")
    );
    assert_eq!(
        server.resource.get("k8s.node.name").map(String::as_str),
        Some("n2")
    );
    assert_eq!(client.attr("http.request.method"), Some("GET"));
    assert_eq!(server.attr("url.path"), Some("/orders"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(collector.errors(), Vec::<String>::new());

    // B3 single from the app: B3 comes back, same trace.
    let b3 = format!("b3: {APP_TRACE}-{APP_SPAN}-1");
    let trace2 = "5bf92f3577b34da6a3ce929d0e0e4736";
    let echoed = curl(
        &m.client,
        "http://10.96.0.20/b3",
        &[&b3.replace(APP_TRACE, trace2)],
    );
    let b3_seen = header(&echoed, "b3").expect("B3 passed on as B3");
    assert!(b3_seen.starts_with(&format!("{trace2}-")), "{b3_seen}");
    collector.wait_for_trace(trace2, 2, Duration::from_secs(15));

    // No context: a new trace, still both spans, linked.
    let t = Instant::now();
    let echoed = curl(&m.client, "http://10.96.0.20/new", &[]);
    let fresh = header(&echoed, "traceparent")
        .expect("a new trace")
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let spans = collector.wait_for_trace(&fresh, 2, Duration::from_secs(15));
    let (c, s) = (
        spans.iter().find(|s| s.kind == "client").unwrap(),
        spans.iter().find(|s| s.kind == "server").unwrap(),
    );
    assert_eq!(c.parent_span_id, None, "a root");
    assert_chain(&[c, s]);
    assert!(t.elapsed() < Duration::from_secs(15));
}
