//! `cargo xtask demo`: a local two-node mesh, built from network namespaces, with real agents.
//! It walks through what Weft does, one step at a time, and cleans up after itself (also on
//! Ctrl-C).

use std::net::SocketAddr;

use weft_tests::{probe, topology, Agent, Client, ConnectResult, Topology};

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
    println!(
        "   {what}: {via}\n     app socket: local {} -> peer {} (getpeername)\n     server {:?} saw the connection come from {}\n     {} bytes echoed, intact: {}",
        r.local(),
        r.peer(),
        r.server(),
        r.server_saw_peer(),
        r.received(),
        r.intact()
    );
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
        "Start a mesh-agent on each node (it reads the cluster from YAML in file mode)",
    );
    let agent_a = Agent::start(topo, &a);
    let agent_b = Agent::start(topo, &b);
    agent_b.wait_enrolled(&orders);
    println!(
        "   config: {}",
        topo.config_dir().join("cluster.yaml").display()
    );
    println!("   node-b enrolled backend/orders: its inbound connections now pass the agent");

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
    println!("   (orders is enrolled, so node-b's agent delivered it: the server sees 127.0.0.6)");

    step(
        4,
        "Label namespace shop weft.dev/mesh=enabled, live: no pod restart",
    );
    topo.set_namespace_enrolled("shop", true);
    let entry = agent_a.wait_enrolled(&web);
    println!("   node-a hooked shop/web: {}", entry["hooks"]);
    show(
        "the SAME running process connects again",
        &client.connect(dst, 4 << 20),
    );
    show(
        &format!("web -> legacy/ledger {}", ledger.addr(5432)),
        &client.connect(ledger.addr(5432), 1024),
    );

    step(5, "A pod outside the mesh is left alone");
    let mut other = Client::start(topo, &batch);
    show("legacy/batch -> orders", &other.connect(dst, 1024));

    step(
        6,
        "What the agents saw (one log line per connection, with the original destination)",
    );
    for agent in [&agent_a, &agent_b] {
        for line in agent
            .log()
            .lines()
            .filter(|l| l.contains("connection closed"))
        {
            let short = line.split_once(" INFO ").map(|(_, r)| r).unwrap_or(line);
            println!("   {}: {short}", agent.node.name);
        }
    }
    let counters = &agent_a.config_dump()["bpf"]["counters"];
    println!("   node-a kernel counters: {counters}");
    println!("\n   $ nsenter --net=/run/netns/{} meshctl status", a.netns);
    let mut cmd = std::process::Command::new(weft_tests::agent::sibling_bin("meshctl"));
    cmd.arg("status");
    weft_tests::netns::command_in(&mut cmd, &a.netns, None).expect("node netns");
    let out = cmd.output().expect("run meshctl");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
}
