//! What every request of a worker shares. The pool helper builds it (worker.rs) from the
//! agent's snapshots; the lead's server/forward code reads it.

use arc_swap::ArcSwap;

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
    /// Where finished requests go (to the agent, for metrics and the access log).
    pub reports: tokio::sync::mpsc::Sender<RequestRecord>,
}

impl Context {
    /// Hands a finished request to the agent; never waits (a full queue drops it, counted by
    /// the transport).
    pub fn report(&self, record: RequestRecord) {
        let _ = self.reports.try_send(record);
    }
}
