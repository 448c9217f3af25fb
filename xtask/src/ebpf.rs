//! Building mesh-ebpf for bpfel-unknown-none with the stable toolchain: RUSTC_BOOTSTRAP=1
//! unlocks `-Z build-std=core`, bpf-linker links, `--btf` keeps type information.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

pub const TARGET: &str = "bpfel-unknown-none";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (worktrees sharing one
/// target directory), else the workspace's `target/`.
pub fn cargo_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where the object ends up; mesh-agent's build.rs embeds it from here.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/bpf/weft.bpf.o")
}

pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let status = Command::new("cargo")
        .current_dir(&root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args([
            "build",
            "--package",
            "mesh-ebpf",
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .status()
        .context("running cargo for mesh-ebpf")?;
    if !status.success() {
        bail!("building mesh-ebpf failed");
    }
    let built = cargo_target_dir().join(TARGET).join("release/mesh-ebpf");
    let out = object_path();
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    // Copy only when changed, so cargo does not rebuild the agent for nothing.
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&out).ok().as_deref() != Some(&new[..]) {
        std::fs::write(&out, &new)?;
    }
    eprintln!("eBPF object: {}", out.display());
    Ok(out)
}
