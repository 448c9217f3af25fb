//! The demo's L7 act: orders-v1 and orders-v2 behind Service `orders-api`, a 90/10 canary by
//! weight, `x-client: iphone` to v2, a flaky v2 whose 503s retries hide, Istio's request
//! metrics by response code, one trace with spans from both nodes, and a DELETE denied by an
//! L7 policy, explained.

use std::{collections::BTreeMap, time::Duration};

use weft_tests::{
    http::{self, curl},
    otlp::Collector,
    topology::Pod,
    Agent, Topology,
};

const FRONTEND: &str = "http://10.96.0.40";

const SERVICES_AND_ROUTE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: orders-api, namespace: backend}
spec:
  clusterIP: 10.96.0.40
  selector: {app: orders-api}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: orders-v1, namespace: backend}
spec:
  clusterIP: 10.96.0.41
  selector: {app: orders-api, version: v1}
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: orders-v2, namespace: backend}
spec:
  clusterIP: 10.96.0.42
  selector: {app: orders-api, version: v2}
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders-api, namespace: backend}
spec:
  parentRefs: [{kind: Service, name: orders-api, port: 80}]
  rules:
  - matches: [{headers: [{name: x-client, value: iphone}]}]
    retry: {codes: [503], attempts: 2}
    backendRefs: [{name: orders-v2, port: 80}]
  - backendRefs:
    - {name: orders-v1, port: 80, weight: 90}
    - {name: orders-v2, port: 80, weight: 10}
---
apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: default, namespace: weft-system}
spec: {tracing: {otlp: '10.255.0.1:4318', sampling: 100}}
";

const READ_ONLY: &str = "\
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-api-read-only, namespace: backend}
spec:
  selector: {matchLabels: {app: orders-api}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";

fn label(line: &str, k: &str) -> String {
    line.split(&format!("{k}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_owned()
}

pub fn act(topo: &mut Topology, web: &Pod, v1: &Pod, v2: &Pod, agent_a: &Agent) {
    for (p, version) in [(v1, "v1"), (v2, "v2")] {
        topo.set_pod_label(&p.name, "app", "orders-api");
        topo.set_pod_label(&p.name, "version", version);
        http::serve(topo, p, &[8080]);
    }
    let collector = Collector::start_in(
        &topo.nodes()[0].netns,
        "10.255.0.1:4318".parse().expect("collector address"),
    );
    topo.apply("l7", SERVICES_AND_ROUTE);
    // The L7 policy from the start: requests then pass node-b's pool too (a span there).
    topo.apply("l7-policy", READ_ONLY);
    println!(
        "   Services orders-api (frontend, appProtocol http), orders-v1, orders-v2 on node-b;"
    );
    println!(
        "   HTTPRoute orders-api: x-client: iphone -> v2 (503 retried twice), else 90% v1 / 10% v2"
    );
    weft_tests::eventually("the route in force", Duration::from_secs(10), || {
        (curl(web, &[&format!("{FRONTEND}/")]).status == 200).then_some(())
    });
    let mut seen = BTreeMap::<String, u32>::new();
    for i in 0..50 {
        let r = curl(web, &[&format!("{FRONTEND}/orders/{i}")]);
        *seen
            .entry(format!("{} {}", r.status, r.server()))
            .or_default() += 1;
    }
    println!("   50 requests from shop/web to {FRONTEND}: {seen:?}");
    let r = curl(
        web,
        &["-H", "x-client: iphone", &format!("{FRONTEND}/orders/1")],
    );
    println!(
        "   with x-client: iphone -> {} from {}",
        r.status,
        r.server()
    );
    let r = curl(
        web,
        &[
            "-H",
            "x-client: iphone",
            "-H",
            "x-fail-key: demo",
            "-H",
            "x-fail-times: 2",
            &format!("{FRONTEND}/flaky"),
        ],
    );
    println!(
        "   v2 answers 503 twice; the client sees {} (the pool retried)",
        r.status
    );
    let flaky = weft_tests::eventually("the request's log line", Duration::from_secs(5), || {
        agent_a
            .access_log()
            .into_iter()
            .rfind(|l| l["path"] == "/flaky")
    });
    println!(
        "   node-a's access log: {} {} -> {} retries={} route={} rule={} backend={} endpoint={}",
        flaky["method"].as_str().unwrap_or("?"),
        flaky["path"].as_str().unwrap_or("?"),
        flaky["response_code"],
        flaky["retries"],
        flaky["route"]["name"].as_str().unwrap_or("-"),
        flaky["route"]["rule"],
        flaky["backend"].as_str().unwrap_or("-"),
        flaky["endpoint"].as_str().unwrap_or("-"),
    );
    if let Some(trace) = flaky["trace_id"].as_str() {
        let spans = collector.wait_for_trace(trace, 2, Duration::from_secs(10));
        println!("   its trace {trace}, as the OTLP collector on node-a received it:");
        for s in spans {
            println!(
                "     {:<6} span {} parent {} on {} ({})",
                s.kind,
                s.span_id,
                s.parent_span_id.as_deref().unwrap_or("-"),
                s.resource.get("k8s.node.name").map_or("?", String::as_str),
                s.service_name
            );
        }
    }
    println!("   istio_requests_total on node-a (source reporter):");
    for line in agent_a
        .metrics()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"source\""))
    {
        println!(
            "     {:>4}  response_code={} destination={} flags={}",
            line.rsplit(' ').next().unwrap_or("?"),
            label(line, "response_code"),
            label(line, "destination_service_name"),
            label(line, "response_flags")
        );
    }
    println!(
        "   AuthorizationPolicy orders-api-read-only: DENY DELETE (enforced on node-b, per request)"
    );
    let del = weft_tests::eventually("the L7 policy in force", Duration::from_secs(10), || {
        let r = curl(web, &["-X", "DELETE", &format!("{FRONTEND}/orders/1")]);
        (r.status == 403).then_some(r)
    });
    println!(
        "   DELETE {FRONTEND}/orders/1 -> {} {:?}",
        del.status,
        del.body.trim()
    );
    let get = curl(web, &[&format!("{FRONTEND}/orders/1")]);
    println!("   GET    {FRONTEND}/orders/1 -> {}", get.status);
    println!(
        "\n   $ meshctl explain --from shop/web --to orders-api.backend:80 --http 'DELETE /orders/1'"
    );
    let (_, out) = agent_a.meshctl(&[
        "explain",
        "--from",
        "shop/web",
        "--to",
        "orders-api.backend:80",
        "--http",
        "DELETE /orders/1",
    ]);
    for line in out.lines() {
        println!("   {line}");
    }
}
