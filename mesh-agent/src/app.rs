//! Wiring: load the kernel programs, set up identities (when a CA is configured), follow the
//! configuration, keep enrollment in step with it, serve the admin endpoint.

pub mod egress;
pub mod enrollment;

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    admin::{self, Status},
    cni,
    config::AgentConfig,
    identity::{CaClient, CertManager},
    l7::{self, L7Pool},
    metrics::{self, AccessLog, Metrics},
    netns,
    proxy::{lifecycle::Lifecycle, Mtls, Shared},
    redirect::Redirect,
    source,
    state::State,
    tunnel,
    upgrade::{self, handover::Kind},
};
use enrollment::Enrollment;

pub async fn run(cfg: AgentConfig, logging: Option<admin::LogControl>) -> anyhow::Result<()> {
    netns::init();
    info!(config = %serde_json::to_string(&cfg)?, "starting mesh-agent");
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    // Before anything is loaded or bound: the running agent's sockets, if one runs (upgrade).
    let (lock, predecessor, mut inherited) = take_over(&cfg.state_dir).await?;
    let redirect = Redirect::load(&cfg).context("loading eBPF programs")?;
    let metrics = Arc::new(Metrics::default());
    let access_log = AccessLog::new(&cfg.access_log, metrics.clone())
        .with_context(|| format!("opening the access log {:?}", cfg.access_log))?;
    let l7_pool = start_l7_pool(&cfg, &metrics);
    let shared = Arc::new(Shared {
        node: cfg.node.clone(),
        trust_domain: cfg.trust_domain.clone(),
        state: ArcSwap::from_pointee(State::default()),
        balancer: Default::default(),
        mtls: mtls(&cfg)?,
        metrics: metrics.clone(),
        access_log,
        live: Default::default(),
        l7: l7_pool.clone().map(|p| hand_to(p, metrics.clone())),
        egress_hosts: Default::default(),
        // A predecessor still reads the pods' UDP sockets until it drains.
        lifecycle: Arc::new(Lifecycle::new(predecessor.is_none())),
    });
    let registry = Arc::new(upgrade::Registry::default());
    let reports = l7_pool
        .as_ref()
        .and_then(|p| p.reports())
        .map(|rx| tokio::spawn(count_requests(shared.clone(), rx)));
    let mut cert_changes = shared.mtls.as_ref().map(|m| m.certs.changes());
    let status = Arc::new(RwLock::new(Status::new(&cfg)));
    status.write().expect("status lock").l7_pool = l7_pool.clone();
    let admin_listener = node_listener(&mut inherited, Kind::Admin, cfg.admin_addr, &registry)
        .await
        .with_context(|| format!("binding admin endpoint {}", cfg.admin_addr))?;
    let metrics_listener =
        node_listener(&mut inherited, Kind::Metrics, cfg.metrics_addr, &registry)
            .await
            .with_context(|| format!("binding metrics endpoint {}", cfg.metrics_addr))?;
    let admin = admin::serve(
        admin_listener,
        status.clone(),
        redirect.maps.clone(),
        shared.clone(),
        logging,
    );
    let metrics_server = metrics::server::serve_on(metrics_listener, metrics);
    let (hosts_tx, hosts_rx) = watch::channel(Vec::new());
    let resolver = tokio::spawn(egress::resolve_hosts(shared.clone(), hosts_rx));

    let (tx, mut rx) = watch::channel(None);
    source::start(
        cfg.source,
        cfg.config_dir.clone(),
        Some(cfg.node.clone()),
        cfg.reload_interval,
        tx,
    )
    .await?;
    let mut enrollment = Enrollment::new(
        redirect,
        shared.clone(),
        cfg.cgroup_root.clone(),
        cfg.source,
        registry.clone(),
        inherited,
    );
    // weft-cni's requests (enroll a new pod before its first packet) join the loop below.
    enrollment.restore_sandboxes(&cfg.state_dir);
    let (cni_server, mut cni_calls) =
        cni::serve(&cfg.state_dir).context("binding the weft-cni socket")?;
    let mut signals = Signals::new()?;
    let (drains_tx, mut drains) = tokio::sync::mpsc::channel(1);
    // Held until this agent has taken over and published its own hand-over socket.
    let mut taking_over = Some((lock, predecessor));
    let mut handover = None;
    let mut drain_request = None;
    loop {
        // Failed enrollments are retried when their own backoff is due (not on a fixed tick,
        // whose missed ticks would fire in a burst).
        let retry_at = enrollment.next_retry().map(tokio::time::Instant::from_std);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break; }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() => {}
            _ = signals.next() => break,
            req = drains.recv() => {
                drain_request = req;
                break;
            }
            Some(call) = cni_calls.recv() => enrollment.cni(call),
            _ = changed(&mut cert_changes) => {
                push_l7(l7_pool.as_deref(), &shared);
                // A weft-cni ADD may be waiting for its pod's certificate.
                enrollment.answer_calls(&shared.state.load());
                continue;
            }
        }
        let Some(loaded) = rx.borrow_and_update().clone() else {
            continue;
        };
        shared
            .state
            .store(Arc::new(enrollment.complete(loaded.state)));
        let state = shared.state.load_full();
        enrollment.reconcile(&state);
        push_l7(l7_pool.as_deref(), &shared);
        // What left the state leaves the pools, the balancer and the metrics too (bounded under churn).
        if let Some(mtls) = &shared.mtls {
            mtls.prune_pools(&state, &shared.node, &shared.trust_domain);
        }
        shared.balancer.prune(&state);
        shared.metrics.prune(&state);
        let revoked = shared.live.recheck(&state);
        if revoked > 0 {
            info!(
                connections = revoked,
                "configuration change: closed connections authorization now denies"
            );
        }
        hosts_tx.send_if_modified(|h| {
            let new = state.egress_hosts();
            (*h != new).then(|| *h = new).is_some()
        });
        {
            let mut s = status.write().expect("status lock");
            s.pods = enrollment.status();
            s.enrollment_errors = enrollment.failures();
            s.enrollment_notices = enrollment.notices();
            s.config_errors = loaded.errors;
            s.config_unreadable = loaded.unreadable;
            s.ignored_kinds = loaded.ignored;
            s.state = shared.state.load_full();
            s.ready = true;
        }
        enrollment.answer_calls(&state);
        if let Some((lock, predecessor)) = taking_over.take() {
            // Every pod is enrolled on its inherited sockets: the predecessor may drain.
            enrollment.release_inherited();
            if let Some(p) = predecessor {
                // Ready before accepting: the L7 workers have this configuration.
                if let Some(pool) = &l7_pool {
                    if !pool.wait_applied(L7_READY).await {
                        warn!("L7 workers not configured after {L7_READY:?}; taking over anyway");
                    }
                }
                shared.lifecycle.open_accept();
                status.write().expect("status lock").took_over_from = Some(p.pid);
                finish_take_over(p).await;
            }
            shared.lifecycle.open_quic();
            let dir = &cfg.state_dir;
            handover = upgrade::handover::serve(dir, registry.clone(), drains_tx.clone())
                .map_err(|e| {
                    let path = upgrade::handover::socket_path(dir);
                    warn!(error = %e, path = %path.display(), "no hand-over socket: the next \
                        agent binds fresh sockets (a short outage on this node when it starts)")
                })
                .ok();
            drop(lock);
        }
    }
    // Pods stay hooked (pinned links): a successor has adopted them, or they fail closed until
    // the next agent takes over. This agent no longer reconciles (a successor owns the pins).
    let successor = drain_request.as_ref().map(|r| r.from_pid);
    info!(successor, "draining; enrolled pods stay hooked");
    let draining = upgrade::drain::begin(&shared.lifecycle, cfg.drain_timeout).await;
    // Our copies of the listening sockets go: the successor's keep them open, or they close.
    registry.clear();
    admin.abort();
    metrics_server.abort();
    // The successor answers weft-cni from now on (its socket replaced ours).
    cni_server.task.abort();
    if let Some(h) = handover {
        h.abort();
    }
    if let Some(req) = drain_request {
        let _ = req.ack.send(draining);
    }
    upgrade::drain::finish(
        &shared.lifecycle,
        l7_pool.as_deref(),
        cfg.drain_timeout,
        signals.next(),
    )
    .await;
    resolver.abort();
    if let Some(r) = reports {
        r.abort();
    }
    Ok(())
}

/// How long a new agent taking over waits for its L7 workers before it accepts.
const L7_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the hand-over lock and the running agent's listening sockets, if one runs. Its
/// failure is not this agent's: the sockets are then bound afresh (busy until it exits).
async fn take_over(
    dir: &std::path::Path,
) -> anyhow::Result<(
    upgrade::lock::Lock,
    Option<upgrade::Predecessor>,
    upgrade::Inherited,
)> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let lock = upgrade::lock::take(&dir)
            .with_context(|| format!("taking the hand-over lock in {}", dir.display()))?;
        Ok(match upgrade::handover::take_over(&dir) {
            Ok(Some((p, inherited))) => (lock, Some(p), inherited),
            Ok(None) => {
                info!("no running agent to take over from; binding fresh sockets");
                (lock, None, Default::default())
            }
            Err(e) => {
                warn!(
                    "cannot take over from the running agent: {e}; binding fresh sockets \
                    (those it holds stay busy until it exits)"
                );
                (lock, None, Default::default())
            }
        })
    })
    .await?
}

/// Tells the predecessor to drain, now that this agent accepts on every inherited socket.
async fn finish_take_over(p: upgrade::Predecessor) {
    let pid = p.pid;
    match tokio::task::spawn_blocking(move || p.drain()).await {
        Ok(Ok(d)) => info!(
            from_pid = pid,
            its_connections = d.carrying,
            deadline_secs = d.deadline.as_secs(),
            "took over: the previous agent no longer accepts and drains its connections"
        ),
        Ok(Err(e)) => warn!(
            from_pid = pid,
            "the previous agent did not confirm its drain: {e}"
        ),
        Err(e) => warn!(error = %e, "hand-over task failed"),
    }
}

/// A node listener (admin, metrics): the predecessor's, when it had one on `addr`, else bound
/// now; recorded for the next hand-over either way.
async fn node_listener(
    inherited: &mut upgrade::Inherited,
    kind: Kind,
    addr: std::net::SocketAddr,
    registry: &upgrade::Registry,
) -> std::io::Result<tokio::net::TcpListener> {
    use std::os::fd::AsFd as _;
    let listener = match inherited.take_node(kind, addr) {
        Some(fd) => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)?
        }
        None => tokio::net::TcpListener::bind(addr).await?,
    };
    registry.add_node(kind, listener.as_fd())?;
    Ok(listener)
}

/// With a CA, meshed traffic is carried in mTLS tunnels; without one, capture still works and
/// the onward leg is plain TCP (said loudly, once).
fn mtls(cfg: &AgentConfig) -> anyhow::Result<Option<Mtls>> {
    let Some(addr) = cfg.ca_addr.as_deref() else {
        warn!(
            "no --ca-addr: workload identities and mTLS are off; meshed traffic is NOT encrypted"
        );
        return Ok(None);
    };
    let client = CaClient::from_bootstrap(addr, &cfg.node, &cfg.ca_bootstrap)?;
    let certs = CertManager::new(client, &cfg.state_dir)?;
    let pool = tunnel::Pool::new(certs.clone());
    let quic = tunnel::quic::QuicPool::new(certs.clone());
    info!(ca = %addr, trust_domain = %cfg.trust_domain, "mTLS on: workload certificates from the mesh CA");
    Ok(Some(Mtls { certs, pool, quic }))
}

/// The node's L7 pool, its workers running this binary (none with `--l7-workers 0`); what
/// its workers count (spans, dropped records, restarts) goes to /metrics.
fn start_l7_pool(cfg: &AgentConfig, metrics: &Metrics) -> Option<Arc<L7Pool>> {
    if cfg.l7_workers == 0 {
        info!("L7 pool disabled (--l7-workers 0): connections that need L7 are refused");
        return None;
    }
    let mut pool = l7::PoolConfig::new(&cfg.node, &cfg.trust_domain);
    pool.workers = cfg.l7_workers;
    pool.log = cfg.log.clone();
    pool.log_format = cfg.log_format;
    pool.counters = metrics.l7_workers.clone();
    pool.access_log = cfg.access_log != crate::metrics::access_log::Target::Off;
    Some(Arc::new(L7Pool::start(pool)))
}

/// The proxy's way into the pool: each hand-off is counted (`weft_l7_handoffs_total`).
fn hand_to(pool: Arc<L7Pool>, metrics: Arc<Metrics>) -> l7::Hand {
    use std::os::fd::AsFd as _;
    Box::new(move |fd, netns, h| match pool.hand(fd, netns.as_fd(), h) {
        Ok(()) => {
            metrics.l7_handoff(metrics::handoff::HANDED);
            Ok(())
        }
        Err(r) => {
            metrics.l7_refused(r.reason());
            Err(r.to_string())
        }
    })
}

/// Every request the workers finished, in their batches: Istio's HTTP metrics and the
/// access log.
async fn count_requests(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<l7::RequestBatch>,
) {
    while let Some(batch) = rx.recv().await {
        metrics::requests_reported(&shared.metrics, &shared.access_log, batch);
    }
}

/// Sends the L7 workers the current state and certificates (a no-op when unchanged).
fn push_l7(pool: Option<&L7Pool>, shared: &Shared) {
    if let Some(pool) = pool {
        let (certs, roots) = l7::snapshot::certs_of(shared.mtls.as_ref().map(|m| &m.certs));
        pool.update(shared.state.load_full(), certs, roots);
    }
}

/// Resolves when the watched value changes; never without one (or once its sender is gone).
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGTERM and SIGINT: the first starts the drain, a second ends it early.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
