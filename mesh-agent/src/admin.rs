//! Admin endpoint (127.0.0.1:15000 in the node's netns): /healthz/live, /healthz/ready,
//! /config_dump, /logging (the log filter, changed at run time) and /debug/explain.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};

pub mod explain;

use crate::{
    app::enrollment::PodStatus,
    config::AgentConfig,
    http_server,
    identity::{manager::CertStatus, CertManager},
    proxy::Shared,
    redirect::Maps,
    source::{ConfigError, Ignored},
    state::State,
};

/// What the agent reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// True once the first configuration has been applied.
    pub ready: bool,
    /// This agent's process id (two agents answer on one admin socket during a hand-over).
    pub pid: u32,
    /// The agent this one took over from (its listening sockets), if any.
    pub took_over_from: Option<u32>,
    pub node: String,
    pub config: AgentConfig,
    /// The cluster as this agent sees it: nodes, namespaces, pods, Services, EndpointSlices,
    /// PeerAuthentications.
    pub state: Arc<State>,
    pub pods: Vec<PodStatus>,
    /// Pods that should be enrolled but are not, with the reason (retried with backoff).
    pub enrollment_errors: BTreeMap<String, String>,
    /// Pods the agent will not enroll as they ask (Weft's own namespace, the host network,
    /// Kubernetes-mode netns/cgroup annotations), with the reason.
    pub enrollment_notices: BTreeMap<String, String>,
    /// Configuration documents that were rejected.
    pub config_errors: Vec<ConfigError>,
    /// Configuration that could not be read (the last good version of it stays in force).
    pub config_unreadable: Vec<ConfigError>,
    /// Documents of kinds the agent does not act on, once per kind.
    pub ignored_kinds: Vec<Ignored>,
    /// The L7 pool (absent when disabled); /config_dump shows its live status.
    #[serde(skip)]
    pub l7_pool: Option<Arc<crate::l7::L7Pool>>,
}

impl Status {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self {
            ready: false,
            pid: std::process::id(),
            took_over_from: None,
            node: cfg.node.clone(),
            config: cfg.clone(),
            state: Arc::default(),
            pods: Vec::new(),
            enrollment_errors: BTreeMap::new(),
            enrollment_notices: BTreeMap::new(),
            config_errors: Vec::new(),
            config_unreadable: Vec::new(),
            ignored_kinds: Vec::new(),
            l7_pool: None,
        }
    }
}

/// What the endpoint reads, live, on each request.
struct Live {
    status: Arc<RwLock<Status>>,
    maps: Arc<Maps>,
    certs: Option<CertManager>,
    shared: Arc<Shared>,
    logging: Option<LogControl>,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    #[serde(flatten)]
    status: &'a Status,
    /// One entry per workload identity of this node (absent without a CA).
    certificates: Option<Vec<CertStatus>>,
    /// Pooled tunnel connections (absent without a CA).
    tunnel_pools: Option<crate::tunnel::PoolSizes>,
    /// Workers, restarts, snapshot versions, refused hand-offs (absent when disabled).
    l7_pool: Option<crate::l7::PoolStatus>,
    bpf: BpfDump,
    /// Sizes of the agent's per-endpoint and per-series tables (bounded under churn).
    tables: Tables,
}

#[derive(Serialize)]
struct Tables {
    balancer: crate::proxy::balance::BalancerSizes,
    /// TCP metric label sets kept (four series each in /metrics).
    metric_series: usize,
}

#[derive(Serialize)]
struct BpfDump {
    pin_dir: PathBuf,
    /// Kernel-side counters, summed over CPUs.
    counters: BTreeMap<&'static str, u64>,
    /// Entries per map: per-connection maps return to zero when connections close.
    map_entries: BTreeMap<&'static str, usize>,
}

/// Changes the log filter at run time (`/logging`): given a filter, applies it; either way
/// returns the filter in force. Set by `main`, which owns the subscriber.
pub type LogControl = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// Serves the admin endpoint on `listener` (bound by the caller, or inherited from the agent
/// this one took over from).
pub fn serve(
    listener: TcpListener,
    status: Arc<RwLock<Status>>,
    maps: Arc<Maps>,
    shared: Arc<Shared>,
    logging: Option<LogControl>,
) -> JoinHandle<()> {
    let live = Arc::new(Live {
        status,
        maps,
        certs: shared.mtls.as_ref().map(|m| m.certs.clone()),
        shared,
        logging,
    });
    http_server::spawn(listener, http_server::ADMIN, move |req| {
        route(req, live.clone())
    })
}

async fn route(req: Request<Incoming>, live: Arc<Live>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/debug/explain" {
        let (Some(from), Some(to)) = (query_param(&req, "from"), query_param(&req, "to")) else {
            return text(
                StatusCode::BAD_REQUEST,
                "usage: /debug/explain?from=NAMESPACE/POD&to=HOST:PORT\n".into(),
            );
        };
        let probe = match query_param(&req, "http") {
            Some(h) => {
                let headers: Vec<String> = req
                    .uri()
                    .query()
                    .map(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .filter(|(k, _)| k == "header")
                            .map(|(_, v)| v.into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                match explain::l7::HttpProbe::parse(&h, &headers) {
                    Ok(p) => Some(p),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            None => None,
        };
        let status = live.status.read().expect("status lock").clone();
        let answer = explain::explain(&live.shared, &status, &from, &to, probe.as_ref()).await;
        return json(&answer);
    }
    route_now(req, &live)
}

fn json(v: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v)
        .unwrap_or_else(|e| format!("{{\"error\": \"does not serialise: {e}\"}}").into_bytes());
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

fn route_now(req: Request<Incoming>, live: &Live) -> Response<Full<Bytes>> {
    let status = live.status.read().expect("status lock");
    match req.uri().path() {
        // Alive while the runtime answers: never gated on configuration (see deploy/).
        "/healthz/live" => text(StatusCode::OK, "alive\n".into()),
        "/healthz/ready" if status.ready => text(
            StatusCode::OK,
            readiness(live.certs.as_ref(), &status.config_unreadable),
        ),
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "configuration not loaded yet\n".into(),
        ),
        "/config_dump" => {
            let dump = ConfigDump {
                status: &status,
                certificates: live.certs.as_ref().map(CertManager::statuses),
                tunnel_pools: live.shared.mtls.as_ref().map(|m| m.pool_sizes()),
                l7_pool: status.l7_pool.as_ref().map(|p| p.status()),
                bpf: BpfDump {
                    pin_dir: status.config.bpf_pin_dir.clone(),
                    counters: live.maps.stats(),
                    map_entries: live.maps.entry_counts(),
                },
                tables: Tables {
                    balancer: live.shared.balancer.sizes(),
                    metric_series: live.shared.metrics.series(),
                },
            };
            json(&dump)
        }
        "/logging" => logging(&req, live.logging.as_ref(), status.l7_pool.as_deref()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz/live, /healthz/ready, /config_dump, /logging or /debug/explain\n".into(),
        ),
    }
}

/// `GET /logging` shows the log filter; `POST /logging?level=FILTER` sets it (a level such as
/// `debug`, or a tracing filter such as `info,mesh_agent::proxy=debug`), here and in the L7
/// workers.
fn logging(
    req: &Request<Incoming>,
    control: Option<&LogControl>,
    pool: Option<&crate::l7::L7Pool>,
) -> Response<Full<Bytes>> {
    let Some(control) = control else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "log level is fixed in this process\n".into(),
        );
    };
    let level = query_param(req, "level");
    let result = match (req.method(), level.as_deref()) {
        (&hyper::Method::GET, None) => control(None),
        (&hyper::Method::POST, Some(level)) => {
            let applied = control(Some(level));
            // Only a filter the agent took: the workers parse it with the same code.
            if let (Ok(_), Some(pool)) = (&applied, pool) {
                pool.set_log(level);
            }
            applied
        }
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "GET /logging shows the filter; POST /logging?level=FILTER changes it\n".into(),
            )
        }
    };
    match result {
        Ok(now) => text(StatusCode::OK, format!("{now}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// A query parameter, decoded.
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Ready means the configuration is applied. Certificate trouble and configuration that cannot
/// be read do not make the agent unready (it keeps serving with the last good certificates and
/// configuration) but are said here, one line per problem.
fn readiness(certs: Option<&CertManager>, unreadable: &[ConfigError]) -> String {
    let mut out = String::from("ready\n");
    for e in unreadable {
        out += &format!("configuration: {e}\n");
    }
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
