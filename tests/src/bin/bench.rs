//! `cargo xtask bench`: what capture costs, measured in one run on one topology so that the
//! ratios hold on a noisy machine. Three paths from two pods on the same node to one server:
//!
//! - direct: a pod that is not enrolled (no hook runs);
//! - hook only: an enrolled pod connecting to an excluded port (connect4 runs and lets go):
//!   the cost of the connect hook itself;
//! - captured: an enrolled pod, carried by the agent (hook + loopback leg + onward connect).
//!
//! Rounds alternate between the paths. Prints a table and writes target/bench/capture.json.

use std::{net::SocketAddr, time::Instant};

use serde_json::{json, Value};
use weft_tests::{probe, Client, OneNode, Pod};

const EXCLUDED_PORT: u16 = 9999;
const ROUNDS: usize = 5;
const THROUGHPUT_BYTES: u64 = 256 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let connections: usize = args
        .iter()
        .position(|a| a == "--connections")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(2000);
    let excluded = EXCLUDED_PORT.to_string();
    let mut f = OneNode::with_agent_args(&[8080, EXCLUDED_PORT], &["--exclude-port", &excluded]);
    let (meshed, server) = (f.client.clone(), f.server.clone());
    let node = f.node.clone();
    let plain = f.topo.pod(&node, "plain", "plain");
    let topo = &mut f.topo;

    let paths: [(&str, &Pod, SocketAddr); 3] = [
        ("direct", &plain, server.addr(8080)),
        ("hook only", &meshed, server.addr(EXCLUDED_PORT)),
        ("captured", &meshed, server.addr(8080)),
    ];
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); paths.len()];
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
    let throughput: Vec<f64> = [(&plain, server.addr(8080)), (&meshed, server.addr(8080))]
        .iter()
        .map(|(pod, dst)| {
            let mut c = Client::start(topo, pod);
            let t = Instant::now();
            let r = c.connect(*dst, THROUGHPUT_BYTES);
            assert!(r.intact(), "{:?}", r.raw);
            // Bytes cross the path twice (echo).
            (2 * THROUGHPUT_BYTES) as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    report(&paths.map(|p| p.0), &mut samples, &throughput, connections);
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(names: &[&str], samples: &mut [Vec<u64>], throughput: &[f64], connections: usize) {
    for s in samples.iter_mut() {
        s.sort_unstable();
    }
    let base = (pct(&samples[0], 0.5) as f64, pct(&samples[0], 0.99) as f64);
    println!("\nconnect + first byte latency, {connections} connections per path, {ROUNDS} interleaved rounds");
    println!(
        "{:<12} {:>9} {:>9} {:>12} {:>12}",
        "path", "p50 µs", "p99 µs", "p50 ratio", "p99 ratio"
    );
    let mut rows = Vec::new();
    for (name, s) in names.iter().zip(samples.iter()) {
        let (p50, p99) = (pct(s, 0.5), pct(s, 0.99));
        println!(
            "{:<12} {:>9} {:>9} {:>11.2}x {:>11.2}x",
            name,
            p50,
            p99,
            p50 as f64 / base.0,
            p99 as f64 / base.1
        );
        rows.push(json!({"path": name, "p50_us": p50, "p99_us": p99,
            "p50_ratio": p50 as f64 / base.0, "p99_ratio": p99 as f64 / base.1}));
    }
    println!("\nsingle-stream echo throughput (256 MiB each way)");
    println!("{:<12} {:>9.0} MB/s", "direct", throughput[0]);
    println!(
        "{:<12} {:>9.0} MB/s {:>10.2}x",
        "captured",
        throughput[1],
        throughput[1] / throughput[0]
    );
    let out = json!({"latency": rows, "throughput_mb_s": {"direct": throughput[0], "captured": throughput[1],
        "ratio": throughput[1] / throughput[0]}});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("capture.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .expect("write bench json");
    println!("\nwritten to {}", path.display());
}
