//! Kubernetes authentication of agents at the CA: the agent presents its ServiceAccount token
//! (projected, audience `weft-ca`), the CA asks the API server (TokenReview) who it is, and
//! accepts it only if it is the agent's ServiceAccount and the token is bound to the node the
//! agent claims (the `authentication.kubernetes.io/node-name` extra that bound tokens carry
//! since Kubernetes 1.30; for older clusters, the pod the token is bound to, looked up in the
//! cluster state). Verdicts are cached briefly so a renewal storm does not become an API storm.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::json;

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_FOR: Duration = Duration::from_secs(60);
const MAX_RESPONSE: usize = 1 << 20;

/// Who a token belongs to, as the API server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub username: String,
    /// The node the token is bound to, if the API server says so.
    pub node: Option<String>,
    /// The pod (namespace, name) the token is bound to.
    pub pod: Option<(String, String)>,
}

pub struct TokenReviewer {
    host: String,
    port: u16,
    /// The CA's own ServiceAccount token (re-read per call: kubelet rotates it).
    bearer_file: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    audience: String,
    cache: Mutex<HashMap<String, (Instant, Verdict)>>,
}

/// The API server's answer about one token: who, or why not.
type Verdict = Result<Reviewed, String>;

#[derive(Deserialize)]
struct Review {
    status: ReviewStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReviewStatus {
    authenticated: bool,
    user: User,
    error: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User {
    username: String,
    extra: HashMap<String, Vec<String>>,
}

impl TokenReviewer {
    /// `api`: `host:port` of the API server (in a pod: KUBERNETES_SERVICE_HOST and _PORT);
    /// `ca_file`: the cluster CA bundle; `bearer_file`: the CA's own token.
    pub fn new(
        api: &str,
        ca_file: PathBuf,
        bearer_file: PathBuf,
        audience: &str,
    ) -> anyhow::Result<Self> {
        let (host, port) = api
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("API server address {api:?} is not HOST:PORT"))?;
        let pem = std::fs::read(&ca_file)
            .map_err(|e| anyhow::anyhow!("cluster CA {}: {e}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("cluster CA {}: {e}", ca_file.display()))?;
            roots.add(cert)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            host,
            port,
            bearer_file,
            tls: Arc::new(tls),
            audience: audience.to_owned(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Asks the API server who `token` is. Err: the reason to refuse (or that it could not ask).
    pub async fn review(&self, token: &str) -> Result<Reviewed, String> {
        if let Some((at, verdict)) = self.cache.lock().expect("cache lock").get(token) {
            if at.elapsed() < CACHE_FOR {
                return verdict.clone();
            }
        }
        let verdict = match tokio::time::timeout(TIMEOUT, self.ask(token)).await {
            Ok(Ok(v)) => v,
            // Not cached: the API server may be back on the next try.
            Ok(Err(e)) => return Err(format!("cannot check the token with the API server: {e}")),
            Err(_) => return Err("cannot check the token: the API server did not answer".into()),
        };
        let mut cache = self.cache.lock().expect("cache lock");
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
        cache.insert(token.to_owned(), (Instant::now(), verdict.clone()));
        verdict
    }

    /// Ok(verdict) when the API server answered; Err when it could not be asked.
    async fn ask(&self, token: &str) -> anyhow::Result<Verdict> {
        let bearer = std::fs::read_to_string(&self.bearer_file)
            .map_err(|e| anyhow::anyhow!("own token {}: {e}", self.bearer_file.display()))?;
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        });
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::post(REVIEW_PATH)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", bearer.trim()))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            anyhow::bail!(
                "TokenReview answered {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        let review: Review = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("TokenReview answer: {e}"))?;
        Ok(verdict(review.status))
    }
}

fn verdict(status: ReviewStatus) -> Verdict {
    if !status.authenticated {
        let why = if status.error.is_empty() {
            "not authenticated".to_owned()
        } else {
            status.error
        };
        return Err(format!("token rejected by the API server: {why}"));
    }
    let first = |key: &str| status.user.extra.get(key).and_then(|v| v.first()).cloned();
    let pod = first(POD_NAME_EXTRA).and_then(|pod| {
        let ns = status
            .user
            .username
            .strip_prefix("system:serviceaccount:")?
            .split(':')
            .next()?
            .to_owned();
        Some((ns, pod))
    });
    Ok(Reviewed {
        node: first(NODE_NAME_EXTRA),
        pod,
        username: status.user.username,
    })
}

/// The username of a ServiceAccount `namespace/name`, as TokenReview reports it.
pub fn service_account_user(sa: &str) -> String {
    let (ns, name) = sa.split_once('/').unwrap_or(("weft-system", sa));
    format!("system:serviceaccount:{ns}:{name}")
}
