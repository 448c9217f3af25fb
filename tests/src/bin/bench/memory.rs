//! Part 3 of the bench: what idle connections cost the agents, and whether the memory comes back
//! once they close. Fresh agents (h2 tunnel, the default); each agent's VmRSS when idle, with N
//! idle connections relayed end to end (client pod on n1 → server pod on n2), right after they
//! have all closed, and once settled (the agent trims its heap periodically).

use std::{
    io::{BufReader, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use weft_tests::{agent::sibling_bin, eventually, netns, Agent, TwoNodeMesh};

/// How long RSS is watched after the connections close: longer than the agent's heap-trim
/// period, so "settled" includes a trim.
const SETTLE: Duration = Duration::from_secs(12);

pub fn memory(connections: usize) -> Value {
    let m = TwoNodeMesh::start(24 * 3600, &[]);
    let agents = [("n1 (source)", &m.a1), ("n2 (destination)", &m.a2)];
    let idle = agents.map(|(_, a)| rss_kib(a));
    let mut cmd = Command::new(sibling_bin("weft-probe"));
    netns::command_in(&mut cmd, &m.client.netns, Some(m.client.cgroup.clone())).expect("netns");
    let target = m.server.addr(8080).to_string();
    let mut holder = cmd
        .args(["hold", &target, &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start weft-probe hold");
    let mut out = BufReader::new(holder.stdout.take().expect("stdout"));
    let opened = json_line(&mut out);
    assert_eq!(opened["failed"], 0, "{opened}");
    let open = agents.map(|(_, a)| rss_kib(a));
    writeln!(holder.stdin.take().expect("stdin"), "close").expect("tell holder to close");
    let closed_line = json_line(&mut out);
    let _ = holder.wait();
    for (name, a) in agents {
        eventually(
            &format!("{name}: every connection closed"),
            Duration::from_secs(60),
            || {
                let text = a.metrics();
                let sum = |n| total(&text, n);
                (sum("istio_tcp_connections_opened_total") >= connections as u64
                    && sum("istio_tcp_connections_closed_total")
                        == sum("istio_tcp_connections_opened_total"))
                .then_some(())
            },
        );
    }
    let closed = agents.map(|(_, a)| rss_kib(a));
    let end = Instant::now() + SETTLE;
    let mut settled = closed;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        settled = agents.map(|(_, a)| rss_kib(a));
    }
    println!(
        "\n3. agent memory (VmRSS), {} idle connections relayed (h2); closed: {}",
        opened["open"], closed_line["closed"]
    );
    println!(
        "{:<18} {:>10} {:>12} {:>14} {:>12} {:>16}",
        "agent", "idle MiB", "open MiB", "KiB per conn", "closed MiB", "settled MiB"
    );
    let rows: Vec<Value> = (0..agents.len())
        .map(|i| {
            let per_conn = open[i].saturating_sub(idle[i]) as f64 / connections.max(1) as f64;
            let mib = |k: u64| k as f64 / 1024.0;
            println!(
                "{:<18} {:>10.1} {:>12.1} {:>14.1} {:>12.1} {:>16.1}",
                agents[i].0,
                mib(idle[i]),
                mib(open[i]),
                per_conn,
                mib(closed[i]),
                mib(settled[i])
            );
            json!({"agent": agents[i].0, "idle_kib": idle[i], "open_kib": open[i],
                "per_connection_kib": per_conn, "closed_kib": closed[i], "settled_kib": settled[i]})
        })
        .collect();
    json!({"connections": connections, "agents": rows})
}

fn json_line(out: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    out.read_line(&mut line).expect("read from weft-probe");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("weft-probe said {line:?}: {e}"))
}

/// VmRSS of the agent's process, in KiB.
fn rss_kib(a: &Agent) -> u64 {
    let pid = a.pid().expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The sum of every series of `name`.
fn total(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
