//! The HTTP phase's table: medians of rounds per case and protocol, ratios to direct, what the
//! proxies spent per 1000 requests, and issue 11's targets evaluated on the figures.

use serde_json::{json, Value};

use super::{Kind, Options};

/// CPU seconds spent during one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Costs {
    /// Both agents' own processes (not their workers).
    pub agents: f64,
    /// The L7 workers of n1 and n2.
    pub workers: [f64; 2],
    pub worker_count: [usize; 2],
    /// nginx's master and workers.
    pub nginx: f64,
}

/// One measurement: the load generator's report and what the proxies spent meanwhile.
pub struct Sample {
    pub report: Value,
    pub costs: Costs,
}

const PROTOCOLS: [&str; 2] = ["HTTP/1.1 keep-alive", "HTTP/2 (h2c prior knowledge)"];
/// Issue 11: the L7 pool's maximum rate against nginx's, at the same concurrency.
const RPS_TARGET: f64 = 0.7;

/// Medians over the rounds of one case and protocol, or why it failed.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub failure: Option<String>,
    pub rounds: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
    /// CPU ms per 1000 requests: the case's proxies (agents; agents and workers; nginx).
    pub proxy_ms: f64,
    pub workers_ms: [f64; 2],
    pub agents_ms: f64,
    pub late: u64,
}

pub struct Row {
    pub name: &'static str,
    pub kind: Kind,
    pub cells: [Cell; 2],
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl Row {
    pub fn new(
        name: &'static str,
        kind: Kind,
        samples: [Vec<Sample>; 2],
        failed: [Option<String>; 2],
    ) -> Self {
        let [s1, s2] = samples;
        let [f1, f2] = failed;
        Self {
            name,
            kind,
            cells: [Cell::of(kind, &s1, f1), Cell::of(kind, &s2, f2)],
        }
    }
}

impl Cell {
    fn of(kind: Kind, samples: &[Sample], failure: Option<String>) -> Self {
        if failure.is_some() || samples.is_empty() {
            return Self {
                failure: Some(failure.unwrap_or_else(|| "not measured".into())),
                ..Self::default()
            };
        }
        let f = |get: &dyn Fn(&Sample) -> f64| median(samples.iter().map(get).collect());
        let per_1k = |s: &Sample, secs: f64| {
            let n = s.report["requests"].as_f64().unwrap_or(0.0).max(1.0);
            secs * 1e3 * 1e3 / n
        };
        let proxy = |c: &Costs| match kind {
            Kind::Direct => 0.0,
            Kind::L4 => c.agents,
            Kind::L7 | Kind::L7Both => c.agents + c.workers[0] + c.workers[1],
            Kind::Nginx => c.nginx,
        };
        Self {
            failure: None,
            rounds: samples.len(),
            p50_us: f(&|s| s.report["latency"]["p50_us"].as_f64().unwrap_or(0.0)),
            p99_us: f(&|s| s.report["latency"]["p99_us"].as_f64().unwrap_or(0.0)),
            rps: f(&|s| s.report["max_rate"]["per_sec"].as_f64().unwrap_or(0.0)),
            proxy_ms: f(&|s| per_1k(s, proxy(&s.costs))),
            workers_ms: [0, 1].map(|i| f(&|s| per_1k(s, s.costs.workers[i]))),
            agents_ms: f(&|s| per_1k(s, s.costs.agents)),
            late: samples
                .iter()
                .map(|s| s.report["latency"]["late_dispatches"].as_u64().unwrap_or(0))
                .sum(),
        }
    }

    fn json(&self) -> Value {
        match &self.failure {
            Some(f) => json!({"failed": f}),
            None => json!({
                "rounds": self.rounds, "p50_us": self.p50_us, "p99_us": self.p99_us,
                "max_rps": self.rps, "proxy_cpu_ms_per_1000": self.proxy_ms,
                "agents_cpu_ms_per_1000": self.agents_ms,
                "l7_workers_cpu_ms_per_1000": {"n1": self.workers_ms[0], "n2": self.workers_ms[1]},
                "late_dispatches": self.late,
            }),
        }
    }
}

fn ratio(v: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.0} ({:.2}x)", v, v / base)
    } else {
        format!("{v:.0}")
    }
}

pub fn print(opts: &Options, rows: &[Row], memory: &Value) -> Value {
    println!(
        "\n4. HTTP across nodes (client pod n1 -> server pod n2), 1 KiB request and response; \
         median of {} rounds; ratios to direct",
        opts.rounds
    );
    println!(
        "   latency: open loop at {}/s for {} s (from each request's due time); max rate: {} \
         requests in flight for {} s",
        opts.rate, opts.latency_secs, opts.concurrency, opts.rps_secs
    );
    let mut out = Vec::new();
    for (p, proto) in PROTOCOLS.iter().enumerate() {
        println!(
            "\n{proto:<30} {:>16} {:>16} {:>18} {:>18}",
            "p50 µs",
            "p99 µs",
            format!("max req/s ({})", opts.concurrency),
            "proxy CPU ms/1k"
        );
        let base = rows
            .iter()
            .find(|r| r.kind == Kind::Direct)
            .map(|r| &r.cells[p]);
        let b = |f: fn(&Cell) -> f64| base.filter(|c| c.failure.is_none()).map_or(0.0, f);
        for r in rows {
            let c = &r.cells[p];
            match &c.failure {
                Some(why) => println!("  {:<28} FAILED: {why}", r.name),
                None => println!(
                    "  {:<28} {:>16} {:>16} {:>18} {:>18}",
                    r.name,
                    ratio(c.p50_us, b(|c| c.p50_us)),
                    ratio(c.p99_us, b(|c| c.p99_us)),
                    ratio(c.rps, b(|c| c.rps)),
                    if r.kind == Kind::Direct {
                        "-".to_owned()
                    } else {
                        format!("{:.1}", c.proxy_ms)
                    }
                ),
            }
        }
        let cases: Value = rows
            .iter()
            .map(|r| (r.name.to_owned(), r.cells[p].json()))
            .collect::<serde_json::Map<_, _>>()
            .into();
        out.push(json!({"protocol": proto, "cases": cases, "targets": targets(rows, p)}));
    }
    print_targets(rows);
    print_pool(rows, memory);
    json!({"options": {"rounds": opts.rounds, "rate": opts.rate, "concurrency": opts.concurrency,
        "latency_secs": opts.latency_secs, "rps_secs": opts.rps_secs},
        "protocols": out, "memory": memory})
}

fn cell(rows: &[Row], kind: Kind, p: usize) -> Result<&Cell, String> {
    let r = rows
        .iter()
        .find(|r| r.kind == kind)
        .expect("every kind has a row");
    match &r.cells[p].failure {
        None => Ok(&r.cells[p]),
        Some(_) => Err(format!("{} FAILED", r.name)),
    }
}

/// Issue 11's two targets for protocol `p`, each with how far from it the figures are.
fn targets(rows: &[Row], p: usize) -> Value {
    let v = |r: Result<Value, String>| r.unwrap_or_else(|e| json!({"not_evaluated": e}));
    json!({"latency": v(latency_target(rows, p)), "max_rps": v(rps_target(rows, p))})
}

/// The L7 pool's added p50 over L4 against nginx's added p50 over direct.
fn latency_target(rows: &[Row], p: usize) -> Result<Value, String> {
    let get = |k| cell(rows, k, p);
    let (d, l4, l7, ng) = (
        get(Kind::Direct)?,
        get(Kind::L4)?,
        get(Kind::L7)?,
        get(Kind::Nginx)?,
    );
    let (l7_added, nginx_added) = (l7.p50_us - l4.p50_us, ng.p50_us - d.p50_us);
    Ok(
        json!({"l7_added_p50_over_l4_us": l7_added, "nginx_added_p50_over_direct_us": nginx_added,
        "met": l7_added <= nginx_added, "excess_us": l7_added - nginx_added}),
    )
}

/// The L7 pool's maximum rate against nginx's at the same concurrency.
fn rps_target(rows: &[Row], p: usize) -> Result<Value, String> {
    let (l7, ng) = (cell(rows, Kind::L7, p)?, cell(rows, Kind::Nginx, p)?);
    let r = l7.rps / ng.rps.max(1e-9);
    Ok(
        json!({"l7_rps": l7.rps, "nginx_rps": ng.rps, "ratio": r, "target": RPS_TARGET,
        "met": r >= RPS_TARGET}),
    )
}

fn print_targets(rows: &[Row]) {
    println!("\ntargets (issue 11):");
    for (p, proto) in PROTOCOLS.iter().enumerate() {
        let t = targets(rows, p);
        let met = |v: &Value| if v["met"] == true { "met" } else { "NOT met" };
        let lat = &t["latency"];
        match lat["not_evaluated"].as_str() {
            Some(why) => {
                println!("  {proto}: L7 added p50 <= nginx added p50: not evaluated ({why})")
            }
            None => {
                println!(
                "  {proto}: L7 pool adds {:+.0} µs p50 over L4, nginx {:+.0} µs over direct: {} \
                 ({:+.0} µs from the target)",
                lat["l7_added_p50_over_l4_us"].as_f64().unwrap_or(0.0),
                lat["nginx_added_p50_over_direct_us"].as_f64().unwrap_or(0.0),
                met(lat),
                lat["excess_us"].as_f64().unwrap_or(0.0),
            )
            }
        }
        let rps = &t["max_rps"];
        match rps["not_evaluated"].as_str() {
            Some(why) => println!("  {proto}: L7 max req/s >= {RPS_TARGET}x nginx: not evaluated ({why})"),
            None => println!(
                "  {proto}: L7 pool {:.0} req/s = {:.2}x nginx's {:.0} (target >= {RPS_TARGET}x): {}",
                rps["l7_rps"].as_f64().unwrap_or(0.0),
                rps["ratio"].as_f64().unwrap_or(0.0),
                rps["nginx_rps"].as_f64().unwrap_or(0.0),
                met(rps),
            ),
        }
    }
}

/// The L7 workers' CPU per 1000 requests and memory, and nginx's for comparison.
fn print_pool(rows: &[Row], memory: &Value) {
    let mib = |list: &Value, key: &str| -> (usize, f64, f64) {
        let v = list.as_array().cloned().unwrap_or_default();
        let kib: Vec<f64> = v.iter().map(|p| p[key].as_f64().unwrap_or(0.0)).collect();
        let max = kib.iter().copied().fold(0.0, f64::max);
        (
            v.len(),
            kib.iter().fold(0.0, |a, k| a + k) / 1024.0,
            max / 1024.0,
        )
    };
    println!("\nL7 pool workers (mesh-agent l7 under each agent) at the end of the phase:");
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        let list = &memory["l7_workers"][node];
        let (n, total, _) = mib(list, "rss_kib");
        let (_, _, peak) = mib(list, "peak_rss_kib");
        let cpu: Vec<String> = [(Kind::L7, "one hop"), (Kind::L7Both, "both ends")]
            .into_iter()
            .filter(|(k, _)| rows.iter().any(|r| r.kind == *k))
            .flat_map(|(kind, case)| {
                PROTOCOLS
                    .iter()
                    .enumerate()
                    .map(move |(p, proto)| match cell(rows, kind, p) {
                        Ok(c) => format!("{case}, {proto} {:.1}", c.workers_ms[i]),
                        Err(_) => format!("{case}, {proto} -"),
                    })
            })
            .collect();
        println!(
            "  {node}: {n} worker(s), RSS {total:.1} MiB in all (peak {peak:.1} MiB per worker); \
             CPU ms per 1000 requests: {}",
            cpu.join(", ")
        );
    }
    let (n, total, _) = mib(&memory["nginx"], "rss_kib");
    if n > 0 {
        println!(
            "  for comparison, {} ({n} processes: master and workers): RSS {total:.1} MiB in all",
            memory["nginx_version"].as_str().unwrap_or("nginx")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p50: f64, rps: f64) -> Cell {
        Cell {
            rounds: 3,
            p50_us: p50,
            rps,
            ..Cell::default()
        }
    }

    fn rows(l7: Cell) -> Vec<Row> {
        let row = |name, kind, c: &Cell| Row {
            name,
            kind,
            cells: [c.clone(), c.clone()],
        };
        vec![
            row("direct", Kind::Direct, &ok(100.0, 10_000.0)),
            row("weft L4", Kind::L4, &ok(300.0, 5_000.0)),
            row("weft L7 pool", Kind::L7, &l7),
            row("nginx", Kind::Nginx, &ok(180.0, 8_000.0)),
        ]
    }

    #[test]
    fn the_targets_compare_added_latency_and_rate_against_nginx() {
        let t = targets(&rows(ok(350.0, 6_000.0)), 0);
        assert_eq!(t["latency"]["l7_added_p50_over_l4_us"], 50.0);
        assert_eq!(t["latency"]["nginx_added_p50_over_direct_us"], 80.0);
        assert_eq!(t["latency"]["met"], true);
        assert_eq!(t["max_rps"]["ratio"], 0.75);
        assert_eq!(t["max_rps"]["met"], true);
        let t = targets(&rows(ok(400.0, 5_000.0)), 1);
        assert_eq!(t["latency"]["met"], false, "{t}");
        assert_eq!(t["latency"]["excess_us"], 20.0);
        assert_eq!(t["max_rps"]["met"], false, "{t}");
    }

    #[test]
    fn a_failed_case_is_never_evaluated() {
        let failed = Cell {
            failure: Some("warm-up: 256 of 256 requests: status 503 ×256".into()),
            ..ok(1.0, 1e9)
        };
        let t = targets(&rows(failed), 0);
        assert_eq!(t["latency"]["not_evaluated"], "weft L7 pool FAILED", "{t}");
        assert_eq!(t["max_rps"]["not_evaluated"], "weft L7 pool FAILED", "{t}");
    }

    #[test]
    fn medians_of_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
