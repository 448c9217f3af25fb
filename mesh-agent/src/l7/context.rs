//! What every request of a worker shares. The worker (worker.rs) builds it from the agent's
//! snapshots; the request path (forward.rs) reads it.

use std::sync::{atomic::AtomicUsize, Arc};

use arc_swap::ArcSwap;

use super::{budget::RetryBudget, outbox::Outbox, upstream::Upstreams};
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
    /// Where finished requests go: counted and logged, then sent to the agent in batches.
    pub outbox: Arc<Outbox>,
    /// Spans of this worker's requests, exported over OTLP as MeshConfig says.
    pub tracer: super::otlp::Tracer,
    /// Cancelled when the agent drains: connections finish their in-flight requests and close.
    pub drain: tokio_util::sync::CancellationToken,
}

impl Context {
    pub fn new(
        node: String,
        trust_domain: String,
        certs: CertManager,
        outbox: Arc<Outbox>,
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
            outbox,
            tracer: super::otlp::Tracer::new(super::otlp::Limits::default()),
            drain: Default::default(),
        }
    }

    /// Counts a finished request and keeps its access-log line for the next batch to the
    /// agent; never waits.
    pub fn report(&self, record: RequestRecord) {
        self.outbox.add(&record);
    }
}
