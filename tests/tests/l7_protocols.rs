//! The protocols the L7 pool carries, with real clients and servers at both ends: curl's
//! `Expect: 100-continue` upload, `timeouts.backendRequest` with and without retries, a tonic
//! gRPC client and server (unary, streaming both ways, a non-OK status), a tokio-tungstenite
//! WebSocket, and the pool's upstream over the QUIC tunnel. Client on n1, the applications in
//! one pod on n2, routes in the config directory. Run as root (`cargo xtask test`).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{
    agent::{metric, sibling_bin},
    eventually, features,
    fixture::mesh_config,
    http::{self, curl},
    netns, pattern, wire, Agent, Ca, Pod, Topology,
};

const WEB: &str = "10.96.0.40";
const GRPC: &str = "10.96.0.41:9000";
const WS: &str = "10.96.0.42";

/// `web` (HTTP, the probe's http-serve), `grpc` (a gRPC port, the tonic server) and `ws`
/// (HTTP, the WebSocket server): three Services in front of the one `app` pod.
const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh}
spec:
  clusterIP: 10.96.0.40
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: mesh}
spec:
  clusterIP: 10.96.0.41
  selector: {app: app}
  ports: [{name: grpc, port: 9000, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: ws, namespace: mesh}
spec:
  clusterIP: 10.96.0.42
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: 8765, appProtocol: http}]
";

/// `/bounded`: each backend request within 300ms; `/retried`: the same, and two retries
/// (of 503s: a timed-out try is retried whatever the codes, as GEP-1731 says); the rest plain.
const WEB_ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /bounded}}]
    timeouts: {backendRequest: 300ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /retried}}]
    timeouts: {backendRequest: 300ms}
    retry: {codes: [503], attempts: 2}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
";

const GRPC_ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: grpc, port: 9000}]
  rules:
  - matches: [{method: {service: weft.probe.Echo}}]
    backendRefs: [{name: grpc, port: 9000}]
";

const WS_ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ws, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: ws}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /echo}}]
    backendRefs: [{name: ws, port: 80}]
";

/// A `weft-probe` server in a pod, ended with the test.
struct App(Child);

impl App {
    fn start(pod: &Pod, mode: &str, port: u16) -> Self {
        let mut cmd = Command::new(sibling_bin("weft-probe"));
        netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
        let mut child = cmd
            .args([mode, "--name", &pod.name, "--ports", &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start weft-probe");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("readiness line");
        assert_eq!(line.trim(), "ready", "{mode} did not start");
        Self(child)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Mesh {
    // Dropped in this order: agents, CA and applications before their topology.
    a1: Agent,
    a2: Agent,
    _ca: Ca,
    _apps: Vec<App>,
    client: Pod,
    app: Pod,
    topo: Topology,
}

/// Client on n1; `app` on n2 serving HTTP on 8080, gRPC on 9090 and WebSocket on 8765.
fn mesh(config: &[(&str, &str)]) -> Mesh {
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let client = topo.pod(&n1, "mesh", "client");
    let app = topo.pod(&n2, "mesh", "app");
    topo.set_pod_label(&app.name, "app", "app");
    http::serve(&mut topo, &app, &[8080]);
    let apps = vec![
        App::start(&app, "grpc-serve", 9090),
        App::start(&app, "ws-serve", 8765),
    ];
    topo.apply("services", SERVICES);
    for (name, yaml) in config {
        topo.apply(name, yaml);
    }
    let ca = Ca::start(&topo, &n1, 15012, 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&client);
    a2.wait_enrolled(&app);
    a1.wait_certificates();
    a2.wait_certificates();
    Mesh {
        a1,
        a2,
        _ca: ca,
        _apps: apps,
        client,
        app,
        topo,
    }
}

/// Runs `weft-probe ARGS` as a client application in `pod`; its one JSON line.
fn probe(pod: &Pod, args: &[&str]) -> Value {
    let mut cmd = Command::new(sibling_bin("weft-probe"));
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd.args(args).output().expect("run weft-probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "weft-probe {args:?}: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The pool's request lines on `a` once `ready` says they are all there (a line is written
/// when its response has ended, so it may follow the client's answer by a moment).
fn requests(a: &Agent, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually("the request lines", Duration::from_secs(10), || {
        let lines: Vec<Value> = a
            .access_log()
            .into_iter()
            .filter(|l| l.get("method").is_some())
            .collect();
        ready(&lines).then_some(lines)
    })
}

/// The one request line for `path` (waiting for it).
fn line_for(a: &Agent, path: &str) -> Value {
    let lines = requests(a, |l| l.iter().any(|l| l["path"] == path));
    let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(found.len(), 1, "one line for {path}: {found:?}");
    found[0].clone()
}

fn flags(line: &Value) -> &str {
    line["response_flags"].as_str().unwrap_or("")
}

/// FNV-1a 64, as the probe's http-serve reports a body (`body_fnv`).
fn fnv(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

/// A body of `n` deterministic bytes in a file of the topology, for curl's `--data-binary @`.
fn body_file(topo: &Topology, name: &str, n: u64) -> (String, Vec<u8>) {
    let body: Vec<u8> = (0..n).map(pattern).collect();
    let path = topo.dir.join(name);
    std::fs::write(&path, &body).expect("write the body");
    (format!("@{}", path.display()), body)
}

#[test]
fn expect_100_continue_gets_the_whole_body_through_and_backend_request_bounds_each_try() {
    if !features::require("l7 expect and backendRequest", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", WEB_ROUTE)]);

    // curl asks before it sends 1 MiB; the pool says continue (curl would otherwise wait the
    // full 10 s), and the application reads every byte.
    let (file, body) = body_file(&m.topo, "upload.bin", 1 << 20);
    let started = Instant::now();
    let r = curl(
        &m.client,
        &[
            "-v",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            &file,
            &format!("http://{WEB}/upload"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.error.contains("> Expect: 100-continue"), "{}", r.error);
    assert!(
        r.error.contains("< HTTP/1.1 100 Continue"),
        "curl was not told to continue: {}",
        r.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "curl waited for its expect timeout"
    );
    let report = r.report();
    assert_eq!(report["method"], "POST");
    assert_eq!(report["body_bytes"], 1 << 20, "{report}");
    assert_eq!(report["body_fnv"], fnv(&body), "the body arrived intact");
    let upload = line_for(&m.a1, "/upload");
    assert_eq!(upload["response_code"], 200, "{upload}");
    assert_eq!(upload["bytes_received"], 1 << 20, "{upload}");
    assert_eq!(upload["route"]["rule"], 2, "{upload}");

    // backendRequest cuts a backend that answers too late, lets one in time through.
    let r = curl(&m.client, &[&format!("http://{WEB}/bounded/delay/50")]);
    assert_eq!(r.status, 200, "{r:?}");
    let started = Instant::now();
    let r = curl(&m.client, &[&format!("http://{WEB}/bounded/delay/5000")]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.body.trim(), "upstream request timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "cut at the backendRequest bound: {took:?}"
    );
    let bounded = line_for(&m.a1, "/bounded/delay/5000");
    assert_eq!(bounded["response_code"], 504, "{bounded}");
    assert!(flags(&bounded).contains("UT"), "{bounded}");
    assert_eq!(bounded["retries"], 0, "{bounded}");

    // With retries each try has its own bound: three tries of 300ms, not one of 300ms for
    // all, and not the backend's 5 s.
    let started = Instant::now();
    let r = curl(&m.client, &[&format!("http://{WEB}/retried/delay/5000")]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "three tries of 300ms each: {took:?}"
    );
    let retried = line_for(&m.a1, "/retried/delay/5000");
    assert_eq!(retried["retries"], 2, "{retried}");
    assert!(flags(&retried).contains("UT"), "{retried}");
    assert!(flags(&retried).contains("URX"), "{retried}");
    let (_, out) = m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        &format!("{WEB}:80"),
        "--http",
        "GET /retried/x",
    ]);
    assert!(out.contains("each try 300ms"), "{out}");
    assert!(out.contains("tries cut by backendRequest"), "{out}");
}

#[test]
fn a_tonic_client_gets_unary_answers_both_streams_in_order_and_a_not_found_status_through_a_grpc_route(
) {
    if !features::require("l7 grpc", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", GRPC_ROUTE)]);
    let call = |args: &[&str]| probe(&m.client, &[&["grpc-call", GRPC], args].concat());

    let r = call(&["unary", "hello-through-the-pool"]);
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["reply"], "hello-through-the-pool", "{r}");
    assert_eq!(r["server"], "app", "response metadata arrives: {r}");

    // 200 messages of 10 KB from the server, every one, in order, then the OK trailer.
    let r = call(&["count", "200", "10000"]);
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(
        (r["received"].as_u64(), r["in_order"].as_bool()),
        (Some(200), Some(true)),
        "{r}"
    );

    // Ping-pong: each message goes only after the previous came back, so both directions
    // stream at once through the pool (up to 256 KiB a message).
    let r = call(&["chat", "30"]);
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(
        (r["echoed"].as_u64(), r["in_order"].as_bool()),
        (Some(30), Some(true)),
        "{r}"
    );
    assert_eq!(r["extra"], false, "{r}");

    // A status in the trailers reaches the client as that status, with its message.
    let r = call(&["fail", "5", "order-42-not-found"]);
    assert_eq!(r["code"], 5, "NOT_FOUND: {r}");
    assert_eq!(r["message"], "order-42-not-found", "{r}");

    let fail = line_for(&m.a1, "/weft.probe.Echo/Fail");
    assert_eq!(fail["grpc_status"], 5, "{fail}");
    assert_eq!(fail["protocol"], "grpc", "{fail}");
    assert_eq!(fail["route"]["name"], "mesh/echo", "{fail}");
    let chat = line_for(&m.a1, "/weft.probe.Echo/Chat");
    assert_eq!(chat["grpc_status"], 0, "{chat}");
    let series = |status: &str| {
        metric(
            &m.a1.metrics(),
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", status),
                ("destination_service_name", "grpc"),
            ],
        )
    };
    eventually(
        "grpc_response_status in istio_requests_total",
        Duration::from_secs(10),
        || (series("5") == 1 && series("0") == 3).then_some(()),
    );
}

#[test]
fn a_websocket_upgrades_through_an_http_route_echoes_text_and_binary_and_closes_cleanly() {
    if !features::require("l7 websocket", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", WS_ROUTE)]);
    let r = probe(&m.client, &["ws-call", &format!("ws://{WS}/echo")]);
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["server"], "app", "{r}");
    // 7 sizes from 0 B to 300 KB, each as text and as binary, each echoed intact.
    assert_eq!(r["sent"], 14, "{r}");
    assert_eq!(r["echoed"], 14, "{r}");
    assert_eq!(r["mismatched"], 0, "{r}");
    assert_eq!(r["close_code"], 1000, "the server answered our close: {r}");
    assert_eq!(r["close_reason"], "weft-probe done", "{r}");
    assert_eq!(r["closed_cleanly"], true, "{r}");
    assert!(r.get("error").is_none(), "{r}");
    let ws = line_for(&m.a1, "/echo");
    assert_eq!(ws["response_code"], 101, "{ws}");
    assert_eq!(ws["route"]["name"], "mesh/ws", "{ws}");
}

#[test]
fn over_the_quic_tunnel_the_pool_answers_a_routed_request_and_the_wire_is_only_quic() {
    if !features::require("l7 quic upstream", features::CAPTURE) {
        return;
    }
    let m = mesh(&[("route", WEB_ROUTE), ("mesh-config", &mesh_config("quic"))]);
    for a in [&m.a1, &m.a2] {
        a.wait_tunnel("quic");
    }
    let n1 = m.topo.node_named("n1").clone();
    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let r = curl(
        &m.client,
        &[
            "-H",
            "x-marker: quic-plaintext-marker",
            &format!("http://{WEB}/over-quic"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let report = r.report();
    assert_eq!(report["path"], "/over-quic", "{report}");
    assert_eq!(report["headers"]["x-marker"], "quic-plaintext-marker");
    // A body streams over the QUIC stream too.
    let (file, body) = body_file(&m.topo, "quic.bin", 256 * 1024);
    let r = curl(
        &m.client,
        &[
            "--data-binary",
            &file,
            &format!("http://{WEB}/over-quic/upload"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.report()["body_fnv"], fnv(&body));
    let seen: Vec<wire::Segment> = tap
        .finish()
        .into_iter()
        .filter(|s| s.src == m.app.ip || s.dst == m.app.ip)
        .collect();
    assert!(!seen.is_empty(), "nothing crossed the wire to the app");
    assert!(
        seen.iter()
            .all(|s| s.udp && (s.dst_port == 15008 || s.src_port == 15008)),
        "the pool's upstream is only QUIC on UDP :15008 (no TCP)"
    );
    assert!(
        seen.iter().any(wire::is_quic_initial),
        "no QUIC handshake seen"
    );
    let bytes = wire::all_bytes(&seen);
    assert!(!wire::contains(&bytes, b"quic-plaintext-marker"));
    assert!(
        !wire::contains(&bytes, b"HTTP/1.1"),
        "plaintext HTTP crossed the wire"
    );
    let line = line_for(&m.a1, "/over-quic");
    assert_eq!(line["route"]["name"], "mesh/web", "{line}");
    assert_eq!(
        line["upstream_identity"], "spiffe://cluster.local/ns/mesh/sa/app",
        "{line}"
    );
    // The destination took the tunnel (the QUIC one: nothing else crossed) from the client's
    // own identity. Its access-log line waits for the end of the pooled connection; the
    // counter does not.
    eventually(
        "the destination to count the client's tunnel",
        Duration::from_secs(10),
        || {
            let opened = metric(
                &m.a2.metrics(),
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/mesh/sa/client",
                    ),
                    ("destination_workload", "app"),
                ],
            );
            (opened >= 1).then_some(())
        },
    );
}
