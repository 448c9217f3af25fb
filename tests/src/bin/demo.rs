//! `cargo xtask demo`: a local two-node mesh, built from network namespaces, with a real CA and
//! real agents. It walks through what Weft does, one step at a time, shows what crosses the wire,
//! and cleans up after itself (also on Ctrl-C).

#[path = "demo/l7.rs"]
mod l7;

use std::net::{Ipv4Addr, SocketAddr};

use weft_tests::{pattern, probe, topology, wire, Agent, Ca, Client, ConnectResult, Topology};

fn main() {
    let mut topo = Topology::new();
    let tag = topo.tag.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: cleaning up");
        topology::cleanup(&tag);
        std::process::exit(130);
    })
    .expect("Ctrl-C handler");
    run(&mut topo);
    println!("\nDone. Everything the demo created is being removed.");
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}. {title}\x1b[0m");
}

fn show(what: &str, r: &ConnectResult) {
    if !r.ok() {
        println!("   {what}: FAILED ({})", r.error());
        return;
    }
    let via = if r.local().ip().is_loopback() {
        "captured by Weft"
    } else {
        "direct, not captured"
    };
    println!("   {what}: {via}");
    println!(
        "     app socket: local {} -> peer {} (getpeername)",
        r.local(),
        r.peer()
    );
    println!(
        "     server {:?} saw the connection come from {}",
        r.server(),
        r.server_saw_peer()
    );
    println!("     {} bytes echoed, intact: {}", r.received(), r.intact());
}

fn run(topo: &mut Topology) {
    step(
        1,
        "Build two nodes (network namespaces) joined by a wire, and four pods",
    );
    let a = topo.node("node-a");
    let b = topo.node("node-b");
    topo.wire(&a, &b);
    topo.namespace("shop", false);
    topo.namespace("backend", true);
    topo.namespace("legacy", false);
    let web = topo.pod(&a, "shop", "web");
    let batch = topo.pod(&a, "legacy", "batch");
    let orders = topo.pod(&b, "backend", "orders");
    let ledger = topo.pod(&a, "legacy", "ledger");
    let orders_v1 = topo.pod(&b, "backend", "orders-v1");
    let orders_v2 = topo.pod(&b, "backend", "orders-v2");
    for p in [&web, &batch, &orders, &ledger] {
        println!(
            "   pod {}/{} on {} with IP {}",
            p.namespace, p.name, p.node, p.ip
        );
    }
    println!("   namespace backend is labelled weft.dev/mesh=enabled; shop and legacy are not");
    probe::serve(topo, &orders, &[8080]);
    probe::serve(topo, &ledger, &[5432]);

    step(
        2,
        "Start the mesh CA and a mesh-agent on each node (file mode: the cluster is YAML)",
    );
    let ca = Ca::start(topo, &a, 15012, 24 * 3600, "cluster.local");
    println!(
        "   CA on {}; root and intermediate in {}",
        ca.addr,
        ca.state_dir.join("ca").display()
    );
    let agent_a = Agent::start_meshed(topo, &a, &ca, &[]);
    let agent_b = Agent::start_meshed(topo, &b, &ca, &[]);
    agent_b.wait_enrolled(&orders);
    println!(
        "   config: {}",
        topo.config_dir().join("cluster.yaml").display()
    );
    println!("   node-b enrolled backend/orders and got its workload certificate:");
    show_certs(&agent_b);

    step(
        3,
        "shop/web starts a client process BEFORE its namespace is enrolled",
    );
    let mut client = Client::start(topo, &web);
    let dst: SocketAddr = orders.addr(8080);
    show(
        &format!("web -> orders {dst}"),
        &client.connect(dst, 64 * 1024),
    );
    println!(
        "   (plaintext: PERMISSIVE lets it in, and node-b's agent delivers it from the client's own address)"
    );

    step(
        4,
        "Label namespace shop weft.dev/mesh=enabled, live: no pod restart",
    );
    topo.set_namespace_enrolled("shop", true);
    let entry = agent_a.wait_enrolled(&web);
    println!("   node-a hooked shop/web as {}", entry["identity"]);
    show_certs(&agent_a);
    let tap = wire::WireTap::start(&a.netns, "wire0");
    show(
        "the SAME running process connects again",
        &client.connect(dst, 4 << 20),
    );
    show_wire(tap.finish(), orders.ip);
    show(
        &format!("web -> legacy/ledger {}", ledger.addr(5432)),
        &client.connect(ledger.addr(5432), 1024),
    );
    println!("   (ledger is outside the mesh: captured, then carried as plain TCP)");

    println!("   Service backend/orders, cluster IP 10.96.0.20:80 -> pods labelled app=orders, port 8080:");
    topo.set_pod_label("orders", "app", "orders");
    topo.apply(
        "services",
        "apiVersion: v1\nkind: Service\nmetadata: {name: orders, namespace: backend}\n\
         spec: {clusterIP: 10.96.0.20, selector: {app: orders}, ports: [{port: 80, targetPort: 8080}]}\n",
    );
    let vip: SocketAddr = "10.96.0.20:80".parse().expect("vip");
    let by_vip = weft_tests::eventually(
        "the Service to be known",
        std::time::Duration::from_secs(10),
        || {
            let r = client.connect(vip, 4096);
            r.ok().then_some(r)
        },
    );
    show(&format!("web -> Service orders {vip}"), &by_vip);
    println!(
        "   (resolved by node-a's agent to an endpoint of the Service, tunneled with its identity)"
    );

    step(5, "A pod outside the mesh is left alone");
    let mut other = Client::start(topo, &batch);
    show("legacy/batch -> orders", &other.connect(dst, 1024));

    step(
        6,
        "What the agents saw: one JSON access-log line per connection and side",
    );
    // A line is written when its connection has closed on that side: wait for node-b's four
    // (web before and after enrollment, web through the Service, batch).
    weft_tests::eventually(
        "node-b's access-log lines",
        std::time::Duration::from_secs(5),
        || (agent_b.access_log().len() >= 4).then_some(()),
    );
    for agent in [&agent_a, &agent_b] {
        for l in agent.access_log() {
            println!(
                "   {} {:<11} {} -> {} via {:<5} {:<5} in {} B out {} B{}",
                agent.node.name,
                l["reporter"].as_str().unwrap_or("?"),
                peer(&l["src"]),
                l["original_dst"].as_str().unwrap_or("?"),
                l["transport"].as_str().unwrap_or("?"),
                l["verdict"].as_str().unwrap_or("?"),
                l["bytes_received"],
                l["bytes_sent"],
                match (l["verdict"].as_str(), l["service"].as_str()) {
                    (Some("allow"), Some(s)) => format!(" (Service {s})"),
                    (Some("allow"), None) => String::new(),
                    _ => format!(" [{}]", l["reason"].as_str().unwrap_or("")),
                }
            );
        }
    }

    step(
        7,
        "An AuthorizationPolicy: orders accepts only namespace backend; web is denied",
    );
    topo.apply(
        "policy",
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: orders-from-backend-only, namespace: backend}\n\
         spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [backend]}}]}]}\n",
    );
    let denied = weft_tests::eventually(
        "the policy in force",
        std::time::Duration::from_secs(10),
        || {
            let r = client.connect(vip, 1024);
            (!r.ok()).then_some(r)
        },
    );
    show(&format!("web -> Service orders {vip}"), &denied);
    println!(
        "\n   $ nsenter --net=/run/netns/{} meshctl explain --from shop/web --to orders.backend:80",
        a.netns
    );
    let (_, out) = agent_a.meshctl(&["explain", "--from", "shop/web", "--to", "orders.backend:80"]);
    for line in out.lines() {
        println!("   {line}");
    }

    step(
        8,
        "Istio's metrics on node-b's :15020/metrics (destination reporter)",
    );
    for line in agent_b
        .metrics()
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "   opened {:>3}  {} -> {} ({})  security={} flags={}",
            line.rsplit(' ').next().unwrap_or("?"),
            label("source_principal"),
            label("destination_workload"),
            label("destination_service"),
            label("connection_security_policy"),
            label("response_flags"),
        );
    }
    println!("\n   $ nsenter --net=/run/netns/{} meshctl status", b.netns);
    let (_, out) = agent_b.meshctl(&["status"]);
    for line in out.lines() {
        println!("   {line}");
    }

    step(
        9,
        "L7: a canary by weight and by header, retries, request metrics, a trace, an L7 policy",
    );
    // Step 7's policy admits only namespace backend: lift it for this act.
    topo.apply("policy", "");
    l7::act(topo, &web, &orders_v1, &orders_v2, &agent_a);
}

fn peer(p: &serde_json::Value) -> String {
    match p["pod"].as_object() {
        Some(pod) => format!(
            "{}/{}",
            pod["namespace"].as_str().unwrap_or("?"),
            pod["name"].as_str().unwrap_or("?")
        ),
        None => p["ip"].as_str().unwrap_or("?").to_owned(),
    }
}

fn show_certs(agent: &Agent) {
    let certs = agent.wait_certificates();
    for c in certs {
        println!(
            "     {}  (expires in {} s; renewed at half-life)",
            c["identity"].as_str().unwrap_or("?"),
            c["expires_in_secs"]
        );
    }
}

/// What crossed the wire between the nodes for the meshed call: TLS only.
fn show_wire(segments: Vec<wire::Segment>, server: Ipv4Addr) {
    let meshed: Vec<_> = segments
        .into_iter()
        .filter(|s| s.dst == server || s.src == server)
        .collect();
    let marker: Vec<u8> = (0..64).map(pattern).collect();
    let mut ports: Vec<u16> = meshed
        .iter()
        .flat_map(|s| [s.src_port, s.dst_port])
        .filter(|p| *p < 30000)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let records = |t: u8| {
        meshed
            .iter()
            .filter(|s| s.payload.first() == Some(&t))
            .count()
    };
    println!(
        "   captured on node-a's wire0 during that call ({} segments to/from orders):",
        meshed.len()
    );
    println!("     server ports seen: {ports:?} (HBONE; the application port 8080 never appears)");
    println!(
        "     segments starting a TLS handshake record: {}, TLS application data: {}",
        records(0x16),
        records(0x17)
    );
    if let Some(first) = meshed.iter().find(|s| s.payload.first() == Some(&0x16)) {
        let hex: Vec<String> = first
            .payload
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        println!(
            "     first bytes: {} ...  (16 03 01: TLS ClientHello)",
            hex.join(" ")
        );
    }
    let leaked = wire::contains(&wire::all_bytes(&meshed), &marker);
    println!(
        "     the application's bytes in plaintext on the wire: {}",
        if leaked { "FOUND" } else { "never" }
    );
}
