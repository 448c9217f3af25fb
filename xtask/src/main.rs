//! `cargo xtask`: build, test, lint, demo and bench Weft. Every command checks its prerequisites
//! and installs what is missing (as root, from apt and crates.io) or says exactly what to run.

mod ebpf;
mod prereqs;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object to target/bpf/weft.bpf.o (release, with BTF).
    BuildEbpf,
    /// Build the eBPF object, then the agent (which embeds it), meshctl and the test tools.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Unit and integration tests (integration tests need root; bpffs is mounted if needed).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// cargo fmt --check, cargo clippy -D warnings, and generated files up to date.
    Lint,
    /// Regenerate deploy/crds/ from the CRD types in mesh-agent/src/crd/.
    Codegen,
    /// A local two-node topology with pods and agents; shows what the mesh captured.
    Demo,
    /// Connect latency, throughput and HTTP request cost with and without Weft (and nginx as
    /// the L7 reference), as ratios measured in one run.
    Bench(run::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => {
            prereqs::ebpf_toolchain()?;
            ebpf::build().map(|_| ())
        }
        Command::Build { release } => run::build(release),
        Command::Test { filter } => run::test(filter),
        Command::Lint => run::lint(),
        Command::Codegen => run::codegen(false),
        Command::Demo => run::demo(),
        Command::Bench(args) => run::bench(&args),
    }
}
