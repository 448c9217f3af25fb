//! Capture of live pods with eBPF: what applications and servers see, end to end, through real
//! agents in network namespaces. Run as root (`cargo xtask test`).

use std::{net::SocketAddr, time::Duration};

use weft_tests::{eventually, features, probe, Agent, Client, OneNode, Topology};

const LOCALHOST: &str = "127.0.0.1";

fn captured(local: SocketAddr) -> bool {
    // A captured connect was rewritten to 127.0.0.1:15001, so the kernel gave the socket a
    // loopback source; a direct one has the pod's own address.
    local.ip().to_string() == LOCALHOST
}

/// 1 + 3: a client started before enrollment is captured from its next connection; the server
/// sees the client pod's IP; bytes arrive intact both ways; getpeername shows the original peer.
#[test]
fn running_client_is_captured_after_enrollment() {
    if !features::require(
        "running_client_is_captured_after_enrollment",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("shop", false);
    topo.namespace("backend", false);
    let client_pod = topo.pod(&n1, "shop", "web");
    let server_pod = topo.pod(&n2, "backend", "db");
    probe::serve(&mut topo, &server_pod, &[5432]);
    let a1 = Agent::start(&topo, &n1);
    let _a2 = Agent::start(&topo, &n2);
    let mut client = Client::start(&mut topo, &client_pod);
    let dst = server_pod.addr(5432);

    let before = client.connect(dst, 1024);
    assert!(before.ok(), "{:?}", before.raw);
    assert!(
        !captured(before.local()),
        "not enrolled yet, but captured: {:?}",
        before.raw
    );

    topo.set_namespace_enrolled("shop", true);
    a1.wait_enrolled(&client_pod);

    let after = client.connect(dst, 8 << 20);
    assert!(after.ok(), "{:?}", after.raw);
    assert!(
        captured(after.local()),
        "the running client was not captured: {:?}",
        after.raw
    );
    assert_eq!(
        after.peer(),
        dst,
        "getpeername must show the original destination"
    );
    assert_eq!(after.server(), "db");
    assert_eq!(
        after.server_saw_peer().ip(),
        std::net::IpAddr::V4(client_pod.ip),
        "server must see the pod IP"
    );
    assert!(after.intact(), "8 MiB echoed must match: {:?}", after.raw);
    assert_eq!(after.received(), 8 << 20);
    assert_eq!(after.raw["clean_eof"], true, "half-close must pass through");
    assert!(a1.counter("connect_redirected") >= 1);
    assert_eq!(
        a1.counter("msg_spliced"),
        0,
        "splicing is off unless --splice"
    );
}

/// Regression guard for the default: connection after connection, each half-closed by the
/// client, must end cleanly. (With sk_msg splicing, Linux 6.18 lets a blocking read return
/// EAGAIN at that moment: the reason splicing is opt-in.)
#[test]
fn every_captured_connection_ends_cleanly() {
    if !features::require("every_captured_connection_ends_cleanly", features::CAPTURE) {
        return;
    }
    let f = OneNode::new(&[8080]);
    let r = probe::run(&f.client, &["soak", &f.server.addr(8080).to_string(), "3"]);
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
}

/// With --splice, same-node loopback legs are spliced by sk_msg and bytes stay intact.
#[test]
fn splice_when_enabled_carries_bytes_intact() {
    if !features::require(
        "splice_when_enabled_carries_bytes_intact",
        features::CAPTURE,
    ) {
        return;
    }
    let mut f = OneNode::with_agent_args(&[8080], &["--splice"]);
    let mut c = Client::start(&mut f.topo, &f.client);
    let r = c.connect(f.server.addr(8080), 8 << 20);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert!(
        f.agent.counter("msg_spliced") > 0,
        "the loopback legs were spliced"
    );
}

/// 3, in its own words: what the application's getpeername returns for a captured socket.
#[test]
fn getpeername_shows_original_destination() {
    if !features::require("getpeername_shows_original_destination", features::CAPTURE) {
        return;
    }
    let mut f = OneNode::new(&[8080, 9090]);
    let (client_pod, server_pod) = (f.client.clone(), f.server.clone());
    let mut client = Client::start(&mut f.topo, &client_pod);
    for port in [8080, 9090] {
        let r = client.connect(server_pod.addr(port), 16);
        assert!(r.ok() && captured(r.local()), "{:?}", r.raw);
        assert_eq!(r.peer(), server_pod.addr(port));
    }
    // A dual-stack (AF_INET6) socket dialing a v4-mapped address goes through connect6,
    // sock_ops' v4-mapped normalisation and getpeername6.
    let mapped: SocketAddr = format!("[::ffff:{}]:8080", server_pod.ip).parse().unwrap();
    let r = client.connect(mapped, 64 * 1024);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(
        r.local().ip().to_string(),
        "::ffff:127.0.0.1",
        "captured: {:?}",
        r.raw
    );
    assert_eq!(
        r.peer(),
        mapped,
        "getpeername6 shows the original destination"
    );
    assert_eq!(
        r.server_saw_peer().ip(),
        std::net::IpAddr::V4(client_pod.ip)
    );
}

/// 2: opted-out pods and pods of unenrolled namespaces are not captured. Checked by who
/// answers: a connect to a closed port is refused by the destination itself (a captured
/// connect would be accepted by the agent first and reset afterwards).
#[test]
fn pods_not_enrolled_are_not_captured() {
    if !features::require("pods_not_enrolled_are_not_captured", features::CAPTURE) {
        return;
    }
    let mut topo = Topology::new();
    let n1 = topo.node("n1");
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let enrolled = topo.pod(&n1, "mesh", "in");
    let opted_out = topo.pod(&n1, "mesh", "out");
    topo.set_pod_label("out", "weft.dev/mesh", "disabled");
    let other_ns = topo.pod(&n1, "plain", "other");
    let server = topo.pod(&n1, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    let a1 = Agent::start(&topo, &n1);
    a1.wait_enrolled(&enrolled);

    for pod in [&opted_out, &other_ns] {
        let mut c = Client::start(&mut topo, pod);
        let open = c.connect(server.addr(8080), 64);
        assert!(
            open.ok() && !captured(open.local()),
            "{}: {:?}",
            pod.name,
            open.raw
        );
        assert_eq!(open.local().ip(), std::net::IpAddr::V4(pod.ip));
        let closed = c.connect(server.addr(8081), 0);
        assert!(
            closed.error().contains("refused"),
            "{}: closed port must be refused by the server: {:?}",
            pod.name,
            closed.raw
        );
    }
    let mut c = Client::start(&mut topo, &enrolled);
    let closed = c.connect(server.addr(8081), 0);
    assert!(
        !closed.ok() && !closed.error().contains("refused"),
        "captured connect is answered by the agent, then reset: {:?}",
        closed.raw
    );
    let dump = a1.config_dump();
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pod"].as_str())
        .collect();
    assert_eq!(pods, vec!["mesh/in"], "only the enrolled pod is hooked");
}

/// 4: inbound plaintext to an enrolled pod goes through the agent's :15006 and is delivered by
/// it (the application sees the client's own address, delivered by the agent), bytes intact.
#[test]
fn inbound_plaintext_passes_the_agent() {
    if !features::require("inbound_plaintext_passes_the_agent", features::CAPTURE) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("plain", false);
    topo.namespace("mesh", true);
    let client_pod = topo.pod(&n1, "plain", "client");
    let server_pod = topo.pod(&n2, "mesh", "api");
    probe::serve(&mut topo, &server_pod, &[8443]);
    let _a1 = Agent::start(&topo, &n1);
    let a2 = Agent::start(&topo, &n2);
    a2.wait_enrolled(&server_pod);
    let steered = a2.counter("inbound_steered");
    let mut c = Client::start(&mut topo, &client_pod);
    let r = c.connect(server_pod.addr(8443), 1 << 20);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(
        r.server_saw_peer().ip(),
        client_pod.ip,
        "delivered by the agent from the client's address: {:?}",
        r.raw
    );
    assert_eq!(
        r.raw["greeting"]["local"],
        server_pod.addr(8443).to_string()
    );
    assert_eq!(a2.counter("inbound_steered"), steered + 1);
    let line = eventually(
        "the inbound access-log line",
        Duration::from_secs(5),
        || {
            a2.access_log().into_iter().find(|l| {
                l["reporter"] == "destination"
                    && l["original_dst"] == server_pod.addr(8443).to_string().as_str()
            })
        },
    );
    assert_eq!(line["dst"]["pod"]["name"], "api", "{line}");
    assert_eq!(line["src"]["ip"], client_pod.ip.to_string(), "{line}");
    assert_eq!(line["connection_security_policy"], "none", "{line}");
    assert_eq!(line["verdict"], "allow", "{line}");
}

/// 5: agent killed → enrolled pods' connects fail closed (never reach the server directly);
/// agent restarted → it takes over the pinned hooks and capture resumes.
#[test]
fn agent_down_fails_closed_and_restart_resumes() {
    if !features::require(
        "agent_down_fails_closed_and_restart_resumes",
        features::CAPTURE,
    ) {
        return;
    }
    let mut f = OneNode::new(&[8080]);
    let (client_pod, server_pod) = (f.client.clone(), f.server.clone());
    let a1 = &mut f.agent;
    let mut c = Client::start(&mut f.topo, &client_pod);
    let kept = c.open("kept", server_pod.addr(8080));
    assert!(kept.ok() && captured(kept.local()), "{:?}", kept.raw);

    a1.kill();
    let down = c.connect(server_pod.addr(8080), 16);
    assert!(
        !down.ok(),
        "with the agent down a captured pod must fail closed: {:?}",
        down.raw
    );
    assert!(down.error().contains("refused"), "{:?}", down.raw);

    a1.restart();
    let entry = a1.wait_enrolled(&client_pod);
    assert_eq!(
        entry["adopted"], true,
        "the new agent takes over the pinned hooks"
    );
    let up = c.connect(server_pod.addr(8080), 1 << 20);
    assert!(
        up.ok() && captured(up.local()) && up.intact(),
        "{:?}",
        up.raw
    );
}

/// 6: 1000 simultaneous connects to 20 different destinations: each is carried to its own.
#[test]
fn parallel_connects_keep_their_original_destinations() {
    if !features::require(
        "parallel_connects_keep_their_original_destinations",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let client_pod = topo.pod(&n1, "mesh", "client");
    let ports: Vec<u16> = (7000..7010).collect();
    let s1 = topo.pod(&n1, "plain", "s1");
    let s2 = topo.pod(&n2, "plain", "s2");
    probe::serve(&mut topo, &s1, &ports);
    probe::serve(&mut topo, &s2, &ports);
    let a1 = Agent::start(&topo, &n1);
    let _a2 = Agent::start(&topo, &n2);
    a1.wait_enrolled(&client_pod);
    let targets: Vec<String> = ports
        .iter()
        .flat_map(|p| [s1.addr(*p).to_string(), s2.addr(*p).to_string()])
        .collect();
    let r = probe::run(&client_pod, &["parallel", &targets.join(","), "1000"]);
    assert_eq!(
        r["ok"], 1000,
        "every connection reaches its own destination: {r}"
    );
    assert!(a1.counter("connect_redirected") >= 1000);
}

/// 7: 10k short connections leave no map entries behind; un-enrolling restores direct
/// connections at once while an established connection keeps working.
#[test]
fn churn_does_not_leak_and_unenroll_restores_direct() {
    if !features::require(
        "churn_does_not_leak_and_unenroll_restores_direct",
        features::CAPTURE,
    ) {
        return;
    }
    let mut f = OneNode::new(&[8080]);
    let (client_pod, server_pod) = (f.client.clone(), f.server.clone());
    let (a1, topo) = (&f.agent, &mut f.topo);
    let dst = server_pod.addr(8080).to_string();

    let r = probe::run(&client_pod, &["churn", &dst, "10000"]);
    assert_eq!(r["ok"], 10000, "{r}");
    for map in ["WEFT_ORIG_CK", "WEFT_ORIG_FLOW", "WEFT_SOCKS", "WEFT_SLOW"] {
        eventually(&format!("{map} to drain"), Duration::from_secs(10), || {
            (a1.map_entries(map) == 0).then_some(())
        });
    }

    let mut c = Client::start(topo, &client_pod);
    let kept = c.open("kept", server_pod.addr(8080));
    assert!(kept.ok() && captured(kept.local()), "{:?}", kept.raw);
    topo.set_namespace_enrolled("mesh", false);
    a1.wait_released(&client_pod);
    let direct = c.connect(server_pod.addr(8080), 4096);
    assert!(direct.ok() && direct.intact(), "{:?}", direct.raw);
    assert_eq!(
        direct.local().ip(),
        std::net::IpAddr::V4(client_pod.ip),
        "released pods connect directly"
    );
    let still = c.xfer("kept", 1 << 20);
    assert!(
        still.intact(),
        "established connections outlive un-enrollment: {:?}",
        still.raw
    );
}

/// Live enrollment of a new pod, and its opt-out by pod label, leave the other pods and their
/// established connections alone.
#[test]
fn a_pod_added_live_is_enrolled_and_opted_out_without_touching_others() {
    if !features::require(
        "a_pod_added_live_is_enrolled_and_opted_out_without_touching_others",
        features::CAPTURE,
    ) {
        return;
    }
    let mut f = OneNode::new(&[8080]);
    let (client_pod, server_pod, node) = (f.client.clone(), f.server.clone(), f.node.clone());
    let dst = server_pod.addr(8080);
    let mut c = Client::start(&mut f.topo, &client_pod);
    let kept = c.open("kept", dst);
    assert!(kept.ok() && captured(kept.local()), "{:?}", kept.raw);

    // A new pod appears in the enrolled namespace: hooked, no restart of anything.
    let late = f.topo.pod(&node, "mesh", "late");
    let start = std::time::Instant::now();
    f.agent.wait_enrolled(&late);
    let enrolled_after = start.elapsed();
    let mut lc = Client::start(&mut f.topo, &late);
    let r = lc.connect(dst, 64 * 1024);
    assert!(r.ok() && r.intact() && captured(r.local()), "{:?}", r.raw);

    // It opts out with a pod label: released; its next connection is direct.
    f.topo.set_pod_label("late", "weft.dev/mesh", "disabled");
    f.agent.wait_released(&late);
    let r = lc.connect(dst, 4096);
    assert!(r.ok() && !captured(r.local()), "{:?}", r.raw);

    // The other pod never noticed: still enrolled, its connection still carries bytes.
    assert!(
        f.agent.enrolled(&client_pod).is_some(),
        "client stayed enrolled"
    );
    let still = c.xfer("kept", 1 << 20);
    assert!(still.intact(), "{:?}", still.raw);
    println!("new pod enrolled {enrolled_after:?} after it appeared in the configuration");
}
