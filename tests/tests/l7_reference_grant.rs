//! ReferenceGrant end to end: an HTTPRoute in `mesh` sends `/pay` to Service `billing` of
//! namespace `payments`. The request reaches billing only while a ReferenceGrant in `payments`
//! lets `mesh`'s HTTPRoutes refer to it; without one (or with one for another Service, or
//! once it is deleted) that rule answers 500, the access log and `meshctl explain` say why,
//! and the rest of the route keeps working. Real agents on two nodes, curl in the client pod,
//! the HTTP application in the server pods. Run as root (`cargo xtask test`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    eventually, features,
    http::{curl, Response},
    Agent, Ca, Pod, Topology,
};

const WAIT: Duration = Duration::from_secs(15);

/// Frontend `mesh/orders` (its pod on n2), `payments/billing` (its pod on n2), and the route.
const CONFIG: &str = "\
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
metadata: {name: billing, namespace: payments}
spec:
  clusterIP: 10.96.0.40
  selector: {app: billing}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: orders, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /pay}}]
    backendRefs: [{name: billing, namespace: payments, port: 80}]
  - backendRefs: [{name: orders, port: 80}]
";

/// A grant in `payments` for `mesh`'s HTTPRoutes, to the Service named `to` (all: None).
fn grant(to: Option<&str>) -> String {
    let name = to.map_or(String::new(), |n| format!(", name: {n}"));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {{name: mesh-routes, namespace: payments}}\n\
         spec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}}]\n  \
         to: [{{group: '', kind: Service{name}}}]\n"
    )
}

fn pay(client: &Pod) -> Response {
    curl(client, &["http://10.96.0.20/pay/42"])
}

/// Waits until `/pay` is answered `status`; returns that answer.
fn pay_until(client: &Pod, status: u16, what: &str) -> Response {
    eventually(what, WAIT, || {
        let r = pay(client);
        (r.status == status).then_some(r)
    })
}

/// The access-log line of the latest `/pay` request on `agent`.
/// The latest `/pay/42` access-log line answered `code`. Lines are written as reports reach
/// the agent, after the response: a request answered just now may not be logged yet, and the
/// latest line may still be an earlier request's.
fn last_pay_line(agent: &Agent, code: u16) -> Value {
    eventually(
        &format!("a /pay/42 access-log line answered {code}"),
        WAIT,
        || {
            agent
                .access_log()
                .into_iter()
                .rfind(|l| l["path"] == "/pay/42")
                .filter(|l| l["response_code"] == code)
        },
    )
}

fn explain_pay(agent: &Agent) -> String {
    let (_, out) = agent.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        "10.96.0.20:80",
        "--http",
        "GET /pay/42",
    ]);
    out
}

#[test]
fn a_route_reaches_another_namespaces_service_only_while_a_reference_grant_permits_it() {
    if !features::require(
        "a_route_reaches_another_namespaces_service_only_while_a_reference_grant_permits_it",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    topo.namespace("payments", true);
    let client = topo.pod(&n1, "mesh", "client");
    let orders = topo.pod(&n2, "mesh", "orders");
    let billing = topo.pod(&n2, "payments", "billing");
    for (p, app) in [(&orders, "orders"), (&billing, "billing")] {
        topo.set_pod_label(&p.name, "app", app);
        weft_tests::http::serve(&mut topo, p, &[8080]);
    }
    topo.apply("config", CONFIG);
    let ca = Ca::start(&topo, &n1, 15012, 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&client);
    a2.wait_enrolled(&orders);
    a2.wait_enrolled(&billing);
    a1.wait_certificates();
    a2.wait_certificates();

    // No grant: the `/pay` rule answers 500 and says why; the other rule still serves.
    let r = pay(&client);
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        r.body.contains("RefNotPermitted") && r.body.contains("payments/billing"),
        "{r:?}"
    );
    let home = curl(&client, &["http://10.96.0.20/"]);
    assert_eq!(
        (home.status, home.server().as_str()),
        (200, "orders"),
        "{home:?}"
    );
    let line = last_pay_line(&a1, 500);
    assert_eq!(line["response_code"], 500, "{line}");
    assert_eq!(line["backend"], "payments/billing:80", "{line}");
    assert_eq!(line["response_flags"], "NR", "{line}");
    let out = explain_pay(&a1);
    assert!(
        out.contains("backend payments/billing:80 weight 1 (100% of requests): answered 500 (RefNotPermitted"),
        "{out}"
    );

    // A grant for another Service of payments does not cover billing.
    topo.apply("grant", &grant(Some("ledger")));
    eventually("the grant in a1's state", WAIT, || {
        let dump = a1.config_dump();
        let grants = dump["state"]["reference_grants"].as_array()?.len();
        (grants == 1).then_some(())
    });
    let r = pay(&client);
    assert_eq!(r.status, 500, "a grant for ledger let billing in: {r:?}");

    // The grant for billing: `/pay` reaches billing, as sent.
    topo.apply("grant", &grant(Some("billing")));
    let r = pay_until(&client, 200, "/pay served once granted");
    assert_eq!(r.server(), "billing", "{r:?}");
    assert_eq!(r.report()["path"], "/pay/42", "{r:?}");
    let line = last_pay_line(&a1, 200);
    assert_eq!(line["response_code"], 200, "{line}");
    assert_eq!(
        line["upstream_identity"], "spiffe://cluster.local/ns/payments/sa/billing",
        "{line}"
    );
    let out = explain_pay(&a1);
    assert!(
        out.contains(
            "backend payments/billing:80 weight 1 (100% of requests): 1 ready endpoint(s)"
        ),
        "{out}"
    );

    // Deleted: the backend is taken away again.
    std::fs::remove_file(topo.config_dir().join("grant.yaml")).expect("delete the grant");
    let r = pay_until(&client, 500, "/pay refused once the grant is gone");
    assert!(r.body.contains("RefNotPermitted"), "{r:?}");
}
