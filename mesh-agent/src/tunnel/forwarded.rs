//! The client's address on an HBONE CONNECT: RFC 7239 `Forwarded: for="IP:port"`, sent by the
//! source agent for the application socket it captured.
//!
//! The tunnel's source IP is already the client pod's (tunnels are opened from inside its
//! netns) and mTLS proved who holds it, so the header adds only the port. It is believed only
//! as far as it agrees with the connection: an IP that differs from the verified peer's is
//! ignored (the application then sees the peer's IP and a port of the kernel's choosing), so a
//! peer can never make a delivery come from an address that is not its own. ztunnel sends no
//! such header to a workload's agent; its connections are delivered from its IP alone.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

pub use http::header::FORWARDED;

/// `for="IP:port"` (IPv6 in brackets, as RFC 7239 asks).
pub fn value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&format!("for=\"{client}\"")).expect("an address is a valid header")
}

/// The client's address for a tunnel whose verified peer is `peer`: its IP, with the port of
/// the last `for=` in `header` when that names the same IP; port 0 (none) otherwise.
pub fn client(header: Option<&HeaderValue>, peer: IpAddr) -> SocketAddr {
    let port = header
        .and_then(|h| h.to_str().ok())
        .and_then(last_for)
        .filter(|a| a.ip() == peer)
        .map_or(0, |a| a.port());
    SocketAddr::new(peer, port)
}

fn last_for(header: &str) -> Option<SocketAddr> {
    let element = header.rsplit(',').next()?;
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    value.trim_matches('"').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for a in ["10.1.2.3:4567", "[fd00::5]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(client(Some(&value(a)), a.ip()), a);
        }
    }

    #[test]
    fn another_ip_or_garbage_gives_the_peer_ip_without_port() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let other = value("10.0.0.1:1234".parse().unwrap());
        assert_eq!(client(Some(&other), peer), SocketAddr::new(peer, 0));
        for junk in [
            "for=unknown",
            "by=x",
            "for=\"10.0.0.9\"",
            "",
            "for=\"[zz]:1\"",
        ] {
            let h = HeaderValue::from_str(junk).unwrap();
            assert_eq!(client(Some(&h), peer), SocketAddr::new(peer, 0), "{junk}");
        }
        assert_eq!(client(None, peer), SocketAddr::new(peer, 0));
    }

    #[test]
    fn the_last_element_counts() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let h = HeaderValue::from_static("for=\"10.0.0.9:1\", for=\"10.0.0.9:2\"");
        assert_eq!(client(Some(&h), peer).port(), 2);
    }
}
