//! What every request of a worker shares. The worker (worker.rs) builds it from the agent's
//! snapshots; the request path (forward.rs) reads it.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    Arc,
};

use arc_swap::ArcSwap;

use super::{budget::RetryBudget, upstream::Upstreams};
use crate::{identity::CertManager, metrics::http::RequestRecord, state::State, tunnel};

pub struct Context {
    pub node: String,
    pub trust_domain: String,
    /// The latest snapshot's state (indexes rebuilt).
    pub state: ArcSwap<State>,
    /// The node's workload certificates, pushed by the agent (no CA client in a worker).
    pub certs: CertManager,
    /// HBONE connections, presenting the source workload's certificate.
    pub pool: tunnel::Pool,
    pub quic: tunnel::quic::QuicPool,
    /// Pooled HTTP connections to endpoints.
    pub upstreams: Arc<Upstreams>,
    pub budget: RetryBudget,
    /// Spreads requests over a backend's endpoints (round robin).
    pub next_endpoint: AtomicUsize,
    /// Where finished requests go (to the agent, for metrics and the access log).
    pub reports: tokio::sync::mpsc::Sender<RequestRecord>,
    /// Finished requests dropped because `reports` was full.
    pub reports_dropped: AtomicU64,
    /// Spans of this worker's requests, exported over OTLP as MeshConfig says.
    pub tracer: super::otlp::Tracer,
}

impl Context {
    pub fn new(
        node: String,
        trust_domain: String,
        certs: CertManager,
        reports: tokio::sync::mpsc::Sender<RequestRecord>,
    ) -> Self {
        Self {
            node,
            trust_domain,
            state: ArcSwap::from_pointee(State::default()),
            pool: tunnel::Pool::new(certs.clone()),
            quic: tunnel::quic::QuicPool::new(certs.clone()),
            certs,
            upstreams: Default::default(),
            budget: Default::default(),
            next_endpoint: AtomicUsize::new(0),
            reports,
            reports_dropped: AtomicU64::new(0),
            tracer: super::otlp::Tracer::new(super::otlp::Limits::default()),
        }
    }

    /// Hands a finished request to the agent; never waits (a full queue drops it, counted in
    /// `reports_dropped`).
    pub fn report(&self, record: RequestRecord) {
        if self.reports.try_send(record).is_err() {
            self.reports_dropped.fetch_add(1, Relaxed);
        }
    }
}
