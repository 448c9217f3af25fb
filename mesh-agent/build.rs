//! Embeds the eBPF object built by `cargo xtask build-ebpf` (target/bpf/weft.bpf.o, or the path in
//! WEFT_BPF_OBJECT). Without it the agent still compiles (so `cargo clippy` and unit tests work
//! before the BPF toolchain is installed), and `mesh-agent run` says exactly what is missing.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weft_embedded_bpf)");
    println!("cargo::rerun-if-env-changed=WEFT_BPF_OBJECT");
    let path = match std::env::var_os("WEFT_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/weft.bpf.o"),
    };
    println!("cargo::rerun-if-changed={}", path.display());
    if path.is_file() {
        println!("cargo::rustc-cfg=weft_embedded_bpf");
        println!("cargo::rustc-env=WEFT_BPF_OBJECT_PATH={}", path.display());
    }
}
