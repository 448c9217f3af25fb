//! The QUIC transport between agents (quinn): the same mutual TLS 1.3, the same certificates and
//! SPIFFE checks as HBONE over h2, to UDP :15008 of the destination pod. One QUIC connection per
//! (source identity, destination identity, destination address); one bidirectional stream per
//! TCP connection, opened with a CONNECT header (`header`) and answered with an HTTP status.
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
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Flow control as in the h2 tunnel: 1 MiB per stream, 4 MiB per connection.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((1u32 << 20).into())
        .receive_window((4u32 << 20).into())
        .send_window(4 << 20)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("idle timeout within QUIC's range"),
        ));
    Arc::new(t)
}

/// A UDP socket in the pod's netns, marked as the agent's: the pod's :15008 (opened with its
/// TCP listeners) or a client connection's.
pub fn udp_socket(
    netns: &crate::netns::Netns,
    addr: std::net::SocketAddr,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    netns.run(|| -> std::io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_mark(mesh_common::AGENT_MARK)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    })?
}
