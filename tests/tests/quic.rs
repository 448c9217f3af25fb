//! The QUIC transport between agents (MeshConfig `tunnel: quic`): what crosses the wire, the
//! same identity checks as HBONE over h2, a live switch back to h2, and the fallback to h2 where
//! UDP is blocked. Run as root (`cargo xtask test`).

use std::{net::SocketAddr, time::Duration};

use mesh_agent::identity::Identity;
use weft_tests::{
    eventually, features,
    fixture::{mesh_config, set_tunnel, TRUST_DOMAIN as TD},
    netns, pattern, peer, wire, Client, Pod, TwoNodeMesh,
};

fn quic_mesh() -> TwoNodeMesh {
    let m = TwoNodeMesh::start(3600, &[("mesh-config", &mesh_config("quic"))]);
    for a in [&m.a1, &m.a2] {
        a.wait_tunnel("quic");
    }
    m
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

fn hbone(p: &Pod) -> SocketAddr {
    p.addr(15008)
}

/// The packets between the client's node and `pod`, either way.
fn with(segments: &[wire::Segment], pod: &Pod) -> Vec<wire::Segment> {
    segments
        .iter()
        .filter(|s| s.dst == pod.ip || s.src == pod.ip)
        .cloned()
        .collect()
}

fn marker() -> Vec<u8> {
    (0..64).map(pattern).collect()
}

#[test]
fn quic_carries_meshed_traffic_encrypted_and_switches_live() {
    if !features::require(
        "quic_carries_meshed_traffic_encrypted_and_switches_live",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = quic_mesh();
    let n1 = m.topo.node_named("n1").clone();
    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let mut c = Client::start(&mut m.topo, &m.client);
    let sent = 1u64 << 20;
    let r = c.connect(m.server.addr(8080), sent);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(
        r.server_saw_peer().ip().to_string(),
        m.client.ip.to_string(),
        "delivered by the server's agent from the client's own address"
    );
    let quic = with(&tap.finish(), &m.server);
    assert!(
        quic.iter()
            .all(|s| s.udp && (s.dst_port == 15008 || s.src_port == 15008)),
        "meshed traffic is only QUIC on UDP :15008 (no TCP)"
    );
    assert!(
        quic.iter().any(wire::is_quic_initial),
        "no QUIC handshake seen"
    );
    let to_server: usize = quic
        .iter()
        .filter(|s| s.dst == m.server.ip)
        .map(|s| s.payload.len())
        .sum();
    assert!(
        to_server as u64 >= sent,
        "the transfer went over QUIC ({to_server} bytes)"
    );
    assert!(
        !wire::contains(&wire::all_bytes(&quic), &marker()),
        "plaintext marker crossed the wire"
    );
    // Both reporters' access-log lines: the identities proved, and the transport.
    let dst = m.server.addr(8080).to_string();
    eventually(
        "identities and transport in the access logs",
        Duration::from_secs(5),
        || {
            let line = |a: &weft_tests::Agent, reporter: &str| {
                a.access_log().into_iter().find(|l| {
                    l["reporter"] == reporter
                        && l["original_dst"] == dst.as_str()
                        && l["transport"] == "quic"
                })
            };
            let (src, dst) = (line(&m.a1, "source")?, line(&m.a2, "destination")?);
            assert_eq!(
                src["dst"]["identity"], "spiffe://cluster.local/ns/mesh/sa/server",
                "{src}"
            );
            assert_eq!(
                dst["src"]["identity"], "spiffe://cluster.local/ns/mesh/sa/client",
                "{dst}"
            );
            Some(())
        },
    );

    // Live switch to h2: the next connection is HBONE over TCP, no restart.
    set_tunnel(&m.topo, &[&m.a1, &m.a2], "h2");
    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let r = c.connect(m.server.addr(8080), 64 * 1024);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    let h2: Vec<_> = with(&tap.finish(), &m.server)
        .into_iter()
        .filter(|s| !s.udp)
        .collect();
    assert!(
        h2.iter().any(|s| s.payload.starts_with(&[0x16, 0x03])),
        "after the switch, a TLS handshake on TCP :15008"
    );
    assert!(
        h2.iter()
            .all(|s| s.dst_port == 15008 || s.src_port == 15008),
        "h2 tunnels use TCP :15008 only"
    );
}

#[test]
fn quic_falls_back_to_h2_where_udp_is_blocked() {
    if !features::require(
        "quic_falls_back_to_h2_where_udp_is_blocked",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = quic_mesh();
    // The server's node drops the tunnel's UDP in both directions, as a firewall would.
    let n2 = m.topo.node_named("n2").clone();
    netns::nft(
        &n2.netns,
        "table inet weft_test {\n  chain forward {\n    type filter hook forward priority 0;\n    \
         udp dport 15008 drop\n    udp sport 15008 drop\n  }\n}\n",
    );
    let n1 = m.topo.node_named("n1").clone();
    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let mut c = Client::start(&mut m.topo, &m.client);
    for _ in 0..5 {
        let r = c.connect(m.server.addr(8080), 64 * 1024);
        assert!(r.ok() && r.intact(), "{:?}", r.raw);
    }
    let seen = with(&tap.finish(), &m.server);
    assert!(
        seen.iter().any(wire::is_quic_initial),
        "QUIC was tried first"
    );
    assert!(
        !seen.iter().any(|s| s.udp && s.src == m.server.ip),
        "nothing came back over UDP (the block works)"
    );
    let tcp: Vec<_> = seen.iter().filter(|s| !s.udp).cloned().collect();
    assert!(
        tcp.iter()
            .any(|s| s.dst_port == 15008 && s.payload.starts_with(&[0x16, 0x03])),
        "the fallback is mTLS on TCP :15008"
    );
    assert!(
        !wire::contains(&wire::all_bytes(&seen), &marker()),
        "plaintext marker crossed the wire"
    );
    let warnings =
        m.a1.log()
            .matches("QUIC does not get through; using h2")
            .count();
    assert_eq!(
        warnings, 1,
        "one warning, then h2 straight away for this destination"
    );
}

#[test]
fn quic_refuses_bad_peers_and_keeps_serving() {
    if !features::require(
        "quic_refuses_bad_peers_and_keeps_serving",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = quic_mesh();
    let from = m.client.netns.clone();
    let good = m.mint("mesh", "client");
    let roots = good.roots.clone();
    let server_id = id("mesh", "server");
    let connect = |me: &peer::Minted, expect: &Identity, target: SocketAddr| {
        peer::connect_quic(
            &from,
            me,
            &roots,
            hbone(&m.server),
            expect,
            target,
            b"hello",
        )
    };

    let (ok, echoed) = connect(&good, &server_id, m.server.addr(8080));
    assert!(matches!(ok, peer::Outcome::Status(200)), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&echoed).contains("\"server\":\"server\""),
        "{}",
        String::from_utf8_lossy(&echoed)
    );

    let (wrong, _) = connect(&good, &id("mesh", "imposter"), m.server.addr(8080));
    assert!(
        matches!(&wrong, peer::Outcome::Refused(e) if e.contains("imposter")),
        "the client side refuses a server that is not the expected identity: {wrong:?}"
    );

    let evil = m.mint_foreign("mesh", "client");
    let (foreign, _) = connect(&evil, &server_id, m.server.addr(8080));
    assert!(matches!(foreign, peer::Outcome::Refused(_)), "{foreign:?}");

    let (other, _) = connect(&good, &server_id, m.plain.addr(8080));
    assert!(matches!(other, peer::Outcome::Status(403)), "{other:?}");
    let (closed, _) = connect(&good, &server_id, m.server.addr(9999));
    assert!(matches!(closed, peer::Outcome::Status(503)), "{closed:?}");

    // Garbage datagrams, and a long header that claims to be a QUIC v1 Initial.
    let mut fake_initial = vec![0xc3, 0, 0, 0, 1, 8];
    fake_initial.extend_from_slice(&[0xab; 1200]);
    peer::udp_garbage(
        &from,
        hbone(&m.server),
        &[
            b"\x00\x01\x02garbage\xff\xfe",
            b"GET / HTTP/1.1\r\n\r\n",
            &fake_initial,
        ],
    );

    // Refused streams are access-logged with their reason and flag; a refused handshake has
    // no connection to log, so only the agent log names it.
    for (target, flag, reason) in [
        (m.plain.addr(8080), "NR", "is not this pod"),
        (m.server.addr(9999), "UF", "delivery to"),
    ] {
        let line = eventually(
            "the refusal in the access log",
            Duration::from_secs(5),
            || {
                m.a2.access_log().into_iter().find(|l| {
                    l["original_dst"] == target.to_string().as_str()
                        && l["verdict"] != "allow"
                        && l["transport"] == "quic"
                })
            },
        );
        assert_eq!(line["response_flags"], flag, "{line}");
        assert!(line["reason"].as_str().unwrap().contains(reason), "{line}");
    }
    assert!(m.a2.log().contains("hbone-quic: mTLS handshake refused"));
    // Unharmed: the real client still gets through, over QUIC.
    let mut c = Client::start(&mut m.topo, &m.client);
    let after = c.connect(m.server.addr(8080), 64 * 1024);
    assert!(after.ok() && after.intact(), "{:?}", after.raw);
    assert!(
        !m.a1.log().contains("QUIC does not get through"),
        "QUIC kept working"
    );
}
