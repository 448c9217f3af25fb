//! The access log: one JSON line per connection (`write`, from the proxy's record) and one per
//! request of the L7 pool (`request_line`, formatted by the worker from its `RequestRecord`
//! and written here in the worker's batches: `write_lines`), written by a thread of its own
//! so that a slow reader of stdout never stalls a connection. Lines the writer cannot take
//! are dropped and counted (`weft_access_log_dropped_total`), never buffered without bound.
//!
//! A request line starts with `"kind":"request"`; connection lines have no `kind`. Both share
//! the names of what they have in common (`time`, `connection_id`, `reporter`, `src`, `dst`,
//! `service`, `connection_security_policy`, `bytes_received` from the source, `bytes_sent` to
//! it, `duration_ms`, `verdict`, `policy`, `response_flags`).

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, mpsc, Arc},
    time::SystemTime,
};

use serde::Serialize;

use super::{flags, http::RequestRecord, Metrics, Reporter};

/// Lines waiting for the writer.
const QUEUE: usize = 8192;

/// Where access-log lines go: `stdout`, `off` or a file path (appended).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    Stdout,
    Off,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Target::Stdout,
            "off" | "" => Target::Off,
            path => Target::File(path.into()),
        })
    }
}

pub struct AccessLog {
    tx: Option<mpsc::SyncSender<String>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn new(target: &Target, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn std::io::Write + Send> = match target {
            Target::Off => return Ok(Self { tx: None, metrics }),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                for line in rx {
                    if out.write_all(line.as_bytes()).is_err() || out.flush().is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn write(&self, entry: &impl serde::Serialize) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if tx.try_send(line).is_err() {
            self.metrics.access_log_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// One end of a request, as the worker knew it.
#[derive(Debug, Serialize)]
struct RequestPeer<'a> {
    workload: &'a str,
    namespace: &'a str,
    principal: &'a str,
}

/// The route that matched and which of its rules.
#[derive(Debug, Serialize)]
struct RouteRef<'a> {
    name: &'a str,
    rule: Option<usize>,
}

/// The request line. Field order is the order a reader scans: when, what, how it ended, where
/// it went, then who.
#[derive(Debug, Serialize)]
struct RequestLine<'a> {
    time: &'a str,
    kind: &'static str,
    connection_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    reporter: Option<Reporter>,
    protocol: &'a str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    response_code: u16,
    grpc_status: Option<u32>,
    response_flags: &'a str,
    duration_ms: f64,
    /// From the source (the request), as on connection lines.
    bytes_received: u64,
    /// To the source (the response).
    bytes_sent: u64,
    route: Option<RouteRef<'a>>,
    backend: Option<&'a str>,
    endpoint: Option<&'a str>,
    retries: u32,
    retry_note: Option<&'a str>,
    upstream_identity: Option<&'a str>,
    src: RequestPeer<'a>,
    dst: RequestPeer<'a>,
    /// The destination Service (`namespace/name`), when the request named one.
    service: Option<String>,
    connection_security_policy: &'a str,
    /// `allow`, `deny` (an L7 policy refused it: `RBAC`) or `error` (any other flag).
    verdict: &'static str,
    policy: Option<&'a str>,
}

impl<'a> RequestLine<'a> {
    fn of(r: &'a RequestRecord, now: &'a str) -> Self {
        let flags = if r.response_flags.is_empty() {
            flags::NONE
        } else {
            r.response_flags.as_str()
        };
        let verdict = match flags {
            flags::NONE => "allow",
            flags::DENIED => "deny",
            _ => "error",
        };
        let service = (!r.destination_service_name.is_empty()
            && !r.destination_service_namespace.is_empty()
            && r.destination_service_namespace != super::UNKNOWN)
            .then(|| {
                format!(
                    "{}/{}",
                    r.destination_service_namespace, r.destination_service_name
                )
            });
        Self {
            time: if r.start_time.is_empty() {
                now
            } else {
                &r.start_time
            },
            kind: "request",
            connection_id: r.connection_id.as_deref(),
            trace_id: r.trace_id.as_deref(),
            reporter: r.reporter,
            protocol: if r.request_protocol.is_empty() {
                "http"
            } else {
                &r.request_protocol
            },
            method: &r.method,
            authority: &r.authority,
            path: &r.path,
            response_code: r.response_code,
            grpc_status: r.grpc_response_status,
            response_flags: flags,
            duration_ms: r.duration_ms,
            bytes_received: r.request_bytes,
            bytes_sent: r.response_bytes,
            route: r.route.as_deref().map(|name| RouteRef {
                name,
                rule: r.route_rule,
            }),
            backend: r.backend.as_deref(),
            endpoint: r.endpoint.as_deref(),
            retries: r.retries,
            retry_note: r.retry_note.as_deref(),
            upstream_identity: r.upstream_identity.as_deref(),
            src: RequestPeer {
                workload: &r.source_workload,
                namespace: &r.source_workload_namespace,
                principal: &r.source_principal,
            },
            dst: RequestPeer {
                workload: &r.destination_workload,
                namespace: &r.destination_workload_namespace,
                principal: &r.destination_principal,
            },
            service,
            connection_security_policy: &r.connection_security_policy,
            verdict,
            policy: r.policy.as_deref(),
        }
    }
}

/// The one line of a request the L7 pool finished (`"kind":"request"`), newline included. A
/// worker formats it and sends it to its agent in a batch, for `AccessLog::write_lines`.
pub fn request_line(record: &RequestRecord) -> String {
    let now = if record.start_time.is_empty() {
        rfc3339(SystemTime::now())
    } else {
        String::new()
    };
    let mut line = serde_json::to_string(&RequestLine::of(record, &now)).unwrap_or_default();
    line.push('\n');
    line
}

impl AccessLog {
    /// `count` lines formatted elsewhere (`request_line`, by a worker), written as they are.
    pub fn write_lines(&self, lines: String, count: u64) {
        let Some(tx) = &self.tx else { return };
        if lines.is_empty() {
            return;
        }
        if tx.try_send(lines).is_err() {
            self.metrics.access_log_dropped.fetch_add(count, Relaxed);
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T08:15:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_763_800_500_123);
        assert_eq!(rfc3339(t), "2025-11-22T08:35:00.123Z");
    }

    /// Lines of a log written to a file, once `n` have arrived.
    fn read_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n || std::time::Instant::now() > deadline {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn retried_record() -> RequestRecord {
        RequestRecord {
            reporter: Some(Reporter::Source),
            start_time: "2026-12-01T23:00:00.123Z".into(),
            duration_ms: 42.5,
            source_workload: "web".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
            destination_workload: "orders-v2".into(),
            destination_workload_namespace: "shop".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/orders".into(),
            destination_service: "orders.shop.svc.cluster.local".into(),
            destination_service_name: "orders".into(),
            destination_service_namespace: "shop".into(),
            request_protocol: "http".into(),
            method: "POST".into(),
            authority: "orders.shop:8080".into(),
            path: "/v2/orders?id=7".into(),
            response_code: 503,
            response_flags: "URX".into(),
            connection_security_policy: "mutual_tls".into(),
            request_bytes: 120,
            response_bytes: 19,
            route: Some("shop/orders-canary".into()),
            route_rule: Some(1),
            backend: Some("shop/orders-v2:8080".into()),
            endpoint: Some("10.0.2.7:8080".into()),
            retries: 2,
            retry_note: Some("body over 64 KiB: not retried".into()),
            upstream_identity: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
            policy: Some("shop/orders-l7".into()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            connection_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_line_carries_what_the_issue_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::new(&Target::File(path.clone()), Arc::default()).unwrap();
        log.write_lines(request_line(&retried_record()), 1);
        log.write_lines(
            request_line(&RequestRecord {
                response_code: 403,
                response_flags: "RBAC".into(),
                ..Default::default()
            }),
            1,
        );
        log.write(&serde_json::json!({"connection_id": "c"}));
        drop(log);
        let lines = read_lines(&path, 3);
        assert_eq!(lines.len(), 3);
        let l = &lines[0];
        let want = serde_json::json!({
            "time": "2026-12-01T23:00:00.123Z",
            "kind": "request",
            "connection_id": "0af7651916cd43dd8448eb211c80319c",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "reporter": "source",
            "protocol": "http",
            "method": "POST",
            "authority": "orders.shop:8080",
            "path": "/v2/orders?id=7",
            "response_code": 503,
            "grpc_status": null,
            "response_flags": "URX",
            "duration_ms": 42.5,
            "bytes_received": 120,
            "bytes_sent": 19,
            "route": {"name": "shop/orders-canary", "rule": 1},
            "backend": "shop/orders-v2:8080",
            "endpoint": "10.0.2.7:8080",
            "retries": 2,
            "retry_note": "body over 64 KiB: not retried",
            "upstream_identity": "spiffe://cluster.local/ns/shop/sa/orders",
            "src": {"workload": "web", "namespace": "shop",
                    "principal": "spiffe://cluster.local/ns/shop/sa/web"},
            "dst": {"workload": "orders-v2", "namespace": "shop",
                    "principal": "spiffe://cluster.local/ns/shop/sa/orders"},
            "service": "shop/orders",
            "connection_security_policy": "mutual_tls",
            "verdict": "error",
            "policy": "shop/orders-l7",
        });
        assert_eq!(l, &want);
        // A denial, from a record that left most fields empty: still a whole line, now-stamped.
        let denied = &lines[1];
        assert_eq!(denied["kind"], "request");
        assert_eq!(denied["verdict"], "deny");
        assert_eq!(denied["response_code"], 403);
        assert_eq!(denied["route"], serde_json::Value::Null);
        assert!(denied["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(denied["service"], serde_json::Value::Null);
        // Connection lines stay as they were: no kind.
        assert!(lines[2].get("kind").is_none());
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::new(&Target::File(path.clone()), Arc::default()).unwrap();
        for i in 0..3 {
            log.write(&serde_json::json!({ "n": i }));
        }
        drop(log); // the writer drains the queue, then ends
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let n: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(n, [0, 1, 2]);
    }
}
