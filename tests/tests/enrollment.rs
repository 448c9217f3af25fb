//! Enrollment under bad days: the mesh never enrolls itself (not even under a mesh-wide STRICT
//! with its namespace labelled for the mesh), a pod keeps its enrollment when its processes
//! come and go, a pod socket holding one of the mesh's ports delays enrollment only until it
//! closes (and no new one gets those ports) while a TIME_WAIT on one does not delay it at all,
//! retries are logged once per reason, and the node's own netns is never taken for a pod's.
//! Run as root.

use std::{
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use weft_tests::{
    eventually, features, fixture::TRUST_DOMAIN, netns, probe, topology, Agent, Ca, Client, Pod,
    Topology,
};

const STRICT_MESH_WIDE: &str = "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
    metadata: {name: default, namespace: weft-system}\nspec: {mtls: {mode: STRICT}}\n";

fn notice(agent: &Agent, pod: &str) -> Option<String> {
    agent.config_dump()["enrollment_notices"][pod]
        .as_str()
        .map(str::to_owned)
}

fn lines_with(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn the_mesh_never_enrolls_its_own_namespace_even_when_labelled_under_strict() {
    if !features::require(
        "the_mesh_never_enrolls_its_own_namespace_even_when_labelled_under_strict",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    // What field reports tell of: injection enabled on the mesh's own namespace.
    topo.namespace("weft-system", true);
    let ca_pod = topo.pod(&n1, "weft-system", "weft-ca");
    let client = topo.pod(&n1, "mesh", "client");
    let server = topo.pod(&n2, "mesh", "server");
    probe::serve(&mut topo, &server, &[8080]);
    topo.apply("strict", STRICT_MESH_WIDE);
    let ca = Ca::start_in_pod(&topo, &ca_pod, 15012, 3600, TRUST_DOMAIN);
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&client);
    a2.wait_enrolled(&server);
    // Under STRICT an enrolled CA would refuse every agent's plaintext bootstrap.
    a1.wait_certificates();
    a2.wait_certificates();

    let r = Client::start(&mut topo, &client).connect(server.addr(8080), 64 * 1024);
    assert!(
        r.ok() && r.intact(),
        "meshed traffic under STRICT: {:?}",
        r.raw
    );
    eventually(
        "the server's access-log line",
        Duration::from_secs(10),
        || {
            a2.access_log().into_iter().find(|l| {
                l["src"]["identity"] == "spiffe://cluster.local/ns/mesh/sa/client"
                    && l["connection_security_policy"] == "mutual_tls"
            })
        },
    );

    assert!(
        a1.enrolled(&ca_pod).is_none(),
        "the CA's pod is not enrolled"
    );
    let why = notice(&a1, "weft-system/weft-ca").expect("a notice for the CA's pod");
    assert!(why.contains("never enrolled"), "{why}");
    // Said once, not on every reconcile (the topology's config was rewritten several times).
    assert_eq!(
        lines_with(&a1.log(), &["weft-system/weft-ca", "never enrolled"]),
        1,
        "{}",
        a1.log()
    );
}

/// A process in the pod's netns and cgroup, doing nothing: what keeps a pod's netns findable.
fn pod_process(pod: &Pod) -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    cmd.spawn().expect("start sleep")
}

/// Makes the agent reconcile (a configuration change it must apply) and waits until it has.
fn reconcile(topo: &mut Topology, agent: &Agent, marker: &str) {
    topo.namespace(marker, false);
    eventually(
        "the agent to apply the change",
        Duration::from_secs(10),
        || {
            let dump = agent.config_dump();
            dump["state"]["namespaces"].get(marker).map(|_| ())
        },
    );
}

#[test]
fn a_pod_keeps_its_enrollment_when_its_first_process_exits() {
    if !features::require(
        "a_pod_keeps_its_enrollment_when_its_first_process_exits",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.kubelet_pod(&node, "mesh", "client");
    let server = topo.pod(&node, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    let mut first = pod_process(&client);
    let mut second = pod_process(&client);
    let agent = Agent::start(&topo, &node);
    let enrolled = agent.wait_enrolled(&client);
    assert_eq!(
        enrolled["netns"],
        format!("/proc/{}/ns/net", first.id()),
        "found by the pod's lowest PID"
    );
    let inode = enrolled["netns_inode"].clone();

    first.kill().expect("kill");
    first.wait().expect("reap");
    reconcile(&mut topo, &agent, "after-first");
    // Another process of the pod names the same netns: nothing to do.
    second.kill().expect("kill");
    second.wait().expect("reap");
    reconcile(&mut topo, &agent, "after-second");
    // No process at all for a while: the netns lives on in the file the agent holds open.
    let still = agent.enrolled(&client).expect("still enrolled");
    assert_eq!(still["netns_inode"], inode);
    let log = agent.log();
    assert_eq!(
        lines_with(&log, &["mesh/client", "pod enrolled"]),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["mesh/client", "pod released"]),
        0,
        "{log}"
    );

    // The pod's next process is captured by the hooks that never left.
    let r = Client::start(&mut topo, &client).connect(server.addr(8080), 4096);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(r.local().ip().to_string(), "127.0.0.1", "captured");
}

const MESH_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Binds `n` sockets to port 0 inside the pod; returns the ports the kernel chose.
fn ephemeral_ports(pod: &Pod, n: usize) -> Vec<u16> {
    netns::run_in(&pod.netns, move || {
        let held: Vec<TcpListener> = (0..n)
            .filter_map(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).ok())
            .collect();
        held.iter()
            .map(|l| l.local_addr().expect("local addr").port())
            .collect()
    })
    .expect("pod netns")
}

#[test]
fn a_pod_socket_on_a_mesh_port_delays_enrollment_only_until_it_closes() {
    if !features::require(
        "a_pod_socket_on_a_mesh_port_delays_enrollment_only_until_it_closes",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.pod(&node, "mesh", "client");
    let server = topo.pod(&node, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    // A client of the pod that was given 15008 as its ephemeral port before enrollment.
    let range = "net.ipv4.ip_local_port_range";
    netns::sysctl(&client.netns, range, "15008 15008");
    let dst = server.addr(8080);
    let held = netns::run_in(&client.netns, move || TcpStream::connect(dst))
        .expect("pod netns")
        .expect("connect from the pod");
    assert_eq!(held.local_addr().unwrap().port(), 15008);
    netns::sysctl(&client.netns, range, "15000 15010");

    let agent = Agent::start(&topo, &node);
    let started = Instant::now();
    eventually("the bind conflict", Duration::from_secs(10), || {
        let why = agent.config_dump()["enrollment_errors"]["mesh/client"]
            .as_str()?
            .to_owned();
        why.contains("Address already in use").then_some(())
    });
    // Meanwhile no new socket of the pod is given one of the mesh's ports.
    let ports = ephemeral_ports(&client, 11);
    assert!(!ports.is_empty(), "the pod still has ephemeral ports");
    assert!(
        ports.iter().all(|p| !MESH_PORTS.contains(p)),
        "ephemeral ports {ports:?} include the mesh's"
    );
    // Retried, paced, and the reason logged once.
    let again = |log: &str| lines_with(log, &["mesh/client", "enrollment failed again"]);
    eventually("retries", Duration::from_secs(10), || {
        (again(&agent.log()) >= 3).then_some(())
    });
    let log = agent.log();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (again(&log) as f64) <= 2.0 + elapsed,
        "{} retries in {elapsed:.1} s",
        again(&log)
    );
    let first_line = &["mesh/client", "enrollment failed; will retry"];
    assert_eq!(lines_with(&log, first_line), 1, "{log}");

    // Closed with a reset (no TIME_WAIT left behind): the next retry enrolls the pod.
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&held, nix::sys::socket::sockopt::Linger, &reset)
        .expect("SO_LINGER");
    drop(held);
    agent.wait_enrolled(&client);
    let r = Client::start(&mut topo, &client).connect(server.addr(8080), 4096);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(r.local().ip().to_string(), "127.0.0.1", "captured");
}

/// Leaves a TIME_WAIT on `local` in the pod: a client bound to it connects to a listener of
/// the pod and closes first (the active closer keeps the TIME_WAIT). False when the pod has no
/// such address (no IPv6).
fn time_wait_on(pod: &Pod, local: SocketAddr) -> bool {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    netns::run_in(&pod.netns, move || {
        let Ok(listener) = TcpListener::bind(SocketAddr::new(local.ip(), 0)) else {
            return false;
        };
        let family = if local.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket(family, SockType::Stream, SockFlag::empty(), None).expect("socket");
        bind(fd.as_raw_fd(), &SockaddrStorage::from(local)).expect("bind the client's port");
        let dst = SockaddrStorage::from(listener.local_addr().expect("listener addr"));
        connect(fd.as_raw_fd(), &dst).expect("connect inside the pod");
        let client = TcpStream::from(fd);
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        // The server sees the client's FIN, then closes too: the client side goes to TIME_WAIT.
        assert_eq!(
            server.read(&mut [0u8; 1]).expect("read"),
            0,
            "end of stream"
        );
        drop(server);
        true
    })
    .expect("pod netns")
}

/// Local ports of the pod's TCP sockets in state TIME_WAIT (IPv4 and IPv6), as
/// /proc/net/tcp{,6} of its netns show them.
fn time_wait_ports(pod: &Pod) -> Vec<u16> {
    netns::run_in(&pod.netns, || {
        let mut ports = Vec::new();
        for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1).and_then(|a| a.rsplit_once(':'));
                if let (Some((_, port)), Some(&"06")) = (port, f.get(3)) {
                    ports.push(u16::from_str_radix(port, 16).expect("hex port"));
                }
            }
        }
        ports
    })
    .expect("pod netns")
}

#[test]
fn a_time_wait_on_a_mesh_port_does_not_delay_enrollment() {
    if !features::require(
        "a_time_wait_on_a_mesh_port_does_not_delay_enrollment",
        features::CAPTURE,
    ) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.pod(&node, "mesh", "client");
    let server = topo.pod(&node, "plain", "server");
    probe::serve(&mut topo, &server, &[8080]);
    // Sockets of the pod from before the agent (and its port reservation) came: closed, but
    // their TIME_WAITs hold the ports of the agent's wildcard listeners for 60 s.
    assert!(time_wait_on(&client, (Ipv4Addr::LOCALHOST, 15008).into()));
    assert!(time_wait_on(&client, (Ipv4Addr::LOCALHOST, 15006).into()));
    let v6 = time_wait_on(&client, (Ipv6Addr::LOCALHOST, 15008).into());
    if !v6 {
        eprintln!("no IPv6 in the pod: only IPv4 TIME_WAITs are tested");
    }
    let mut held = time_wait_ports(&client);
    held.sort();
    let expected = if v6 {
        vec![15006, 15008, 15008]
    } else {
        vec![15006, 15008]
    };
    assert_eq!(held, expected, "TIME_WAITs in the pod");

    let started = Instant::now();
    let agent = Agent::start(&topo, &node);
    eventually("enrollment", Duration::from_secs(10), || {
        agent.enrolled(&client)
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "enrolled after {took:?}");
    assert!(
        time_wait_ports(&client).is_empty(),
        "the TIME_WAITs are gone"
    );
    let log = agent.log();
    let destroyed = |port: &str, n: usize| {
        lines_with(
            &log,
            &[
                "mesh/client",
                "destroyed TIME_WAIT",
                &format!("port={port}"),
                &format!("count={n}"),
            ],
        )
    };
    assert_eq!(destroyed("15008", if v6 { 2 } else { 1 }), 1, "{log}");
    assert_eq!(destroyed("15006", 1), 1, "{log}");
    assert_eq!(
        lines_with(&log, &["mesh/client", "enrollment failed"]),
        0,
        "{log}"
    );

    let r = Client::start(&mut topo, &client).connect(server.addr(8080), 4096);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(r.local().ip().to_string(), "127.0.0.1", "captured");
}

#[test]
fn the_nodes_own_netns_is_never_a_pods() {
    if !features::require("the_nodes_own_netns_is_never_a_pods", features::CAPTURE) {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.node("n1");
    topo.namespace("mesh", true);
    let client = topo.pod(&node, "mesh", "client");
    // A pod on the host network: its netns is the node's (here: named by annotation).
    let cgroup = topology::cgroup2_root()
        .join("weft-test")
        .join(&topo.tag)
        .join("hostnet");
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    topo.apply(
        "hostnet",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hostnet\n  namespace: mesh\n  \
             annotations: {{weft.dev/netns: {}, weft.dev/cgroup: {}}}\n\
             spec: {{nodeName: n1, serviceAccountName: hostnet}}\nstatus: {{podIP: 10.1.0.1}}\n",
            netns::path(&node.netns).display(),
            cgroup.display()
        ),
    );
    let agent = Agent::start(&topo, &node);
    agent.wait_enrolled(&client);
    let why = eventually("the refusal", Duration::from_secs(10), || {
        notice(&agent, "mesh/hostnet")
    });
    assert!(why.contains("hostNetwork"), "{why}");
    let dump = agent.config_dump();
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pod"].as_str())
        .collect();
    assert_eq!(pods, ["mesh/client"], "{dump}");
    assert!(dump["enrollment_errors"].get("mesh/hostnet").is_none());
    // The node's own sockets are untouched: its admin endpoint answers from the node netns.
    let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let reach = netns::run_in(&node.netns, move || TcpStream::connect(admin).is_ok());
    assert!(reach.expect("node netns"));
}
