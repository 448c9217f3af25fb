//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS to the destination pod's :15008
//! (wire-compatible with Istio's ztunnel). `pool` is the client side, `server` the :15008 side,
//! `h2` adapts an HTTP/2 stream to AsyncRead/AsyncWrite.

pub mod h2;
pub mod pool;
pub mod server;

pub use self::h2::H2Stream;
pub use pool::Pool;

/// Largest HTTP/2 DATA frame accepted: fewer, larger frames cost less CPU per byte.
pub const MAX_FRAME: u32 = 256 * 1024;
