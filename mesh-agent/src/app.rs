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
    proxy::{Mtls, Shared},
    redirect::Redirect,
    source,
    state::State,
    tunnel,
};
use enrollment::Enrollment;

pub async fn run(cfg: AgentConfig, logging: Option<admin::LogControl>) -> anyhow::Result<()> {
    netns::init();
    info!(config = %serde_json::to_string(&cfg)?, "starting mesh-agent");
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
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
    });
    let reports = l7_pool
        .as_ref()
        .and_then(|p| p.reports())
        .map(|rx| tokio::spawn(count_requests(shared.clone(), rx)));
    let mut cert_changes = shared.mtls.as_ref().map(|m| m.certs.changes());
    let status = Arc::new(RwLock::new(Status::new(&cfg)));
    status.write().expect("status lock").l7_pool = l7_pool.clone();
    let admin = admin::serve(
        cfg.admin_addr,
        status.clone(),
        redirect.maps.clone(),
        shared.clone(),
        logging,
    )
    .await
    .with_context(|| format!("binding admin endpoint {}", cfg.admin_addr))?;
    let metrics_server = metrics::server::serve(cfg.metrics_addr, metrics)
        .await
        .with_context(|| format!("binding metrics endpoint {}", cfg.metrics_addr))?;
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
    );
    // weft-cni's requests (enroll a new pod before its first packet) join the loop below.
    enrollment.restore_sandboxes(&cfg.state_dir);
    let (cni_server, mut cni_calls) =
        cni::serve(&cfg.state_dir).context("binding the weft-cni socket")?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
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
            _ = &mut shutdown => break,
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
        let mut s = status.write().expect("status lock");
        s.pods = enrollment.status();
        s.enrollment_errors = enrollment.failures();
        s.enrollment_notices = enrollment.notices();
        s.config_errors = loaded.errors;
        s.config_unreadable = loaded.unreadable;
        s.ignored_kinds = loaded.ignored;
        s.state = shared.state.load_full();
        s.ready = true;
        drop(s);
        enrollment.answer_calls(&state);
    }
    // Pods stay hooked (pinned links) and fail closed until the next agent takes over.
    info!("shutting down; enrolled pods stay hooked");
    admin.abort();
    metrics_server.abort();
    cni_server.task.abort();
    resolver.abort();
    if let Some(r) = reports {
        r.abort();
    }
    Ok(())
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
