//! Istio's HTTP metrics as a real Prometheus reads them: the agent's own :15020 endpoint
//! (`metrics::server`) serves what `Metrics::record_request` counted, a Prometheus (Debian
//! package `prometheus`) scrapes it every second, and the queries of Istio's service and
//! workload dashboards (request rate by response code, success rate, latency quantiles from
//! the histogram buckets) parse and return the values the records imply.
//!
//! No network namespace or root needed. Synchronised on Prometheus' readiness and on what it
//! has ingested (the query answers), never on sleeps.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use mesh_agent::metrics::{http::RequestRecord, Metrics, Reporter};
use serde_json::Value;
use weft_tests::eventually;

/// A Prometheus scraping one target every second, removed (process and data) on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let found = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "the prometheus binary is missing: apt-get install -y prometheus \
             (`cargo xtask test` installs it)"
        );
        let dir = std::env::temp_dir().join(format!("weft-http-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: weft\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .expect("prometheus.yml");
        // A port free a moment ago; Prometheus binds it at once.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Self { child, dir, addr };
        eventually("prometheus ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}): {}", p.log());
            }
            (get(p.addr, "/-/ready").ok()?.0 == 200).then_some(())
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector; panics on a PromQL or HTTP error, with its message.
    fn query(&self, promql: &str) -> Vec<Value> {
        let (code, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        )
        .expect("query prometheus");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(code, 200, "{promql}: {body}");
        assert_eq!(v["status"], "success", "{promql}: {body}");
        assert_eq!(v["data"]["resultType"], "vector", "{promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a one-sample result (no labels left after `sum`).
    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().map(value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

/// HTTP/1.0 GET (the server closes after the response): (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((code, body.unwrap_or_default()))
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(code: u16, duration_ms: f64) -> RequestRecord {
    RequestRecord {
        reporter: Some(Reporter::Destination),
        duration_ms,
        source_workload: "client".into(),
        source_canonical_service: "client".into(),
        source_workload_namespace: "shop".into(),
        source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
        destination_workload: "orders-v1".into(),
        destination_canonical_service: "orders".into(),
        destination_workload_namespace: "shop".into(),
        destination_principal: "spiffe://cluster.local/ns/shop/sa/orders".into(),
        destination_service: "orders.shop.svc.cluster.local".into(),
        destination_service_name: "orders".into(),
        destination_service_namespace: "shop".into(),
        request_protocol: "http".into(),
        method: "GET".into(),
        path: "/orders".into(),
        response_code: code,
        response_flags: "-".into(),
        connection_security_policy: "mutual_tls".into(),
        request_bytes: 200,
        response_bytes: 2000,
        ..Default::default()
    }
}

#[test]
fn prometheus_scrapes_http_metrics_and_istio_dashboard_queries_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the metrics endpoint");
    let target = listener.local_addr().expect("its address");
    let server = {
        let _in_runtime = rt.enter();
        mesh_agent::metrics::server::serve_on(listener, metrics.clone())
    };

    // Before the first scrape: 3 quick successes and a failure. (In the proportions of what
    // follows: Prometheus extrapolates a rate towards a counter's zero, so equal proportions
    // make the ratios below exact.)
    for code in [200, 200, 200, 503] {
        metrics.record_request(&request(code, 3.0));
    }
    let prom = Prometheus::start(target);
    let total = "sum(istio_requests_total)";
    eventually("the first scrape", Duration::from_secs(30), || {
        (prom.scalar(total) == Some(4.0)).then_some(())
    });

    // Then, between two scrapes: 6 successes and 2 failures, all between 10 and 25 ms, and a
    // gRPC call (a new series, seen once: no rate yet).
    for code in [200, 200, 200, 200, 200, 200, 503, 503] {
        metrics.record_request(&request(code, 12.0));
    }
    metrics.record_request(&RequestRecord {
        request_protocol: "grpc".into(),
        grpc_response_status: Some(14),
        ..request(200, 12.0)
    });
    eventually("the second scrape", Duration::from_secs(30), || {
        (prom.scalar(total) == Some(13.0)).then_some(())
    });

    // Request rate by response code (Istio's service dashboard).
    let by_code = prom.query("sum(rate(istio_requests_total[1m])) by (response_code)");
    let rate = |code: &str| {
        by_code
            .iter()
            .find(|s| s["metric"]["response_code"] == code)
            .map(value)
            .unwrap_or_else(|| panic!("no rate for {code}: {by_code:?}"))
    };
    assert_eq!(by_code.len(), 2, "{by_code:?}");
    assert!(rate("200") > 0.0 && rate("503") > 0.0, "{by_code:?}");
    // Both series were scraped at the same instants, so their rates are as their increases.
    assert!(
        (rate("200") / rate("503") - 3.0).abs() < 1e-9,
        "{by_code:?}"
    );

    // Success rate as the dashboards compute it.
    let success = prom
        .scalar(
            "sum(rate(istio_requests_total{reporter=\"destination\",response_code!~\"5.*\"}[1m])) \
             / sum(rate(istio_requests_total{reporter=\"destination\"}[1m]))",
        )
        .expect("a success rate");
    assert!((success - 0.75).abs() < 1e-9, "{success}");

    // Latency: the median of what arrived in the window, interpolated within (10, 25].
    let p50 = prom
        .scalar(
            "histogram_quantile(0.5, sum(rate(istio_request_duration_milliseconds_bucket[1m])) by (le))",
        )
        .expect("a p50");
    assert!((p50 - 17.5).abs() < 1e-9, "p50 {p50}");
    let p99 = prom
        .scalar(
            "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter=\"destination\"}[1m])) by (le, destination_service))",
        )
        .expect("a p99");
    assert!(p99 > 10.0 && p99 <= 25.0, "p99 {p99}");

    // Sizes: 2000-byte responses fall in (1000, 2500].
    let size = prom
        .scalar("histogram_quantile(0.5, sum(rate(istio_response_bytes_bucket[1m])) by (le))")
        .expect("a response size");
    assert!(size > 1000.0 && size <= 2500.0, "response size {size}");

    // The labels Kiali groups by arrive as the records carried them.
    let grpc = prom.query(
        "istio_requests_total{request_protocol=\"grpc\",grpc_response_status=\"14\",\
         destination_service=\"orders.shop.svc.cluster.local\",source_workload=\"client\",\
         connection_security_policy=\"mutual_tls\"}",
    );
    assert_eq!(grpc.len(), 1, "{grpc:?}");
    // And Prometheus saw the exposition as valid: the scrape target is up.
    assert_eq!(
        prom.scalar("sum(up{job=\"weft\"})"),
        Some(1.0),
        "{}",
        prom.log()
    );
    lint(&get(target, "/metrics").expect("GET /metrics").1);
    server.abort();
}

/// `promtool check metrics` (the strict exposition parser, plus Prometheus' naming lints):
/// no parse error, and no lint but the one Istio's own name earns.
fn lint(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus)");
    // promtool stops reading at a parse error: its verdict below says which.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes());
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 1 is a parse error, 3 lint problems only.
    assert_ne!(out.status.code(), Some(1), "{said}\n{exposition}");
    let istio_unit =
        "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert_eq!(line.trim(), istio_unit, "promtool: {said}");
    }
}
