//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS to the destination pod's :15008
//! (wire-compatible with Istio's ztunnel). `pool` is the client side, `server` the :15008 side,
//! `h2` adapts an HTTP/2 stream to AsyncRead/AsyncWrite. `quic` carries the same tunnels over
//! QUIC (UDP :15008); `deliver` is the last hop both share; `probe` is a handshake alone, for
//! `meshctl explain`;
//! `traceparent` is the connection id both agents log.

pub mod deliver;
pub mod h2;
pub mod pool;
pub mod probe;
pub mod quic;
pub mod server;
pub mod traceparent;

pub use self::h2::H2Stream;
pub use pool::Pool;

/// Largest HTTP/2 DATA frame accepted: fewer, larger frames cost less CPU per byte.
pub const MAX_FRAME: u32 = 256 * 1024;

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
