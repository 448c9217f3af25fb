//! OTLP span export: batched, bounded, never blocking a request.
//!
//! A worker holds one [`Tracer`], updated from every configuration snapshot
//! (`tracer.update(state.mesh.tracing.as_ref())`). Per request it asks
//! `tracer.sampling_percent()` for `trace::Span::start` and hands the finished span to
//! `tracer.record(span)`, which only tries to enqueue: when the queue is full (the collector is
//! slow, down, or backing off) the span is dropped and counted (`dropped()`), never waited for.
//! A background task sends batches (up to `Limits::batch` spans, or whatever came within
//! `Limits::interval`) as OTLP/HTTP: `POST /v1/traces`, `content-type: application/x-protobuf`,
//! body `ExportTraceServiceRequest`; each export has a timeout, a failed one drops its batch
//! (counted) and the next waits out a doubling backoff.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::{l7::trace::SpanRecord, state};

pub mod client;
pub mod encode;

pub use crate::state::OtlpTarget;

/// Bounds of one exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Spans waiting for export; beyond it new spans are dropped.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// How long a batch that is not full waits for more spans.
    pub interval: Duration,
    /// One export, from resolving the collector to its answer.
    pub timeout: Duration,
    /// The wait after a failed export, doubling per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue: 4096,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What happened to recorded spans (shared by the exporters a Tracer has had).
#[derive(Debug, Default)]
pub struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_exports: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running exporter to one collector. Cloning shares it; when the last clone is dropped the
/// task sends what is queued (one try) and ends.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    counters: Arc<Counters>,
    target: OtlpTarget,
}

impl Exporter {
    /// Spawns the export task on the current tokio runtime (call from within one).
    pub fn start(target: impl Into<OtlpTarget>, limits: Limits) -> Self {
        Self::start_counting(target.into(), limits, Arc::default())
    }

    fn start_counting(target: OtlpTarget, limits: Limits, counters: Arc<Counters>) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let task = Task {
            rx,
            client: client::Client::new(target.clone(), limits.timeout),
            limits,
            counters: counters.clone(),
            target: target.clone(),
        };
        tokio::spawn(task.run());
        Self {
            tx,
            counters,
            target,
        }
    }

    /// Queues a finished span; never waits. A full queue drops it (counted).
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            Counters::add(&self.counters.dropped, 1);
        }
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    /// Spans lost: queue full, export failed, or rejected by the collector.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Export requests that failed (error, timeout, non-2xx answer).
    pub fn failed_exports(&self) -> u64 {
        self.counters.failed_exports.load(Ordering::Relaxed)
    }

    pub fn target(&self) -> &OtlpTarget {
        &self.target
    }
}

struct Task {
    rx: mpsc::Receiver<SpanRecord>,
    client: client::Client,
    limits: Limits,
    counters: Arc<Counters>,
    target: OtlpTarget,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = self.limits.backoff_min;
        let mut batch = Vec::with_capacity(self.limits.batch.min(1024));
        loop {
            let open = self.collect(&mut batch).await;
            if !batch.is_empty() {
                if self.export(&batch).await {
                    backoff = self.limits.backoff_min;
                } else if open {
                    // Spans recorded meanwhile wait in the queue; past its bound they drop.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.limits.backoff_max);
                }
                batch.clear();
            }
            if !open {
                return;
            }
        }
    }

    /// Waits for a first span, then takes more until the batch is full or the interval has
    /// passed. False when the exporter was dropped (the batch holds what was left).
    async fn collect(&mut self, batch: &mut Vec<SpanRecord>) -> bool {
        match self.rx.recv().await {
            Some(s) => batch.push(s),
            None => return false,
        }
        let deadline = tokio::time::Instant::now() + self.limits.interval;
        while batch.len() < self.limits.batch {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) => return false,
                Err(_) => break,
            }
        }
        true
    }

    /// One export; true when the collector took it.
    async fn export(&mut self, batch: &[SpanRecord]) -> bool {
        let n = batch.len() as u64;
        let body = encode::request(batch).encode_to_vec();
        match self.client.export(body.into()).await {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                Counters::add(&self.counters.exported, n - rejected);
                Counters::add(&self.counters.dropped, rejected);
                if rejected > 0 {
                    tracing::warn!(collector = %self.target, rejected, "collector rejected spans");
                }
                true
            }
            Err(e) => {
                Counters::add(&self.counters.dropped, n);
                Counters::add(&self.counters.failed_exports, 1);
                tracing::warn!(
                    collector = %self.target, spans = n, error = %e,
                    "span export failed; batch dropped"
                );
                false
            }
        }
    }
}

/// The worker's tracing as MeshConfig says: the sampling rate and the exporter, replaced when
/// the collector changes, stopped when `tracing` goes away.
pub struct Tracer {
    limits: Limits,
    counters: Arc<Counters>,
    active: ArcSwapOption<Active>,
    /// Serialises `update`s (snapshots arrive one at a time; this keeps it true).
    updating: Mutex<()>,
}

struct Active {
    config: state::Tracing,
    exporter: Exporter,
}

impl Tracer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counters: Arc::default(),
            active: ArcSwapOption::empty(),
            updating: Mutex::new(()),
        }
    }

    /// Follows a new snapshot's MeshConfig `tracing`. A changed collector gets a new exporter
    /// (the old one sends what it has queued, then ends); a changed rate keeps the exporter.
    /// Call from within the tokio runtime.
    pub fn update(&self, config: Option<&state::Tracing>) {
        let _serial = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.active.load_full();
        let next = match (config, current.as_deref()) {
            (None, _) => None,
            (Some(c), Some(a)) if *c == a.config => return,
            (Some(c), Some(a)) if c.otlp == a.config.otlp => Some(Active {
                config: c.clone(),
                exporter: a.exporter.clone(),
            }),
            (Some(c), _) => {
                tracing::info!(collector = %c.otlp, sampling = c.sampling, "span export on");
                Some(Active {
                    config: c.clone(),
                    exporter: Exporter::start_counting(
                        c.otlp.clone(),
                        self.limits,
                        self.counters.clone(),
                    ),
                })
            }
        };
        if next.is_none() && current.is_some() {
            tracing::info!("span export off");
        }
        self.active.store(next.map(Arc::new));
    }

    /// The percentage for `trace::Span::start`: 0 while tracing is off (context is still
    /// propagated; spans sampled by the caller are then just not exported).
    pub fn sampling_percent(&self) -> f64 {
        self.active
            .load()
            .as_ref()
            .map_or(0.0, |a| a.config.sampling)
    }

    /// Hands a finished span to the exporter; never waits. Dropped (uncounted) while off.
    pub fn record(&self, span: SpanRecord) {
        if let Some(a) = self.active.load().as_ref() {
            a.exporter.record(span);
        }
    }

    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    pub fn failed_exports(&self) -> u64 {
        self.counters.failed_exports.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
