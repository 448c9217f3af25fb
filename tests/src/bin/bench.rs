//! `cargo xtask bench`: what Weft costs, measured in one run so that the ratios hold on a noisy
//! machine. Two parts:
//!
//! 1. The connect hook, on one node: direct (pod not enrolled), hook only (enrolled pod to an
//!    excluded port: connect4 runs and lets go), captured (hook + agent + onward TCP).
//! 2. Across two nodes: direct pod-to-pod vs Weft (mTLS HBONE over HTTP/2): connect latency,
//!    single-stream echo throughput, agent CPU seconds per GB and peak RSS.
//!
//! Rounds alternate between paths. Prints tables and writes target/bench/bench.json.

use std::{net::SocketAddr, time::Instant};

use serde_json::{json, Value};
use weft_tests::{probe, Agent, Ca, Client, OneNode, Pod, Topology};

const EXCLUDED_PORT: u16 = 9999;
const ROUNDS: usize = 5;
const THROUGHPUT_BYTES: u64 = 128 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let connections: usize = args
        .iter()
        .position(|a| a == "--connections")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(2000);
    let hook = hook_cost(connections);
    let mesh = cross_node(connections);
    let out = json!({"hook": hook, "cross_node": mesh});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .expect("write bench json");
    println!("\nwritten to {}", path.display());
}

/// Latency samples for each path, `connections` per path over interleaved rounds.
fn latencies(paths: &[(&str, &Pod, SocketAddr)], connections: usize) -> Vec<Vec<u64>> {
    let mut samples = vec![Vec::new(); paths.len()];
    let per_round = (connections / ROUNDS).max(1).to_string();
    for _ in 0..ROUNDS {
        for (i, (_, pod, dst)) in paths.iter().enumerate() {
            let r = probe::run(pod, &["latency", &dst.to_string(), &per_round]);
            assert_eq!(r["failed"], 0, "{r}");
            samples[i].extend(
                r["micros"]
                    .as_array()
                    .expect("micros")
                    .iter()
                    .filter_map(Value::as_u64),
            );
        }
    }
    for s in &mut samples {
        s.sort_unstable();
    }
    samples
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latency_table(title: &str, names: &[&str], samples: &[Vec<u64>]) -> Vec<Value> {
    let base = (pct(&samples[0], 0.5) as f64, pct(&samples[0], 0.99) as f64);
    println!("\n{title}");
    println!(
        "{:<12} {:>9} {:>9} {:>11} {:>11}",
        "path", "p50 µs", "p99 µs", "p50 ratio", "p99 ratio"
    );
    names
        .iter()
        .zip(samples)
        .map(|(name, s)| {
            let (p50, p99) = (pct(s, 0.5), pct(s, 0.99));
            let (r50, r99) = (p50 as f64 / base.0, p99 as f64 / base.1);
            println!("{name:<12} {p50:>9} {p99:>9} {r50:>10.2}x {r99:>10.2}x");
            json!({"path": name, "p50_us": p50, "p99_us": p99, "p50_ratio": r50, "p99_ratio": r99})
        })
        .collect()
}

fn hook_cost(connections: usize) -> Value {
    let excluded = EXCLUDED_PORT.to_string();
    let mut f = OneNode::with_agent_args(&[8080, EXCLUDED_PORT], &["--exclude-port", &excluded]);
    let node = f.node.clone();
    let plain = f.topo.pod(&node, "plain", "plain");
    let paths = [
        ("direct", &plain, f.server.addr(8080)),
        ("hook only", &f.client, f.server.addr(EXCLUDED_PORT)),
        ("captured", &f.client, f.server.addr(8080)),
    ];
    let samples = latencies(&paths, connections);
    let title = format!(
        "1. connect hook, one node: connect + first byte, {connections} connections per path"
    );
    json!({"latency": latency_table(&title, &paths.map(|p| p.0), &samples)})
}

fn cross_node(connections: usize) -> Value {
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    topo.namespace("plain", false);
    let mc = topo.pod(&n1, "mesh", "mclient");
    let ms = topo.pod(&n2, "mesh", "mserver");
    let pc = topo.pod(&n1, "plain", "pclient");
    let ps = topo.pod(&n2, "plain", "pserver");
    probe::serve(&mut topo, &ms, &[8080]);
    probe::serve(&mut topo, &ps, &[8080]);
    let ca = Ca::start(&topo, &n1, 15012, 24 * 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    a1.wait_enrolled(&mc);
    a2.wait_enrolled(&ms);
    a1.wait_certificates();
    a2.wait_certificates();
    let paths = [
        ("direct", &pc, ps.addr(8080)),
        ("weft h2", &mc, ms.addr(8080)),
    ];
    let samples = latencies(&paths, connections);
    let title =
        format!("2. across nodes: connect + first byte, {connections} connections per path");
    let latency = latency_table(&title, &paths.map(|p| p.0), &samples);

    println!(
        "\nsingle-stream echo throughput across nodes ({} MiB each way)",
        THROUGHPUT_BYTES >> 20
    );
    let usage = |a: &Agent, b: &Agent| a.usage().0 + b.usage().0;
    let mut rows = Vec::new();
    let mut base = 0.0;
    for (name, pod, dst) in paths {
        let cpu_before = usage(&a1, &a2);
        let mut c = Client::start(&mut topo, pod);
        let t = Instant::now();
        let r = c.connect(dst, THROUGHPUT_BYTES);
        let secs = t.elapsed().as_secs_f64();
        assert!(r.intact(), "{:?}", r.raw);
        let moved = 2.0 * THROUGHPUT_BYTES as f64;
        let mbps = moved / secs / 1e6;
        if base == 0.0 {
            base = mbps;
        }
        let cpu_per_gb = (usage(&a1, &a2) - cpu_before) / (moved / 1e9);
        println!(
            "{name:<12} {mbps:>9.0} MB/s {:>8.2}x   agents' CPU {cpu_per_gb:.2} s/GB",
            mbps / base
        );
        rows.push(json!({"path": name, "mb_s": mbps, "ratio": mbps / base, "agent_cpu_s_per_gb": cpu_per_gb}));
    }
    let rss: Vec<u64> = [&a1, &a2].iter().map(|a| a.usage().1).collect();
    println!("agents' peak RSS: {} KiB and {} KiB", rss[0], rss[1]);
    drop(ca);
    json!({"latency": latency, "throughput": rows, "agent_peak_rss_kib": rss})
}
