//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS to the destination pod's :15008
//! (wire-compatible with Istio's ztunnel). A pure transport: `pool` is the client side (one
//! pooled connection per identity pair and address), `server` the :15008 side, which yields each
//! accepted CONNECT (`incoming::Connect`) with the verified peer identity; what to admit and
//! where to deliver it is `proxy`'s (inbound) decision. `h2` adapts an HTTP/2 stream to
//! AsyncRead/AsyncWrite; `quic` carries the same tunnels over QUIC (UDP :15008); `probe` is a
//! handshake alone, for `meshctl explain`; `traceparent` is the
//! connection id both agents log (W3C traceparent on h2, a header field on QUIC).
//!
//! Every step a peer controls is bounded, with the figures below, shared by h2 and QUIC: the
//! TCP connect (`config::CONNECT_TIMEOUT`), the TLS and HTTP/2 handshakes, the answer to a
//! CONNECT, and liveness (PING / QUIC keep-alive), so a dead peer costs seconds, not minutes.

pub mod forwarded;
pub mod h2;
pub mod incoming;
pub mod keepalive;
pub mod pool;
pub mod probe;
pub mod quic;
pub mod server;
pub mod slot;
pub mod traceparent;

use std::time::Duration;

pub use self::h2::H2Stream;
pub use incoming::{Connect, TunnelStream};
pub use pool::Pool;

/// Largest HTTP/2 DATA frame accepted: fewer, larger frames cost less CPU per byte.
pub const MAX_FRAME: u32 = 256 * 1024;
/// A TLS handshake, and the HTTP/2 handshake after it, each get this long (client and server).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the answer to a CONNECT (the destination's agent admitting the
/// stream and connecting to the application) before it gives up and resets the stream.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Liveness of an established tunnel connection: a PING (h2) or a keep-alive (QUIC) after
/// this much quiet...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and the connection is dropped when the peer has not answered for this long. QUIC's
/// keep-alive and idle timeout are derived from the same two figures (`quic::transport`), so
/// both transports drop a dead peer within `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent streams per tunnel connection a server accepts (ztunnel's figure); a client opens
/// another connection rather than queue beyond it.
pub const MAX_STREAMS: u32 = 200;
/// Largest header list a server accepts on a CONNECT (ztunnel's figure); larger gets 431.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Per-stream and per-connection receive windows: enough for a fast stream, bounded memory.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;

/// The destination's agent answered a tunnel request with a status other than 200 (403: its
/// authorization policy denied the source). Carried inside an `io::Error`, so the source side
/// can tell a denial from a failure.
#[derive(Debug)]
pub struct TunnelRefused {
    pub destination: String,
    pub status: u16,
}

impl std::fmt::Display for TunnelRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        write!(
            f,
            "tunnel refused by {}: {} {reason}",
            self.destination, self.status
        )
    }
}

impl std::error::Error for TunnelRefused {}

impl TunnelRefused {
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, self)
    }

    /// Whether `e` is a refusal by the destination's authorization policy.
    pub fn is_denial(e: &std::io::Error) -> bool {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<TunnelRefused>())
            .is_some_and(|r| r.status == 403)
    }
}

/// Forgets the pooled tunnel connections `state` has no use for any more: those from an
/// identity no pod of `node` has, and those to an address whose pod is gone or now has another
/// identity. Called on every state change (by the agent and by each L7 worker for its own
/// pools), so the pools stay flat under churn.
pub fn prune(
    pool: &Pool,
    quic: &quic::QuicPool,
    state: &crate::state::State,
    node: &str,
    trust_domain: &str,
) {
    use crate::identity::Identity;
    let identity =
        |p: &crate::state::Pod| Identity::new(trust_domain, &p.key.namespace, &p.service_account);
    let local: std::collections::HashSet<Identity> =
        state.enrolled_pods(node).map(identity).collect();
    let keep = |source: &Identity, destination: &Identity, addr: std::net::SocketAddr| {
        local.contains(source)
            && state
                .pod_by_ip(addr.ip())
                .is_some_and(|p| identity(p) == *destination)
    };
    pool.retain(keep);
    quic.retain(keep, |addr| state.pod_by_ip(addr.ip()).is_some());
}

/// How many tunnel connections the client pools hold, for /config_dump: they must follow the
/// state (pods and identities that leave take their connections with them).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolSizes {
    /// Pooled HTTP/2 connections.
    pub h2: usize,
    /// Pooled QUIC connections.
    pub quic: usize,
    /// Addresses remembered as unreachable over QUIC.
    pub quic_unreachable: usize,
}
