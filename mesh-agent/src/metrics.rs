//! Istio's standard TCP metrics, kept per label set and rendered in Prometheus' text format on
//! the node's :15020 (`server`), and the per-connection access log (`access_log`).
//!
//! The names and labels are Istio's, so Istio's Grafana dashboards and Kiali read them as they
//! are. Counters are bumped while bytes flow, not at close, so a long-lived connection shows up
//! at once.

pub mod access_log;
pub mod server;

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

pub use access_log::AccessLog;

/// Istio's value for a label that is not known.
pub const UNKNOWN: &str = "unknown";

/// Envoy's response flags, as Istio reports them: `-` for none.
pub mod flags {
    pub const NONE: &str = "-";
    /// Denied by authorization policy (Envoy's RBAC access denied).
    pub const DENIED: &str = "RBAC";
    /// Refused by the outbound traffic policy (REGISTRY_ONLY, no ServiceEntry): no route.
    pub const NO_ROUTE: &str = "NR";
    /// A Service without ready endpoints.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// The onward connection failed.
    pub const UPSTREAM_FAILURE: &str = "UF";
}

/// Who reports: the source's agent (outbound) or the destination's (inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

/// The label set of Istio's TCP metrics. Values Istio would not know are `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub response_flags: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    fn pairs(&self) -> [(&'static str, &str); 15] {
        [
            (
                "reporter",
                match self.reporter {
                    Reporter::Source => "source",
                    Reporter::Destination => "destination",
                },
            ),
            ("source_workload", &self.source_workload),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("destination_workload", &self.destination_workload),
            (
                "destination_canonical_service",
                &self.destination_canonical_service,
            ),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_service", &self.destination_service),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("request_protocol", "tcp"),
            ("response_flags", self.response_flags),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ]
    }
}

/// The four TCP counters of one label set. `sent` is what the destination sent back (Istio's
/// "response" bytes), `received` what the source sent (its "request" bytes).
#[derive(Debug, Default)]
pub struct TcpCounters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    tcp: Mutex<HashMap<TcpLabels, Arc<TcpCounters>>>,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: AtomicU64,
}

const TCP: [(&str, &str); 4] = [
    (
        "istio_tcp_connections_opened_total",
        "Total TCP connections opened",
    ),
    (
        "istio_tcp_connections_closed_total",
        "Total TCP connections closed",
    ),
    (
        "istio_tcp_sent_bytes_total",
        "Total bytes sent in response to TCP connections",
    ),
    (
        "istio_tcp_received_bytes_total",
        "Total bytes received in requests of TCP connections",
    ),
];

impl Metrics {
    /// The counters of `labels`, created at zero the first time.
    pub fn tcp(&self, labels: TcpLabels) -> Arc<TcpCounters> {
        self.tcp
            .lock()
            .expect("metrics lock")
            .entry(labels)
            .or_default()
            .clone()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut series: Vec<(String, Arc<TcpCounters>)> = self
            .tcp
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(l, c)| (label_text(l), c.clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::new();
        for (i, (name, help)) in TCP.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, c) in &series {
                let v = [&c.opened, &c.closed, &c.sent, &c.received][i].load(Relaxed);
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_access_log_dropped_total Access-log lines dropped because the writer was behind\n\
             # TYPE weft_access_log_dropped_total counter\n\
             weft_access_log_dropped_total {}",
            self.access_log_dropped.load(Relaxed)
        );
        out
    }
}

fn label_text(l: &TcpLabels) -> String {
    l.pairs()
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(flags: &'static str) -> TcpLabels {
        TcpLabels {
            reporter: Reporter::Destination,
            source_workload: "client".into(),
            source_canonical_service: "client".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
            destination_workload: "db".into(),
            destination_canonical_service: "db".into(),
            destination_workload_namespace: "shop".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/db".into(),
            destination_service: "db.shop.svc.cluster.local".into(),
            destination_service_name: "db".into(),
            destination_service_namespace: "shop".into(),
            response_flags: flags,
            connection_security_policy: "mutual_tls",
        }
    }

    #[test]
    fn renders_istio_names_and_labels_per_label_set() {
        let m = Metrics::default();
        let ok = m.tcp(labels(flags::NONE));
        ok.opened.fetch_add(2, Relaxed);
        ok.received.fetch_add(100, Relaxed);
        assert!(
            Arc::ptr_eq(&ok, &m.tcp(labels(flags::NONE))),
            "one series per label set"
        );
        m.tcp(labels(flags::DENIED)).opened.fetch_add(1, Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter"));
        let opened: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .collect();
        assert_eq!(opened.len(), 2, "{text}");
        assert!(opened
            .iter()
            .any(|l| l.contains("response_flags=\"RBAC\"") && l.ends_with(" 1")));
        assert!(text.lines().any(|l| l.starts_with(
            "istio_tcp_received_bytes_total{reporter=\"destination\",source_workload=\"client\""
        ) && l
            .contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")
            && l.contains("response_flags=\"-\"")
            && l.ends_with(" 100")));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
