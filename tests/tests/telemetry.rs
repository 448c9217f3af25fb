//! What the agents report about connections: Istio's TCP metrics on :15020 with both reporters'
//! labels and exact byte counts, one JSON access-log line per connection (allowed and denied),
//! and the log level changed at run time through /logging. Run as root (`cargo xtask test`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{agent::metric, eventually, features, Client, TwoNodeMesh};

const CONNECTIONS: u64 = 3;
const BYTES: u64 = 10_000;

fn deny_client() -> &'static str {
    "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
     metadata: {name: no-client, namespace: mesh}\n\
     spec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}], to: [{operation: {ports: [\"9999\"]}}]}]\n"
}

#[test]
fn metrics_and_access_logs_count_what_crossed() {
    if !features::require(
        "metrics_and_access_logs_count_what_crossed",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[("policy", deny_client())]);
    let mut c = Client::start(&mut m.topo, &m.client);
    for _ in 0..CONNECTIONS {
        let r = c.connect(m.server.addr(8080), BYTES);
        assert!(r.intact(), "{:?}", r.raw);
    }
    // A denied one: the DENY policy covers port 9999 (nothing listens; policy comes first).
    let denied = c.connect(m.server.addr(9999), 16);
    assert!(!denied.ok());

    let source = [
        ("source_workload", "client"),
        ("source_workload_namespace", "mesh"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/mesh/sa/client",
        ),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "mesh"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/mesh/sa/server",
        ),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "tcp"),
    ];
    let ok = |reporter| {
        let mut l = source.to_vec();
        l.extend([("reporter", reporter), ("response_flags", "-")]);
        l
    };
    for (agent, reporter) in [(&m.a1, "source"), (&m.a2, "destination")] {
        let text = eventually(
            &format!("{reporter} reporter: {CONNECTIONS} connections closed"),
            Duration::from_secs(10),
            || {
                let t = agent.metrics();
                (metric(&t, "istio_tcp_connections_closed_total", &ok(reporter)) == CONNECTIONS)
                    .then_some(t)
            },
        );
        let labels = ok(reporter);
        assert_eq!(
            metric(&text, "istio_tcp_connections_opened_total", &labels),
            CONNECTIONS,
            "{text}"
        );
        assert_eq!(
            metric(&text, "istio_tcp_received_bytes_total", &labels),
            CONNECTIONS * BYTES,
            "the client's bytes, exactly ({reporter})"
        );
        let sent = metric(&text, "istio_tcp_sent_bytes_total", &labels);
        assert!(
            sent > CONNECTIONS * BYTES && sent < CONNECTIONS * (BYTES + 200),
            "echo plus greeting ({reporter}): {sent}"
        );
        assert!(text.contains("# TYPE istio_tcp_sent_bytes_total counter"));
    }
    // Both reporters counted the same bytes.
    let sent =
        |a: &weft_tests::Agent, r| metric(&a.metrics(), "istio_tcp_sent_bytes_total", &ok(r));
    assert_eq!(sent(&m.a1, "source"), sent(&m.a2, "destination"));
    // The denial, counted by the destination with Envoy's RBAC flag.
    let mut denied_labels = source.to_vec();
    denied_labels.extend([("reporter", "destination"), ("response_flags", "RBAC")]);
    assert_eq!(
        metric(
            &m.a2.metrics(),
            "istio_tcp_connections_opened_total",
            &denied_labels
        ),
        1
    );

    // Access log: one line per connection on each side, with the fields a user reads.
    let lines = eventually("access-log lines", Duration::from_secs(10), || {
        let l: Vec<Value> = m.a2.access_log();
        (l.len() as u64 > CONNECTIONS).then_some(l)
    });
    let allowed: Vec<&Value> = lines.iter().filter(|l| l["verdict"] == "allow").collect();
    assert_eq!(allowed.len() as u64, CONNECTIONS, "{lines:#?}");
    let a = allowed[0];
    assert_eq!(a["reporter"], "destination");
    assert_eq!(a["src"]["pod"]["name"], "client");
    assert_eq!(a["src"]["ip"], m.client.ip.to_string());
    assert_eq!(
        a["src"]["identity"],
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
    assert_eq!(a["dst"]["pod"]["name"], "server");
    assert_eq!(
        a["dst"]["identity"],
        "spiffe://cluster.local/ns/mesh/sa/server"
    );
    assert_eq!(a["original_dst"], m.server.addr(8080).to_string());
    assert_eq!(a["bytes_received"], BYTES);
    assert!(a["bytes_sent"].as_u64().unwrap() > BYTES);
    assert_eq!(a["transport"], "hbone");
    assert_eq!(a["connection_security_policy"], "mutual_tls");
    assert!(a["duration_ms"].is_u64() && a["time"].as_str().unwrap().ends_with('Z'));
    let d = lines
        .iter()
        .find(|l| l["verdict"] == "deny")
        .expect("a deny line");
    assert_eq!(d["policy"], "mesh/no-client");
    assert_eq!(d["response_flags"], "RBAC");
    assert_eq!(d["original_dst"], m.server.addr(9999).to_string());
    assert!(d["reason"].as_str().unwrap().contains("DENY"), "{d}");
    let src_lines = m.a1.access_log();
    assert!(
        src_lines
            .iter()
            .filter(|l| l["reporter"] == "source" && l["verdict"] == "allow")
            .count() as u64
            >= CONNECTIONS,
        "{src_lines:#?}"
    );
}

#[test]
fn the_log_level_changes_at_run_time() {
    if !features::require("the_log_level_changes_at_run_time", features::CAPTURE) {
        return;
    }
    let m = TwoNodeMesh::start(3600, &[]);
    let (code, body) = m.a1.get("/logging").unwrap();
    assert_eq!((code, body.trim()), (200, "mesh_agent=debug,info"));
    let (code, body) = m.a1.post("/logging?level=warn").unwrap();
    assert_eq!((code, body.trim()), (200, "warn"));
    let (code, body) =
        m.a1.post("/logging?level=info%2Cmesh_agent%3A%3Aproxy%3Dnope")
            .unwrap();
    assert_eq!(code, 400, "a bad filter is refused: {body}");
    assert!(body.contains("invalid filter"), "{body}");
    assert_eq!(
        m.a1.get("/logging").unwrap().1.trim(),
        "warn",
        "the last good filter stays"
    );
    assert_eq!(m.a1.get("/healthz/ready").unwrap().0, 200);
}

#[test]
fn meshctl_status_shows_pods_identities_and_certificate_health() {
    if !features::require(
        "meshctl_status_shows_pods_identities_and_certificate_health",
        features::CAPTURE,
    ) {
        return;
    }
    let m = TwoNodeMesh::start(3600, &[]);
    let (code, out) = m.a2.meshctl(&["status"]);
    assert_eq!(code, 0, "{out}");
    for expected in [
        "node n2: agent ready",
        "enrolled pods: 1",
        "mesh/server",
        "spiffe://cluster.local/ns/mesh/sa/server",
        "certificates: 1",
        "valid, expires in",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    // A second agent that does not answer is named, and the exit status says so.
    let (code, out) = m.a2.meshctl(&[
        "status",
        "--admin",
        "127.0.0.1:15000",
        "--admin",
        "127.0.0.1:1",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("node n2: agent ready") && out.contains("agent at 127.0.0.1:1: UNREACHABLE"),
        "{out}"
    );
}
