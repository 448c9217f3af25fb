//! The agent's in-pod listeners and what they do with a connection.
//!
//! - outbound (127.0.0.1:15001, [::1]:15001): connections the connect hooks captured; the
//!   original destination comes from the eBPF map, the onward leg from `onward` (an HBONE
//!   tunnel to a meshed destination, plain TCP otherwise).
//! - inbound (:15006): plaintext connections sk_lookup steered; delivered to the application
//!   unless the pod's PeerAuthentication is STRICT.
//! - HBONE (:15008, TCP and UDP): mTLS tunnels from other agents; `tunnel` terminates them
//!   and yields each CONNECT, `inbound::hbone` admits and delivers it.

pub mod balance;
pub mod copy;
pub mod inbound;
pub mod lifecycle;
pub mod listeners;
pub mod live;
pub mod onward;
pub mod outbound;
pub mod plan;
pub mod record;

use std::{
    net::IpAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
};

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
    tunnel::{self, H2Stream, TunnelStream},
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
    pub metrics: Arc<crate::metrics::Metrics>,
    pub access_log: crate::metrics::AccessLog,
    /// Open inbound connections, re-decided when policies change.
    pub live: Arc<live::Live>,
    /// The node's L7 pool: takes connections the plan hands to L7. None: no pool (such
    /// connections are refused).
    pub l7: Option<crate::l7::Hand>,
    /// The addresses ServiceEntry hosts resolve to (refreshed by `app`).
    pub egress_hosts: ArcSwap<std::collections::HashMap<String, Vec<IpAddr>>>,
    /// Hand-over and drain: when accept loops end, QUIC may start, connections are counted.
    pub lifecycle: Arc<lifecycle::Lifecycle>,
}

pub struct Mtls {
    pub certs: CertManager,
    pub pool: tunnel::Pool,
    pub quic: tunnel::quic::QuicPool,
}

impl Mtls {
    /// Forgets the pooled tunnel connections `state` has no use for any more (`tunnel::prune`).
    pub fn prune_pools(&self, state: &State, node: &str, trust_domain: &str) {
        tunnel::prune(&self.pool, &self.quic, state, node, trust_domain);
    }

    /// The pools' sizes, for /config_dump.
    pub fn pool_sizes(&self) -> tunnel::PoolSizes {
        let (quic, quic_unreachable) = self.quic.sizes();
        tunnel::PoolSizes {
            h2: self.pool.size(),
            quic,
            quic_unreachable,
        }
    }
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
    /// How inbound connections reach the application: from the client's address, or from
    /// 127.0.0.6 where the pod's kernel lacks something (`netns::transparent`).
    pub delivery: crate::netns::transparent::Delivery,
}

impl PodContext {
    /// The authorization verdict for an inbound connection to this pod; a denial is logged
    /// with the deciding policy.
    pub fn authorize(
        &self,
        state: &State,
        conn: &crate::policy::Connection,
    ) -> crate::policy::Verdict {
        let Some(pod) = state.pods.get(&self.key) else {
            return crate::policy::Verdict {
                allowed: false,
                policy: None,
                reason: "the pod is no longer in the configuration".into(),
            };
        };
        let v = crate::policy::evaluate(state, pod, conn);
        let principal = conn.principal.as_deref().unwrap_or("(plaintext)");
        let policy = v.policy.as_deref().unwrap_or("-");
        if v.allowed {
            tracing::debug!(pod = %self.key, principal, policy, reason = %v.reason, "allowed");
        } else {
            tracing::warn!(pod = %self.key, principal, src = %conn.source_ip, port = conn.port, policy, reason = %v.reason, "connection denied by authorization policy");
        }
        v
    }
}

/// Starts the accept loops of a pod's listeners. Aborting the returned tasks closes the
/// listeners; connections already accepted run on in their own tasks. When the agent drains,
/// the loops end by themselves (the listeners close here; a successor holding the same sockets
/// keeps accepting) and the HBONE servers send GOAWAY. The QUIC endpoints start once this agent
/// may read the pods' UDP sockets (a predecessor has let go of them).
pub fn serve(ctx: Arc<PodContext>, listeners: InpodListeners) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let drain = &ctx.shared.lifecycle.drain;
    for l in listeners.outbound {
        tasks.push(tokio::spawn(accept(
            ctx.clone(),
            l,
            drain.clone(),
            outbound::handle,
        )));
    }
    for l in listeners.inbound {
        tasks.push(tokio::spawn(accept(
            ctx.clone(),
            l,
            drain.clone(),
            inbound::handle,
        )));
    }
    for l in listeners.hbone {
        tasks.push(tokio::spawn(inbound::hbone::serve_h2(ctx.clone(), l)));
    }
    if let Some(tls) = ctx.hbone_tls.clone() {
        for socket in listeners.quic {
            let ctx = ctx.clone();
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let lifecycle = ctx.shared.lifecycle.clone();
                tokio::select! {
                    _ = lifecycle.quic_opened() => {}
                    _ = lifecycle.drain.cancelled() => return,
                }
                match tunnel::quic::server::endpoint(socket, &tls) {
                    Ok(ep) => inbound::hbone::serve_quic(ctx, ep).await,
                    Err(e) => {
                        tracing::warn!(pod = %ctx.key, error = %e, "QUIC endpoint not started; peers will use h2")
                    }
                }
            }));
        }
    }
    tasks
}

/// The accept loop of a pod's TCP listener: from when this agent accepts (`lifecycle`) until
/// it drains, each connection to `handle` in a task of its own.
async fn accept<F, Fut>(
    ctx: Arc<PodContext>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(Arc<PodContext>, TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let lifecycle = ctx.shared.lifecycle.clone();
    let accepting = lifecycle.accepting();
    crate::netns::socket::accept_loop(listener, accepting, stop, move |stream, peer| {
        handle(ctx.clone(), stream, peer)
    })
    .await
}

/// Ends a connection as a failure, so the peer sees a refusal at once instead of a hang or a
/// clean end of stream that would look like success.
pub trait Reset {
    fn reset(&mut self);
}

impl Reset for TcpStream {
    fn reset(&mut self) {
        crate::netns::socket::reset(self)
    }
}

impl Reset for H2Stream {
    fn reset(&mut self) {
        H2Stream::reset(self)
    }
}

impl Reset for tunnel::quic::QuicStream {
    fn reset(&mut self) {
        tunnel::quic::QuicStream::reset(self)
    }
}

impl Reset for TunnelStream {
    fn reset(&mut self) {
        TunnelStream::reset(self)
    }
}

pub fn reset(mut stream: TcpStream) {
    stream.reset()
}

/// How long a connection closed at the drain deadline may take to send its end.
const DEADLINE_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies both ways until the connection ends, counting into the metrics of `rec` as bytes
/// move, then writes its access-log line (the one per-connection record). With `watch` (inbound connections), a policy change
/// that denies the connection closes it: both sides reset.
pub async fn relay<D, U>(
    shared: &Shared,
    down: D,
    mut up: U,
    rec: record::Record,
    watch: Option<live::Registration>,
) where
    D: AsyncRead + AsyncWrite + Unpin + Reset,
    U: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let counters = shared.metrics.tcp(rec.labels(crate::metrics::flags::NONE));
    counters.opened.fetch_add(1, Relaxed);
    let mut down = copy::Counted::new(down, counters.clone());
    let revoked = async {
        match watch {
            Some(mut w) => (&mut w.closed).await.ok(),
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        r = copy::bidirectional(&mut down, &mut up) => match r {
            Ok(_) => record::End::Closed { error: None },
            Err(e) => record::End::Closed { error: Some(e.to_string()) },
        },
        Some(v) = revoked => {
            down.reset();
            up.reset();
            tracing::warn!(policy = v.policy.as_deref().unwrap_or("-"), reason = %v.reason,
                "open connection closed: authorization policy changed and denies it now");
            record::End::Revoked { policy: v.policy, reason: format!("policy changed: {}", v.reason) }
        }
        _ = shared.lifecycle.deadline.cancelled() => {
            // The drain deadline: end both sides as a finished stream (FIN, END_STREAM), so the
            // peers see a clean close, not a reset.
            use tokio::io::AsyncWriteExt as _;
            let _ = tokio::time::timeout(DEADLINE_CLOSE, async {
                let _ = down.shutdown().await;
                let _ = up.shutdown().await;
            }).await;
            tracing::info!("open connection closed at the drain deadline");
            record::End::Closed { error: Some("closed at the agent's drain deadline".into()) }
        }
    };
    counters.closed.fetch_add(1, Relaxed);
    let bytes = (down.received, down.sent);
    // The access-log line is the per-connection record; the span's debug line only ties it to
    // the rest of this connection's diagnostics.
    if let record::End::Closed { error } = &end {
        tracing::debug!(
            received = bytes.0,
            sent = bytes.1,
            error = error.as_deref(),
            "connection ended"
        );
    }
    rec.log(shared, bytes, end);
}
