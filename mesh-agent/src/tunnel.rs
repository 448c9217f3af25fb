//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS to the destination pod's :15008
//! (wire-compatible with Istio's ztunnel). `pool` is the client side, `server` the :15008 side,
//! `h2` adapts an HTTP/2 stream to AsyncRead/AsyncWrite. `quic` carries the same tunnels over
//! QUIC (UDP :15008); `deliver` is the last hop both share; `probe` is a handshake alone, for
//! `meshctl explain`.

pub mod deliver;
pub mod h2;
pub mod pool;
pub mod probe;
pub mod quic;
pub mod server;

pub use self::h2::H2Stream;
pub use pool::Pool;

/// Largest HTTP/2 DATA frame accepted: fewer, larger frames cost less CPU per byte.
pub const MAX_FRAME: u32 = 256 * 1024;
