//! Churn: pods and Services come and go while traffic flows, and what the agent keeps per
//! endpoint (the balancer's round-robin positions and ejections) and per label set (the TCP
//! metric series) stays bounded: it is pruned when the pods and Services it names leave the
//! state. A series an open connection still counts into survives until that connection ends.
//! Run as root (`cargo xtask test`).

use std::net::SocketAddr;

use serde_json::Value;
use weft_tests::{agent::metric, eventually, features, netns::ip, Agent, Client, OneNode};

const CYCLES: usize = 20;

/// Cycle `i`: pod `plain/web-i` (its own address, served by the `server` pod's echo) behind
/// Service `web-i`, whose port 81 leads nowhere (a failing endpoint, ejected by the balancer).
fn churn_yaml(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{i}\n  namespace: plain\n  labels: {{app: web-{i}}}\n\
         spec: {{nodeName: n1, serviceAccountName: web-{i}}}\nstatus: {{podIP: {ip}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i}, namespace: plain}}\n\
         spec:\n  clusterIP: {vip}\n  selector: {{app: web-{i}}}\n\
         \x20 ports: [{{name: echo, port: 80, targetPort: 8080}}, {{name: dead, port: 81, targetPort: 8081}}]\n",
        ip = pod_ip(i),
        vip = vip(i).ip(),
    )
}

fn pod_ip(i: usize) -> String {
    format!("10.1.0.{}", 100 + i)
}

fn vip(i: usize) -> SocketAddr {
    format!("10.96.0.{}:80", 10 + i).parse().unwrap()
}

/// Waits until the agent has applied a state with (or without) Service `web-i`; the prune runs
/// before the state shows in /config_dump. Returns the dump's table sizes.
fn applied(agent: &Agent, i: usize, present: bool) -> Value {
    eventually(
        &format!("web-{i} {}", if present { "applied" } else { "removed" }),
        std::time::Duration::from_secs(10),
        || {
            let dump = agent.config_dump();
            let has = dump["state"]["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["key"]["name"] == format!("web-{i}")));
            (has == present).then(|| dump["tables"].clone())
        },
    )
}

fn series_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .count()
}

#[test]
fn balancer_entries_and_metric_series_stay_bounded_under_pod_churn() {
    if !features::require(
        "balancer_entries_and_metric_series_stay_bounded_under_pod_churn",
        features::CAPTURE,
    ) {
        return;
    }
    let mut f = OneNode::new(&[8080]);
    let mut c = Client::start(&mut f.topo, &f.client);
    for i in 0..CYCLES {
        ip(&[
            "-n",
            &f.server.netns,
            "addr",
            "add",
            &format!("{}/24", pod_ip(i)),
            "dev",
            "eth0",
        ]);
        f.topo.apply("churn", &churn_yaml(i));
        applied(&f.agent, i, true);
        let r = c.connect(vip(i), 1024);
        assert!(
            r.ok() && r.intact(),
            "cycle {i}, via the Service: {:?}",
            r.raw
        );
        let dead = c.connect(SocketAddr::new(vip(i).ip(), 81), 16);
        assert!(
            !dead.ok(),
            "cycle {i}: port 81 has no listener: {:?}",
            dead.raw
        );
        let direct: SocketAddr = format!("{}:8080", pod_ip(i)).parse().unwrap();
        let r = c.connect(direct, 1024);
        assert!(r.ok() && r.intact(), "cycle {i}, direct: {:?}", r.raw);
        let workload = format!("web-{i}");
        let text = f.agent.metrics();
        let labels = [
            ("destination_workload", workload.as_str()),
            ("destination_service_name", workload.as_str()),
            ("response_flags", "-"),
        ];
        assert_eq!(
            metric(&text, "istio_tcp_connections_opened_total", &labels),
            1,
            "cycle {i}: the traffic is counted\n{text}"
        );
        if i == 0 {
            assert!(c.open("held", vip(0)).ok(), "a connection kept open");
        }

        f.topo.apply("churn", "");
        let tables = applied(&f.agent, i, false);
        let text = f.agent.metrics();
        if i == 0 {
            // web-0 is gone, but the held connection still counts into its series.
            let held = [
                ("destination_workload", "web-0"),
                ("destination_service_name", "web-0"),
                ("response_flags", "-"),
            ];
            assert_eq!(
                metric(&text, "istio_tcp_connections_opened_total", &held),
                2,
                "an open connection's series stays\n{text}"
            );
            let before = metric(&text, "istio_tcp_received_bytes_total", &held);
            assert!(c.xfer("held", 4096).intact());
            let after = metric(&f.agent.metrics(), "istio_tcp_received_bytes_total", &held);
            assert_eq!(after, before + 4096, "and keeps counting");
            // Ending the client process closes the held connection.
            drop(c);
            c = Client::start(&mut f.topo, &f.client);
        } else if i >= 2 {
            // From here on (the held connection has ended and a prune has passed since), every
            // entry named a departed pod or Service.
            assert_eq!(tables["balancer"]["positions"], 0, "cycle {i}: {tables}");
            assert_eq!(tables["balancer"]["ejected"], 0, "cycle {i}: {tables}");
            assert_eq!(tables["metric_series"], 0, "cycle {i}: {tables}\n{text}");
            assert_eq!(series_lines(&text), 0, "cycle {i}: /metrics\n{text}");
        }
    }
}
