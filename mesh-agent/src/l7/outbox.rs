//! What a worker owes its agent about the requests it finished: their metric samples, counted
//! here per label set (`metrics::http::Requests`, the agent's own type), and their access-log
//! lines, formatted here. Both go to the agent together in one `RequestBatch` a little after
//! the first request of the batch finished (`FLUSH_DELAY`), so however many requests a worker
//! serves, the agent handles a few batches a second per worker and never one message per
//! request. Everything a peer can make grow is bounded: label sets by the series cap, pending
//! lines by `LOG_CAP`; what does not fit is counted, never buffered.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::wire::{self, ToAgent};
use crate::metrics::{
    access_log::request_line,
    http::{Delta, RequestRecord, Requests},
};

/// How long a finished request may wait for others to share its batch.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Access-log bytes a worker holds between batches; a line beyond it is dropped (counted in
/// the agent's `weft_access_log_dropped_total`).
pub const LOG_CAP: usize = 1 << 20;

/// The requests a worker finished since its last batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestBatch {
    /// Istio's HTTP series: what each label set counted since the last batch.
    pub series: Delta,
    /// Access-log lines, each ending in a newline (empty when the log is off).
    pub log: String,
    pub lines: u64,
    /// Lines that did not fit in `LOG_CAP`.
    pub log_dropped: u64,
}

impl RequestBatch {
    /// The requests it covers: what losing it loses.
    pub fn requests(&self) -> u64 {
        self.series.requests()
    }
}

#[derive(Default)]
struct Lines {
    text: String,
    count: u64,
    dropped: u64,
}

pub struct Outbox {
    access_log: bool,
    requests: Requests,
    lines: Mutex<Lines>,
    /// Set by the first request after a batch went.
    wake: Notify,
    /// Requests whose batch could not be queued for the agent.
    pub dropped: AtomicU64,
}

impl Outbox {
    /// `access_log`: whether the agent writes request lines (its target is not `off`).
    pub fn new(access_log: bool) -> Self {
        Self {
            access_log,
            requests: Requests::default(),
            lines: Mutex::default(),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Counts a finished request and keeps its line; never waits.
    pub fn add(&self, record: &RequestRecord) {
        self.requests.record(record);
        let line = self.access_log.then(|| request_line(record));
        let mut lines = self.lines.lock().expect("outbox lock");
        if let Some(line) = line {
            if lines.text.len() + line.len() > LOG_CAP {
                lines.dropped += 1;
            } else {
                lines.text.push_str(&line);
                lines.count += 1;
            }
        }
        drop(lines);
        // A stored permit when the flusher is not waiting: it takes this request next time.
        self.wake.notify_one();
    }

    /// Everything since the last batch, or None when nothing finished. Lines are taken before
    /// the series: a request finishing in between has its samples in this batch and its line
    /// in the next, never a line whose request is not counted yet.
    pub fn take(&self) -> Option<RequestBatch> {
        let lines = std::mem::take(&mut *self.lines.lock().expect("outbox lock"));
        let batch = RequestBatch {
            series: self.requests.take(),
            log: lines.text,
            lines: lines.count,
            log_dropped: lines.dropped,
        };
        let empty = batch.requests() == 0 && batch.lines == 0 && batch.log_dropped == 0;
        (!empty).then_some(batch)
    }

    /// Sends batches to the agent for as long as the worker runs: one `FLUSH_DELAY` after the
    /// first request that finished since the last. A batch the agent's queue cannot take is
    /// dropped and its requests counted in `dropped`.
    pub async fn flush_to(self: Arc<Self>, out: mpsc::Sender<Bytes>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(FLUSH_DELAY).await;
            let Some(batch) = self.take() else { continue };
            let requests = batch.requests();
            let sent = wire::encode(&ToAgent::Requests(Box::new(batch)))
                .ok()
                .is_some_and(|b| out.try_send(b).is_ok());
            if !sent {
                self.dropped.fetch_add(requests, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn record(code: u16, path: &str) -> RequestRecord {
        RequestRecord {
            start_time: "2026-12-02T10:00:00.000Z".into(),
            source_workload: "client".into(),
            destination_service_name: "orders".into(),
            request_protocol: "http".into(),
            method: "GET".into(),
            path: path.into(),
            response_code: code,
            response_flags: "-".into(),
            duration_ms: 3.0,
            response_bytes: 100,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_carries_the_series_and_every_line_and_the_agent_counts_them_as_records() {
        let outbox = Outbox::new(true);
        for i in 0..5 {
            outbox.add(&record(200, &format!("/ok/{i}")));
        }
        outbox.add(&record(503, "/fail"));
        let batch = outbox.take().expect("a batch");
        assert_eq!(batch.requests(), 6);
        assert_eq!(batch.series.series.len(), 2, "one label set per code");
        assert_eq!(batch.lines, 6);
        let paths: Vec<String> = batch
            .log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
            .collect();
        assert_eq!(paths.len(), 6);
        assert_eq!(paths[5], "\"/fail\"");
        // Through the wire and into the agent's metrics: the same exposition as recording
        // each request there.
        let wire = serde_json::to_vec(&batch).unwrap();
        let batch: RequestBatch = serde_json::from_slice(&wire).unwrap();
        let agent = Metrics::default();
        let log = crate::metrics::access_log::AccessLog::new(
            &crate::metrics::access_log::Target::Off,
            Arc::default(),
        )
        .unwrap();
        crate::metrics::requests_reported(&agent, &log, batch);
        let direct = Metrics::default();
        for i in 0..5 {
            direct.record_request(&record(200, &format!("/ok/{i}")));
        }
        direct.record_request(&record(503, "/fail"));
        assert_eq!(agent.render(), direct.render());
        assert!(outbox.take().is_none(), "a batch is taken once");
    }

    #[test]
    fn lines_over_the_cap_are_dropped_and_counted_but_their_requests_still_count() {
        let outbox = Outbox::new(true);
        let long = "/x".repeat(LOG_CAP / 4);
        for _ in 0..8 {
            outbox.add(&record(200, &long));
        }
        let batch = outbox.take().unwrap();
        assert_eq!(batch.requests(), 8);
        assert!(batch.lines >= 1 && batch.lines < 8, "{}", batch.lines);
        assert_eq!(batch.lines + batch.log_dropped, 8);
        assert!(batch.log.len() <= LOG_CAP);
    }

    #[test]
    fn with_the_log_off_no_line_is_formatted() {
        let outbox = Outbox::new(false);
        outbox.add(&record(200, "/"));
        let batch = outbox.take().unwrap();
        assert_eq!((batch.lines, batch.log.as_str()), (0, ""));
        assert_eq!(batch.requests(), 1);
    }

    #[test]
    fn a_label_value_a_worker_did_not_bound_is_bounded_by_the_agent() {
        let agent = Metrics::default();
        let outbox = Outbox::new(false);
        outbox.add(&record(200, "/"));
        let mut batch = outbox.take().unwrap();
        batch.series.series[0].0.peers.source_workload = "w".repeat(10_000);
        agent.http.merge(batch.series);
        let text = agent.render();
        assert!(!text.contains(&"w".repeat(513)), "label not bounded");
        assert!(text.contains(&"w".repeat(512)));
    }
}
