//! `cargo xtask bench`: what Weft costs, measured in one run so that the ratios hold on a noisy
//! machine. Two parts:
//!
//! 1. The connect hook, on one node: direct (pod not enrolled), hook only (enrolled pod to an
//!    excluded port: connect4 runs and lets go), captured (hook + agent + onward TCP).
//! 2. Across two nodes: direct pod-to-pod vs Weft h2 (mTLS HBONE over HTTP/2) vs Weft QUIC
//!    (switched live by MeshConfig): connect + first byte latency, 1 KiB request/response
//!    latency at a fixed rate, new connections per second, echo throughput with 1 and 8
//!    streams, the agents' CPU seconds per GB moved and peak RSS.
//! 3. Memory (`memory`): each agent's RSS idle, with `--memory-connections` (default 10 000;
//!    0 skips) idle relayed connections, and after they close.
//! 4. HTTP (`http`): direct vs Weft L4 vs the Weft L7 pool vs nginx as a reverse proxy,
//!    HTTP/1.1 and HTTP/2, latency at a fixed rate and the maximum rate (see bench/http.rs);
//!    `--http-rounds`, `--http-rate`, `--http-concurrency`, `--http-latency-secs`,
//!    `--http-rps-secs`.
//!
//! 5. Restart (`restart`): n1's agent replaced (hand-over) and killed (SIGKILL) under 200 new
//!    connections/s: failed connections, the longest gap, the recovery time
//!    (`--restart-rounds`, default 3).
//!
//! `--only PHASE[,PHASE...]` (hook, cross, memory, http, restart) runs just those. Rounds alternate
//! between paths. Prints tables and writes target/bench/bench.json (bench-PHASES.json with
//! `--only`). `weft-bench http-serve` and `http-load` are the HTTP phase's server and client,
//! which the bench starts inside pods.

#[path = "bench/http.rs"]
mod http;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/restart.rs"]
mod restart;

use std::net::SocketAddr;

use serde_json::{json, Value};
use weft_tests::{fixture::set_tunnel, probe, OneNode, Pod, TwoNodeMesh};

const EXCLUDED_PORT: u16 = 9999;
const ROUNDS: usize = 5;
const THROUGHPUT_BYTES: u64 = 128 << 20;
/// Request/response: requests per second and how many, per path.
const RR_RATE: u64 = 1000;
const RR_COUNT: u64 = 3000;
/// How long each path opens new connections.
const CONN_SECS: u64 = 3;

const PHASES: [&str; 5] = ["hook", "cross", "memory", "http", "restart"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("http-serve") => {
            return http::server::serve(args.get(2).and_then(|p| p.parse().ok()).expect("port"))
        }
        Some("http-load") => return http::load::run(&http::load::Spec::from_args(&args[2..])),
        _ => {}
    }
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    // Agents log as in production (`info`): debug logging is not a cost a user pays.
    if std::env::var_os("WEFT_TEST_LOG").is_none() {
        std::env::set_var("WEFT_TEST_LOG", "info");
    }
    let only = phases(&args);
    let run = |phase: &str| only.iter().any(|p| p == phase);
    let connections = flag("--connections", 2000);
    let idle_connections = flag("--memory-connections", 10_000);
    let http_opts = http::Options {
        rounds: flag("--http-rounds", 3).max(1),
        rate: flag("--http-rate", 500).max(1) as u64,
        concurrency: flag("--http-concurrency", 16).max(1),
        latency_secs: flag("--http-latency-secs", 3).max(1) as u64,
        rps_secs: flag("--http-rps-secs", 2).max(1) as u64,
    };
    let hook = run("hook").then(|| hook_cost(connections));
    let mesh = run("cross").then(|| cross_node(connections));
    let mem = (run("memory") && idle_connections > 0).then(|| memory::memory(idle_connections));
    let web = run("http").then(|| http::http(&http_opts));
    let restarts = run("restart").then(|| restart::restart(flag("--restart-rounds", 3).max(1)));
    let out = json!({"hook": hook, "cross_node": mesh, "memory": mem, "http": web,
        "restart": restarts});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let name = if only.len() == PHASES.len() {
        "bench.json".to_owned()
    } else {
        format!("bench-{}.json", only.join("-"))
    };
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .expect("write bench json");
    println!("\nwritten to {}", path.display());
}

/// The phases `--only` names (all of them without it); an unknown name ends the run.
fn phases(args: &[String]) -> Vec<String> {
    let Some(list) = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
    else {
        return PHASES.map(str::to_owned).to_vec();
    };
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    if let Some(bad) = names.iter().find(|n| !PHASES.contains(&n.as_str())) {
        eprintln!(
            "--only: unknown phase {bad:?}; the phases are {}",
            PHASES.join(", ")
        );
        std::process::exit(2);
    }
    // In the bench's own order, whatever order they were named in.
    PHASES
        .iter()
        .filter(|p| names.iter().any(|n| n == *p))
        .map(|p| p.to_string())
        .collect()
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

/// One way from a client pod to a server: the tunnel it needs in force (None: not meshed).
struct Path<'a> {
    name: &'static str,
    pod: &'a Pod,
    dst: SocketAddr,
    tunnel: Option<&'static str>,
}

struct CrossNode {
    m: TwoNodeMesh,
    current: Option<&'static str>,
}

impl CrossNode {
    /// Puts the path's tunnel in force (a live MeshConfig change), if it needs one.
    fn select(&mut self, path: &Path) {
        if let Some(t) = path.tunnel {
            if self.current != Some(t) {
                set_tunnel(&self.m.topo, &[&self.m.a1, &self.m.a2], t);
                self.current = Some(t);
            }
        }
    }

    fn cpu(&self) -> f64 {
        self.m.a1.usage().0 + self.m.a2.usage().0
    }
}

fn cross_node(connections: usize) -> Value {
    // mesh/client (n1) → mesh/server (n2) through Weft; a plain pod on n1 → plain/plain (n2)
    // directly.
    let mut m = TwoNodeMesh::start(24 * 3600, &[]);
    let n1 = m.topo.node_named("n1").clone();
    let pc = m.topo.pod(&n1, "plain", "pclient");
    let (mc, ms, ps) = (m.client.clone(), m.server.clone(), m.plain.clone());
    let mut net = CrossNode { m, current: None };
    let paths = [
        Path {
            name: "direct",
            pod: &pc,
            dst: ps.addr(8080),
            tunnel: None,
        },
        Path {
            name: "weft h2",
            pod: &mc,
            dst: ms.addr(8080),
            tunnel: Some("h2"),
        },
        Path {
            name: "weft quic",
            pod: &mc,
            dst: ms.addr(8080),
            tunnel: Some("quic"),
        },
    ];
    let mut rows: Vec<serde_json::Map<String, Value>> = vec![Default::default(); paths.len()];
    let mut put = |i: usize, k: &str, v: Value| {
        rows[i].insert(k.to_owned(), v);
    };

    // Connect + first byte, interleaved rounds.
    let mut connect = vec![Vec::new(); paths.len()];
    let per_round = (connections / ROUNDS).max(1).to_string();
    for _ in 0..ROUNDS {
        for (i, p) in paths.iter().enumerate() {
            net.select(p);
            connect[i].extend(micros(&probe::run(
                p.pod,
                &["latency", &p.dst.to_string(), &per_round],
            )));
        }
    }
    for (i, s) in connect.iter_mut().enumerate() {
        s.sort_unstable();
        put(i, "connect_p50_us", json!(pct(s, 0.5)));
        put(i, "connect_p99_us", json!(pct(s, 0.99)));
    }

    // 1 KiB request/response at a fixed rate on one established connection.
    for (i, p) in paths.iter().enumerate() {
        net.select(p);
        let args = [
            "rr",
            &p.dst.to_string(),
            &RR_RATE.to_string(),
            &RR_COUNT.to_string(),
        ];
        let mut s = micros(&probe::run(p.pod, &args));
        s.sort_unstable();
        put(i, "rr_p50_us", json!(pct(&s, 0.5)));
        put(i, "rr_p99_us", json!(pct(&s, 0.99)));
    }

    // New connections per second.
    for (i, p) in paths.iter().enumerate() {
        net.select(p);
        let r = probe::run(
            p.pod,
            &["conns", &p.dst.to_string(), "4", &CONN_SECS.to_string()],
        );
        assert_eq!(r["failed"], 0, "{r}");
        put(i, "new_conns_per_s", r["per_sec"].clone());
    }

    // Echo throughput, 1 and 8 streams, with the agents' CPU per GB moved.
    for (streams, key) in [(1usize, "1"), (8, "8")] {
        let each = THROUGHPUT_BYTES / streams as u64;
        for (i, p) in paths.iter().enumerate() {
            net.select(p);
            let before = net.cpu();
            let args = [
                "streams",
                &p.dst.to_string(),
                &streams.to_string(),
                &each.to_string(),
            ];
            let r = probe::run(p.pod, &args);
            assert_eq!(r["intact"], streams, "{r}");
            let moved = 2.0 * THROUGHPUT_BYTES as f64;
            let secs = r["secs"].as_f64().expect("secs");
            put(
                i,
                &format!("throughput_{key}_mb_s"),
                json!(moved / secs / 1e6),
            );
            put(
                i,
                &format!("agent_cpu_s_per_gb_{key}"),
                json!((net.cpu() - before) / (moved / 1e9)),
            );
        }
    }
    let rss: Vec<u64> = [&net.m.a1, &net.m.a2].iter().map(|a| a.usage().1).collect();
    for (i, p) in paths.iter().enumerate() {
        put(i, "path", json!(p.name));
    }
    print_table(connections, &rows);
    println!("agents' peak RSS: {} KiB and {} KiB", rss[0], rss[1]);
    json!({"paths": rows, "agent_peak_rss_kib": rss})
}

fn micros(r: &Value) -> Vec<u64> {
    assert_eq!(r["failed"], 0, "{r}");
    r["micros"]
        .as_array()
        .expect("micros")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// Rows are metrics, columns paths; every figure with its ratio to direct (the first path).
fn print_table(connections: usize, rows: &[serde_json::Map<String, Value>]) {
    let metrics = [
        (
            "connect_p50_us",
            format!("connect+first byte p50 µs ({connections}/path)"),
        ),
        ("connect_p99_us", "connect+first byte p99 µs".to_owned()),
        ("rr_p50_us", format!("1 KiB req/resp p50 µs @{RR_RATE}/s")),
        ("rr_p99_us", format!("1 KiB req/resp p99 µs @{RR_RATE}/s")),
        (
            "new_conns_per_s",
            "new connections/s (4 workers)".to_owned(),
        ),
        ("throughput_1_mb_s", "echo MB/s, 1 stream".to_owned()),
        ("throughput_8_mb_s", "echo MB/s, 8 streams".to_owned()),
        (
            "agent_cpu_s_per_gb_1",
            "agents' CPU s/GB, 1 stream".to_owned(),
        ),
        (
            "agent_cpu_s_per_gb_8",
            "agents' CPU s/GB, 8 streams".to_owned(),
        ),
    ];
    println!("\n2. across nodes; ratios to direct in brackets");
    print!("{:<38}", "");
    for r in rows {
        print!("{:>20}", r["path"].as_str().unwrap_or(""));
    }
    println!();
    for (key, label) in metrics {
        print!("{label:<38}");
        let base = rows[0][key].as_f64().unwrap_or(0.0);
        for r in rows {
            let v = r[key].as_f64().unwrap_or(0.0);
            // The direct path has no agents: CPU per GB has no base to divide by.
            let cell = if base > 0.0 && !key.starts_with("agent_cpu") {
                format!("{v:.0} ({:.2}x)", v / base)
            } else {
                format!("{v:.2}")
            };
            print!("{cell:>20}");
        }
        println!();
    }
    let base = rows[0]["rr_p50_us"].as_f64().unwrap_or(0.0);
    print!("{:<38}", "added p50 µs, req/resp (target ≤ 25)");
    for r in rows {
        print!(
            "{:>20}",
            format!("{:+.0}", r["rr_p50_us"].as_f64().unwrap_or(0.0) - base)
        );
    }
    println!();
}
