//! Who is calling the CA: the node an agent proves it runs on, by either authentication mode.

use std::{collections::HashMap, sync::RwLock};

use hyper::StatusCode;

use super::token_review::TokenReviewer;
use crate::state::{PodKey, State};

pub enum Authenticator {
    /// Local mode: node → bootstrap token, as written by the CA.
    Bootstrap(RwLock<HashMap<String, String>>),
    /// Kubernetes: TokenReview, and the username of the agents' ServiceAccount.
    Kubernetes {
        reviewer: TokenReviewer,
        agent_user: String,
    },
}

/// A refusal: the status to answer with and the reason, which is logged and returned.
pub type Refused = (StatusCode, String);

impl Authenticator {
    /// Ok when `token` proves its holder is the agent of `node`.
    pub async fn authenticate(
        &self,
        state: &State,
        node: &str,
        token: &str,
    ) -> Result<(), Refused> {
        let unauthorized = |why: String| (StatusCode::UNAUTHORIZED, why);
        match self {
            Authenticator::Bootstrap(tokens) => {
                let tokens = tokens.read().expect("tokens lock");
                if tokens
                    .get(node)
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
                {
                    Ok(())
                } else {
                    Err(unauthorized(
                        "unknown node or wrong bootstrap credential".into(),
                    ))
                }
            }
            Authenticator::Kubernetes {
                reviewer,
                agent_user,
            } => {
                let who = reviewer.review(token).await.map_err(|e| {
                    let code = if e.starts_with("cannot check") {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    (code, e)
                })?;
                if who.username != *agent_user {
                    return Err(unauthorized(format!(
                        "token of {} is not the agents' ServiceAccount ({agent_user})",
                        who.username
                    )));
                }
                let bound = match (who.node, who.pod) {
                    (Some(node), _) => node,
                    (None, Some((namespace, name))) => {
                        let key = PodKey { namespace, name };
                        state
                            .pods
                            .get(&key)
                            .and_then(|p| p.node.clone())
                            .ok_or_else(|| {
                                unauthorized(format!(
                                    "token is bound to pod {key}, which is not scheduled on any \
                                     node the CA knows"
                                ))
                            })?
                    }
                    (None, None) => {
                        return Err(unauthorized(
                            "token is not bound to a pod or node: use a projected \
                             ServiceAccount token (audience weft-ca)"
                                .into(),
                        ))
                    }
                };
                if bound != node {
                    return Err(unauthorized(format!(
                        "token is bound to node {bound}, not {node}"
                    )));
                }
                Ok(())
            }
        }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    //! Kubernetes authentication against a fake API server (real TLS, HTTP/1.1) that answers
    //! TokenReviews with responses recorded from a cluster (testdata/tokenreview-*.json).

    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::{server::conn::http1, service::service_fn, Request, Response};
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::{ca::token_review::service_account_user, state::Pod};

    const CA_OWN_TOKEN: &str = "ca-service-account-token";

    fn recorded(token: &str) -> (u16, &'static str) {
        match token {
            "agent-n1" => (
                200,
                include_str!("../../testdata/tokenreview-agent-n1.json"),
            ),
            "agent-pod-only" => (
                200,
                include_str!("../../testdata/tokenreview-agent-pod-only.json"),
            ),
            "web" => (
                200,
                include_str!("../../testdata/tokenreview-other-sa.json"),
            ),
            "forbidden" => (
                403,
                include_str!("../../testdata/tokenreview-forbidden.json"),
            ),
            _ => (200, include_str!("../../testdata/tokenreview-invalid.json")),
        }
    }

    /// What the fake API server was asked: (authorization header, token, audiences).
    type Seen = Arc<Mutex<Vec<(String, String, Vec<String>)>>>;

    async fn fake_api_server(dir: &std::path::Path) -> (String, Seen) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.cert.pem()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            assert_eq!(
                                req.uri().path(),
                                "/apis/authentication.k8s.io/v1/tokenreviews"
                            );
                            let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let token = review["spec"]["token"].as_str().unwrap().to_owned();
                            let audiences = review["spec"]["audiences"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|a| a.as_str().unwrap().to_owned())
                                .collect();
                            let (code, answer) = recorded(&token);
                            log.lock().unwrap().push((auth, token, audiences));
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from_static(answer.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    fn kubernetes(api: &str, dir: &std::path::Path) -> Authenticator {
        std::fs::write(dir.join("token"), format!("{CA_OWN_TOKEN}\n")).unwrap();
        Authenticator::Kubernetes {
            reviewer: TokenReviewer::new(api, dir.join("ca.crt"), dir.join("token"), "weft-ca")
                .unwrap(),
            agent_user: service_account_user("weft-system/mesh-agent"),
        }
    }

    fn state_with_agent_pod_on(node: &str) -> State {
        let key = PodKey {
            namespace: "weft-system".into(),
            name: "mesh-agent-q9w8e".into(),
        };
        let mut state = State::default();
        state.pods.insert(
            key.clone(),
            Pod {
                key,
                uid: None,
                node: Some(node.into()),
                service_account: "mesh-agent".into(),
                ip: None,
                labels: Default::default(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            },
        );
        state
    }

    #[tokio::test]
    async fn token_review_accepts_only_the_agents_token_bound_to_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let (api, seen) = fake_api_server(dir.path()).await;
        let auth = kubernetes(&api, dir.path());
        let state = state_with_agent_pod_on("n2");

        assert_eq!(auth.authenticate(&state, "n1", "agent-n1").await, Ok(()));
        let (code, why) = auth
            .authenticate(&state, "n2", "agent-n1")
            .await
            .unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(why, "token is bound to node n1, not n2");

        // Before 1.30 tokens carry only the pod: its node comes from the cluster state.
        assert_eq!(
            auth.authenticate(&state, "n2", "agent-pod-only").await,
            Ok(())
        );
        let (_, why) = auth
            .authenticate(&state, "n1", "agent-pod-only")
            .await
            .unwrap_err();
        assert_eq!(why, "token is bound to node n2, not n1");
        let (_, why) = auth
            .authenticate(&State::default(), "n2", "agent-pod-only")
            .await
            .unwrap_err();
        assert!(why.contains("weft-system/mesh-agent-q9w8e"), "{why}");

        let (_, why) = auth.authenticate(&state, "n1", "web").await.unwrap_err();
        assert_eq!(
            why,
            "token of system:serviceaccount:shop:web is not the agents' ServiceAccount \
             (system:serviceaccount:weft-system:mesh-agent)"
        );
        let (code, why) = auth.authenticate(&state, "n1", "stolen").await.unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(
            why.contains("service account token has been invalidated"),
            "{why}"
        );

        // The CA lacks RBAC for TokenReview: unavailable (503), and the API's message is kept.
        let (code, why) = auth
            .authenticate(&state, "n1", "forbidden")
            .await
            .unwrap_err();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            why.contains("403") && why.contains("cannot create resource"),
            "{why}"
        );

        // What the API server was sent: the CA's own token and the agents' audience.
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .all(|(auth, _, aud)| auth == &format!("Bearer {CA_OWN_TOKEN}")
                    && aud == &["weft-ca"])
        );
        // Verdicts are cached: agent-n1 was reviewed once for its two uses.
        assert_eq!(seen.iter().filter(|(_, t, _)| t == "agent-n1").count(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_unavailable_not_unauthorized() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = fake_api_server(dir.path()).await; // writes ca.crt
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let auth = kubernetes(&addr, dir.path());
        let (code, why) = auth
            .authenticate(&State::default(), "n1", "agent-n1")
            .await
            .unwrap_err();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.starts_with("cannot check the token"), "{why}");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
