//! Services: a connect to a cluster IP is resolved by the client's agent to one ready endpoint,
//! round robin, tunneled to that endpoint with its identity; an endpoint that fails is skipped
//! (passive health); a Service without endpoints fails fast. Run as root (`cargo xtask test`).

use std::{collections::BTreeSet, time::Duration};

use weft_tests::{features, probe, Agent, Ca, Client, Topology};

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: mesh}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 8080}]
";

#[test]
fn a_cluster_ip_reaches_ready_endpoints_on_both_nodes_and_skips_a_dead_one() {
    if !features::require(
        "a_cluster_ip_reaches_ready_endpoints_on_both_nodes_and_skips_a_dead_one",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let client = topo.pod(&n1, "mesh", "client");
    let web_a = topo.pod(&n1, "mesh", "web-a");
    let web_b = topo.pod(&n2, "mesh", "web-b");
    // web-c matches the selector but nothing listens on its port: a dead endpoint.
    let web_c = topo.pod(&n2, "mesh", "web-c");
    for p in [&web_a, &web_b, &web_c] {
        topo.set_pod_label(&p.name, "app", "web");
    }
    probe::serve(&mut topo, &web_a, &[8080]);
    probe::serve(&mut topo, &web_b, &[8080]);
    topo.apply("services", SERVICES);
    let ca = Ca::start(&topo, &n1, 15012, 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&client);
    a2.wait_enrolled(&web_b);
    a2.wait_enrolled(&web_c);
    a1.wait_certificates();
    a2.wait_certificates();

    let vip: std::net::SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut c = Client::start(&mut topo, &client);
    let mut reached = BTreeSet::new();
    for i in 0..12 {
        let r = c.connect(vip, 4096);
        assert!(r.ok() && r.intact(), "connection {i}: {:?}", r.raw);
        assert_eq!(r.peer(), vip, "the application still sees the cluster IP");
        reached.insert(r.server());
    }
    assert_eq!(
        reached,
        BTreeSet::from(["web-a".to_string(), "web-b".to_string()]),
        "both live endpoints, on both nodes, share the connections"
    );
    let log = a1.log();
    let dead = web_c.addr(8080).to_string();
    let failures = log
        .lines()
        .filter(|l| l.contains("service endpoint failed") && l.contains(&dead))
        .count();
    assert_eq!(
        failures, 1,
        "the dead endpoint is tried once, then skipped (passive health)"
    );
    let tunneled = a1.access_log();
    for sa in ["web-a", "web-b"] {
        let identity = format!("spiffe://cluster.local/ns/mesh/sa/{sa}");
        assert!(
            tunneled.iter().any(|l| l["reporter"] == "source"
                && l["dst"]["identity"] == identity.as_str()
                && l["connection_security_policy"] == "mutual_tls"),
            "endpoints are reached through HBONE with their identity: {tunneled:#?}"
        );
    }

    // A Service with no endpoints: refused at once, with a line saying why.
    let r = c.connect("10.96.0.11:80".parse().unwrap(), 16);
    assert!(!r.ok(), "{:?}", r.raw);
    let line = weft_tests::eventually(
        "the refusal in the access log",
        Duration::from_secs(5),
        || {
            a1.access_log()
                .into_iter()
                .find(|l| l["original_dst"] == "10.96.0.11:80" && l["verdict"] != "allow")
        },
    );
    assert_eq!(line["response_flags"], "UH", "{line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("has no ready endpoints"),
        "the agent says why: {line}"
    );
    drop(ca);
}
