//! `weft-cni`: Weft's chained CNI plugin (run by the container runtime with no arguments, per
//! the CNI spec), and its installer (`weft-cni install`, the DaemonSet's init container).

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use mesh_agent::cni::{install, plugin, spec};

#[derive(Parser)]
#[command(
    name = "weft-cni",
    version,
    about = "Weft's chained CNI plugin. Run with no arguments by the container runtime \
             (CNI_COMMAND etc. in the environment, the network config on stdin)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy this binary into the node's CNI bin dir and chain it at the end of the plugins of
    /// the network configuration the runtime uses (idempotent).
    Install {
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The agent's socket, as the node (the runtime) sees it.
        #[arg(long, default_value = spec::DEFAULT_AGENT_SOCKET)]
        agent_socket: PathBuf,
        /// How long ADD waits for the agent before failing (the kubelet then retries).
        #[arg(long, default_value_t = spec::DEFAULT_TIMEOUT.as_secs_f64())]
        timeout_seconds: f64,
        /// Namespaces whose pods start without asking the agent (repeat; default
        /// kube-system and weft-system).
        #[arg(long = "exclude-namespace")]
        exclude_namespaces: Vec<String>,
    },
    /// Take weft-cni out of the network configuration and the bin dir.
    Uninstall {
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return admin(Cli::parse().command);
    }
    as_plugin()
}

/// The CNI protocol: result or error object on stdout, log lines on stderr.
fn as_plugin() -> ExitCode {
    let env = spec::Env::read(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let result = env.and_then(|env| {
        std::io::stdin()
            .take(1 << 20)
            .read_to_end(&mut stdin)
            .map_err(|e| {
                spec::CniError::new(spec::code::IO_FAILURE, format!("reading stdin: {e}"))
            })?;
        plugin::run(&env, &stdin, &mut |line| eprintln!("weft-cni: {line}"))
    });
    let (out, code) = match result {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{}", e.msg);
            (
                Some(serde_json::to_value(e).expect("serializes")),
                ExitCode::FAILURE,
            )
        }
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{v}");
    }
    code
}

fn admin(command: Command) -> ExitCode {
    let done = match command {
        Command::Install {
            bin_dir,
            conf_dir,
            agent_socket,
            timeout_seconds,
            exclude_namespaces,
        } => run_install(
            bin_dir,
            conf_dir,
            agent_socket,
            timeout_seconds,
            exclude_namespaces,
        ),
        Command::Uninstall { bin_dir, conf_dir } => install::uninstall(&bin_dir, &conf_dir)
            .map(|()| {
                println!(
                    "weft-cni removed from {} and {}",
                    conf_dir.display(),
                    bin_dir.display()
                )
            })
            .map_err(|e| e.to_string()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_install(
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    agent_socket: PathBuf,
    timeout_seconds: f64,
    exclude_namespaces: Vec<String>,
) -> Result<(), String> {
    let source = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let mut settings = serde_json::Map::new();
    settings.insert(
        "agent_socket".into(),
        agent_socket.display().to_string().into(),
    );
    settings.insert("timeout_seconds".into(), timeout_seconds.into());
    if !exclude_namespaces.is_empty() {
        settings.insert("exclude_namespaces".into(), exclude_namespaces.into());
    }
    let i = install::Install {
        source,
        bin_dir,
        conf_dir,
        settings,
    };
    let done = install::install(&i).map_err(|e| e.to_string())?;
    let said = |changed| {
        if changed {
            "installed"
        } else {
            "already up to date"
        }
    };
    println!(
        "weft-cni binary {}: {}",
        said(done.binary_changed),
        done.binary.display()
    );
    println!(
        "weft-cni chained last in {}: {}",
        done.conflist.display(),
        said(done.conflist_changed)
    );
    Ok(())
}
