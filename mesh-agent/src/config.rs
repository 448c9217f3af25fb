//! Agent settings: defaults and well-known names in one place, and the resolved configuration,
//! which is `Serialize` so that it is logged at start and shown by /config_dump.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Serialize;

/// Namespace label that enrolls every pod in the namespace, and pod label value that opts out.
pub const MESH_LABEL: &str = "weft.dev/mesh";
pub const MESH_ENABLED: &str = "enabled";
pub const MESH_DISABLED: &str = "disabled";
/// Service or namespace label that sends a Service's HTTP traffic through the L7 pool (HTTP
/// metrics and access logs without routes).
pub const L7_LABEL: &str = "weft.dev/l7";
pub const L7_ENABLED: &str = "enabled";
/// File-mode pod annotations: the pod's netns path and cgroup v2 directory.
pub const NETNS_ANNOTATION: &str = "weft.dev/netns";
pub const CGROUP_ANNOTATION: &str = "weft.dev/cgroup";
/// Weft's own namespace (deploy/kubernetes: the agent, the CA, the L7 pool and the gateway run
/// here). Its pods are never enrolled, whatever its labels say: an enrolled CA under STRICT
/// would refuse the plaintext bootstrap of every agent.
pub const SYSTEM_NAMESPACE: &str = "weft-system";
/// A pod that could not be enrolled is retried after this, doubling per failure up to
/// [`ENROLL_RETRY_MAX`]; a change of the pod in the configuration retries it at once.
pub const ENROLL_RETRY_MIN: Duration = Duration::from_millis(250);
pub const ENROLL_RETRY_MAX: Duration = Duration::from_secs(5);

pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/weft";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_millis(200);
/// Per-direction copy buffer: bounds memory per connection.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// Accept backlog of the in-pod listeners.
pub const LISTEN_BACKLOG: i32 = 4096;
/// How often the hosts of ServiceEntries are resolved again.
pub const EGRESS_DNS_REFRESH: Duration = Duration::from_secs(30);
/// How long an onward connect may take before the client's connection is reset.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default drain deadline: generous (plain TCP connections cannot move to the next agent, so
/// they get this long to finish), and below the DaemonSet's terminationGracePeriodSeconds (60).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    pub node: String,
    pub source: SourceKind,
    /// File mode's directory.
    pub config_dir: Option<PathBuf>,
    /// Kubernetes mode: the host's cgroup v2 root, where pods' cgroups are found by UID
    /// (default: the cgroup2 mount of this process's mount namespace).
    pub cgroup_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub bpf_object: Option<PathBuf>,
    pub admin_addr: SocketAddr,
    pub excluded_cidrs: Vec<String>,
    pub excluded_ports: Vec<u16>,
    pub splice: bool,
    /// HOST:PORT of the mesh CA.
    pub ca_addr: Option<String>,
    pub ca_bootstrap: PathBuf,
    pub trust_domain: String,
    #[serde(with = "millis")]
    pub reload_interval: Duration,
    /// Prometheus endpoint (/metrics), in the node's network namespace.
    pub metrics_addr: SocketAddr,
    /// Where the per-connection access log goes.
    pub access_log: crate::metrics::access_log::Target,
    /// Worker processes of the L7 pool (0: none).
    pub l7_workers: usize,
    /// How long a draining agent (replaced, or sent SIGTERM) lets its connections finish
    /// before it closes them and exits.
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
    /// The log filter and format in force, passed on to the L7 workers.
    pub log: String,
    pub log_format: crate::cli::LogFormat,
}

/// Where the cluster's configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of Kubernetes-shaped YAML (`--config-dir`), hot-reloaded.
    File,
    /// The Kubernetes API (in-cluster configuration, or KUBECONFIG).
    Kubernetes,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
