//! Egress control: under MeshConfig REGISTRY_ONLY an enrolled pod reaches a destination outside
//! the mesh only if a ServiceEntry lists its address and port; refusals are prompt, logged and
//! counted (response flag NR); ALLOW_ANY lets it out as plain TCP. The destination is an echo
//! server in node n2's own netns (10.255.0.2): no pod, no Service. Run as root.

use std::time::{Duration, Instant};

use weft_tests::{agent::metric, eventually, features, probe, Client, TwoNodeMesh};

const EXTERNAL: &str = "10.255.0.2";

fn mesh_config(mode: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\n\
         metadata: {{name: default, namespace: weft-system}}\n\
         spec: {{outboundTrafficPolicy: {{mode: {mode}}}}}\n"
    )
}

fn service_entry(cidr: &str, port: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: ServiceEntry\n\
         metadata: {{name: external-echo, namespace: mesh}}\n\
         spec: {{addresses: [\"{cidr}\"], ports: [{{number: {port}, name: echo}}]}}\n"
    )
}

#[test]
fn registry_only_lets_out_what_a_service_entry_lists() {
    if !features::require(
        "registry_only_lets_out_what_a_service_entry_lists",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[("mesh-config", &mesh_config("REGISTRY_ONLY"))]);
    let n2 = m.topo.node_named("n2").clone();
    probe::serve_on_node(&mut m.topo, &n2, &[9090, 9091, 9092]);
    let external = |port: u16| format!("{EXTERNAL}:{port}").parse().unwrap();
    let mut c = Client::start(&mut m.topo, &m.client);

    // No ServiceEntry: refused at once, named in the log, counted with NR.
    let started = Instant::now();
    let r = c.connect(external(9090), 64);
    assert!(!r.ok(), "REGISTRY_ONLY without a ServiceEntry: {:?}", r.raw);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly"
    );
    let line = eventually(
        "the refusal in the access log",
        Duration::from_secs(5),
        || {
            m.a1.access_log()
                .into_iter()
                .find(|l| l["verdict"] != "allow" && l["original_dst"] == "10.255.0.2:9090")
        },
    );
    assert_eq!(line["response_flags"], "NR", "{line}");
    assert_eq!(
        line["reason"],
        "outbound traffic policy REGISTRY_ONLY: 10.255.0.2:9090 is outside the mesh and no ServiceEntry lists it",
        "{line}"
    );
    let refused = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service", "BlackHoleCluster"),
        ("response_flags", "NR"),
    ];
    assert_eq!(
        metric(
            &m.a1.metrics(),
            "istio_tcp_connections_opened_total",
            &refused
        ),
        1
    );
    let (code, out) = explain_9090(&m);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REFUSED by outbound traffic policy REGISTRY_ONLY")
            && out.contains("verdict: denied"),
        "{out}"
    );
    // Meshed traffic is unaffected.
    assert!(c.connect(m.server.addr(8080), 1024).intact());

    // A ServiceEntry for the address and port 9090 lets exactly that out.
    m.topo.apply(
        "service-entry",
        &service_entry(&format!("{EXTERNAL}/32"), 9090),
    );
    let ok = eventually("the ServiceEntry in force", Duration::from_secs(10), || {
        let r = c.connect(external(9090), 32 * 1024);
        r.ok().then_some(r)
    });
    assert!(ok.intact(), "{:?}", ok.raw);
    assert_eq!(ok.server(), "n2", "reached the server on the node");
    assert!(
        !c.connect(external(9091), 64).ok(),
        "port 9091 is not listed"
    );
    let (code, out) = explain_9090(&m);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("listed by ServiceEntry mesh/external-echo"),
        "{out}"
    );
    let line = eventually("the access-log line", Duration::from_secs(5), || {
        m.a1.access_log()
            .into_iter()
            .find(|l| l["verdict"] == "allow" && l["original_dst"] == format!("{EXTERNAL}:9090"))
    });
    assert_eq!(line["policy"], "mesh/external-echo", "{line}");
    assert_eq!(line["transport"], "tcp");
    assert_eq!(line["connection_security_policy"], "none");

    // A ServiceEntry by host name: the agent resolves it (here through /etc/hosts, as
    // getaddrinfo would through DNS) and lets the addresses out on the listed port.
    let host = format!("echo-{}.weft-test.invalid", m.topo.tag);
    let _hosts = HostsEntry::add(EXTERNAL, &host);
    m.topo.apply(
        "service-entry-by-name",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ServiceEntry\n\
             metadata: {{name: external-by-name, namespace: mesh}}\n\
             spec: {{hosts: [{host}], ports: [{{number: 9091}}]}}\n"
        ),
    );
    let by_name = eventually(
        "the host resolved and let out",
        Duration::from_secs(10),
        || {
            let r = c.connect(external(9091), 1024);
            r.ok().then_some(r)
        },
    );
    assert!(by_name.intact());

    // ALLOW_ANY: everything leaves as plain TCP.
    m.topo.apply("mesh-config", &mesh_config("ALLOW_ANY"));
    let any = eventually("ALLOW_ANY in force", Duration::from_secs(10), || {
        let r = c.connect(external(9092), 1024);
        r.ok().then_some(r)
    });
    assert!(any.intact());
}

/// A line of /etc/hosts for the test's lifetime (the name is unique to the test's topology).
struct HostsEntry(String);

impl HostsEntry {
    fn add(ip: &str, name: &str) -> Self {
        let line = format!("{ip} {name}\n");
        let mut hosts = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        if !hosts.ends_with('\n') && !hosts.is_empty() {
            hosts.push('\n');
        }
        hosts.push_str(&line);
        std::fs::write("/etc/hosts", hosts).expect("write /etc/hosts");
        Self(line)
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
            let _ = std::fs::write("/etc/hosts", hosts.replace(&self.0, ""));
        }
    }
}

/// `meshctl explain` of mesh/client to the external server's port 9090, on n1.
fn explain_9090(m: &TwoNodeMesh) -> (i32, String) {
    m.a1.meshctl(&[
        "explain",
        "--from",
        "mesh/client",
        "--to",
        &format!("{EXTERNAL}:9090"),
    ])
}
