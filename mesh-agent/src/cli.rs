//! Command line of `mesh-agent`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, AgentConfig};

#[derive(Debug, Parser)]
#[command(name = "mesh-agent", version, about = "Weft node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,mesh_agent::proxy=debug`.
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, env = "WEFT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: enroll this node's pods and carry their traffic.
    Run(RunArgs),
    /// Run the mesh CA: sign workload certificates for agents, each only for its own pods.
    Ca(crate::ca::CaArgs),
    /// One worker of the node's L7 pool. The agent starts these itself, each with its end of
    /// a socketpair as --fd; they take their configuration and connections from it only.
    L7(L7Args),
}

#[derive(Debug, Args)]
pub struct L7Args {
    /// The inherited Unix socket to the agent.
    #[arg(long)]
    pub fd: i32,
    /// This worker's index in the pool (for logs).
    #[arg(long, default_value_t = 0)]
    pub worker: usize,
    #[arg(long, env = "WEFT_NODE")]
    pub node: String,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = crate::identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Whether the agent writes access-log lines (`false` when its target is `off`): the
    /// worker formats a line per request only when they are written.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of this node (its Node object).
    #[arg(long, env = "WEFT_NODE")]
    pub node: String,
    /// Where the cluster's configuration comes from.
    #[arg(long, env = "WEFT_SOURCE", value_enum, default_value = "file")]
    pub source: config::SourceKind,
    /// Directory of Kubernetes-shaped YAML documents (file mode; required there).
    #[arg(long, env = "WEFT_CONFIG_DIR", required_if_eq("source", "file"))]
    pub config_dir: Option<PathBuf>,
    /// Kubernetes mode: the host's cgroup v2 root (in a container with its own cgroup
    /// namespace, mount the host's and name it here). Default: the cgroup2 mount.
    #[arg(long, env = "WEFT_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Directory for the agent's own state.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = config::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// bpffs directory where programs, maps and links are pinned.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = config::DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// Load the eBPF object from this file instead of the embedded one.
    #[arg(long, env = "WEFT_BPF_OBJECT")]
    pub bpf_object: Option<PathBuf>,
    /// Admin endpoint (/healthz/ready, /config_dump, /logging, /debug/explain), in the node's
    /// network namespace.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Destination CIDR never captured (repeatable), e.g. the API server's address.
    #[arg(
        long = "exclude-cidr",
        env = "WEFT_EXCLUDE_CIDRS",
        value_delimiter = ','
    )]
    pub excluded_cidrs: Vec<String>,
    /// Destination port never captured (repeatable).
    #[arg(
        long = "exclude-port",
        env = "WEFT_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub excluded_ports: Vec<u16>,
    /// Splice same-node loopback legs with sk_msg. Off by default: on Linux up to at least 6.18
    /// a socket in a sockmap can see a spurious EAGAIN on a blocking read (see README).
    #[arg(long, env = "WEFT_SPLICE")]
    pub splice: bool,
    /// The mesh CA, HOST:PORT. Without it the agent captures but carries traffic in plaintext.
    #[arg(long, env = "WEFT_CA_ADDR")]
    pub ca_addr: Option<String>,
    /// This node's bootstrap credential from the CA (token, root.pem); default
    /// <state-dir>/bootstrap.
    #[arg(long, env = "WEFT_CA_BOOTSTRAP")]
    pub ca_bootstrap: Option<PathBuf>,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = crate::identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Prometheus endpoint (/metrics), in the node's network namespace.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Access log, one JSON line per connection: `stdout`, `off` or a file path.
    #[arg(long, env = "WEFT_ACCESS_LOG", default_value = "stdout")]
    pub access_log: crate::metrics::access_log::Target,
    /// How often the config directory is checked for changes, in milliseconds.
    #[arg(long, env = "WEFT_RELOAD_INTERVAL_MS", default_value_t = config::DEFAULT_RELOAD_INTERVAL.as_millis() as u64)]
    pub reload_interval_ms: u64,
    /// Worker processes of the node's L7 pool; 0 disables it. Default: one per CPU, up to
    /// four.
    #[arg(long, env = "WEFT_L7_WORKERS")]
    pub l7_workers: Option<usize>,
    /// Seconds a draining agent (replaced by a new one, or sent SIGTERM) lets its connections
    /// and L7 workers finish before it closes what is left and exits. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT_SECS", default_value_t = config::DEFAULT_DRAIN_TIMEOUT.as_secs())]
    pub drain_timeout_secs: u64,
}

impl RunArgs {
    pub fn into_config(self) -> AgentConfig {
        AgentConfig {
            node: self.node,
            source: self.source,
            config_dir: self.config_dir,
            cgroup_root: self.cgroup_root,
            state_dir: self.state_dir.clone(),
            bpf_pin_dir: self.bpf_pin_dir,
            bpf_object: self.bpf_object,
            admin_addr: self.admin_addr,
            excluded_cidrs: self.excluded_cidrs,
            excluded_ports: self.excluded_ports,
            splice: self.splice,
            ca_bootstrap: self
                .ca_bootstrap
                .unwrap_or_else(|| self.state_dir.join("bootstrap")),
            ca_addr: self.ca_addr,
            trust_domain: self.trust_domain,
            reload_interval: Duration::from_millis(self.reload_interval_ms),
            metrics_addr: self.metrics_addr,
            access_log: self.access_log,
            l7_workers: self
                .l7_workers
                .unwrap_or_else(crate::l7::supervisor::default_workers),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            log: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}
