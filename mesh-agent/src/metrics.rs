//! Istio's standard TCP and HTTP metrics, kept per label set and rendered in Prometheus' text
//! format on the node's :15020 (`server`), the L7 pool's own counters, and the access log
//! (`access_log`: one line per connection, and per request of the L7 pool).
//!
//! The names and labels are Istio's, so Istio's Grafana dashboards and Kiali read them as they
//! are. Counters are bumped while bytes flow, not at close, so a long-lived connection shows up
//! at once.
//!
//! HTTP series (`http`) are counted from the records the L7 workers send when a request ends
//! (`record_request`), bounded by a cap on label sets.
//!
//! Series are dropped when what they name leaves the state (`prune`, on every state change):
//! a series no open connection holds whose source or destination workload, or destination
//! Service, is gone (HTTP series are never held: a request is counted once it ended). Its
//! totals go with it (Prometheus treats a vanished counter as ended, and a reappearing one as
//! a reset), so churning pods do not grow the agent's memory or the scrape.

pub mod access_log;
pub mod http;
pub mod server;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

pub use access_log::AccessLog;

use crate::state::State;

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
    /// HTTP: the request (or a try of it) timed out.
    pub const UPSTREAM_TIMEOUT: &str = "UT";
    /// HTTP: retries were exhausted and the last try failed.
    pub const RETRIES_EXHAUSTED: &str = "URX";
    /// HTTP: the client (downstream) went away before the response ended.
    pub const DOWNSTREAM_RESET: &str = "DC";
    /// HTTP: the upstream connection ended before the response did.
    pub const UPSTREAM_RESET: &str = "UC";
}

/// The `result` of `weft_l7_handoffs_total`.
pub mod handoff {
    /// The connection went to a worker.
    pub const HANDED: &str = "handed";
    /// No worker could take it: the connection was closed (fail closed), with a reason.
    pub const REFUSED: &str = "refused";
}

/// Who reports: the source's agent (outbound) or the destination's (inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

/// The labels Istio's TCP and HTTP metrics share: who talked to whom. Values Istio would not
/// know are `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Peers {
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
}

impl Peers {
    /// Every value, to bound them all alike.
    fn values_mut(&mut self) -> [&mut String; 11] {
        [
            &mut self.source_workload,
            &mut self.source_canonical_service,
            &mut self.source_workload_namespace,
            &mut self.source_principal,
            &mut self.destination_workload,
            &mut self.destination_canonical_service,
            &mut self.destination_workload_namespace,
            &mut self.destination_principal,
            &mut self.destination_service,
            &mut self.destination_service_name,
            &mut self.destination_service_namespace,
        ]
    }

    /// In Istio's label order (they follow `reporter`).
    fn pairs(&self) -> [(&'static str, &str); 11] {
        [
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
        ]
    }

    /// Whether the workloads and the Service named are all still in the state.
    fn present_in(&self, present: &Present) -> bool {
        present.names_all(
            (&self.source_workload_namespace, &self.source_workload),
            (
                &self.destination_workload_namespace,
                &self.destination_workload,
            ),
            (
                &self.destination_service_namespace,
                &self.destination_service_name,
            ),
        )
    }
}

/// The label set of Istio's TCP metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub peers: Peers,
    pub response_flags: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let mut pairs = vec![("reporter", reporter)];
        pairs.extend(self.peers.pairs());
        pairs.extend([
            ("request_protocol", "tcp"),
            ("response_flags", self.response_flags),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ]);
        pairs
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
    pub(crate) http: http::Requests,
    /// The L7 pool's counters, by (family, label value): code-defined names only, so bounded.
    l7_pool: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// What the pool's supervisor counts of its workers (shared with it: `PoolConfig::counters`).
    pub l7_workers: Arc<L7WorkerCounters>,
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

    /// Drops the series that name a workload or Service `state` no longer has, unless a
    /// connection still holds them (an open connection keeps counting into its series until it
    /// ends; the next prune after that takes it). Returns how many were dropped.
    pub fn prune(&self, state: &State) -> usize {
        let present = Present::of(state);
        let mut tcp = self.tcp.lock().expect("metrics lock");
        let before = tcp.len();
        // Under the lock no new holder can appear: `tcp()` takes it to hand out a series.
        tcp.retain(|l, c| Arc::strong_count(c) > 1 || l.peers.present_in(&present));
        let tcp_dropped = before - tcp.len();
        drop(tcp);
        tcp_dropped + self.http.prune(&present)
    }

    /// A finished request an L7 worker reported: one sample in each of Istio's HTTP families
    /// (`istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
    /// `istio_response_bytes`). False when its label set was new and the series cap reached:
    /// then it is counted in `weft_http_metric_samples_dropped_total` instead.
    pub fn record_request(&self, record: &http::RequestRecord) -> bool {
        self.http.record(record)
    }

    /// An agent whose HTTP series cap is `cap` label sets (default `http::SERIES_CAP`).
    pub fn with_http_series_cap(cap: usize) -> Self {
        Self {
            http: http::Requests::with_cap(cap),
            ..Self::default()
        }
    }

    /// How many HTTP label sets are kept (each is a counter and three histograms in /metrics).
    pub fn http_series(&self) -> usize {
        self.http.series()
    }

    /// A connection the plan handed to L7: `result` is `handoff::HANDED` or
    /// `handoff::REFUSED` (`weft_l7_handoffs_total{result}`); a refusal should go through
    /// `l7_refused`, which also counts its reason.
    pub fn l7_handoff(&self, result: &'static str) {
        self.bump("weft_l7_handoffs_total", result);
    }

    /// A connection that needed L7 but no worker could take (no worker up, queue full, the
    /// send failed): `weft_l7_handoffs_total{result="refused"}` and
    /// `weft_l7_handoffs_refused_total{reason}`. `reason` is a short snake_case constant.
    pub fn l7_refused(&self, reason: &'static str) {
        self.l7_handoff(handoff::REFUSED);
        self.bump("weft_l7_handoffs_refused_total", reason);
    }

    /// The supervisor restarted a worker that exited or stopped answering
    /// (`weft_l7_worker_restarts_total`).
    pub fn l7_worker_restart(&self) {
        self.l7_workers.restarts.fetch_add(1, Relaxed);
    }

    fn bump(&self, family: &'static str, value: &'static str) {
        *self
            .l7_pool
            .lock()
            .expect("metrics lock")
            .entry((family, value))
            .or_default() += 1;
    }

    /// How many TCP label sets are kept (each is four series in /metrics).
    pub fn series(&self) -> usize {
        self.tcp.lock().expect("metrics lock").len()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut series: Vec<(String, Arc<TcpCounters>)> = self
            .tcp
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(l, c)| (label_text(&l.pairs()), c.clone()))
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
        self.http.render(&mut out);
        self.render_l7_pool(&mut out);
        let _ = writeln!(
            out,
            "# HELP weft_access_log_dropped_total Access-log lines dropped because the writer (or an L7 worker holding lines for it) was behind\n\
             # TYPE weft_access_log_dropped_total counter\n\
             weft_access_log_dropped_total {}",
            self.access_log_dropped.load(Relaxed)
        );
        out
    }

    /// The pool's families; both hand-off results are always shown (at 0 until they happen)
    /// so that a rate over them exists from the start.
    fn render_l7_pool(&self, out: &mut String) {
        let mut pool = self.l7_pool.lock().expect("metrics lock").clone();
        for result in [handoff::HANDED, handoff::REFUSED] {
            pool.entry(("weft_l7_handoffs_total", result)).or_default();
        }
        for (family, label, help) in L7_POOL {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for ((_, value), n) in pool
                .range((family, "")..)
                .take_while(|(k, _)| k.0 == family)
            {
                match label {
                    Some(label) => writeln!(out, "{family}{{{label}=\"{}\"}} {n}", escape(value)),
                    None => writeln!(out, "{family} {n}"),
                }
                .expect("writing to a String");
            }
        }
        let w = &self.l7_workers;
        let counters = [
            &w.restarts,
            &w.spans_exported,
            &w.spans_dropped,
            &w.reports_dropped,
        ];
        for ((family, help), counter) in L7_WORKERS.iter().zip(counters) {
            let n = counter.load(Relaxed);
            let _ = writeln!(
                out,
                "# HELP {family} {help}\n# TYPE {family} counter\n{family} {n}"
            );
        }
    }
}

/// Running totals over every L7 worker the pool has run: the supervisor adds what each
/// worker's health answers say it did since the one before, so a restarted worker (which
/// counts from zero again) never takes a total back.
#[derive(Debug, Default)]
pub struct L7WorkerCounters {
    pub restarts: AtomicU64,
    pub spans_exported: AtomicU64,
    pub spans_dropped: AtomicU64,
    /// Requests whose report (metric samples and access-log line) was lost between a worker
    /// and the agent's metrics: in the worker (its queue to the agent full) or in the agent
    /// (nobody reading its batches fast enough).
    pub reports_dropped: AtomicU64,
}

/// What the agent does with each batch a worker sends: its requests' series added to Istio's
/// HTTP metrics (`http::Requests::merge`), then their access-log lines written as the worker
/// formatted them. Metrics first, so a reader who saw a request's line finds it counted.
pub fn requests_reported(metrics: &Metrics, log: &AccessLog, batch: crate::l7::RequestBatch) {
    metrics.http.merge(batch.series);
    if batch.log_dropped > 0 {
        metrics
            .access_log_dropped
            .fetch_add(batch.log_dropped, Relaxed);
    }
    log.write_lines(batch.log, batch.lines);
}

/// The L7 pool's families counted here: name, label, help.
const L7_POOL: [(&str, Option<&str>, &str); 2] = [
    (
        "weft_l7_handoffs_total",
        Some("result"),
        "Connections that needed L7, by whether a worker took them (handed) or not (refused)",
    ),
    (
        "weft_l7_handoffs_refused_total",
        Some("reason"),
        "Connections that needed L7 and were closed because no worker could take them",
    ),
];

/// The families of `L7WorkerCounters`, in its fields' order: name, help.
const L7_WORKERS: [(&str, &str); 4] = [
    (
        "weft_l7_worker_restarts_total",
        "L7 workers restarted after they exited or stopped answering",
    ),
    (
        "weft_l7_spans_exported_total",
        "Spans the L7 workers exported to the OTLP collector (accepted by it)",
    ),
    (
        "weft_l7_spans_dropped_total",
        "Spans the L7 workers dropped: export queue full, export failed, or refused by the collector",
    ),
    (
        "weft_l7_reports_dropped_total",
        "Finished requests of the L7 workers neither in the istio_request* metrics nor access-logged: a queue on their way to the agent was full",
    ),
];

/// The workloads and Services of a state, as series name them.
struct Present<'a> {
    /// namespace → workload names.
    workloads: HashMap<&'a str, HashSet<String>>,
    services: HashSet<(&'a str, &'a str)>,
}

impl<'a> Present<'a> {
    fn of(state: &'a State) -> Self {
        let mut workloads: HashMap<&str, HashSet<String>> = HashMap::new();
        for p in state.pods.values() {
            workloads
                .entry(p.key.namespace.as_str())
                .or_default()
                .insert(p.workload());
        }
        Self {
            workloads,
            services: state
                .services
                .keys()
                .map(|k| (k.namespace.as_str(), k.name.as_str()))
                .collect(),
        }
    }

    /// Whether every workload and Service the series names is still there; `unknown` ends and
    /// the fixed names of traffic leaving the mesh name nothing that can leave.
    /// Each argument is (namespace, name).
    fn names_all(&self, src: (&str, &str), dst: (&str, &str), service: (&str, &str)) -> bool {
        let workload = |(ns, w): (&str, &str)| {
            w == UNKNOWN || self.workloads.get(ns).is_some_and(|ws| ws.contains(w))
        };
        (service.0 == UNKNOWN || self.services.contains(&service)) && workload(src) && workload(dst)
    }
}

/// `k="v",...`, values escaped: what stands between a series' braces.
fn label_text(pairs: &[(&str, &str)]) -> String {
    pairs
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
            peers: Peers {
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
            },
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

    #[test]
    fn prune_drops_idle_series_of_departed_workloads_and_keeps_held_ones() {
        use crate::state::{Pod, PodKey};
        let m = Metrics::default();
        let mut departed = labels(flags::NONE);
        departed.peers.destination_workload = "db-old".into();
        let mut held = labels(flags::NONE);
        held.peers.destination_workload = "db-held".into();
        let open = m.tcp(held);
        m.tcp(departed).opened.fetch_add(1, Relaxed);
        m.tcp(labels(flags::NONE));
        // Passthrough: no destination workload or Service that could leave.
        let mut passthrough = labels(flags::NONE);
        passthrough.peers = Peers {
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_service: "PassthroughCluster".into(),
            destination_service_name: "PassthroughCluster".into(),
            destination_service_namespace: UNKNOWN.into(),
            ..passthrough.peers
        };
        m.tcp(passthrough);
        let mut state = State::default();
        for name in ["client", "db"] {
            let key = PodKey {
                namespace: "shop".into(),
                name: name.into(),
            };
            let pod = Pod {
                key: key.clone(),
                uid: None,
                node: None,
                service_account: name.into(),
                ip: None,
                labels: Default::default(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            };
            state.pods.insert(key, pod);
        }
        let db = crate::state::ServiceKey {
            namespace: "shop".into(),
            name: "db".into(),
        };
        let service = crate::state::Service {
            key: db.clone(),
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            selector: None,
            labels: Default::default(),
        };
        state.services.insert(db.clone(), service);
        state.reindex();
        assert_eq!(m.series(), 4);
        assert_eq!(m.prune(&state), 1, "the idle series of db-old");
        assert!(!m.render().contains("db-old"));
        assert!(m.render().contains("db-held"), "held by an open connection");
        drop(open);
        assert_eq!(m.prune(&state), 1, "db-held, once its connection ended");
        state.services.remove(&db);
        assert_eq!(m.prune(&state), 1, "client to db: the Service left");
        assert_eq!(m.series(), 1, "passthrough stays while its source does");
        assert_eq!(m.prune(&State::default()), 1, "its source left");
    }
}
