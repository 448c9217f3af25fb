//! The agent's in-pod listeners and what they do with a connection.
//!
//! - outbound (127.0.0.1:15001, [::1]:15001): connections the connect hooks captured; the
//!   original destination comes from the eBPF map, the onward leg from `onward` (an HBONE
//!   tunnel to a meshed destination, plain TCP otherwise).
//! - inbound (:15006): plaintext connections sk_lookup steered; delivered to the application
//!   unless the pod's PeerAuthentication is STRICT.
//! - HBONE (:15008): mTLS tunnels from other agents (`tunnel::server`).

pub mod balance;
pub mod copy;
pub mod inbound;
pub mod listeners;
pub mod onward;
pub mod outbound;

use std::{net::IpAddr, sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    task::JoinHandle,
};

pub use listeners::InpodListeners;

use crate::{
    identity::{CertManager, Identity},
    netns::Netns,
    redirect::Maps,
    state::{PodKey, State},
    tunnel::{self, H2Stream},
};

/// What every connection handler of the node shares.
pub struct Shared {
    pub node: String,
    pub trust_domain: String,
    pub state: ArcSwap<State>,
    /// Endpoint choice for connections to Services.
    pub balancer: balance::Balancer,
    /// Present when the agent has a CA: meshed traffic is then carried in mTLS tunnels.
    pub mtls: Option<Mtls>,
}

pub struct Mtls {
    pub certs: CertManager,
    pub pool: tunnel::Pool,
    pub quic: tunnel::quic::QuicPool,
}

/// What a connection handler knows about the pod it serves.
pub struct PodContext {
    pub key: PodKey,
    pub ip: IpAddr,
    pub identity: Identity,
    pub netns: Netns,
    pub maps: Arc<Maps>,
    pub shared: Arc<Shared>,
    /// The TLS settings of this pod's HBONE endpoint (h2 and QUIC), when the agent has a CA.
    /// Built once: certificates are resolved per handshake.
    pub hbone_tls: Option<Arc<rustls::ServerConfig>>,
}

impl PodContext {
    /// The authorization verdict for an inbound connection to this pod: None when allowed,
    /// else the reason (naming the deciding policy), which is also logged.
    pub fn authorize(&self, conn: &crate::policy::Connection) -> Option<String> {
        let state = self.shared.state.load();
        let pod = state.pods.get(&self.key)?;
        let v = crate::policy::evaluate(&state, pod, conn);
        let principal = conn.principal.as_deref().unwrap_or("(plaintext)");
        let policy = v.policy.as_deref().unwrap_or("-");
        if v.allowed {
            tracing::debug!(pod = %self.key, principal, policy, reason = %v.reason, "allowed");
            return None;
        }
        tracing::warn!(pod = %self.key, principal, src = %conn.source_ip, port = conn.port, policy, reason = %v.reason, "connection denied by authorization policy");
        Some(match &v.policy {
            Some(p) => format!("denied by authorization policy {p}: {}", v.reason),
            None => format!("denied by authorization: {}", v.reason),
        })
    }
}

/// Starts the accept loops of a pod's listeners. Aborting the returned tasks closes the
/// listeners; connections already accepted run on in their own tasks.
pub fn serve(ctx: Arc<PodContext>, listeners: InpodListeners) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for l in listeners.outbound {
        tasks.push(tokio::spawn(outbound::serve(ctx.clone(), l)));
    }
    for l in listeners.inbound {
        tasks.push(tokio::spawn(inbound::serve(ctx.clone(), l)));
    }
    for l in listeners.hbone {
        tasks.push(tokio::spawn(tunnel::server::serve(ctx.clone(), l)));
    }
    if let Some(tls) = &ctx.hbone_tls {
        for socket in listeners.quic {
            match tunnel::quic::server::endpoint(socket, tls) {
                Ok(ep) => tasks.push(tokio::spawn(tunnel::quic::server::serve(ctx.clone(), ep))),
                Err(e) => {
                    tracing::warn!(pod = %ctx.key, error = %e, "QUIC endpoint not started; peers will use h2")
                }
            }
        }
    }
    tasks
}

/// Ends a connection as a failure, so the peer sees a refusal at once instead of a hang or a
/// clean end of stream that would look like success.
pub trait Reset {
    fn reset(self);
}

impl Reset for TcpStream {
    fn reset(self) {
        // A zero linger turns close into RST; it never blocks.
        let _ = socket2::SockRef::from(&self).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl Reset for H2Stream {
    fn reset(self) {
        H2Stream::reset(self)
    }
}

impl Reset for tunnel::quic::QuicStream {
    fn reset(self) {
        tunnel::quic::QuicStream::reset(self)
    }
}

pub fn reset(stream: TcpStream) {
    stream.reset()
}

/// Copies both ways until the connection ends and logs its one closing line (bytes, duration):
/// the per-connection record, inside the caller's span.
pub async fn relay<D, U>(down: D, up: U, start: Instant)
where
    D: AsyncRead + AsyncWrite + Unpin + Reset,
    U: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let duration_ms = |s: Instant| s.elapsed().as_millis() as u64;
    match copy::bidirectional(down, up).await {
        Ok(t) => tracing::info!(
            sent = t.sent,
            received = t.received,
            duration_ms = duration_ms(start),
            "connection closed"
        ),
        Err(e) => tracing::info!(error = %e, duration_ms = duration_ms(start), "connection reset"),
    }
}
