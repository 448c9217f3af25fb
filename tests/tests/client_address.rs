//! What the application sees: meshed connections reach it from the client pod's own address
//! (the tunnel's verified source IP, and over h2 the client socket's port), the replies never
//! leave the pod toward that address, a pod outside the mesh is untouched, and a pod whose
//! kernel lacks what this needs is delivered from 127.0.0.6 with the missing piece named.
//! Run as root (`cargo xtask test`).

use std::{net::SocketAddr, process::Command};

use weft_tests::{features, fixture::mesh_config, netns, probe, wire, Client, Pod, TwoNodeMesh};

/// The packets the server pod sent from its application's port toward the client pod: a reply
/// that left by the pod's default route instead of coming back to the agent.
fn leaked(segments: &[wire::Segment], server: &Pod, client: &Pod, port: u16) -> usize {
    segments
        .iter()
        .filter(|s| s.src == server.ip && s.src_port == port && s.dst == client.ip)
        .count()
}

fn local_port(r: &probe::ConnectResult) -> u16 {
    r.raw["local"]
        .as_str()
        .and_then(|l| l.parse::<SocketAddr>().ok())
        .expect("the client's local address")
        .port()
}

/// `ip rule` in a pod's netns.
fn rules(pod: &Pod) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["rule", "show"]);
    netns::command_in(&mut cmd, &pod.netns, None).expect("pod netns");
    let out = cmd.output().expect("ip rule");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn delivers_from(m: &TwoNodeMesh, pod: &Pod) -> String {
    let p = m.a2.wait_enrolled(pod);
    p["delivers_from"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn h2_delivery_shows_the_client_pod_address_and_port_and_replies_stay_in_the_pod() {
    if !features::require(
        "h2_delivery_shows_the_client_pod_address_and_port_and_replies_stay_in_the_pod",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    assert_eq!(delivers_from(&m, &m.server), "the client's address");
    let tap = wire::WireTap::start(&m.server.netns, "eth0");
    let mut c = Client::start(&mut m.topo, &m.client);
    let r = c.connect(m.server.addr(8080), 1 << 20);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    let saw = r.server_saw_peer();
    assert_eq!(saw.ip(), m.client.ip, "{:?}", r.raw);
    assert_eq!(
        saw.port(),
        local_port(&r),
        "the client socket's own port: {:?}",
        r.raw
    );
    let segments = tap.finish();
    assert!(
        segments
            .iter()
            .any(|s| s.dst_port == 15008 || s.src_port == 15008),
        "the tap saw the tunnel"
    );
    assert_eq!(
        leaked(&segments, &m.server, &m.client, 8080),
        0,
        "no reply left the server pod for the client's address"
    );
    // The fwmark rule is the enrolled pod's; the pod outside the mesh has none.
    let table = mesh_common::delivery::TABLE.to_string();
    assert!(rules(&m.server).contains(&table), "{}", rules(&m.server));
    assert!(!rules(&m.plain).contains(&table), "{}", rules(&m.plain));
    // ... and a connection to it arrives as sent: from the client pod's IP (no agent between).
    let plain = c.connect(m.plain.addr(8080), 4096);
    assert!(plain.ok() && plain.intact(), "{:?}", plain.raw);
    assert_eq!(plain.server_saw_peer().ip(), m.client.ip);
    // explain names the address the application sees.
    let (_, out) = m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        &m.server.addr(8080).to_string(),
    ]);
    assert!(
        out.contains(&format!("the application sees {}", m.client.ip)),
        "{out}"
    );
}

#[test]
fn a_thousand_parallel_connections_each_see_their_own_address_and_port() {
    if !features::require(
        "a_thousand_parallel_connections_each_see_their_own_address_and_port",
        features::CAPTURE,
    ) {
        return;
    }
    let m = TwoNodeMesh::start(3600, &[]);
    let r = probe::run(
        &m.client,
        &["parallel", &m.server.addr(8080).to_string(), "1000"],
    );
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(
        r["server_saw_ips"],
        serde_json::json!([m.client.ip.to_string()]),
        "{r}"
    );
    assert_eq!(r["server_saw_distinct"], 1000, "{r}");
    assert_eq!(r["server_saw_own_port"], 1000, "{r}");
}

#[test]
fn quic_delivery_shows_the_client_pod_address() {
    if !features::require(
        "quic_delivery_shows_the_client_pod_address",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[("mesh-config", &mesh_config("quic"))]);
    for a in [&m.a1, &m.a2] {
        a.wait_tunnel("quic");
    }
    let tap = wire::WireTap::start(&m.server.netns, "eth0");
    let mut c = Client::start(&mut m.topo, &m.client);
    let r = c.connect(m.server.addr(8080), 1 << 20);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(r.server_saw_peer().ip(), m.client.ip, "{:?}", r.raw);
    let segments = tap.finish();
    assert!(
        segments
            .iter()
            .all(|s| s.udp || s.src != m.server.ip || s.src_port != 8080),
        "QUIC carried it"
    );
    assert_eq!(leaked(&segments, &m.server, &m.client, 8080), 0);
}

#[test]
fn a_replaced_agent_keeps_delivering_from_the_client_address() {
    if !features::require(
        "a_replaced_agent_keeps_delivering_from_the_client_address",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let mut c = Client::start(&mut m.topo, &m.client);
    let before = c.connect(m.server.addr(8080), 4096);
    assert_eq!(
        before.server_saw_peer().ip(),
        m.client.ip,
        "{:?}",
        before.raw
    );
    let _old = m.a2.replace();
    m.a2.wait_certificates();
    assert_eq!(delivers_from(&m, &m.server), "the client's address");
    let after = c.connect(m.server.addr(8080), 1 << 20);
    assert!(after.ok() && after.intact(), "{:?}", after.raw);
    assert_eq!(after.server_saw_peer().ip(), m.client.ip, "{:?}", after.raw);
    assert_eq!(after.server_saw_peer().port(), local_port(&after));
}

#[test]
fn without_the_kernel_feature_delivery_is_from_127_0_0_6_and_the_feature_is_named() {
    if !features::require(
        "without_the_kernel_feature_delivery_is_from_127_0_0_6_and_the_feature_is_named",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    m.a2.set_env("WEFT_TEST_NO_TRANSPARENT", Some("IP_TRANSPARENT"));
    m.a2.restart();
    m.a2.wait_certificates();
    let from = delivers_from(&m, &m.server);
    assert!(
        from.starts_with("127.0.0.6") && from.contains("IP_TRANSPARENT"),
        "{from}"
    );
    let log = m.a2.log();
    assert!(
        log.contains("reach the application from 127.0.0.6") && log.contains("IP_TRANSPARENT"),
        "the agent names what is missing"
    );
    let mut c = Client::start(&mut m.topo, &m.client);
    let r = c.connect(m.server.addr(8080), 1 << 20);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(r.server_saw_peer().ip().to_string(), "127.0.0.6");
}
