//! AuthorizationPolicy enforced by the destination's agent with the verified identity: a denied
//! connection is reset promptly and the agent names the policy; a live change lets it through.
//! Run as root (`cargo xtask test`).

use std::time::{Duration, Instant};

use weft_tests::{eventually, features, Client, TwoNodeMesh};

fn only_from(principal: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: server-allowlist, namespace: mesh}}\n\
         spec:\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [\"{principal}\"]}}}}]}}]\n"
    )
}

#[test]
fn an_allow_policy_denies_other_principals_by_name_and_changes_live() {
    if !features::require(
        "an_allow_policy_denies_other_principals_by_name_and_changes_live",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(
        3600,
        &[("policy", &only_from("cluster.local/ns/mesh/sa/other"))],
    );
    let mut c = Client::start(&mut m.topo, &m.client);
    let started = Instant::now();
    let denied = c.connect(m.server.addr(8080), 1024);
    assert!(
        !denied.ok(),
        "the client is not in the allowlist: {:?}",
        denied.raw
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly, not a hang"
    );
    let line = eventually(
        "the denial in the access log",
        Duration::from_secs(5),
        || {
            m.a2.access_log().into_iter().find(|l| {
                l["verdict"] == "deny"
                    && l["original_dst"] == m.server.addr(8080).to_string().as_str()
            })
        },
    );
    assert_eq!(line["reporter"], "destination", "{line}");
    assert_eq!(line["response_flags"], "RBAC", "{line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("mesh/server-allowlist"), "{line}");
    assert_eq!(
        line["src"]["identity"], "spiffe://cluster.local/ns/mesh/sa/client",
        "{line}"
    );

    // The policy changes live to allow the client: the next connection goes through.
    m.topo
        .apply("policy", &only_from("cluster.local/ns/mesh/sa/client"));
    let allowed = eventually("the new policy in force", Duration::from_secs(10), || {
        let r = c.connect(m.server.addr(8080), 64 * 1024);
        r.ok().then_some(r)
    });
    assert!(allowed.intact(), "{:?}", allowed.raw);

    // Plaintext has no principal: a pod outside the mesh is denied by the same allowlist.
    let mut outside = Client::start(&mut m.topo, &m.plain);
    let r = outside.connect(m.server.addr(8080), 16);
    assert!(!r.ok(), "{:?}", r.raw);
}

/// A policy change re-decides open connections: the one the new policy denies is closed (the
/// client sees the end), the agent says which policy did it, and the access log records it.
#[test]
fn a_policy_change_closes_open_connections_it_now_denies() {
    if !features::require(
        "a_policy_change_closes_open_connections_it_now_denies",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let mut c = Client::start(&mut m.topo, &m.client);
    assert!(c.open("kept", m.server.addr(8080)).ok());
    assert!(c.xfer("kept", 4096).intact(), "flows before the change");

    m.topo
        .apply("policy", &only_from("cluster.local/ns/mesh/sa/other"));
    let line = eventually(
        "the open connection closed by the server agent",
        Duration::from_secs(10),
        || {
            m.a2.access_log().into_iter().find(|l| {
                l["verdict"] == "deny" && l["original_dst"] == m.server.addr(8080).to_string()
            })
        },
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("policy changed"),
        "{line}"
    );
    let after = c.xfer("kept", 4096);
    assert!(
        !after.ok() || !after.intact(),
        "the connection is closed: {:?}",
        after.raw
    );
    assert_eq!(line["bytes_received"], 4096, "{line}");
}

/// `meshctl explain` names the rule that decides, for a denied then an allowed path, with the
/// identities proven by a real handshake; `-o json` and the exit status serve scripts.
#[test]
fn explain_names_the_deciding_policy_for_denied_and_allowed_paths() {
    if !features::require(
        "explain_names_the_deciding_policy_for_denied_and_allowed_paths",
        features::CAPTURE,
    ) {
        return;
    }
    let m = TwoNodeMesh::start(
        3600,
        &[("policy", &only_from("cluster.local/ns/mesh/sa/other"))],
    );
    let to = m.server.addr(8080).to_string();
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "--from", "mesh/client", "--to", &to];
        args.extend(extra);
        m.a1.meshctl(&args)
    };
    let (code, out) = explain(&[]);
    assert_eq!(code, 1, "denied exits 1:\n{out}");
    for expected in [
        "1. source",
        "enrolled; hooks attached:",
        "pod mesh/server on node n2",
        "source presents spiffe://cluster.local/ns/mesh/sa/client: certificate valid",
        "destination presented spiffe://cluster.local/ns/mesh/sa/server (verified against the mesh root)",
        "DENIED",
        "ALLOW policies apply (mesh/server-allowlist) and none matched",
        "decided by the agent on node n2",
        "HBONE tunnel to",
        "verdict: denied",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }

    m.topo
        .apply("policy", &only_from("cluster.local/ns/mesh/sa/client"));
    let (code, out) = eventually(
        "explain sees the new policy",
        Duration::from_secs(10),
        || {
            let r = explain(&[]);
            (r.0 == 0).then_some(r)
        },
    );
    assert!(
        out.contains("ALLOWED by AuthorizationPolicy mesh/server-allowlist: rule 0 of the ALLOW policy matched"),
        "{out}"
    );
    assert!(out.contains("verdict: allowed"), "{code}\n{out}");

    let (_, json) = explain(&["-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["verdict"], "allowed");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "source",
            "destination",
            "identities",
            "policy",
            "transport",
            "delivery"
        ]
    );
}

/// A denial over a Service is reported by both agents (the source's too, from the tunnel's 403)
/// and is not taken for a sick endpoint: another pod of the same node still reaches it first
/// time, and nothing is ejected.
#[test]
fn a_denial_is_reported_by_both_sides_and_does_not_eject_the_endpoint() {
    if !features::require(
        "a_denial_is_reported_by_both_sides_and_does_not_eject_the_endpoint",
        features::CAPTURE,
    ) {
        return;
    }
    let deny = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
        metadata: {name: not-the-client, namespace: mesh}\n\
        spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]}]}\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: mesh}\n\
        spec: {clusterIP: 10.96.0.30, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n";
    let mut m = TwoNodeMesh::start(3600, &[("policy", deny), ("services", service)]);
    m.topo.set_pod_label("server", "app", "server");
    let n1 = m.topo.node_named("n1").clone();
    let other = m.topo.pod(&n1, "mesh", "other");
    m.a1.wait_enrolled(&other);
    m.a1.wait_certificates();
    let vip: std::net::SocketAddr = "10.96.0.30:80".parse().unwrap();

    let mut other_client = Client::start(&mut m.topo, &other);
    eventually("the Service known", Duration::from_secs(10), || {
        other_client.connect(vip, 16).ok().then_some(())
    });
    let mut client = Client::start(&mut m.topo, &m.client);
    let before = m.a1.log().len();
    assert!(!client.connect(vip, 16).ok(), "the client is denied");
    assert!(other_client.connect(vip, 1024).intact(), "others are not");
    let since = m.a1.log()[before..].to_owned();
    assert!(
        !since.contains("service endpoint failed"),
        "a denial ejected the endpoint:\n{since}"
    );
    let denied = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service", "server.mesh.svc.cluster.local"),
        ("response_flags", "RBAC"),
    ];
    assert_eq!(
        weft_tests::agent::metric(
            &m.a1.metrics(),
            "istio_tcp_connections_opened_total",
            &denied
        ),
        1
    );
    let line =
        m.a1.access_log()
            .into_iter()
            .find(|l| l["verdict"] == "deny")
            .expect("the source's deny line");
    assert_eq!(line["service"], "mesh/server");
    assert!(line["reason"].as_str().unwrap().contains("403"), "{line}");
}
