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
    ebpf::workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
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
    let _ = std::fs::remove_file(&skips);
    let mut args = vec!["test", "--no-fail-fast"];
    if let Some(f) = &filter {
        args.push(f);
    }
    let status = cargo(&args)
        .env("WEFT_AGENT_BIN", target_dir(false).join("mesh-agent"))
        .env("WEFT_CGROUP2", &cgroup)
        .env("WEFT_SKIP_LOG", &skips)
        .status();
    report_skips(&skips);
    check("cargo test", status)
}

/// Tests that could not run for want of a kernel feature say so here, by name, so a skip is
/// never mistaken for a pass.
fn report_skips(log: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if !lines.is_empty() {
        eprintln!(
            "\n{} test(s) SKIPPED for missing kernel features:",
            lines.len()
        );
        for l in lines {
            eprintln!("  {l}");
        }
    }
}

pub fn lint() -> Result<()> {
    check(
        "cargo fmt",
        cargo(&["fmt", "--all", "--", "--check"]).status(),
    )?;
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

pub fn bench(connections: usize) -> Result<()> {
    tool(
        "bench",
        true,
        &["--connections".into(), connections.to_string()],
    )
}
