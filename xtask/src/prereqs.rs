//! Prerequisites: each check installs what is missing when it can (root, apt, cargo) and
//! otherwise fails with the exact command to run.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER: &str = "bpf-linker@0.13.0";

fn is_root() -> bool {
    // Safety: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed: {cmd:?}");
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing packages; run: sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run(
        "installing packages",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(packages),
    )
}

/// rust-src (for -Z build-std=core) and bpf-linker (built against LLVM 22).
pub fn ebpf_toolchain() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        run(
            "installing rust-src",
            Command::new("rustup").args(["component", "add", "rust-src"]),
        )
        .context("rust-src is missing; run: rustup component add rust-src")?;
    }
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists()
        && !Path::new(LLVM_PREFIX).join("lib/libLLVM-22.so").exists()
    {
        apt_install(&["llvm-22-dev"])?;
    }
    run(
        "installing bpf-linker",
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["install", BPF_LINKER, "--locked", "--no-default-features", "--features", "llvm-22"]),
    )
    .with_context(|| {
        format!("run: LLVM_PREFIX={LLVM_PREFIX} cargo install {BPF_LINKER} --locked --no-default-features --features llvm-22")
    })
}

/// Network namespaces, cgroups and eBPF need root.
pub fn root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (network namespaces, cgroups, eBPF): run `sudo -E cargo xtask {what}`; \
             unit tests alone run unprivileged with `cargo test --lib`"
        );
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // Safety: c is a valid C string and st a valid out-pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type)
}

/// bpffs at /sys/fs/bpf, mounted if absent.
pub fn bpffs() -> Result<()> {
    if fs_magic("/sys/fs/bpf") == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run(
        "mounting bpffs",
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
    )
    .context("bpffs is not mounted; run: mount -t bpf bpf /sys/fs/bpf")
}

/// The cgroup v2 mount point, wherever the distribution put it.
pub fn cgroup2() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount_point) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount_point));
            }
        }
    }
    bail!("no cgroup v2 hierarchy is mounted; run: mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified")
}

/// Command-line tools the topologies use.
pub fn tools() -> Result<()> {
    let mut missing = Vec::new();
    if !succeeds(Command::new("ip").arg("-V")) {
        missing.push("iproute2");
    }
    if !succeeds(Command::new("nsenter").arg("--version")) {
        missing.push("util-linux");
    }
    // nft: tests that block traffic between nodes (UDP for the QUIC fallback).
    if !succeeds(Command::new("nft").arg("--version")) {
        missing.push("nftables");
    }
    // prometheus (and its promtool): the HTTP metrics test scrapes the agent with a real one.
    if !succeeds(Command::new("prometheus").arg("--version"))
        || !succeeds(Command::new("promtool").arg("--version"))
    {
        missing.push("prometheus");
    }
    // The CNI reference plugins (bridge, host-local, loopback): the weft-cni chain test runs
    // them as a runtime would.
    if !Path::new(CNI_PLUGINS).join("bridge").exists() {
        missing.push("containernetworking-plugins");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// nginx (Debian's package) for the bench's HTTP phase: the reverse proxy it measures the L7
/// pool against. Only the binary is used (the bench runs it with its own configuration); where
/// no policy-rc.d forbids it, the package also starts the system's nginx service on :80.
pub fn nginx() -> Result<()> {
    let found = |cmd: &str| succeeds(Command::new(cmd).arg("-v"));
    if found("nginx") || found("/usr/sbin/nginx") {
        return Ok(());
    }
    apt_install(&["nginx"]).context("the bench's HTTP phase needs nginx")
}

/// kubernetes-validate (PyPI; carries the Kubernetes schemas, works offline) for `lint`.
pub fn kubernetes_validate() -> Result<()> {
    if succeeds(Command::new("kubernetes-validate").arg("--version")) {
        return Ok(());
    }
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "-q", "kubernetes-validate"]);
    if !succeeds(&mut pip) {
        bail!("kubernetes-validate is missing; run: python3 -m pip install kubernetes-validate");
    }
    Ok(())
}

/// Everything the integration tests, the demo and the bench need.
pub fn all(what: &str) -> Result<PathBuf> {
    root(what)?;
    ebpf_toolchain()?;
    tools()?;
    bpffs()?;
    cgroup2()
}
