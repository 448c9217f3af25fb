//! `meshctl explain` renders the plan the outbound path executes (one function decides both):
//! for a Service it shows the endpoints in the order the NEXT connection tries them (the
//! balancer's rotation, recently failed endpoints last) and the retry budget, without taking a
//! turn itself; traffic then goes exactly there. Run as root (`cargo xtask test`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{eventually, features, probe, Client, TwoNodeMesh};

const VIP: &str = "10.96.0.10:80";

fn service() -> &'static str {
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: mesh}\n\
     spec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"
}

/// The candidates of explain's plan, in order, and the retry budget.
fn planned(m: &TwoNodeMesh) -> (Vec<String>, u64, String) {
    let (_, json) = m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        VIP,
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let connect = &v["plan"]["decision"]["connect"];
    let order = connect["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("a plan to connect: {v:#}"))
        .iter()
        .map(|c| c["endpoint"].as_str().unwrap().to_owned())
        .collect();
    let (_, text) =
        m.a1.meshctl(&["explain", "--from", "mesh/client", "--to", VIP]);
    (order, connect["attempts"].as_u64().unwrap(), text)
}

#[test]
fn explain_shows_the_endpoint_order_the_next_connection_follows() {
    if !features::require(
        "explain_shows_the_endpoint_order_the_next_connection_follows",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[("service", service())]);
    // Three endpoints on n2: the server and web-2 serve 8080, nothing listens on dead's.
    let n2 = m.topo.node_named("n2").clone();
    let web2 = m.topo.pod(&n2, "mesh", "web-2");
    probe::serve(&mut m.topo, &web2, &[8080]);
    let dead = m.topo.pod(&n2, "mesh", "dead");
    for p in ["server", "web-2", "dead"] {
        m.topo.set_pod_label(p, "app", "web");
    }
    m.a2.wait_enrolled(&web2);
    m.a2.wait_enrolled(&dead);
    // All three identities certified (the new pods' too), so only "dead" can fail.
    eventually("three certificates on n2", Duration::from_secs(15), || {
        let certs = m.a2.wait_certificates();
        (certs.len() == 3).then_some(())
    });
    let name = |ep: &str| {
        [&m.server, &web2, &dead]
            .into_iter()
            .find(|p| p.addr(8080).to_string() == ep)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| panic!("unknown endpoint {ep}"))
    };
    let dead = dead.addr(8080).to_string();
    let (order, attempts, _) = eventually(
        "explain sees the three endpoints",
        Duration::from_secs(10),
        || Some(planned(&m)).filter(|p| p.0.len() == 3),
    );
    assert_eq!(attempts, 3, "the retry budget covers all three");
    assert_eq!(planned(&m).0, order, "explaining takes no turn");

    let mut c = Client::start(&mut m.topo, &m.client);
    let mut dead_was_first = false;
    for i in 0..6 {
        let (order, _, _) = planned(&m);
        let r = c.connect(VIP.parse().unwrap(), 1024);
        assert!(r.intact(), "connection {i}: {:?}", r.raw);
        // The first candidate of explain's plan, or past a dead one, the next.
        let expected = if order[0] == dead {
            &order[1]
        } else {
            &order[0]
        };
        assert_eq!(
            r.server(),
            name(expected),
            "connection {i} went where explain's plan {order:?} said"
        );
        if order[0] == dead && !dead_was_first {
            dead_was_first = true;
            // It failed once: ejected, so the plan now tries it last.
            let (after, _, text) = planned(&m);
            assert_eq!(after.last(), Some(&dead), "{text}");
            assert!(
                text.contains("tries at most 3 of them, in this order (round robin, recently failed endpoints last)")
                    && text.contains(&format!("endpoint {dead}: pod mesh/dead on node n2")),
                "{text}"
            );
        }
    }
    assert!(
        dead_was_first,
        "round robin put the dead endpoint first once"
    );
}
