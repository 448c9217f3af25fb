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

use crate::{
    app::enrollment::PodStatus,
    config::AgentConfig,
    identity::{manager::CertStatus, CertManager},
    redirect::Maps,
    source::ConfigError,
    state::State,
};

/// What the agent reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// True once the first configuration has been applied.
    pub ready: bool,
    pub node: String,
    pub config: AgentConfig,
    /// The cluster as this agent sees it: nodes, namespaces, pods, Services, EndpointSlices,
    /// PeerAuthentications.
    pub state: Arc<State>,
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
            state: Arc::default(),
            pods: Vec::new(),
            enrollment_errors: BTreeMap::new(),
            config_errors: Vec::new(),
        }
    }
}

/// What the endpoint reads, live, on each request.
struct Live {
    status: Arc<RwLock<Status>>,
    maps: Arc<Maps>,
    certs: Option<CertManager>,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    #[serde(flatten)]
    status: &'a Status,
    /// One entry per workload identity of this node (absent without a CA).
    certificates: Option<Vec<CertStatus>>,
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
    certs: Option<CertManager>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let live = Arc::new(Live {
        status,
        maps,
        certs,
    });
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let live = live.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let live = live.clone();
                    async move { Ok::<_, Infallible>(route(req, &live)) }
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

fn route(req: Request<Incoming>, live: &Live) -> Response<Full<Bytes>> {
    let status = live.status.read().expect("status lock");
    match req.uri().path() {
        "/healthz/ready" if status.ready => text(StatusCode::OK, readiness(live.certs.as_ref())),
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n".into(),
        ),
        "/config_dump" => {
            let dump = ConfigDump {
                status: &status,
                certificates: live.certs.as_ref().map(CertManager::statuses),
                bpf: BpfDump {
                    pin_dir: status.config.bpf_pin_dir.clone(),
                    counters: live.maps.stats(),
                    map_entries: live.maps.entry_counts(),
                },
            };
            let body = serde_json::to_vec_pretty(&dump).unwrap_or_else(|e| {
                format!("{{\"error\": \"config_dump does not serialise: {e}\"}}").into_bytes()
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz/ready or /config_dump\n".into(),
        ),
    }
}

/// Ready means the configuration is applied. Certificate trouble does not make the agent unready
/// (it keeps serving with the last good certificates) but is said here, one line per problem.
fn readiness(certs: Option<&CertManager>) -> String {
    let mut out = String::from("ready\n");
    for s in certs.map(CertManager::statuses).unwrap_or_default() {
        let id = &s.identity;
        match (&s.last_error, s.expires_in_secs) {
            (e, None) => {
                out += &format!(
                    "certificate {id}: none yet ({})\n",
                    e.as_deref().unwrap_or("requesting")
                )
            }
            (_, Some(t)) if t <= 0 => out += &format!("certificate {id}: EXPIRED\n"),
            (Some(e), Some(_)) => {
                out += &format!("certificate {id}: renewal failing, last good kept: {e}\n")
            }
            (None, Some(_)) => {}
        }
    }
    out
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
