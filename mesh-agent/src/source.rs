//! Where the agent's (and the CA's) `State` comes from: a directory of Kubernetes-shaped YAML
//! documents (file mode), watched for changes, or the Kubernetes API. Both publish `Loaded`
//! snapshots on a watch channel and share one parser.

pub mod file;
pub mod kubernetes;
pub mod objects;
pub mod parse;

pub use file::{load_dir, watch, ConfigError, Ignored, Loaded};

/// Starts the configured source; it publishes on `tx`.
pub async fn start(
    kind: crate::config::SourceKind,
    config_dir: Option<std::path::PathBuf>,
    node: Option<String>,
    reload_interval: std::time::Duration,
    tx: tokio::sync::watch::Sender<Option<Loaded>>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match (kind, config_dir) {
        (crate::config::SourceKind::File, Some(dir)) => {
            tokio::spawn(watch(dir, reload_interval, tx));
        }
        (crate::config::SourceKind::File, None) => anyhow::bail!("file mode needs --config-dir"),
        (crate::config::SourceKind::Kubernetes, _) => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster service account, or KUBECONFIG)")?;
            // Without a node this is the CA's view (pods and nodes only, as its RBAC grants).
            let kinds = match node {
                Some(_) => kubernetes::KINDS,
                None => kubernetes::CA_KINDS,
            };
            tokio::spawn(kubernetes::watch_kinds(client, kinds, node, tx));
        }
    }
    Ok(())
}
