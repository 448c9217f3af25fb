//! Istio's HTTP metrics (istio_requests_total, istio_request_duration_milliseconds,
//! istio_request_bytes, istio_response_bytes) and the per-request record workers report.
//! The record below is the contract between the L7 worker (which fills it) and the agent
//! (which counts it here, `Metrics::record_request`, and logs it, `AccessLog::request`).
//!
//! Istio's proxy records its three histograms with Envoy's default buckets (it configures
//! none of its own), durations and byte counts alike, so this does the same: dashboards that
//! compute quantiles over Istio's buckets see the same boundaries.
//!
//! Series are kept per label set, at most `SERIES_CAP` of them: a request whose label set is
//! new once the cap is reached is not counted, but counted as dropped
//! (`weft_http_metric_samples_dropped_total`).
//!
//! A worker counts its own requests in a `Requests` of its own and sends what it counted since
//! its last batch (`Requests::take`, a few label sets however many requests); the agent adds
//! that to its series (`Requests::merge`). Label values come from the worker, so the agent
//! bounds them again and applies its cap: that is what bounds the agent's memory and the
//! scrape whatever a worker sends.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
};

use serde::{Deserialize, Serialize};

use super::{flags, label_text, Peers, Present, Reporter, UNKNOWN};

/// One finished request, as an L7 worker knows it. Values Istio would not know are `unknown`;
/// the worker turns it into metric samples and one access-log line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    pub reporter: Option<Reporter>,
    /// RFC 3339, when the request's headers arrived.
    pub start_time: String,
    pub duration_ms: f64,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// `name.namespace.svc.<domain>`, or the authority when no Service.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub response_code: u16,
    /// gRPC status from the trailers (or headers), when gRPC.
    pub grpc_response_status: Option<u32>,
    /// Envoy's response flags (`-` none, UT, URX, NR, UH, UF, DC, UC, RBAC ...).
    pub response_flags: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// `namespace/name` and rule index of the route that matched.
    pub route: Option<String>,
    pub route_rule: Option<usize>,
    /// The backend Service (`namespace/name:port`) and endpoint chosen.
    pub backend: Option<String>,
    pub endpoint: Option<String>,
    pub retries: u32,
    /// Why a request was not retried although it could have been (body too large to buffer).
    pub retry_note: Option<String>,
    /// The identity the upstream presented.
    pub upstream_identity: Option<String>,
    /// The deciding L7 AuthorizationPolicy (`namespace/name`), when one decided.
    pub policy: Option<String>,
    pub trace_id: Option<String>,
    /// The L4 connection this request came on.
    pub connection_id: Option<String>,
}

/// Envoy's default histogram buckets (`HistogramSettingsImpl::defaultBuckets`), which Istio's
/// request duration (ms) and request/response size (bytes) histograms use.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// How many HTTP label sets the agent keeps. Each is one counter and three histograms: 67
/// lines, about 40 KB of /metrics, so the cap also bounds a scrape (to about 80 MB). Istio's
/// labels name workloads, Services, codes and flags: a node's traffic needs far fewer; more
/// means a label value is running away.
pub const SERIES_CAP: usize = 2048;

/// The longest label value kept. Kubernetes names are at most 253 bytes and SPIFFE IDs made of
/// them about twice that; a longer value (an authority a client made up) is cut.
pub const MAX_LABEL_VALUE: usize = 512;

/// The label set of Istio's HTTP metrics: the TCP metrics' labels plus the response's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HttpLabels {
    pub reporter: &'static str,
    pub peers: Peers,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// `0` when no response was sent (the client went away first).
    pub response_code: u16,
    /// Empty unless gRPC, as Istio reports it.
    pub grpc_response_status: String,
}

/// `HttpLabels` as a worker sends them: its fixed-valued labels as any string.
#[derive(Deserialize)]
struct LabelsOnWire {
    reporter: String,
    peers: Peers,
    request_protocol: String,
    response_flags: String,
    connection_security_policy: String,
    response_code: u16,
    grpc_response_status: String,
}

/// A label whose values are few and fixed, read back from a worker: one of them, or `unknown`.
fn known_static(v: &str) -> &'static str {
    ["source", "destination", "http", "grpc"]
        .into_iter()
        .find(|k| *k == v)
        .unwrap_or(UNKNOWN)
}

// By hand: derived, the `&'static str` fields would be borrowed from the input.
impl<'de> Deserialize<'de> for HttpLabels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LabelsOnWire::deserialize(d).map(Self::from)
    }
}

impl From<LabelsOnWire> for HttpLabels {
    fn from(w: LabelsOnWire) -> Self {
        Self {
            reporter: known_static(&w.reporter),
            peers: w.peers,
            request_protocol: known_static(&w.request_protocol),
            response_flags: w.response_flags,
            connection_security_policy: w.connection_security_policy,
            response_code: w.response_code,
            grpc_response_status: w.grpc_response_status,
        }
    }
}

/// An empty value from the worker is one it did not know.
fn known(v: &mut String) {
    if v.is_empty() {
        v.push_str(UNKNOWN);
    } else {
        bound(v);
    }
}

/// Cuts `v` to `MAX_LABEL_VALUE` bytes (at a character boundary), in place.
fn bound(v: &mut String) {
    let mut end = v.len().min(MAX_LABEL_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v.truncate(end);
}

impl HttpLabels {
    pub fn of(r: &RequestRecord) -> Self {
        let grpc = r.request_protocol == "grpc";
        Self {
            reporter: match r.reporter {
                Some(Reporter::Source) => "source",
                Some(Reporter::Destination) => "destination",
                None => UNKNOWN,
            },
            peers: Peers {
                source_workload: r.source_workload.clone(),
                source_canonical_service: r.source_canonical_service.clone(),
                source_workload_namespace: r.source_workload_namespace.clone(),
                source_principal: r.source_principal.clone(),
                destination_workload: r.destination_workload.clone(),
                destination_canonical_service: r.destination_canonical_service.clone(),
                destination_workload_namespace: r.destination_workload_namespace.clone(),
                destination_principal: r.destination_principal.clone(),
                destination_service: r.destination_service.clone(),
                destination_service_name: r.destination_service_name.clone(),
                destination_service_namespace: r.destination_service_namespace.clone(),
            },
            request_protocol: if grpc { "grpc" } else { "http" },
            response_flags: r.response_flags.clone(),
            connection_security_policy: r.connection_security_policy.clone(),
            response_code: r.response_code,
            grpc_response_status: match (grpc, r.grpc_response_status) {
                (true, Some(s)) => s.to_string(),
                _ => String::new(),
            },
        }
        .bounded()
    }

    /// The same labels with every free-form value bounded (and empty ones `unknown`, or `-`
    /// for the flags): how `of` makes them, and what the agent applies to label sets a worker
    /// sent.
    fn bounded(mut self) -> Self {
        for v in self.peers.values_mut() {
            known(v);
        }
        if self.response_flags.is_empty() {
            self.response_flags.push_str(flags::NONE);
        } else {
            bound(&mut self.response_flags);
        }
        known(&mut self.connection_security_policy);
        bound(&mut self.grpc_response_status);
        self
    }

    /// `k="v",...` in Istio's label order.
    fn text(&self) -> String {
        let code = self.response_code.to_string();
        let mut pairs = vec![("reporter", self.reporter)];
        pairs.extend(self.peers.pairs());
        pairs.extend([
            ("request_protocol", self.request_protocol),
            ("response_flags", &self.response_flags),
            (
                "connection_security_policy",
                &self.connection_security_policy,
            ),
            ("response_code", &code),
            ("grpc_response_status", &self.grpc_response_status),
        ]);
        label_text(&pairs)
    }
}

/// A histogram over `BUCKETS`: per-bucket (not cumulative) counts, the count and the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        // A negative or NaN value from a worker must not poison the sum forever.
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        if let Some(i) = BUCKETS.iter().position(|le| v <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    /// Adds what `other` counted (a worker's delta). A sum that is not a finite, non-negative
    /// number is taken as zero, as `observe` takes such a value.
    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
        self.count = self.count.saturating_add(other.count);
        if other.sum.is_finite() && other.sum > 0.0 {
            self.sum += other.sum;
        }
    }

    /// `_bucket` (cumulative, then `+Inf`), `_sum` and `_count` lines.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
            self.count, self.sum, self.count
        );
    }
}

/// The four families' values of one label set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    requests: u64,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Series {
    fn add(&mut self, other: &Series) {
        self.requests = self.requests.saturating_add(other.requests);
        self.duration_ms.add(&other.duration_ms);
        self.request_bytes.add(&other.request_bytes);
        self.response_bytes.add(&other.response_bytes);
    }

    /// How many requests this counts.
    pub fn requests(&self) -> u64 {
        self.requests
    }
}

/// What a worker counted since its last batch: its series, and the requests its own cap did
/// not count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub series: Vec<(HttpLabels, Series)>,
    pub dropped: u64,
}

impl Delta {
    /// The requests it covers (what losing it loses).
    pub fn requests(&self) -> u64 {
        self.series.iter().map(|(_, s)| s.requests).sum::<u64>() + self.dropped
    }
}

const HISTOGRAMS: [(&str, &str); 3] = [
    (
        "istio_request_duration_milliseconds",
        "Duration of HTTP requests in milliseconds",
    ),
    ("istio_request_bytes", "Size of HTTP requests in bytes"),
    ("istio_response_bytes", "Size of HTTP responses in bytes"),
];

/// The HTTP series of an agent, bounded by a cap on label sets.
pub struct Requests {
    series: Mutex<HashMap<HttpLabels, Series>>,
    cap: usize,
    dropped: AtomicU64,
}

impl Default for Requests {
    fn default() -> Self {
        Self::with_cap(SERIES_CAP)
    }
}

impl Requests {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            series: Mutex::default(),
            cap,
            dropped: AtomicU64::new(0),
        }
    }

    /// Counts one finished request; false when it was dropped (a new label set over the cap).
    pub fn record(&self, r: &RequestRecord) -> bool {
        let labels = HttpLabels::of(r);
        let mut series = self.series.lock().expect("metrics lock");
        let len = series.len();
        let s = match series.get_mut(&labels) {
            Some(s) => s,
            None if len >= self.cap => {
                self.dropped.fetch_add(1, Relaxed);
                return false;
            }
            None => series.entry(labels).or_default(),
        };
        s.requests += 1;
        s.duration_ms.observe(r.duration_ms);
        s.request_bytes.observe(r.request_bytes as f64);
        s.response_bytes.observe(r.response_bytes as f64);
        true
    }

    /// Everything counted so far, leaving nothing: a worker's delta for its agent.
    pub fn take(&self) -> Delta {
        let series = std::mem::take(&mut *self.series.lock().expect("metrics lock"));
        Delta {
            series: series.into_iter().collect(),
            dropped: self.dropped.swap(0, Relaxed),
        }
    }

    /// Adds a worker's delta: its label sets bounded as `record` bounds them, a new one over
    /// the cap counted as dropped (with all its requests).
    pub fn merge(&self, delta: Delta) {
        let mut dropped = delta.dropped;
        let mut series = self.series.lock().expect("metrics lock");
        for (labels, s) in delta.series {
            let labels = labels.bounded();
            let len = series.len();
            match series.get_mut(&labels) {
                Some(mine) => mine.add(&s),
                None if len >= self.cap => dropped = dropped.saturating_add(s.requests),
                None => {
                    series.entry(labels).or_default().add(&s);
                }
            }
        }
        drop(series);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Relaxed);
        }
    }

    /// Drops the label sets that name a workload or Service no longer present.
    pub(super) fn prune(&self, present: &Present) -> usize {
        let mut series = self.series.lock().expect("metrics lock");
        let before = series.len();
        series.retain(|l, _| l.peers.present_in(present));
        before - series.len()
    }

    pub fn series(&self) -> usize {
        self.series.lock().expect("metrics lock").len()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The four families and the dropped-samples counter, each family's HELP and TYPE once.
    pub fn render(&self, out: &mut String) {
        // Copied out so that the lock is not held while formatting.
        let mut series: Vec<(String, Series)> = self
            .series
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(l, s)| (l.text(), s.clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let name = "istio_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Total HTTP requests\n# TYPE {name} counter"
        );
        for (labels, s) in &series {
            let _ = writeln!(out, "{name}{{{labels}}} {}", s.requests);
        }
        for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, s) in &series {
                let h = [&s.duration_ms, &s.request_bytes, &s.response_bytes][i];
                h.render(out, name, labels);
            }
        }
        let _ = writeln!(
            out,
            "# HELP weft_http_metric_samples_dropped_total HTTP requests not counted in the istio_request* metrics because the series cap ({}) was reached\n\
             # TYPE weft_http_metric_samples_dropped_total counter\n\
             weft_http_metric_samples_dropped_total {}",
            self.cap,
            self.dropped()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::Metrics,
        state::{Pod, PodKey, Service, ServiceKey, State},
    };

    fn record() -> RequestRecord {
        RequestRecord {
            reporter: Some(Reporter::Destination),
            start_time: "2026-12-01T23:00:00.000Z".into(),
            duration_ms: 12.5,
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
            authority: "orders.shop:8080".into(),
            path: "/v1/orders".into(),
            response_code: 200,
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls".into(),
            request_bytes: 300,
            response_bytes: 1500,
            ..Default::default()
        }
    }

    const LABELS: &str = "reporter=\"destination\",source_workload=\"client\",\
        source_canonical_service=\"client\",source_workload_namespace=\"shop\",\
        source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",\
        destination_workload=\"orders-v1\",destination_canonical_service=\"orders\",\
        destination_workload_namespace=\"shop\",\
        destination_principal=\"spiffe://cluster.local/ns/shop/sa/orders\",\
        destination_service=\"orders.shop.svc.cluster.local\",destination_service_name=\"orders\",\
        destination_service_namespace=\"shop\",request_protocol=\"http\",response_flags=\"-\",\
        connection_security_policy=\"mutual_tls\",response_code=\"200\",grpc_response_status=\"\"";

    /// Every line of the four families and the dropped counter for one record, literally.
    const GOLDEN: &str = r#"# HELP istio_requests_total Total HTTP requests
# TYPE istio_requests_total counter
istio_requests_total{L} 1
# HELP istio_request_duration_milliseconds Duration of HTTP requests in milliseconds
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{L,le="0.5"} 0
istio_request_duration_milliseconds_bucket{L,le="1"} 0
istio_request_duration_milliseconds_bucket{L,le="5"} 0
istio_request_duration_milliseconds_bucket{L,le="10"} 0
istio_request_duration_milliseconds_bucket{L,le="25"} 1
istio_request_duration_milliseconds_bucket{L,le="50"} 1
istio_request_duration_milliseconds_bucket{L,le="100"} 1
istio_request_duration_milliseconds_bucket{L,le="250"} 1
istio_request_duration_milliseconds_bucket{L,le="500"} 1
istio_request_duration_milliseconds_bucket{L,le="1000"} 1
istio_request_duration_milliseconds_bucket{L,le="2500"} 1
istio_request_duration_milliseconds_bucket{L,le="5000"} 1
istio_request_duration_milliseconds_bucket{L,le="10000"} 1
istio_request_duration_milliseconds_bucket{L,le="30000"} 1
istio_request_duration_milliseconds_bucket{L,le="60000"} 1
istio_request_duration_milliseconds_bucket{L,le="300000"} 1
istio_request_duration_milliseconds_bucket{L,le="600000"} 1
istio_request_duration_milliseconds_bucket{L,le="1800000"} 1
istio_request_duration_milliseconds_bucket{L,le="3600000"} 1
istio_request_duration_milliseconds_bucket{L,le="+Inf"} 1
istio_request_duration_milliseconds_sum{L} 12.5
istio_request_duration_milliseconds_count{L} 1
# HELP istio_request_bytes Size of HTTP requests in bytes
# TYPE istio_request_bytes histogram
istio_request_bytes_bucket{L,le="0.5"} 0
istio_request_bytes_bucket{L,le="1"} 0
istio_request_bytes_bucket{L,le="5"} 0
istio_request_bytes_bucket{L,le="10"} 0
istio_request_bytes_bucket{L,le="25"} 0
istio_request_bytes_bucket{L,le="50"} 0
istio_request_bytes_bucket{L,le="100"} 0
istio_request_bytes_bucket{L,le="250"} 0
istio_request_bytes_bucket{L,le="500"} 1
istio_request_bytes_bucket{L,le="1000"} 1
istio_request_bytes_bucket{L,le="2500"} 1
istio_request_bytes_bucket{L,le="5000"} 1
istio_request_bytes_bucket{L,le="10000"} 1
istio_request_bytes_bucket{L,le="30000"} 1
istio_request_bytes_bucket{L,le="60000"} 1
istio_request_bytes_bucket{L,le="300000"} 1
istio_request_bytes_bucket{L,le="600000"} 1
istio_request_bytes_bucket{L,le="1800000"} 1
istio_request_bytes_bucket{L,le="3600000"} 1
istio_request_bytes_bucket{L,le="+Inf"} 1
istio_request_bytes_sum{L} 300
istio_request_bytes_count{L} 1
# HELP istio_response_bytes Size of HTTP responses in bytes
# TYPE istio_response_bytes histogram
istio_response_bytes_bucket{L,le="0.5"} 0
istio_response_bytes_bucket{L,le="1"} 0
istio_response_bytes_bucket{L,le="5"} 0
istio_response_bytes_bucket{L,le="10"} 0
istio_response_bytes_bucket{L,le="25"} 0
istio_response_bytes_bucket{L,le="50"} 0
istio_response_bytes_bucket{L,le="100"} 0
istio_response_bytes_bucket{L,le="250"} 0
istio_response_bytes_bucket{L,le="500"} 0
istio_response_bytes_bucket{L,le="1000"} 0
istio_response_bytes_bucket{L,le="2500"} 1
istio_response_bytes_bucket{L,le="5000"} 1
istio_response_bytes_bucket{L,le="10000"} 1
istio_response_bytes_bucket{L,le="30000"} 1
istio_response_bytes_bucket{L,le="60000"} 1
istio_response_bytes_bucket{L,le="300000"} 1
istio_response_bytes_bucket{L,le="600000"} 1
istio_response_bytes_bucket{L,le="1800000"} 1
istio_response_bytes_bucket{L,le="3600000"} 1
istio_response_bytes_bucket{L,le="+Inf"} 1
istio_response_bytes_sum{L} 1500
istio_response_bytes_count{L} 1
# HELP weft_http_metric_samples_dropped_total HTTP requests not counted in the istio_request* metrics because the series cap (2048) was reached
# TYPE weft_http_metric_samples_dropped_total counter
weft_http_metric_samples_dropped_total 0
"#;

    #[test]
    fn one_request_renders_exactly_istios_four_families() {
        let requests = Requests::default();
        assert!(requests.record(&record()));
        let mut text = String::new();
        requests.render(&mut text);
        assert_eq!(text, GOLDEN.replace("{L", &format!("{{{LABELS}")));
    }

    #[test]
    fn each_family_is_declared_once_in_the_agents_exposition() {
        let m = Metrics::default();
        m.record_request(&record());
        m.record_request(&RequestRecord {
            response_code: 503,
            ..record()
        });
        let text = m.render();
        for (family, kind) in [
            ("istio_requests_total", "counter"),
            ("istio_request_duration_milliseconds", "histogram"),
            ("istio_request_bytes", "histogram"),
            ("istio_response_bytes", "histogram"),
            ("weft_http_metric_samples_dropped_total", "counter"),
            ("weft_l7_handoffs_total", "counter"),
            ("weft_l7_worker_restarts_total", "counter"),
            ("weft_l7_spans_exported_total", "counter"),
            ("weft_l7_spans_dropped_total", "counter"),
            ("weft_l7_reports_dropped_total", "counter"),
            ("istio_tcp_connections_opened_total", "counter"),
        ] {
            let help = format!("# HELP {family} ");
            let declared = format!("# TYPE {family} {kind}");
            assert_eq!(text.matches(&help).count(), 1, "{family}: {text}");
            assert_eq!(text.lines().filter(|l| *l == declared).count(), 1);
        }
        let requests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        assert_eq!(requests.len(), 2, "one series per response code: {text}");
    }

    /// The cumulative count of `family`'s bucket `le` in `text`.
    fn bucket(text: &str, family: &str, le: &str) -> u64 {
        let suffix = format!(",le=\"{le}\"}}");
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{family}_bucket{{")) && l.contains(&suffix))
            .unwrap_or_else(|| panic!("no {family} bucket {le}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn buckets_include_their_bound_and_count_cumulatively() {
        let requests = Requests::default();
        // On a bound, just over it, zero, a NaN a broken worker might send, and past the last.
        for ms in [10.0, 10.001, 0.0, f64::NAN, 4_000_000.0, 25.0, 25.0] {
            requests.record(&RequestRecord {
                duration_ms: ms,
                ..record()
            });
        }
        let mut text = String::new();
        requests.render(&mut text);
        let name = "istio_request_duration_milliseconds";
        let expect = [
            ("0.5", 2), // 0 and the NaN (counted as 0)
            ("5", 2),
            ("10", 3), // 10 is in le="10"
            ("25", 6), // 10.001 and both 25s
            ("3600000", 6),
            ("+Inf", 7), // 4e6 only here
        ];
        for (le, n) in expect {
            assert_eq!(bucket(&text, name, le), n, "le={le}: {text}");
        }
        let mut last = 0;
        for le in BUCKETS.iter().map(f64::to_string).chain(["+Inf".into()]) {
            let n = bucket(&text, name, &le);
            assert!(n >= last, "buckets are cumulative: le={le}");
            last = n;
        }
        let sum_line = format!("{name}_sum{{{LABELS}}} ");
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&sum_line))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 4_000_070.001).abs() < 1e-6, "{sum}");
        assert!(text.contains(&format!("{name}_count{{{LABELS}}} 7\n")));
    }

    #[test]
    fn labels_carry_the_records_values() {
        let m = Metrics::default();
        m.record_request(&RequestRecord {
            reporter: Some(Reporter::Source),
            request_protocol: "grpc".into(),
            response_code: 200,
            grpc_response_status: Some(14),
            response_flags: "URX".into(),
            connection_security_policy: "none".into(),
            destination_workload: "we\"ird\\name".into(),
            source_principal: String::new(),
            ..record()
        });
        // Not gRPC: no grpc status even if the worker filled one.
        m.record_request(&RequestRecord {
            grpc_response_status: Some(2),
            ..record()
        });
        let text = m.render();
        let grpc = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
            .expect(&text);
        for want in [
            "request_protocol=\"grpc\"",
            "grpc_response_status=\"14\"",
            "response_code=\"200\"",
            "response_flags=\"URX\"",
            "connection_security_policy=\"none\"",
            "destination_workload=\"we\\\"ird\\\\name\"",
            "source_principal=\"unknown\"",
            "destination_service=\"orders.shop.svc.cluster.local\"",
        ] {
            assert!(grpc.contains(want), "{want} in {grpc}");
        }
        let http = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{reporter=\"destination\""))
            .expect(&text);
        assert!(http.contains("grpc_response_status=\"\""), "{http}");
        assert!(http.contains("request_protocol=\"http\""), "{http}");
    }

    #[test]
    fn label_values_are_bounded() {
        let m = Metrics::default();
        let long = format!("{}é", "a".repeat(MAX_LABEL_VALUE - 1));
        m.record_request(&RequestRecord {
            destination_service: long.clone(),
            ..record()
        });
        let text = m.render();
        let kept = format!(
            "destination_service=\"{}\"",
            "a".repeat(MAX_LABEL_VALUE - 1)
        );
        assert!(text.contains(&kept), "cut before the 2-byte character");
        assert!(!text.contains(&long));
    }

    #[test]
    fn new_label_sets_over_the_cap_are_dropped_and_counted() {
        let m = Metrics::with_http_series_cap(2);
        for code in [200, 201, 202, 202, 203] {
            m.record_request(&RequestRecord {
                response_code: code,
                ..record()
            });
        }
        // Existing label sets keep counting at the cap.
        assert!(m.record_request(&RequestRecord {
            response_code: 200,
            ..record()
        }));
        assert_eq!(m.http_series(), 2);
        let text = m.render();
        assert!(
            text.contains("\nweft_http_metric_samples_dropped_total 3\n"),
            "{text}"
        );
        assert!(text.contains("response_code=\"200\""));
        assert!(!text.contains("response_code=\"202\""));
        assert!(text.contains(&format!("istio_requests_total{{{LABELS}}} 2\n")));
    }

    fn state(pods: &[&str], services: &[&str]) -> State {
        let mut state = State::default();
        for name in pods {
            let key = PodKey {
                namespace: "shop".into(),
                name: (*name).into(),
            };
            let pod = Pod {
                key: key.clone(),
                uid: None,
                node: None,
                service_account: (*name).into(),
                ip: None,
                labels: Default::default(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            };
            state.pods.insert(key, pod);
        }
        for name in services {
            let key = ServiceKey {
                namespace: "shop".into(),
                name: (*name).into(),
            };
            let service = Service {
                key: key.clone(),
                cluster_ips: Vec::new(),
                ports: Vec::new(),
                selector: None,
                labels: Default::default(),
            };
            state.services.insert(key, service);
        }
        state.reindex();
        state
    }

    #[test]
    fn prune_drops_http_series_of_departed_workloads_and_services() {
        let m = Metrics::default();
        m.record_request(&record());
        m.record_request(&RequestRecord {
            destination_workload: "orders-v2".into(),
            ..record()
        });
        // To a name outside the mesh: no Service that could leave.
        m.record_request(&RequestRecord {
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_service: "example.com".into(),
            destination_service_name: "example.com".into(),
            destination_service_namespace: UNKNOWN.into(),
            ..record()
        });
        assert_eq!(m.http_series(), 3);
        assert_eq!(
            m.prune(&state(&["client", "orders-v1"], &["orders"])),
            1,
            "orders-v2 left"
        );
        let text = m.render();
        assert!(!text.contains("orders-v2"), "{text}");
        assert!(text.contains("destination_workload=\"orders-v1\""));
        assert_eq!(
            m.prune(&state(&["client", "orders-v1"], &[])),
            1,
            "orders left"
        );
        assert!(m.render().contains("example.com"));
        assert_eq!(m.prune(&state(&[], &[])), 1, "the client left");
        assert_eq!(m.http_series(), 0);
        assert!(
            m.record_request(&record()),
            "a series comes back when traffic does"
        );
    }

    #[test]
    fn l7_pool_counters_render_by_result_and_reason() {
        let m = Metrics::default();
        let before = m.render();
        assert!(before.contains("\nweft_l7_handoffs_total{result=\"handed\"} 0\n"));
        assert!(before.contains("\nweft_l7_handoffs_total{result=\"refused\"} 0\n"));
        m.l7_handoff(crate::metrics::handoff::HANDED);
        m.l7_handoff(crate::metrics::handoff::HANDED);
        m.l7_refused("no_worker");
        m.l7_refused("no_worker");
        m.l7_refused("send_failed");
        m.l7_worker_restart();
        m.l7_workers.spans_exported.fetch_add(7, Relaxed);
        m.l7_workers.spans_dropped.fetch_add(3, Relaxed);
        m.l7_workers.reports_dropped.fetch_add(2, Relaxed);
        let text = m.render();
        for line in [
            "weft_l7_handoffs_total{result=\"handed\"} 2",
            "weft_l7_handoffs_total{result=\"refused\"} 3",
            "weft_l7_handoffs_refused_total{reason=\"no_worker\"} 2",
            "weft_l7_handoffs_refused_total{reason=\"send_failed\"} 1",
            "weft_l7_worker_restarts_total 1",
            "# TYPE weft_l7_handoffs_refused_total counter",
            "weft_l7_spans_exported_total 7",
            "weft_l7_spans_dropped_total 3",
            "weft_l7_reports_dropped_total 2",
            "# TYPE weft_l7_spans_dropped_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }
}
