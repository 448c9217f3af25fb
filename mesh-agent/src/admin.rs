//! Admin endpoint (127.0.0.1:15000 in the node's netns): /healthz/ready and /config_dump.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::debug;

use crate::{app::enrollment::PodStatus, config::AgentConfig, redirect::Maps, source::ConfigError};

/// What the agent reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// True once the first configuration has been applied.
    pub ready: bool,
    pub node: String,
    pub config: AgentConfig,
    pub pods: Vec<PodStatus>,
    /// Pods that should be enrolled but are not, with the reason (retried every second).
    pub enrollment_errors: BTreeMap<String, String>,
    /// Configuration documents that were rejected.
    pub config_errors: Vec<ConfigError>,
}

impl Status {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self {
            ready: false,
            node: cfg.node.clone(),
            config: cfg.clone(),
            pods: Vec::new(),
            enrollment_errors: BTreeMap::new(),
            config_errors: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    #[serde(flatten)]
    status: &'a Status,
    bpf: BpfDump,
}

#[derive(Serialize)]
struct BpfDump {
    pin_dir: PathBuf,
    /// Kernel-side counters, summed over CPUs.
    counters: BTreeMap<&'static str, u64>,
    /// Entries per map: per-connection maps return to zero when connections close.
    map_entries: BTreeMap<&'static str, usize>,
}

pub async fn serve(
    addr: SocketAddr,
    status: Arc<RwLock<Status>>,
    maps: Arc<Maps>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (status, maps) = (status.clone(), maps.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (status, maps) = (status.clone(), maps.clone());
                    async move { Ok::<_, Infallible>(route(req, &status, &maps)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(error = %e, "admin connection");
                }
            });
        }
    }))
}

fn route(req: Request<Incoming>, status: &RwLock<Status>, maps: &Maps) -> Response<Full<Bytes>> {
    let status = status.read().expect("status lock");
    match req.uri().path() {
        "/healthz/ready" if status.ready => text(StatusCode::OK, "ready\n"),
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n",
        ),
        "/config_dump" => {
            let dump = ConfigDump {
                status: &status,
                bpf: BpfDump {
                    pin_dir: status.config.bpf_pin_dir.clone(),
                    counters: maps.stats(),
                    map_entries: maps.entry_counts(),
                },
            };
            let body = serde_json::to_vec_pretty(&dump).unwrap_or_default();
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz/ready or /config_dump\n",
        ),
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}
