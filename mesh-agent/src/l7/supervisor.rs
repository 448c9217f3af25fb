//! The agent's side of the L7 pool: runs `mesh-agent l7` workers, keeps them configured and
//! alive, and hands them connections.
//!
//! Each worker is a child process connected by its own socketpair (`wire`). A worker that
//! exits, closes its socket, sends garbage or stops answering health pings is killed and
//! started again (with backoff); only the connections it held are lost. A connection is handed
//! only to a worker that is up and has applied a snapshot; with none, `hand` refuses with a
//! reason (logged, counted) and closes the connection: never carried at L4 instead.

use std::{
    collections::BTreeMap,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    handoff::Handoff,
    outbox::RequestBatch,
    snapshot::{self, Content, PushedCert},
    wire::{self, FrameReader, FrameWriter, ToAgent, ToWorker},
};
use crate::{cli::LogFormat, metrics::L7WorkerCounters, state::State};

mod child;

/// The most workers a default-sized pool has, whatever the node's CPU count.
pub const DEFAULT_MAX_WORKERS: usize = 4;
/// A worker restarted within this long of its start backs off before the next start.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a worker whose socket closed may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// At most one refusal line per this interval; the others are counted in the next line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The node's share: one worker per CPU, at least one, at most [`DEFAULT_MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, DEFAULT_MAX_WORKERS)
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub workers: usize,
    /// The `mesh-agent` binary the workers run (default /proc/self/exe: this very binary,
    /// even after the file was replaced by an upgrade).
    pub exe: PathBuf,
    /// Passed on as the workers' `--log` and `--log-format`.
    pub log: String,
    pub log_format: LogFormat,
    pub node: String,
    pub trust_domain: String,
    /// How often each worker is pinged, and how long it may leave pings unanswered before it
    /// is taken for hung, killed and replaced.
    pub ping_interval: Duration,
    pub hang_deadline: Duration,
    /// Hand-offs queued per worker and not yet written to its socket.
    pub queue: usize,
    /// Request batches queued for `reports()`; more are dropped (their requests counted).
    pub reports: usize,
    /// Whether the agent writes access-log lines (the workers format them only then).
    pub access_log: bool,
    /// Where the workers' totals go (the agent's `Metrics::l7_workers`, for /metrics).
    pub counters: Arc<L7WorkerCounters>,
}

impl PoolConfig {
    pub fn new(node: &str, trust_domain: &str) -> Self {
        Self {
            workers: default_workers(),
            exe: PathBuf::from("/proc/self/exe"),
            log: "info".into(),
            log_format: LogFormat::Text,
            node: node.into(),
            trust_domain: trust_domain.into(),
            ping_interval: Duration::from_secs(1),
            hang_deadline: Duration::from_secs(5),
            queue: 256,
            reports: 1024,
            access_log: true,
            counters: Arc::default(),
        }
    }
}

/// Why a connection was not handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the L7 pool has no configuration snapshot yet")]
    NoSnapshot,
    #[error("no L7 worker is ready (of {0})")]
    NoWorker(usize),
    #[error("every ready L7 worker has {0} hand-offs queued")]
    Busy(usize),
    #[error("the pod's netns descriptor cannot be duplicated: {0}")]
    Netns(String),
    #[error("the hand-off cannot be encoded: {0}")]
    Encode(String),
    /// Not produced by the pool: for callers whose node runs none (`--l7-workers 0`).
    #[error("the L7 pool is disabled (--l7-workers 0)")]
    Disabled,
}

impl Refusal {
    /// A short label, for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSnapshot => "no_snapshot",
            Refusal::NoWorker(_) => "no_worker",
            Refusal::Busy(_) => "busy",
            Refusal::Netns(_) => "netns",
            Refusal::Encode(_) => "encode",
            Refusal::Disabled => "disabled",
        }
    }
}

/// What /config_dump shows of the pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub workers: Vec<WorkerStatus>,
    /// The latest snapshot sent (0: none yet).
    pub snapshot_version: u64,
    pub handed: u64,
    pub refused: u64,
    pub refused_by_reason: BTreeMap<&'static str, u64>,
    pub last_refusal: Option<String>,
    /// Request records dropped: by workers (queue to the agent full) or here (nobody reading).
    pub reports_dropped: u64,
    /// Spans the workers exported, and dropped (queue full, export failed or refused), over
    /// every worker the pool has run.
    pub spans_exported: u64,
    pub spans_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub index: usize,
    pub pid: Option<u32>,
    /// Up and configured: connections are handed to it.
    pub ready: bool,
    pub applied_version: u64,
    pub restarts: u64,
    pub handed: u64,
    pub connections: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
}

/// A connection on its way to a worker: the frame body and the two descriptors.
struct Handed {
    body: Bytes,
    stream: OwnedFd,
    netns: OwnedFd,
}

#[derive(Default)]
struct Slot {
    /// Some while the worker's socket is up.
    queue: Mutex<Option<mpsc::Sender<Handed>>>,
    applied: AtomicU64,
    pid: AtomicU32,
    restarts: AtomicU64,
    handed: AtomicU64,
    connections: AtomicU64,
    /// The running totals the current worker last reported (zero when it starts).
    seen: Seen,
    /// Milliseconds since the pool's start when the worker last answered (or started).
    last_pong: AtomicU64,
    notes: Mutex<Notes>,
}

/// A worker's own running totals, as its last pong said.
#[derive(Default)]
struct Seen {
    reports_dropped: AtomicU64,
    spans_exported: AtomicU64,
    spans_dropped: AtomicU64,
}

impl Seen {
    fn reset(&self) {
        for c in [
            &self.reports_dropped,
            &self.spans_exported,
            &self.spans_dropped,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// Adds to `total` what a worker counted since it last said `seen`. Within one life a worker's
/// totals only grow; its next life starts again from zero, with `seen` reset.
fn add_since(total: &AtomicU64, seen: &AtomicU64, now: u64) {
    let before = seen.swap(now, Relaxed);
    total.fetch_add(now.saturating_sub(before), Relaxed);
}

#[derive(Default)]
struct Notes {
    child: Option<std::process::Child>,
    last_exit: Option<String>,
    last_error: Option<String>,
}

struct Shared {
    cfg: PoolConfig,
    slots: Vec<Slot>,
    /// The log filter in force (`set_log`): workers start with it and follow its changes.
    log: watch::Sender<String>,
    /// The body of the latest snapshot frame; every worker's writer sends it before anything
    /// else and again whenever it changes.
    snapshot: watch::Sender<Option<Bytes>>,
    /// The serialized content of the latest snapshot, to skip unchanged updates.
    content: Mutex<Vec<u8>>,
    version: AtomicU64,
    next: AtomicUsize,
    handed: AtomicU64,
    refusals: Mutex<Refusals>,
    reports: mpsc::Sender<RequestBatch>,
    reports_rx: Mutex<Option<mpsc::Receiver<RequestBatch>>>,
    epoch: Instant,
    /// True once the pool drains: workers are told to finish and are not restarted.
    draining: watch::Sender<bool>,
    /// Signalled whenever a worker process is gone.
    exited: tokio::sync::Notify,
}

#[derive(Default)]
struct Refusals {
    total: u64,
    by_reason: BTreeMap<&'static str, u64>,
    last: Option<String>,
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The pool. Dropping it kills the workers (they also die with the agent: PR_SET_PDEATHSIG).
pub struct L7Pool {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for L7Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7Pool")
            .field("workers", &self.shared.slots.len())
            .finish_non_exhaustive()
    }
}

impl L7Pool {
    /// Starts `cfg.workers` workers (in the background: `status()` shows them come up).
    /// Needs a tokio runtime.
    pub fn start(cfg: PoolConfig) -> Self {
        let (reports, reports_rx) = mpsc::channel(cfg.reports.max(1));
        let log = cfg.log.clone();
        let shared = Arc::new(Shared {
            slots: (0..cfg.workers).map(|_| Slot::default()).collect(),
            cfg,
            log: watch::channel(log).0,
            snapshot: watch::channel(None).0,
            content: Mutex::new(Vec::new()),
            version: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            handed: AtomicU64::new(0),
            refusals: Mutex::default(),
            reports,
            reports_rx: Mutex::new(Some(reports_rx)),
            epoch: Instant::now(),
            draining: watch::channel(false).0,
            exited: tokio::sync::Notify::new(),
        });
        info!(workers = shared.cfg.workers, exe = %shared.cfg.exe.display(), "starting the L7 pool");
        let tasks = (0..shared.cfg.workers)
            .map(|i| tokio::spawn(keep_running(shared.clone(), i)))
            .collect();
        Self { shared, tasks }
    }

    /// Sends a new snapshot to every worker (and to every worker started later, before any
    /// connection) unless nothing changed since the last. Returns the version in force.
    pub fn update(&self, state: Arc<State>, certs: Vec<PushedCert>, roots_pem: String) -> u64 {
        let content = Content {
            state,
            roots_pem,
            certs,
        };
        let json = match serde_json::to_vec(&content) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "cannot serialize the L7 snapshot; workers keep the last one");
                return self.shared.version.load(Relaxed);
            }
        };
        let mut last = self.shared.content.lock().expect("content lock");
        if *last == json && self.shared.version.load(Relaxed) > 0 {
            return self.shared.version.load(Relaxed);
        }
        let version = self.shared.version.load(Relaxed) + 1;
        let body = snapshot::frame_body(version, &json);
        if body.len() > wire::MAX_FRAME {
            warn!(
                bytes = body.len(),
                limit = wire::MAX_FRAME,
                "the L7 snapshot is over the frame limit; workers keep the last one"
            );
            return version - 1;
        }
        self.shared.version.store(version, Relaxed);
        *last = json;
        debug!(version, bytes = body.len(), "L7 snapshot");
        self.shared.snapshot.send_replace(Some(body.into()));
        version
    }

    /// Hands `stream` to a ready worker with the pod's netns (duplicated; the caller keeps its
    /// own) and `h`. The agent's copy of the connection is closed once it is on its way (or
    /// at once, with a reset, when refused). A tokio stream is passed as
    /// `stream.into_std()?`; a `Netns` as `netns.as_fd()`. Never waits.
    pub fn hand(
        &self,
        stream: impl Into<OwnedFd>,
        netns: BorrowedFd<'_>,
        h: Handoff,
    ) -> Result<(), Refusal> {
        let stream = stream.into();
        let id = h.id.clone();
        match self.try_hand(stream, netns, h) {
            Ok(()) => {
                self.shared.handed.fetch_add(1, Relaxed);
                Ok(())
            }
            Err((refusal, stream)) => {
                // A reset says "refused" to the client; a FIN would look like an empty answer.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                self.refused(&refusal, &id);
                Err(refusal)
            }
        }
    }

    fn try_hand(
        &self,
        stream: OwnedFd,
        netns: BorrowedFd<'_>,
        h: Handoff,
    ) -> Result<(), (Refusal, OwnedFd)> {
        if self.shared.snapshot.borrow().is_none() {
            return Err((Refusal::NoSnapshot, stream));
        }
        let netns = match netns.try_clone_to_owned() {
            Ok(n) => n,
            Err(e) => return Err((Refusal::Netns(e.to_string()), stream)),
        };
        let body = match wire::encode(&ToWorker::Handoff(h)) {
            Ok(b) => b,
            Err(e) => return Err((Refusal::Encode(e.to_string()), stream)),
        };
        let mut item = Handed {
            body,
            stream,
            netns,
        };
        let n = self.shared.slots.len();
        let start = self.shared.next.fetch_add(1, Relaxed);
        let mut ready = 0;
        for k in 0..n {
            let slot = &self.shared.slots[(start + k) % n];
            if slot.applied.load(Relaxed) == 0 {
                continue;
            }
            let queue = slot.queue.lock().expect("queue lock");
            let Some(tx) = queue.as_ref() else { continue };
            ready += 1;
            match tx.try_send(item) {
                Ok(()) => {
                    slot.handed.fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(back))
                | Err(mpsc::error::TrySendError::Closed(back)) => item = back,
            }
        }
        let refusal = match ready {
            0 => Refusal::NoWorker(n),
            _ => Refusal::Busy(self.shared.cfg.queue),
        };
        Err((refusal, item.stream))
    }

    fn refused(&self, refusal: &Refusal, id: &str) {
        let mut r = self.shared.refusals.lock().expect("refusals lock");
        r.total += 1;
        *r.by_reason.entry(refusal.reason()).or_default() += 1;
        r.last = Some(refusal.to_string());
        let due = r
            .logged_at
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            warn!(connection = id, reason = %refusal, also_refused = r.unlogged,
                "L7 hand-off refused; connection closed");
            r.logged_at = Some(Instant::now());
            r.unlogged = 0;
        } else {
            r.unlogged += 1;
        }
    }

    /// A new log filter (the agent's `/logging` changed its own): sent to every worker, and
    /// given to every worker started from now on.
    pub fn set_log(&self, filter: &str) {
        self.shared.log.send_if_modified(|f| {
            let changed = f != filter;
            if changed {
                filter.clone_into(f);
            }
            changed
        });
    }

    /// Waits until a worker has applied the latest snapshot (a new agent taking over starts
    /// accepting only then: a connection it accepted earlier would find no worker ready and be
    /// refused). False after `within`.
    pub async fn wait_applied(&self, within: Duration) -> bool {
        let version = self.shared.version.load(Relaxed);
        let applied = || {
            self.shared
                .slots
                .iter()
                .any(|s| s.applied.load(Relaxed) >= version.max(1))
        };
        let poll = async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !applied() {
                tick.tick().await;
            }
        };
        tokio::time::timeout(within, poll).await.is_ok()
    }

    /// Drains the pool (the agent is being replaced): each worker finishes its in-flight
    /// requests and exits, none is restarted; returns when all are gone or `within` passed
    /// (those left are killed with the pool).
    pub async fn drain(&self, within: Duration) {
        self.shared.draining.send_replace(true);
        let all_gone = async {
            loop {
                let exited = self.shared.exited.notified();
                tokio::pin!(exited);
                exited.as_mut().enable();
                let running = self
                    .shared
                    .slots
                    .iter()
                    .filter(|s| s.pid.load(Relaxed) != 0)
                    .count();
                if running == 0 {
                    return;
                }
                exited.await;
            }
        };
        if tokio::time::timeout(within, all_gone).await.is_ok() {
            info!("L7 workers drained: every in-flight request finished");
        } else {
            warn!("L7 workers still serving at the drain deadline; stopping them");
        }
    }

    /// The workers' request batches, for metrics and the access log. Returns the receiver
    /// once; batches queue (bounded, then dropped and counted) until it is taken.
    pub fn reports(&self) -> Option<mpsc::Receiver<RequestBatch>> {
        self.shared.reports_rx.lock().expect("reports lock").take()
    }

    pub fn status(&self) -> PoolStatus {
        let s = &self.shared;
        let workers: Vec<WorkerStatus> = s
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let notes = slot.notes.lock().expect("notes lock");
                let pid = slot.pid.load(Relaxed);
                let up = slot.queue.lock().expect("queue lock").is_some();
                let applied = slot.applied.load(Relaxed);
                WorkerStatus {
                    index,
                    pid: (pid != 0).then_some(pid),
                    ready: up && applied > 0,
                    applied_version: applied,
                    restarts: slot.restarts.load(Relaxed),
                    handed: slot.handed.load(Relaxed),
                    connections: slot.connections.load(Relaxed),
                    last_exit: notes.last_exit.clone(),
                    last_error: notes.last_error.clone(),
                }
            })
            .collect();
        let r = s.refusals.lock().expect("refusals lock");
        let totals = &s.cfg.counters;
        PoolStatus {
            workers,
            snapshot_version: s.version.load(Relaxed),
            handed: s.handed.load(Relaxed),
            refused: r.total,
            refused_by_reason: r.by_reason.clone(),
            last_refusal: r.last.clone(),
            reports_dropped: totals.reports_dropped.load(Relaxed),
            spans_exported: totals.spans_exported.load(Relaxed),
            spans_dropped: totals.spans_dropped.load(Relaxed),
        }
    }
}

impl Drop for L7Pool {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for slot in &self.shared.slots {
            if let Some(mut c) = slot.notes.lock().expect("notes lock").child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Runs worker `i` for as long as the pool lives: start, serve, notice the end, start again.
async fn keep_running(shared: Arc<Shared>, i: usize) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        if let Err(e) = run_once(&shared, i).await {
            warn!(worker = i, error = %e, retry_in_ms = backoff.as_millis() as u64,
                "cannot start L7 worker");
            shared.slots[i].notes.lock().expect("notes lock").last_error = Some(e.to_string());
        }
        shared.exited.notify_waiters();
        if *shared.draining.borrow() {
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        shared.slots[i].restarts.fetch_add(1, Relaxed);
        shared.cfg.counters.restarts.fetch_add(1, Relaxed);
    }
}

/// One life of worker `i`: spawned, connected, watched; returns once it is gone (reaped).
async fn run_once(shared: &Arc<Shared>, i: usize) -> std::io::Result<()> {
    let slot = &shared.slots[i];
    let (ours, theirs) = UnixStream::pair()?;
    let (reader, writer) = wire::split(ours)?;
    // Subscribed before the start, so a change after it reaches this worker too.
    let mut log = shared.log.subscribe();
    let filter = log.borrow_and_update().clone();
    let proc = child::spawn(&shared.cfg, &filter, i, theirs).await?;
    let pid = proc.id();
    slot.pid.store(pid, Relaxed);
    slot.applied.store(0, Relaxed);
    slot.seen.reset();
    slot.last_pong.store(shared.now_ms(), Relaxed);
    slot.notes.lock().expect("notes lock").child = Some(proc);
    info!(worker = i, pid, "L7 worker started");
    let (tx, rx) = mpsc::channel(shared.cfg.queue.max(1));
    *slot.queue.lock().expect("queue lock") = Some(tx);
    let (why, hung) = tokio::select! {
        why = read_loop(shared, i, reader) => (why, false),
        why = write_loop(shared, writer, rx, log) => (why, false),
        why = watch_health(shared, i) => (why, true),
    };
    // No new connections for it; the ones queued are dropped with the queue (closed).
    *slot.queue.lock().expect("queue lock") = None;
    slot.applied.store(0, Relaxed);
    let child = slot.notes.lock().expect("notes lock").child.take();
    let status = match child {
        Some(c) => child::reap(c, if hung { Duration::ZERO } else { EXIT_GRACE }).await,
        None => "unknown (pool stopping)".into(),
    };
    slot.pid.store(0, Relaxed);
    slot.connections.store(0, Relaxed);
    if *shared.draining.borrow() {
        info!(worker = i, pid, exit = %status, "L7 worker drained");
    } else {
        warn!(worker = i, pid, reason = %why, exit = %status, "L7 worker gone; restarting it");
    }
    let mut notes = slot.notes.lock().expect("notes lock");
    notes.last_exit = Some(format!("{status} ({why})"));
    Ok(())
}

/// Reads the worker's messages until its socket fails; returns why it ended.
async fn read_loop(shared: &Shared, i: usize, mut reader: FrameReader) -> String {
    let slot = &shared.slots[i];
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return "socket closed".into(),
            Err(e) => return format!("bad frame from the worker: {e}"),
        };
        if !frame.fds.is_empty() {
            return "the worker passed descriptors".into();
        }
        let msg = match serde_json::from_slice::<ToAgent>(&frame.body) {
            Ok(m) => m,
            // The worker is this binary: a message it cannot have meant is a broken worker.
            Err(e) => return format!("bad message from the worker: {e}"),
        };
        match msg {
            ToAgent::Applied { version, errors } => {
                for e in &errors {
                    warn!(worker = i, version, error = %e, "L7 worker could not apply part of the snapshot");
                }
                if slot.applied.swap(version, Relaxed) == 0 {
                    info!(worker = i, version, "L7 worker ready");
                }
                slot.notes.lock().expect("notes lock").last_error = errors.into_iter().next();
            }
            ToAgent::Rejected { error } => {
                warn!(worker = i, error = %error, "L7 worker rejected the snapshot; it keeps the last");
                slot.notes.lock().expect("notes lock").last_error = Some(error);
            }
            ToAgent::Pong {
                connections,
                reports_dropped,
                spans_exported,
                spans_dropped,
                ..
            } => {
                slot.last_pong.store(shared.now_ms(), Relaxed);
                slot.connections.store(connections, Relaxed);
                let (totals, seen) = (&shared.cfg.counters, &slot.seen);
                add_since(
                    &totals.reports_dropped,
                    &seen.reports_dropped,
                    reports_dropped,
                );
                add_since(&totals.spans_exported, &seen.spans_exported, spans_exported);
                add_since(&totals.spans_dropped, &seen.spans_dropped, spans_dropped);
            }
            ToAgent::Requests(batch) => {
                let requests = batch.requests();
                if shared.reports.try_send(*batch).is_err() {
                    shared
                        .cfg
                        .counters
                        .reports_dropped
                        .fetch_add(requests, Relaxed);
                }
            }
        }
    }
}

/// Writes to the worker: the latest snapshot first (and again on change), log filter
/// changes, pings, hand-offs.
async fn write_loop(
    shared: &Shared,
    writer: FrameWriter,
    mut rx: mpsc::Receiver<Handed>,
    mut log: watch::Receiver<String>,
) -> String {
    let mut snapshots = shared.snapshot.subscribe();
    snapshots.mark_changed();
    let mut ping = tokio::time::interval(shared.cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut draining = shared.draining.subscribe();
    let mut told = false;
    loop {
        let sent = tokio::select! {
            biased;
            _ = async { let _ = draining.wait_for(|d| *d).await; }, if !told => {
                told = true;
                match wire::encode(&ToWorker::Drain) {
                    Ok(b) => writer.send(&b, &[]).await,
                    Err(e) => Err(e),
                }
            }
            // First: a hand-off written after a filter change is served under the new filter.
            changed = log.changed() => {
                if changed.is_err() {
                    return "pool stopped".into();
                }
                let filter = log.borrow_and_update().clone();
                match wire::encode(&ToWorker::Log { filter }) {
                    Ok(b) => writer.send(&b, &[]).await,
                    Err(e) => Err(e),
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return "pool stopped".into();
                }
                let body = snapshots.borrow_and_update().clone();
                match body {
                    Some(b) => writer.send(&b, &[]).await,
                    None => Ok(()),
                }
            }
            _ = ping.tick() => {
                seq += 1;
                match wire::encode(&ToWorker::Ping { seq }) {
                    Ok(b) => writer.send(&b, &[]).await,
                    Err(e) => Err(e),
                }
            }
            item = rx.recv() => {
                let Some(h) = item else { return "pool stopped".into() };
                // The agent's copies close when `h` drops, once they are in the socket.
                writer.send(&h.body, &[h.stream.as_fd(), h.netns.as_fd()]).await
            }
        };
        if let Err(e) = sent {
            return format!("writing to the worker: {e}");
        }
    }
}

/// Returns when worker `i` has not answered a ping for longer than the deadline.
async fn watch_health(shared: &Shared, i: usize) -> String {
    let deadline = shared.cfg.hang_deadline.as_millis() as u64;
    let check = (shared.cfg.hang_deadline / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(check).await;
        let silent = shared
            .now_ms()
            .saturating_sub(shared.slots[i].last_pong.load(Relaxed));
        if silent > deadline {
            return format!("no answer to health pings for {silent} ms: taken for hung");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_totals_add_up_across_restarts_and_never_go_back() {
        let total = AtomicU64::new(0);
        let seen = Seen::default();
        // One life: pongs say 5, then 5 again, then 8.
        for now in [5, 5, 8] {
            add_since(&total, &seen.spans_dropped, now);
        }
        assert_eq!(total.load(Relaxed), 8);
        // The worker restarts and counts from zero again.
        seen.reset();
        for now in [0, 2, 3] {
            add_since(&total, &seen.spans_dropped, now);
        }
        assert_eq!(total.load(Relaxed), 11, "8 before the restart, 3 after");
        // A smaller number without a restart (never sent by a worker) takes nothing back.
        add_since(&total, &seen.spans_dropped, 1);
        assert_eq!(total.load(Relaxed), 11);
        add_since(&total, &seen.spans_dropped, 4);
        assert_eq!(
            total.load(Relaxed),
            14,
            "counting resumes from what it said last"
        );
    }
}
