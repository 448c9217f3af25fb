//! The QUIC transport between agents (quinn): the same mutual TLS 1.3, the same certificates and
//! SPIFFE checks as HBONE over h2, to UDP :15008 of the destination pod. One QUIC connection per
//! (source identity, destination identity, destination address); one bidirectional stream per
//! TCP connection, opened with a CONNECT header (`header`) and answered with an HTTP status.
//! The server yields each accepted stream as a `tunnel::Connect`, exactly as the h2 server does.
//!
//! Chosen by MeshConfig `tunnel: quic`. Every agent serves both transports, so the choice is the
//! client's; where UDP does not get through (a handshake that times out, or is refused) the
//! destination is marked unreachable over QUIC, connections use h2, and a background probe
//! tries QUIC again every `REPROBE` (so only the first connection waits for the timeout).

pub mod client;
pub mod header;
pub mod server;
pub mod stream;

use std::{sync::Arc, time::Duration};

pub use client::QuicPool;
pub use stream::QuicStream;

/// ALPN of Weft's QUIC tunnel (not HTTP/3: a CONNECT header per stream, see `header`).
pub const ALPN_QUIC: &[u8] = b"weft-hbone-quic/1";
/// The same, with the connection id in the CONNECT header (header version 2). Both sides offer
/// it first and still speak /1, so agents of the previous version (which know only /1 and
/// refuse a version-2 header) keep interoperating while a DaemonSet rolls.
pub const ALPN_QUIC_V2: &[u8] = b"weft-hbone-quic/2";

/// The ALPN list both sides offer, most preferred first.
pub fn alpn() -> Vec<Vec<u8>> {
    vec![ALPN_QUIC_V2.to_vec(), ALPN_QUIC.to_vec()]
}
/// How long a client waits for a QUIC handshake before using h2 instead.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a destination marked unreachable over QUIC is probed again.
pub const REPROBE: Duration = Duration::from_secs(30);

/// The h2 tunnel's figures (`tunnel`): flow control (1 MiB per stream, 4 MiB per connection),
/// `MAX_STREAMS` concurrent streams, and the same liveness bound as h2's PING
/// (`KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` after the peer was last heard). Sending a
/// keep-alive restarts QUIC's idle timer, so the worst case is keep-alive + idle timeout: the
/// keep-alive goes at half the interval and the idle timeout is the rest of the bound.
fn transport() -> Arc<quinn::TransportConfig> {
    use crate::tunnel::{
        CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_STREAMS, STREAM_WINDOW,
    };
    let keep_alive = KEEPALIVE_INTERVAL / 2;
    let idle = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT - keep_alive;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(CONNECTION_WINDOW.into())
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(Some(
            idle.try_into().expect("idle timeout within QUIC's range"),
        ));
    Arc::new(t)
}
