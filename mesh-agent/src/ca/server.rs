//! The CA's endpoint: HTTPS (its own serving certificate, chained to the mesh root), one route,
//! `POST /v1/sign`. Every decision is logged with the node, the identity and the reason.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

use super::{
    auth::Authenticator,
    authority::{write_secret, Refusal},
    token_review::{service_account_user, TokenReviewer},
    Authority, ErrorResponse, SignRequest, SignResponse, NODE_HEADER, SIGN_PATH,
};
use crate::{http_server, identity::Identity, source, state::State};

const MAX_BODY: usize = 64 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The signing request's body, once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Where the root, the intermediate and the per-node bootstrap credentials live.
    #[arg(long, env = "WEFT_CA_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, env = "WEFT_CA_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Where the CA learns which pods run on which node.
    #[arg(long, env = "WEFT_SOURCE", value_enum, default_value = "file")]
    pub source: crate::config::SourceKind,
    /// The cluster configuration (file mode; required there).
    #[arg(long, env = "WEFT_CONFIG_DIR", required_if_eq("source", "file"))]
    pub config_dir: Option<PathBuf>,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = crate::identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of workload certificates, in seconds (agents rotate at half-life).
    #[arg(long, env = "WEFT_CERT_LIFETIME_SECS", default_value_t = 24 * 3600)]
    pub cert_lifetime_secs: u64,
    /// How agents prove their node: per-node bootstrap credentials written by the CA (local
    /// mode), or ServiceAccount tokens checked with the API server's TokenReview.
    #[arg(long, env = "WEFT_CA_AUTH", value_enum, default_value = "bootstrap")]
    pub auth: AuthMode,
    #[command(flatten)]
    pub kube: KubeAuthArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Bootstrap,
    Kubernetes,
}

/// `--auth kubernetes`: where the API server is and what the agents' tokens must be.
#[derive(Debug, clap::Args)]
pub struct KubeAuthArgs {
    /// API server HOST:PORT; default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
    #[arg(long, env = "WEFT_KUBE_API")]
    pub kube_api: Option<String>,
    #[arg(
        long,
        env = "WEFT_KUBE_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub kube_ca_file: PathBuf,
    /// The CA's own token, used to call TokenReview (needs `create` on tokenreviews).
    #[arg(
        long,
        env = "WEFT_KUBE_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kube_token_file: PathBuf,
    /// The agents' ServiceAccount, NAMESPACE/NAME.
    #[arg(
        long,
        env = "WEFT_AGENT_SERVICE_ACCOUNT",
        default_value = "weft-system/mesh-agent"
    )]
    pub agent_service_account: String,
    /// The audience the agents' projected tokens are issued for.
    #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = "weft-ca")]
    pub token_audience: String,
}

impl KubeAuthArgs {
    fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let api = match &self.kube_api {
            Some(a) => a.clone(),
            None => {
                let var = |k: &str| {
                    std::env::var(k).with_context(|| format!("--kube-api not given and {k} unset"))
                };
                format!(
                    "{}:{}",
                    var("KUBERNETES_SERVICE_HOST")?,
                    var("KUBERNETES_SERVICE_PORT")?
                )
            }
        };
        let reviewer = TokenReviewer::new(
            &api,
            self.kube_ca_file.clone(),
            self.kube_token_file.clone(),
            &self.token_audience,
        )?;
        Ok(Authenticator::Kubernetes {
            reviewer,
            agent_user: service_account_user(&self.agent_service_account),
        })
    }
}

struct Ca {
    authority: Authority,
    state: ArcSwap<State>,
    auth: Authenticator,
    bootstrap_dir: PathBuf,
}

pub async fn run(args: CaArgs) -> anyhow::Result<()> {
    let lifetime = Duration::from_secs(args.cert_lifetime_secs);
    let authority = Authority::load_or_create(&args.state_dir, &args.trust_domain, lifetime)?;
    let tls = server_tls(&authority)?;
    let auth = match args.auth {
        AuthMode::Bootstrap => Authenticator::Bootstrap(RwLock::new(HashMap::new())),
        AuthMode::Kubernetes => args.kube.authenticator()?,
    };
    let ca = Arc::new(Ca {
        authority,
        state: ArcSwap::from_pointee(State::default()),
        auth,
        bootstrap_dir: args.state_dir.join("bootstrap"),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let (tx, mut rx) = watch::channel(None);
    source::start(
        args.source,
        args.config_dir.clone(),
        None,
        crate::config::DEFAULT_RELOAD_INTERVAL,
        tx,
    )
    .await?;
    let follower = ca.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(loaded) = rx.borrow_and_update().clone() else {
                continue;
            };
            if let Err(e) = follower.bootstrap(&loaded.state) {
                warn!(error = format!("{e:#}"), "writing bootstrap credentials");
            }
            follower.state.store(Arc::new(loaded.state));
        }
    });
    info!(listen = %args.listen, trust_domain = %args.trust_domain, "mesh CA serving");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limits = http_server::CA;
    let mut incoming = http_server::Acceptor::new(listener, limits.server, limits.caps);
    loop {
        let accepted = incoming.next().await;
        let (ca, acceptor) = (ca.clone(), acceptor.clone());
        tokio::spawn(async move {
            let (tcp, peer, _slot) = (accepted.conn, accepted.peer, accepted.slot);
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return warn!(%peer, error = %e, "ca: TLS handshake failed"),
                Err(_) => return warn!(%peer, "ca: TLS handshake timed out"),
            };
            let svc = service_fn(move |req| {
                let ca = ca.clone();
                async move { Ok::<_, std::convert::Infallible>(ca.handle(req).await) }
            });
            http_server::serve_connection(tls, &limits, svc).await;
        });
    }
}

fn server_tls(authority: &Authority) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = authority.serving_cert()?;
    let chain = chain
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

impl Ca {
    /// Writes `<bootstrap>/<node>/{token,root.pem}` for every node that has none yet (local
    /// mode only: in Kubernetes, agents use their ServiceAccount tokens).
    fn bootstrap(&self, state: &State) -> anyhow::Result<()> {
        let Authenticator::Bootstrap(tokens) = &self.auth else {
            return Ok(());
        };
        let mut tokens = tokens.write().expect("tokens lock");
        for node in state.nodes.keys() {
            let dir = self.bootstrap_dir.join(node);
            let token_file = dir.join("token");
            if !token_file.exists() {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("root.pem"), self.authority.root_pem())?;
                write_secret(&token_file, &new_token())?;
                info!(node, dir = %dir.display(), "bootstrap credential written");
            }
            tokens.insert(
                node.clone(),
                std::fs::read_to_string(&token_file)?.trim().to_owned(),
            );
        }
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::POST || req.uri().path() != SIGN_PATH {
            return error(
                StatusCode::NOT_FOUND,
                format!("only POST {SIGN_PATH} is served"),
            );
        }
        let node = header(&req, NODE_HEADER).unwrap_or_default();
        let token = header(&req, "authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned))
            .unwrap_or_default();
        let state = self.state.load();
        if let Err((code, reason)) = self.auth.authenticate(&state, &node, &token).await {
            warn!(%node, %reason, "ca: refused: not authenticated");
            return error(code, reason);
        }
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading request: {e}")),
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request body too slow".into()),
        };
        let request: SignRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
        };
        match self
            .authority
            .sign(&request.csr, |id| authorise(&state, &node, id))
        {
            Ok(signed) => {
                info!(%node, identity = %signed.identity, "ca: signed");
                json(
                    StatusCode::OK,
                    &SignResponse {
                        chain: signed.chain,
                        root: signed.root,
                    },
                )
            }
            Err(Refusal(reason)) => {
                warn!(%node, %reason, "ca: refused");
                error(StatusCode::FORBIDDEN, reason)
            }
        }
    }
}

/// An agent may only obtain identities of pods scheduled on its own node.
fn authorise(state: &State, node: &str, id: &Identity) -> Result<(), Refusal> {
    let runs_here = state
        .pods_running_as(&id.namespace, &id.service_account)
        .any(|p| p.node.as_deref() == Some(node));
    if runs_here {
        Ok(())
    } else {
        Err(Refusal(format!("no pod on node {node} runs as {id}")))
    }
}

fn new_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name)?.to_str().ok().map(str::to_owned)
}

fn json<T: serde::Serialize>(code: StatusCode, body: &T) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).unwrap_or_default(),
        )))
        .expect("static response")
}

fn error(code: StatusCode, error: String) -> Response<Full<Bytes>> {
    json(code, &ErrorResponse { error })
}

/// Where an agent finds its bootstrap credential.
pub fn bootstrap_dir(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("bootstrap").join(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Pod, PodKey};

    #[test]
    fn agents_only_get_identities_of_their_own_pods() {
        let mut state = State::default();
        let key = PodKey {
            namespace: "shop".into(),
            name: "web".into(),
        };
        state.pods.insert(
            key.clone(),
            Pod {
                key,
                uid: None,
                node: Some("n1".into()),
                service_account: "web".into(),
                ip: None,
                labels: Default::default(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            },
        );
        state.reindex();
        let id = Identity::new("cluster.local", "shop", "web");
        assert!(authorise(&state, "n1", &id).is_ok());
        let refusal = authorise(&state, "n2", &id).unwrap_err();
        assert!(refusal.0.contains("no pod on node n2"), "{refusal}");
        assert!(authorise(
            &state,
            "n1",
            &Identity::new("cluster.local", "shop", "admin")
        )
        .is_err());
    }
}
