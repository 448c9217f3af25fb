//! Hitless agent upgrades: a new agent started beside the running one takes its listening
//! sockets, the old one drains. Under continuous load nothing is refused, long-lived
//! connections survive or end cleanly at the drain deadline, and SIGKILL fails closed. Run as
//! root (`cargo xtask test`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    agent::Retired, features, probe, probe::Steady, Agent, Ca, Client, Pod, Topology,
};

const TD: &str = weft_tests::fixture::TRUST_DOMAIN;
/// Long-lived connections kept open across the upgrade.
const LONG_LIVED: usize = 10;

struct Mesh {
    a1: Agent,
    a2: Agent,
    clients: [Pod; 2],
    server: Pod,
    topo: Topology,
    _ca: Ca,
}

/// Two nodes, two client pods on n1 and a server pod on n2, meshed with mTLS (h2 tunnels).
fn mesh(agent_args: &[&str]) -> Mesh {
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let clients = [
        topo.pod(&n1, "mesh", "client-a"),
        topo.pod(&n1, "mesh", "client-b"),
    ];
    let server = topo.pod(&n2, "mesh", "server");
    probe::serve(&mut topo, &server, &[8080]);
    let ca = Ca::start(&topo, &n1, 15012, 3600, TD);
    let a1 = Agent::start_meshed(&topo, &n1, &ca, agent_args);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, agent_args);
    for c in &clients {
        a1.wait_enrolled(c);
    }
    a2.wait_enrolled(&server);
    a1.wait_certificates();
    a2.wait_certificates();
    Mesh {
        a1,
        a2,
        clients,
        server,
        topo,
        _ca: ca,
    }
}

/// Opens the long-lived connections and checks each carries bytes.
fn open_long_lived(c: &mut Client, server: &Pod) {
    for i in 0..LONG_LIVED {
        let r = c.open(&format!("l{i}"), server.addr(8080));
        assert!(r.ok(), "long-lived connection {i}: {:?}", r.raw);
    }
    exchange(c, "before the upgrade");
}

fn exchange(c: &mut Client, when: &str) {
    for i in 0..LONG_LIVED {
        let r = c.xfer(&format!("l{i}"), 16 * 1024);
        assert!(
            r.ok() && r.intact(),
            "long-lived connection {i} {when}: {:?}",
            r.raw
        );
    }
}

fn assert_nothing_refused(load: Value, what: &str) -> u64 {
    assert_eq!(
        load["failed"], 0,
        "{what}: new connections failed during the upgrade: {load}"
    );
    load["ok"].as_u64().expect("ok count")
}

/// Every pod of the new agent runs on the sockets the old one handed over.
fn assert_inherited(a: &Agent, pods: &[&Pod]) {
    for p in pods {
        let e = a.enrolled(p).expect("enrolled");
        assert_eq!(
            e["listeners_inherited"], true,
            "{} enrolled on fresh sockets, not the old agent's: {e}",
            p.name
        );
        assert_eq!(e["adopted"], true, "{}: pinned hooks adopted", p.name);
    }
}

fn wait_drained(old: &mut Retired, within: Duration, what: &str) {
    let status = old
        .wait_exit(within)
        .unwrap_or_else(|| panic!("{what}: the old agent is still running after {within:?}"));
    assert!(
        status.success(),
        "{what}: the old agent exited with {status}"
    );
}

#[test]
fn agents_replaced_under_load_refuse_nothing_and_keep_long_lived_connections() {
    if !features::require(
        "agents_replaced_under_load_refuse_nothing_and_keep_long_lived_connections",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&[]);
    let mut long = Client::start(&mut m.topo, &m.clients[0]);
    open_long_lived(&mut long, &m.server);
    let loads: Vec<Steady> = m
        .clients
        .iter()
        .map(|c| Steady::start(c, m.server.addr(8080), 5))
        .collect();

    // The client side's agent (outbound capture, h2 client pool), then the server side's
    // (inbound HBONE: GOAWAY on the old agent's tunnel connections).
    let mut old1 = m.a1.replace();
    exchange(&mut long, "after the client node's agent was replaced");
    let mut old2 = m.a2.replace();
    exchange(&mut long, "after the server node's agent was replaced too");
    // The new agents carry new connections on their own (the old ones no longer accept).
    let after = Steady::start(&m.clients[1], m.server.addr(8080), 5);
    let total: u64 = loads
        .into_iter()
        .map(|l| assert_nothing_refused(l.finish(), "steady load"))
        .sum();
    assert_nothing_refused(after.finish(), "load started after the upgrade");
    assert!(
        total > 50,
        "the load ran through the upgrades: {total} connections"
    );
    assert_inherited(&m.a1, &[&m.clients[0], &m.clients[1]]);
    assert_inherited(&m.a2, &[&m.server]);

    // The old agents finish the connections they carry, then exit on their own.
    for i in 0..LONG_LIVED {
        long.close(&format!("l{i}"));
    }
    wait_drained(&mut old1, Duration::from_secs(20), "client node");
    wait_drained(&mut old2, Duration::from_secs(20), "server node");
    for a in [&m.a1, &m.a2] {
        assert!(
            a.log().contains("drained: every connection finished"),
            "the old agent drained before its deadline:\n{}",
            a.log()
        );
    }
    // And the new agents alone serve now.
    let mut c = Client::start(&mut m.topo, &m.clients[1]);
    let r = c.connect(m.server.addr(8080), 4096);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
}

#[test]
fn at_the_drain_deadline_open_connections_end_cleanly() {
    if !features::require(
        "at_the_drain_deadline_open_connections_end_cleanly",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&["--drain-timeout-secs", "2"]);
    let mut long = Client::start(&mut m.topo, &m.clients[0]);
    open_long_lived(&mut long, &m.server);
    let mut old = m.a1.replace();
    exchange(&mut long, "after the upgrade, before the deadline");
    for i in 0..LONG_LIVED {
        let end = long.end(&format!("l{i}"));
        assert_eq!(
            end["eof"], true,
            "connection {i} must end with a clean end of stream, not a reset: {end}"
        );
    }
    wait_drained(&mut old, Duration::from_secs(10), "deadline");
    let log = m.a1.log();
    assert!(
        log.contains("drain deadline reached: closed the connections still open"),
        "the old agent says what it closed:\n{log}"
    );
}

#[test]
fn sigterm_without_a_successor_drains_and_the_next_agent_binds_fresh() {
    if !features::require(
        "sigterm_without_a_successor_drains_and_the_next_agent_binds_fresh",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&[]);
    let mut long = Client::start(&mut m.topo, &m.clients[0]);
    open_long_lived(&mut long, &m.server);
    let mut old = m.a1.terminate().expect("running");
    // Established connections go on while it drains; new ones fail closed (no listener).
    exchange(&mut long, "while the terminated agent drains");
    let mut c = Client::start(&mut m.topo, &m.clients[1]);
    let refused = c.connect(m.server.addr(8080), 64);
    assert!(
        !refused.ok(),
        "no agent accepts: the pod fails closed: {:?}",
        refused.raw
    );
    for i in 0..LONG_LIVED {
        long.close(&format!("l{i}"));
    }
    wait_drained(&mut old, Duration::from_secs(20), "SIGTERM");
    m.a1.restart();
    let dump = m.a1.config_dump();
    assert_eq!(
        dump["took_over_from"],
        Value::Null,
        "nobody to take over from"
    );
    let e = m.a1.wait_enrolled(&m.clients[1]);
    assert_eq!(e["listeners_inherited"], false, "{e}");
    let r = c.connect(m.server.addr(8080), 4096);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
}

#[test]
fn quic_tunnels_move_to_the_new_agent_without_refusals() {
    if !features::require(
        "quic_tunnels_move_to_the_new_agent_without_refusals",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&[]);
    weft_tests::fixture::set_tunnel(&m.topo, &[&m.a1, &m.a2], "quic");
    let load = Steady::start(&m.clients[0], m.server.addr(8080), 5);
    // The server side holds the UDP socket both agents would read: the old one closes its QUIC
    // connections and lets go of it before the new one reads it.
    let mut old2 = m.a2.replace();
    let mut old1 = m.a1.replace();
    let after = Steady::start(&m.clients[1], m.server.addr(8080), 5);
    assert_nothing_refused(load.finish(), "steady load over QUIC");
    assert_nothing_refused(after.finish(), "load over QUIC after the upgrade");
    wait_drained(&mut old2, Duration::from_secs(20), "server node");
    wait_drained(&mut old1, Duration::from_secs(20), "client node");
}

#[test]
fn pinned_state_of_another_layout_is_adopted_when_compatible_and_refused_when_not() {
    if !features::require(
        "pinned_state_of_another_layout_is_adopted_when_compatible_and_refused_when_not",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&[]);
    let mut c = Client::start(&mut m.topo, &m.clients[0]);
    let works = |c: &mut Client, when: &str| {
        let r = c.connect(m.server.addr(8080), 4096);
        assert!(r.ok() && r.intact(), "{when}: {:?}", r.raw);
    };
    works(&mut c, "layout 1");
    let marker = |a: &Agent| -> Vec<String> {
        std::fs::read_dir(&a.pin_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("layout@"))
            .collect()
    };
    assert_eq!(marker(&m.a1), ["layout@1@1"]);
    // An upgrade to a layout that reads the previous one: adopted (the pods stay hooked).
    m.a1.set_env("WEFT_TEST_LAYOUT", Some("2,1"));
    m.a1.restart();
    assert_eq!(m.a1.wait_enrolled(&m.clients[0])["adopted"], true);
    assert_eq!(marker(&m.a1), ["layout@2@1"]);
    works(&mut c, "after the upgrade to layout 2");
    // And the downgrade by one.
    m.a1.set_env("WEFT_TEST_LAYOUT", None);
    m.a1.restart();
    assert_eq!(m.a1.wait_enrolled(&m.clients[0])["adopted"], true);
    assert_eq!(marker(&m.a1), ["layout@1@1"]);
    works(&mut c, "after the downgrade to layout 1");
    // A layout that cannot read these pins: refused with both versions named, nothing
    // detached (the pods' hooks are still pinned, and an agent of layout 1 adopts them).
    m.a1.set_env("WEFT_TEST_LAYOUT", Some("3,3"));
    let status = m.a1.start_refused();
    assert!(!status.success());
    let log = m.a1.log();
    assert!(
        log.contains("has layout 1 (readable by agents of layout 1 and later)")
            && log.contains("this agent has layout 3"),
        "the refusal names both layouts:\n{log}"
    );
    assert_eq!(
        marker(&m.a1),
        ["layout@1@1"],
        "the pins' layout is untouched"
    );
    let pinned = std::fs::read_dir(m.a1.pin_dir.join("pods"))
        .unwrap()
        .count();
    assert_eq!(pinned, 2, "both pods' hooks are still pinned");
    m.a1.set_env("WEFT_TEST_LAYOUT", None);
    m.a1.restart();
    assert_eq!(m.a1.wait_enrolled(&m.clients[0])["adopted"], true);
    works(&mut c, "after a compatible agent came back");
}

#[test]
fn sigkill_under_load_fails_closed_and_nothing_leaves_in_plaintext() {
    if !features::require(
        "sigkill_under_load_fails_closed_and_nothing_leaves_in_plaintext",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(&[]);
    let n1 = m.topo.node_named("n1").clone();
    let tap = weft_tests::wire::WireTap::start(&n1.netns, "wire0");
    let load = Steady::start(&m.clients[0], m.server.addr(8080), 5);
    m.a1.kill();
    m.a1.restart();
    m.a1.wait_enrolled(&m.clients[0]);
    let after = Steady::start(&m.clients[1], m.server.addr(8080), 5);
    let during = load.finish();
    assert_nothing_refused(after.finish(), "after the restart");
    let segments = tap.finish();
    // While no agent ran, connects failed (fail closed) rather than going around the mesh.
    assert!(
        during["failed"].as_u64() > Some(0),
        "the crash is visible as refused connections: {during}"
    );
    let to_server: Vec<_> = segments
        .iter()
        .filter(|s| s.dst == m.server.ip || s.src == m.server.ip)
        .cloned()
        .collect();
    assert!(!to_server.is_empty(), "the tap saw the load");
    assert!(
        to_server
            .iter()
            .all(|s| s.dst_port == 15008 || s.src_port == 15008),
        "only HBONE crossed the wire, before, during and after the crash"
    );
    let marker: Vec<u8> = (0..32).map(weft_tests::pattern).collect();
    assert!(
        !weft_tests::wire::contains(&weft_tests::wire::all_bytes(&to_server), &marker),
        "no payload byte crossed the wire in plaintext"
    );
}
