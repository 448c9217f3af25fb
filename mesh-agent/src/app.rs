//! Wiring: load the kernel programs, follow the configuration, keep enrollment in step with it,
//! serve the admin endpoint.

pub mod enrollment;

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::info;

use crate::{
    admin::{self, Status},
    config::AgentConfig,
    netns,
    redirect::Redirect,
    source,
};
use enrollment::Enrollment;

/// How often failed enrollments are retried when nothing else changes.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    netns::init();
    info!(config = %serde_json::to_string(&cfg)?, "starting mesh-agent");
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    let redirect = Redirect::load(&cfg).context("loading eBPF programs")?;
    let maps = redirect.maps.clone();
    let status = Arc::new(RwLock::new(Status::new(&cfg)));
    let admin = admin::serve(cfg.admin_addr, status.clone(), maps.clone())
        .await
        .with_context(|| format!("binding admin endpoint {}", cfg.admin_addr))?;

    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(source::watch(
        cfg.config_dir.clone(),
        cfg.reload_interval,
        tx,
    ));
    let mut enrollment = Enrollment::new(redirect, cfg.node.clone());
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break; }
            }
            _ = retry.tick(), if enrollment.has_failures() => {}
            _ = &mut shutdown => break,
        }
        let Some(loaded) = rx.borrow_and_update().clone() else {
            continue;
        };
        enrollment.reconcile(&loaded.state);
        let mut s = status.write().expect("status lock");
        s.pods = enrollment.status();
        s.enrollment_errors = enrollment.failures();
        s.config_errors = loaded.errors;
        s.ready = true;
    }
    // Pods stay hooked (pinned links) and fail closed until the next agent takes over.
    info!("shutting down; enrolled pods stay hooked");
    admin.abort();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
