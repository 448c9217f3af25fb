//! Part 5 of the bench (`restart`): what replacing a node's agent costs under load. New
//! connections every 5 ms (200/s, 64 B echoed and a clean end checked each) from a client pod
//! on n1 to a server pod on n2 while n1's agent is (a) replaced by a new one that takes over
//! its sockets (a rolling upgrade), and (b) killed with SIGKILL and restarted (a crash). Per
//! round: connections made, failed, the longest time without a successful one, and for (b) the
//! time from the kill until the next agent was ready.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::{probe::Steady, TwoNodeMesh};

const PERIOD_MS: u64 = 5;
/// Load before and after each event, so the gap is measured with traffic on both sides.
const AROUND: Duration = Duration::from_millis(500);

pub fn restart(rounds: usize) -> Value {
    let mut m = TwoNodeMesh::start(24 * 3600, &[]);
    let target = m.server.addr(8080);
    let mut rows = Vec::new();
    for round in 0..rounds {
        for case in ["hand-over", "SIGKILL"] {
            let load = Steady::start(&m.client, target, PERIOD_MS);
            std::thread::sleep(AROUND);
            let t = Instant::now();
            let (recovery, old) = match case {
                "hand-over" => (None, Some(m.a1.replace())),
                _ => {
                    m.a1.kill();
                    m.a1.restart();
                    (Some(t.elapsed()), None)
                }
            };
            std::thread::sleep(AROUND);
            let r = load.finish();
            drop(old);
            let row = json!({
                "round": round + 1,
                "case": case,
                "connections": r["ok"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0),
                "failed": r["failed"],
                "longest_gap_ms": r["longest_gap_ms"],
                "recovery_ms": recovery.map(|d| d.as_millis() as u64),
            });
            rows.push(row);
        }
    }
    println!("\n== agent restart under 200 new connections/s (n1's agent; client on n1)");
    println!(
        "{:<10} {:>6} {:>12} {:>8} {:>15} {:>12}",
        "case", "round", "connections", "failed", "longest gap ms", "recovery ms"
    );
    for r in &rows {
        println!(
            "{:<10} {:>6} {:>12} {:>8} {:>15} {:>12}",
            r["case"].as_str().unwrap_or(""),
            r["round"],
            r["connections"],
            r["failed"],
            r["longest_gap_ms"],
            r["recovery_ms"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or("-".into()),
        );
    }
    json!({"period_ms": PERIOD_MS, "rounds": rows})
}
