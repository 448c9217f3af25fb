//! The L7 pool end to end: real agents with their workers, curl as the client application in a
//! pod, the HTTP application in server pods, HTTPRoutes in the config directory. Asserts what
//! the client gets, what the application received, what crossed the wire and what the agents
//! logged and counted. Run as root (`cargo xtask test`).

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::Value;
use weft_tests::{
    agent::metric,
    features,
    http::{self, curl},
    wire, Agent, Ca, Topology,
};

const FRONTEND: &str = "10.96.0.20";

/// `orders` (the frontend the client calls, selecting both versions), `orders-v1` and
/// `orders-v2`, all speaking HTTP on 80 → 8080; `plainsvc` has no HTTP protocol.
const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: mesh}
spec:
  clusterIP: 10.96.0.20
  selector: {app: orders}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: orders-v1, namespace: mesh}
spec:
  clusterIP: 10.96.0.21
  selector: {app: orders, version: v1}
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: orders-v2, namespace: mesh}
spec:
  clusterIP: 10.96.0.22
  selector: {app: orders, version: v2}
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: plainsvc, namespace: mesh}
spec:
  clusterIP: 10.96.0.23
  selector: {app: orders, version: v1}
  ports: [{port: 80, targetPort: 8080}]
";

const CANARY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: orders, port: 80}]
  rules:
  - matches: [{headers: [{name: x-client, value: iphone}]}]
    backendRefs: [{name: orders-v2, port: 80}]
  - backendRefs:
    - {name: orders-v1, port: 80, weight: 90}
    - {name: orders-v2, port: 80, weight: 10}
";

struct Mesh {
    a1: Agent,
    a2: Agent,
    _ca: Ca,
    client: weft_tests::topology::Pod,
    v1: weft_tests::topology::Pod,
    _v2: weft_tests::topology::Pod,
    topo: Topology,
}

/// Client on n1; orders-v1 and orders-v2 on n2, each serving HTTP on 8080.
fn mesh(config: &[(&str, &str)]) -> Mesh {
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let client = topo.pod(&n1, "mesh", "client");
    let v1 = topo.pod(&n2, "mesh", "orders-v1");
    let v2 = topo.pod(&n2, "mesh", "orders-v2");
    for (p, version) in [(&v1, "v1"), (&v2, "v2")] {
        topo.set_pod_label(&p.name, "app", "orders");
        topo.set_pod_label(&p.name, "version", version);
        http::serve(&mut topo, p, &[8080]);
    }
    topo.apply("services", SERVICES);
    for (name, yaml) in config {
        topo.apply(name, yaml);
    }
    let ca = Ca::start(&topo, &n1, 15012, 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&client);
    a2.wait_enrolled(&v1);
    a2.wait_enrolled(&v2);
    a1.wait_certificates();
    a2.wait_certificates();
    Mesh {
        a1,
        a2,
        _ca: ca,
        client,
        v1,
        _v2: v2,
        topo,
    }
}

fn url(path: &str) -> String {
    format!("http://{FRONTEND}{path}")
}

/// The request lines of an agent's access log (one per request its pool handled), once `ready`
/// says they are all there: a worker reports a request when its response has ended, so the
/// line may follow the client's answer by a moment.
fn requests(a: &Agent, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    weft_tests::eventually(
        "the request lines",
        std::time::Duration::from_secs(10),
        || {
            let lines: Vec<Value> = a
                .access_log()
                .into_iter()
                .filter(|l| l.get("method").is_some())
                .collect();
            ready(&lines).then_some(lines)
        },
    )
}

fn has(lines: &[Value], key: &str, value: impl Into<Value>) -> bool {
    let value = value.into();
    lines.iter().any(|l| l[key] == value)
}

#[test]
fn a_weighted_canary_and_a_header_match_route_each_request_and_the_wire_is_tls() {
    if !features::require("l7 canary", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", CANARY)]);
    let tap = wire::WireTap::start(&m.topo.nodes()[0].netns, "wire0");
    let mut seen = BTreeMap::<String, u32>::new();
    for i in 0..100 {
        let r = curl(
            &m.client,
            &[
                "-H",
                "x-trace-me: canary-marker",
                &url(&format!("/orders/{i}")),
            ],
        );
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let report = r.report();
        assert_eq!(
            report["path"],
            format!("/orders/{i}"),
            "the path arrives as sent"
        );
        assert_eq!(report["host"], FRONTEND, "the Host header arrives as sent");
        *seen.entry(r.server()).or_default() += 1;
    }
    let v2 = seen.get("orders-v2").copied().unwrap_or(0);
    assert_eq!(seen.values().sum::<u32>(), 100, "{seen:?}");
    // 10% of 100 by weight: outside 2..=22 would be chance below one in a thousand.
    assert!(
        (2..=22).contains(&v2),
        "orders-v2 got {v2} of 100: {seen:?}"
    );
    for i in 0..10 {
        let r = curl(&m.client, &["-H", "x-client: iphone", &url("/")]);
        assert_eq!(
            (r.status, r.server().as_str()),
            (200, "orders-v2"),
            "iphone request {i}: {r:?}"
        );
    }
    let segments = tap.finish();
    assert!(
        !wire::contains(&wire::all_bytes(&segments), b"canary-marker"),
        "a request header crossed the wire in the clear"
    );
    // The source pool reported each request, with the route and the backend chosen.
    let lines = requests(&m.a1, |l| l.len() >= 110);
    let iphone = lines
        .iter()
        .find(|l| l["route"]["rule"] == 0)
        .expect("a request of rule 0");
    assert_eq!(iphone["route"]["name"], "mesh/orders");
    assert_eq!(iphone["backend"], "mesh/orders-v2:80");
    assert_eq!(
        iphone["upstream_identity"],
        "spiffe://cluster.local/ns/mesh/sa/orders-v2"
    );
    // The destination saw the client's own identity, not the pool's (no waypoint identity).
    let dst = m.a2.metrics();
    let from_client = metric(
        &dst,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/mesh/sa/client",
            ),
            ("destination_workload", "orders-v2"),
        ],
    );
    assert!(from_client >= 1, "destination metrics:\n{dst}");
    assert!(
        !dst.contains("source_principal=\"unknown\""),
        "a tunnel without the client's identity reached the destination:\n{dst}"
    );
    let metrics = m.a1.metrics();
    let ok_v2 = metric(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("response_code", "200"),
            ("destination_service_name", "orders-v2"),
        ],
    );
    assert!(
        ok_v2 >= 12,
        "istio_requests_total for orders-v2: {ok_v2}\n{metrics}"
    );
    // Explain renders the same routing the worker did, for a request given by hand.
    let (_, out) = m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        "10.96.0.20:80",
        "--http",
        "GET /orders/1",
        "-H",
        "x-client: iphone",
    ]);
    assert!(
        out.contains("GET /orders/1 matches HTTPRoute mesh/orders rule 0"),
        "{out}"
    );
    assert!(
        out.contains("backend mesh/orders-v2:80 weight 1 (100% of requests)"),
        "{out}"
    );
    let (_, out) = m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        "10.96.0.20:80",
        "--http",
        "GET /",
    ]);
    assert!(
        out.contains("matches HTTPRoute mesh/orders rule 1"),
        "{out}"
    );
    assert!(
        out.contains("backend mesh/orders-v1:80 weight 90 (90% of requests)"),
        "{out}"
    );
}

const RETRY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: orders-v1, port: 80}]
  - retry: {codes: [503], attempts: 2}
    backendRefs: [{name: orders-v1, port: 80}]
";

#[test]
fn retries_hide_a_flaky_backend_and_a_request_timeout_answers_504() {
    if !features::require("l7 retries", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", RETRY)]);
    let flaky = |key: &str, times: &str| {
        curl(
            &m.client,
            &[
                "-H",
                &format!("x-fail-key: {key}"),
                "-H",
                &format!("x-fail-times: {times}"),
                &url("/flaky"),
            ],
        )
    };
    // Two failures, two retries: the client sees the third try's success.
    let r = flaky("a", "2");
    assert_eq!(r.status, 200, "{r:?}");
    // Three failures, two retries: the last 503 reaches the client, flagged URX.
    let r = flaky("b", "3");
    assert_eq!(r.status, 503, "{r:?}");
    let lines = requests(&m.a1, |l| {
        has(l, "response_code", 200) && has(l, "response_code", 503)
    });
    let hidden = lines
        .iter()
        .find(|l| l["response_code"] == 200)
        .expect("the hidden failure");
    assert_eq!(hidden["retries"], 2, "{hidden}");
    let exhausted = lines
        .iter()
        .find(|l| l["response_code"] == 503)
        .expect("the exhausted one");
    assert_eq!(exhausted["retries"], 2, "{exhausted}");
    assert!(
        exhausted["response_flags"]
            .as_str()
            .unwrap_or("")
            .contains("URX"),
        "{exhausted}"
    );
    let started = std::time::Instant::now();
    let r = curl(&m.client, &[&url("/slow/delay/5000")]);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the timeout did not cut the request"
    );
    let lines = requests(&m.a1, |l| has(l, "response_code", 504));
    let timed_out = lines
        .iter()
        .find(|l| l["response_code"] == 504)
        .expect("504 line");
    assert!(
        timed_out["response_flags"]
            .as_str()
            .unwrap_or("")
            .contains("UT"),
        "{timed_out}"
    );
}

const DENY_DELETE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-read-only, namespace: mesh}
spec:
  selector: {matchLabels: {app: orders}}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
";

#[test]
fn an_l7_policy_denies_delete_with_envoys_403_on_the_destination_and_lets_get_through() {
    if !features::require("l7 policy", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("policy", DENY_DELETE)]);
    // Straight to the pod (no route): the destination's pool enforces.
    let pod_url = format!("http://{}/orders/1", m.v1.addr(8080));
    let get = curl(&m.client, &[&pod_url]);
    assert_eq!(get.status, 200, "{get:?}");
    let del = curl(&m.client, &["-X", "DELETE", &pod_url]);
    assert_eq!(del.status, 403, "{del:?}");
    assert_eq!(del.body.trim(), "RBAC: access denied");
    let lines = requests(&m.a2, |l| has(l, "method", "DELETE"));
    let denied = lines
        .iter()
        .find(|l| l["method"] == "DELETE")
        .expect("the DELETE on the destination");
    assert_eq!(denied["policy"], "mesh/orders-read-only", "{denied}");
    assert_eq!(denied["reporter"], "destination");
    assert_eq!(
        denied["src"]["principal"],
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
}

#[test]
fn a_service_labelled_for_l7_gets_http_metrics_and_h2c_and_grpc_pass() {
    if !features::require("l7 label", features::CAPTURE) {
        return;
    }
    let label = "\
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: mesh, labels: {weft.dev/l7: enabled}}
spec:
  clusterIP: 10.96.0.30
  selector: {app: orders, version: v2}
  ports: [{name: grpc-api, port: 9000, targetPort: 8080}]
";
    let m = mesh(&[("grpc", label)]);
    let r = curl(
        &m.client,
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "x-grpc-status: 5",
            "--data-binary",
            "hello",
            "http://10.96.0.30:9000/orders.Orders/Get",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // curl -i prints the trailers after the body.
    assert!(r.body.starts_with("hello"), "the gRPC body arrives: {r:?}");
    assert!(
        r.body.contains("grpc-status: 5"),
        "the trailers arrive: {r:?}"
    );
    let lines = requests(&m.a1, |l| has(l, "path", "/orders.Orders/Get"));
    let g = lines
        .iter()
        .find(|l| l["path"] == "/orders.Orders/Get")
        .expect("gRPC line");
    assert_eq!(g["grpc_status"], 5, "status from the trailers: {g}");
    assert_eq!(g["protocol"], "grpc");
}

#[test]
fn a_port_without_an_http_protocol_stays_l4_and_non_http_bytes_are_closed_with_a_reason() {
    if !features::require("l7 not http", features::CAPTURE) {
        return;
    }
    let route = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: plainsvc}]
  rules: [{backendRefs: [{name: orders-v2, port: 80}]}]
";
    let m = mesh(&[("route", route), ("canary", CANARY)]);
    // No appProtocol: the route cannot apply; the connection is carried at L4 to v1.
    let r = curl(&m.client, &["http://10.96.0.23/"]);
    assert_eq!((r.status, r.server().as_str()), (200, "orders-v1"), "{r:?}");
    assert!(
        requests(&m.a1, |_| true).is_empty(),
        "no request went through the pool"
    );
    let (_, out) =
        m.a1.meshctl(&["explain", "--from", "mesh/client", "--to", "10.96.0.23:80"]);
    assert!(out.contains("does not say it speaks HTTP"), "{out}");
    // Not HTTP on an HTTP port: closed, with the reason in the pool's log.
    let addr: SocketAddr = format!("{FRONTEND}:80").parse().unwrap();
    let answer = http::send_raw(&m.client, addr, "\\x16\\x03\\x01garbage\\r\\n\\r\\n");
    assert!(!answer.contains("200"), "garbage got an answer: {answer:?}");
    // The worker logs it as the connection closes: the line may follow the close by a moment.
    weft_tests::eventually(
        "the pool to say why it closed the connection",
        std::time::Duration::from_secs(10),
        || m.a1.log().contains("are not HTTP").then_some(()),
    );
}

#[test]
fn an_upgrade_passes_through_after_routing_and_carries_bytes_both_ways() {
    if !features::require("l7 upgrade", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", CANARY)]);
    let addr: SocketAddr = format!("{FRONTEND}:80").parse().unwrap();
    // Routed by the header to v2, then the connection is the application's byte stream.
    let answer = http::send_raw(
        &m.client,
        addr,
        "GET /ws HTTP/1.1\\r\\nHost: orders\\r\\nConnection: Upgrade\\r\\nUpgrade: weft-echo\\r\\nx-client: iphone\\r\\n\\r\\nbytes-after-the-upgrade",
    );
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer:?}");
    assert!(
        answer.ends_with("bytes-after-the-upgrade"),
        "the upgraded stream echoes: {answer:?}"
    );
    let line = requests(&m.a1, |l| has(l, "path", "/ws"));
    let ws = line
        .iter()
        .find(|l| l["path"] == "/ws")
        .expect("the upgrade's line");
    assert_eq!(ws["response_code"], 101, "{ws}");
    assert_eq!(ws["backend"], "mesh/orders-v2:80", "{ws}");
}
