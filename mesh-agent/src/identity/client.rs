//! The agent's client of the mesh CA: HTTPS to the CA (verified against the root from the
//! node's credential directory), authenticated with the token in that directory: the node's
//! bootstrap token in local mode, or, in Kubernetes, the agent's projected ServiceAccount token
//! (audience `weft-ca`; kubelet rotates it, so it is read again for every request).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, ServerName};

use crate::ca::{ErrorResponse, SignRequest, SignResponse, NODE_HEADER, SERVER_NAME, SIGN_PATH};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bootstrap credential {path}: {error}")]
    Bootstrap { path: PathBuf, error: String },
    #[error("CA {addr} unreachable: {error}")]
    Unreachable { addr: String, error: String },
    #[error("CA refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("CA answered with an unusable response: {0}")]
    BadResponse(String),
}

#[derive(Clone)]
pub struct CaClient {
    /// HOST:PORT (in Kubernetes, the CA's Service name), resolved at each connection.
    addr: String,
    node: String,
    token_file: PathBuf,
    roots: Vec<CertificateDer<'static>>,
    roots_pem: String,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("addr", &self.addr)
            .field("node", &self.node)
            .finish()
    }
}

impl CaClient {
    /// Reads `<dir>/token` and `<dir>/root.pem`, written by the CA for this node.
    pub fn from_bootstrap(addr: &str, node: &str, dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| Error::Bootstrap {
                path,
                error: e.to_string(),
            })
        };
        // Read once now so that a missing token is reported at start.
        read("token")?;
        let root_pem = read("root.pem")?;
        let bad_root = |error: String| Error::Bootstrap {
            path: dir.join("root.pem"),
            error,
        };
        let roots = CertificateDer::pem_slice_iter(root_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_root(e.to_string()))?;
        let mut store = rustls::RootCertStore::empty();
        for r in &roots {
            store.add(r.clone()).map_err(|e| bad_root(e.to_string()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Self {
            addr: addr.to_owned(),
            node: node.to_owned(),
            token_file: dir.join("token"),
            roots,
            roots_pem: root_pem,
            tls: Arc::new(tls),
        })
    }

    /// The mesh root(s) the bootstrap credential trusts.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The same roots as PEM text (as read from the bootstrap directory).
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    pub async fn sign(&self, csr_pem: &str) -> Result<SignResponse, Error> {
        match tokio::time::timeout(TIMEOUT, self.request(csr_pem)).await {
            Ok(r) => r,
            Err(_) => Err(self.unreachable("timed out")),
        }
    }

    fn unreachable(&self, error: impl ToString) -> Error {
        Error::Unreachable {
            addr: self.addr.clone(),
            error: error.to_string(),
        }
    }

    async fn request(&self, csr_pem: &str) -> Result<SignResponse, Error> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| Error::Bootstrap {
            path: self.token_file.clone(),
            error: e.to_string(),
        })?;
        let tcp = tokio::net::TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|e| self.unreachable(e))?;
        let name = ServerName::try_from(SERVER_NAME).expect("valid DNS name");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(&SignRequest {
            csr: csr_pem.to_owned(),
        })
        .expect("serialisable");
        let req = hyper::Request::post(SIGN_PATH)
            .header("host", SERVER_NAME)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", token.trim()))
            .header(NODE_HEADER, &self.node)
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        if status != 200 {
            let reason = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Refused { status, reason });
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse(e.to_string()))
    }
}
