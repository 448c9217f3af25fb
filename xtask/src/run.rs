//! The commands: build, test, lint, demo, bench.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{bail, Context as _, Result};

use crate::{ebpf, prereqs};

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(ebpf::workspace_root())
        .env("WEFT_BPF_OBJECT", ebpf::object_path())
        .args(args);
    c
}

fn check(what: &str, status: std::io::Result<ExitStatus>) -> Result<()> {
    let status = status.with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn target_dir(release: bool) -> PathBuf {
    ebpf::cargo_target_dir().join(if release { "release" } else { "debug" })
}

pub fn build(release: bool) -> Result<()> {
    prereqs::ebpf_toolchain()?;
    ebpf::build()?;
    let mut args = vec!["build", "--bins"];
    if release {
        args.push("--release");
    }
    check("cargo build", cargo(&args).status())
}

pub fn test(filter: Option<String>) -> Result<()> {
    let cgroup = prereqs::all("test")?;
    build(false)?;
    let skips = ebpf::workspace_root().join("target/weft-skipped.log");
    let ran = ebpf::workspace_root().join("target/weft-ran.log");
    let _ = std::fs::remove_file(&skips);
    let _ = std::fs::remove_file(&ran);
    let mut args = vec!["test", "--no-fail-fast"];
    if let Some(f) = &filter {
        args.push(f);
    }
    let mut child = cargo(&args)
        .env("WEFT_AGENT_BIN", target_dir(false).join("mesh-agent"))
        .env("WEFT_CGROUP2", &cgroup)
        .env("WEFT_SKIP_LOG", &skips)
        .env("WEFT_RAN_LOG", &ran)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let totals = tee_and_count(child.stdout.take().expect("piped stdout"));
    let status = child.wait();
    let skipped = report_skips(&skips);
    let integration_ran = count_lines(&ran);
    // One closing line for the whole run: cargo's own last line is for whichever crate ran
    // last, which may have no tests at all.
    println!(
        "\ntests: {} passed, {} failed, {skipped} skipped",
        totals.0, totals.1
    );
    check("cargo test", status)?;
    all_skipped(integration_ran, skipped)
}

/// A run in which every integration test skipped proved nothing about the mesh: not green.
fn all_skipped(ran: usize, skipped: usize) -> Result<()> {
    if skipped > 0 && ran == 0 {
        bail!("all {skipped} integration test(s) skipped (see above): nothing was tested");
    }
    Ok(())
}

fn count_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| !l.is_empty()).count())
        .unwrap_or(0)
}

/// Echoes cargo test's output and sums its `test result:` lines: (passed, failed).
fn tee_and_count(out: std::process::ChildStdout) -> (u64, u64) {
    use std::io::BufRead as _;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    _ => {}
                }
            }
        }
    }
    (passed, failed)
}

/// Tests that could not run for want of a kernel feature say so here, by name, so a skip is
/// never mistaken for a pass.
fn report_skips(log: &std::path::Path) -> usize {
    let Ok(text) = std::fs::read_to_string(log) else {
        return 0;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if !lines.is_empty() {
        println!(
            "\n{} test(s) SKIPPED for missing kernel features:",
            lines.len()
        );
        for l in &lines {
            println!("  {l}");
        }
    }
    lines.len()
}

/// Writes (or, with `check`, compares) deploy/crds/ from the CRD types, through meshctl.
pub fn codegen(check_only: bool) -> Result<()> {
    prereqs::ebpf_toolchain()?;
    ebpf::build()?;
    let dir = ebpf::workspace_root().join("deploy/crds");
    let dir = dir.to_string_lossy();
    let flag = if check_only { "--check" } else { "--out" };
    check(
        if check_only {
            "deploy/crds is up to date"
        } else {
            "meshctl crds"
        },
        cargo(&[
            "run",
            "-q",
            "-p",
            "mesh-agent",
            "--bin",
            "meshctl",
            "--",
            "crds",
            flag,
            &dir,
        ])
        .status(),
    )
}

/// Every manifest in deploy/ against the Kubernetes schemas (kubernetes-validate, offline), and
/// the example custom resources against the generated CRDs.
pub fn manifests() -> Result<()> {
    prereqs::kubernetes_validate()?;
    let root = ebpf::workspace_root();
    let yamls = |dir: &str| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        v.sort();
        Ok(v)
    };
    let mut k8s = yamls("deploy/kubernetes")?;
    k8s.extend(yamls("deploy/crds")?);
    check(
        "kubernetes-validate",
        Command::new("kubernetes-validate")
            .args(["--quiet", "--strict", "-k", "1.33"])
            .args(&k8s)
            .status(),
    )?;
    check(
        "custom resources against their CRDs",
        Command::new("python3")
            .arg(root.join("xtask/scripts/validate_crs.py"))
            .arg(root.join("deploy/crds"))
            .args(yamls("deploy/examples/crs")?)
            .args(yamls("xtask/testdata")?)
            .stdout(std::process::Stdio::null())
            .status(),
    )
}

pub fn lint() -> Result<()> {
    check(
        "cargo fmt",
        cargo(&["fmt", "--all", "--", "--check"]).status(),
    )?;
    codegen(true)?;
    manifests()?;
    check(
        "cargo clippy",
        cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]).status(),
    )?;
    prereqs::ebpf_toolchain()?;
    check(
        "cargo clippy (mesh-ebpf)",
        cargo(&[
            "clippy",
            "--package",
            "mesh-ebpf",
            "--target",
            ebpf::TARGET,
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        .status(),
    )
}

static CHILD: AtomicI32 = AtomicI32::new(0);

/// Runs one of the tests crate's tools as root, forwarding Ctrl-C so it can clean up.
fn tool(name: &str, release: bool, args: &[String]) -> Result<()> {
    let cgroup = prereqs::all(name)?;
    build(release)?;
    let mut child = Command::new(target_dir(release).join(format!("weft-{name}")))
        .args(args)
        .env("WEFT_AGENT_BIN", target_dir(release).join("mesh-agent"))
        .env("WEFT_CGROUP2", &cgroup)
        .spawn()
        .with_context(|| format!("starting weft-{name}"))?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    ctrlc::set_handler(|| {
        let pid = CHILD.load(Ordering::SeqCst);
        if pid > 0 {
            // Safety: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    })?;
    check(&format!("weft-{name}"), child.wait())
}

pub fn demo() -> Result<()> {
    tool("demo", false, &[])
}

/// The bench's phases, in the order it runs them.
const BENCH_PHASES: [&str; 4] = ["hook", "cross", "memory", "http"];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Connections per measurement (hook and cross phases).
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Idle relayed connections held open for the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    memory_connections: usize,
    /// Run only these phases (comma-separated); all of them without it.
    #[arg(long, value_delimiter = ',', value_parser = BENCH_PHASES)]
    only: Vec<String>,
    /// HTTP phase: rounds over all cases; the table reports medians of rounds.
    #[arg(long, default_value_t = 3)]
    http_rounds: usize,
    /// HTTP phase: requests per second of the fixed-rate latency measurement.
    #[arg(long, default_value_t = 500)]
    http_rate: u64,
    /// HTTP phase: connections (HTTP/1.1) or streams (HTTP/2) in flight for the max rate.
    #[arg(long, default_value_t = 16)]
    http_concurrency: usize,
    /// HTTP phase: seconds of each fixed-rate latency measurement.
    #[arg(long, default_value_t = 3)]
    http_latency_secs: u64,
    /// HTTP phase: seconds of each max-rate measurement.
    #[arg(long, default_value_t = 2)]
    http_rps_secs: u64,
}

impl BenchArgs {
    fn runs(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            ("--connections", self.connections.to_string()),
            ("--memory-connections", self.memory_connections.to_string()),
            ("--http-rounds", self.http_rounds.to_string()),
            ("--http-rate", self.http_rate.to_string()),
            ("--http-concurrency", self.http_concurrency.to_string()),
            ("--http-latency-secs", self.http_latency_secs.to_string()),
            ("--http-rps-secs", self.http_rps_secs.to_string()),
        ];
        if !self.only.is_empty() {
            a.push(("--only", self.only.join(",")));
        }
        a.into_iter().flat_map(|(k, v)| [k.to_owned(), v]).collect()
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.runs("http") {
        prereqs::nginx()?;
    }
    tool("bench", true, &args.to_args())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_where_every_integration_test_skipped_fails() {
        let err = all_skipped(0, 31).unwrap_err().to_string();
        assert!(err.contains("all 31 integration test(s) skipped"), "{err}");
        assert!(
            all_skipped(30, 1).is_ok(),
            "some skips are reported, not fatal"
        );
        assert!(
            all_skipped(0, 0).is_ok(),
            "a filter that matches only unit tests"
        );
    }
}
