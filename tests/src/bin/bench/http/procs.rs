//! What the proxies cost, read from /proc: CPU seconds (user + system) and resident memory of a
//! set of processes, and which processes those are (the agent's L7 workers, nginx's workers).

use std::collections::BTreeSet;

/// CPU seconds (utime + stime) of `pid` so far; None once it is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat);
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields after the command: state is 0, utime 11, stime 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / hz)
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// VmHWM (peak resident memory) of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and parens).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).get(1)?.parse().ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process below `root` (children, their children, ...), not `root` itself.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == parent && found.insert(*p) {
                frontier.push(*p);
            }
        }
    }
    found.into_iter().collect()
}

/// The L7 workers of the agent `agent_pid`: its descendants running `mesh-agent l7`. Only this
/// agent's, so workers of agents other tests run on the same machine are never counted.
pub fn l7_workers(agent_pid: u32) -> Vec<u32> {
    descendants(agent_pid)
        .into_iter()
        .filter(|p| is_l7_worker(&cmdline(*p)))
        .collect()
}

fn is_l7_worker(argv: &[String]) -> bool {
    let program = argv
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("");
    program.starts_with("mesh-agent") && argv.get(1).is_some_and(|a| a == "l7")
}

/// Total CPU seconds of `pids` (those still alive).
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_mesh_agent_run_as_l7() {
        let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert!(is_l7_worker(&argv("/opt/weft/mesh-agent l7 --socket /s")));
        assert!(is_l7_worker(&argv("mesh-agent l7")));
        assert!(!is_l7_worker(&argv("/opt/weft/mesh-agent run --node n1")));
        assert!(!is_l7_worker(&argv("nginx: worker process")));
    }

    #[test]
    fn stat_fields_survive_a_command_with_spaces() {
        let f = stat_fields("42 (nginx: worker (x)) S 7 42 42 0 -1 0 0 0 0 0 150 30 0");
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "7");
        assert_eq!(f[11], "150");
        assert_eq!(f[12], "30");
    }

    #[test]
    fn this_process_has_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_secs(me).is_some());
        assert!(rss_kib(me).unwrap_or(0) > 0);
    }
}
