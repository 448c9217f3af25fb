//! The agent's own servers under a flood: half-open connections to :15020 (bound to every
//! address, so any pod can reach it) are capped per peer and closed after the header-read
//! timeout; /metrics, /healthz/ready and meshed traffic keep working, even with a descriptor
//! limit that the flood alone would exhaust; the CA, out of descriptors, backs off and signs
//! again once they are free. Run as root (`cargo xtask test`).

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use mesh_agent::http_server::{HEADER_READ_TIMEOUT, METRICS};
use weft_tests::{eventually, features, netns, Client, TwoNodeMesh};

/// More than every cap of the metrics server, and more than the agent's descriptor limit below.
const FLOOD: usize = 2_500;
/// The agent's open-file limit for this test: a server that kept every connection would run out.
const AGENT_NOFILE: u64 = 1_024;

#[test]
fn half_open_connections_to_the_metrics_port_are_bounded() {
    if !features::require(
        "half_open_connections_to_the_metrics_port_are_bounded",
        features::CAPTURE,
    ) {
        return;
    }
    raise_own_nofile(FLOOD as u64 + 1_000);
    let mut m = TwoNodeMesh::start(3600, &[]);
    let n2 = m.topo.node_named("n2").clone();
    set_nofile(agent_pid(&n2.netns), AGENT_NOFILE);

    // An unenrolled pod on n2 opens connections to its node's :15020 and never sends a byte.
    let target: SocketAddr = "10.2.0.1:15020".parse().expect("addr");
    // A server that stops accepting fills its backlog: the flood ends at the first refusal.
    let flood = netns::run_in(&m.plain.netns, move || {
        (0..FLOOD)
            .map_while(|_| TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok())
            .collect::<Vec<_>>()
    })
    .expect("plain netns");
    let opened = Instant::now();
    assert!(
        flood.len() > METRICS.caps.per_peer,
        "only {} connected",
        flood.len()
    );
    for s in &flood {
        s.set_nonblocking(true).expect("nonblocking");
    }
    // Over the peer's share, the agent closes new connections at once.
    let open = eventually(
        "connections over the cap to be closed",
        Duration::from_secs(5),
        || {
            let open = still_open(&flood);
            (open <= METRICS.caps.per_peer).then_some(open)
        },
    );
    assert!(
        open > 0,
        "connections within the cap are served, not refused"
    );

    // The agent keeps answering, promptly, on both of its endpoints.
    let started = Instant::now();
    let metrics = m.a2.metrics();
    assert!(metrics.contains("# TYPE"), "{metrics}");
    let (code, body) = m.a2.get("/healthz/ready").expect("/healthz/ready");
    assert_eq!(code, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "admin and metrics took {:?}",
        started.elapsed()
    );
    // Meshed traffic into n2 still works: its pods' listeners have descriptors to accept with.
    let mut c = Client::start(&mut m.topo, &m.client);
    let r = c.connect(m.server.addr(8080), 64 * 1024);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);

    // The held ones never sent their headers: the agent closes them after the timeout.
    eventually(
        "half-open connections to be closed after the header-read timeout",
        HEADER_READ_TIMEOUT + Duration::from_secs(5),
        || (still_open(&flood) == 0).then_some(()),
    );
    assert!(
        opened.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "closed after {:?}, before the header-read timeout",
        opened.elapsed()
    );
    let metrics = m.a2.metrics();
    assert!(metrics.contains("# TYPE"), "{metrics}");
}

/// Connections the agent has not closed (a non-blocking read would block rather than see EOF).
fn still_open(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 16];
    conns
        .iter()
        .filter(|s| {
            let mut s: &TcpStream = s;
            matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// The test itself holds every flood connection.
fn raise_own_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= want,
        "open-file hard limit {hard} < {want}: raise it (ulimit -Hn)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
}

/// The mesh-agent process in a node's netns (the CA runs on n1, so on n2 it is the only one).
fn agent_pid(node_netns: &str) -> i32 {
    pid_running(node_netns, "run")
}

/// The `mesh-agent MODE` process in a node's netns.
fn pid_running(node_netns: &str, mode: &str) -> i32 {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", node_netns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(mode.as_bytes()))
        })
        .unwrap_or_else(|| panic!("no mesh-agent {mode} in {node_netns}"))
}

fn set_nofile(pid: i32, limit: u64) {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // Safety: `rl` is a valid rlimit; a null old-limit pointer is allowed.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn the_ca_survives_running_out_of_descriptors() {
    if !features::require(
        "the_ca_survives_running_out_of_descriptors",
        features::CAPTURE,
    ) {
        return;
    }
    let m = TwoNodeMesh::start(3600, &[]);
    let n1 = m.topo.node_named("n1").clone();
    let ca_pid = pid_running(&n1.netns, "ca");
    set_nofile(ca_pid, CA_NOFILE);
    // Connections that never start TLS, far more than the CA has descriptors for.
    let target = m.ca.addr;
    let flood = netns::run_in(&m.plain.netns, move || {
        (0..4 * CA_NOFILE)
            .map_while(|_| TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok())
            .collect::<Vec<_>>()
    })
    .expect("plain netns");
    assert!(
        flood.len() as u64 > CA_NOFILE,
        "only {} connected",
        flood.len()
    );
    eventually(
        "the CA to run out of descriptors",
        Duration::from_secs(5),
        || m.ca.log().contains("Too many open files").then_some(()),
    );
    drop(flood);
    // Once the peers are gone, the CA signs again (it backs off, it does not exit).
    let (addr, boot) = (m.ca.addr, m.ca.bootstrap("n1"));
    eventually("the CA to sign again", Duration::from_secs(10), || {
        let boot = boot.clone();
        netns::run_in(&n1.netns, move || sign(&addr.to_string(), "n1", &boot))
            .expect("netns")
            .ok()
    });
}

/// The CA's open-file limit for its test: a few dozen connections exhaust it.
const CA_NOFILE: u64 = 64;

/// One signing request for mesh/client as node `node`.
fn sign(addr: &str, node: &str, boot: &std::path::Path) -> Result<(), String> {
    use mesh_agent::identity::{CaClient, Identity};
    let client = CaClient::from_bootstrap(addr, node, boot).map_err(|e| e.to_string())?;
    let id = Identity::new(weft_tests::fixture::TRUST_DOMAIN, "mesh", "client");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().expect("uri"))];
    let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(client.sign(&csr))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
