//! `mesh-agent ca`: the mesh's certificate authority. It keeps a root and an intermediate in its
//! state directory (created on first start), authenticates the calling agent, and signs only the
//! SPIFFE identities of pods scheduled on that agent's node.
//!
//! Authentication of agents (`--auth`):
//! - `bootstrap` (local mode): a per-node credential (a random token, plus the root certificate
//!   the agent must trust) written under `<state-dir>/bootstrap/<node>/` for every Node in the
//!   configuration;
//! - `kubernetes`: the agent's projected ServiceAccount token, checked with TokenReview
//!   (`token_review`): it must be the agent's ServiceAccount, bound to the node it claims.

pub mod auth;
pub mod authority;
pub mod server;
pub mod token_review;

pub use authority::Authority;
pub use server::{run, CaArgs};

/// The name the CA's serving certificate carries and agents verify, whatever address they dial.
pub const SERVER_NAME: &str = "weft-ca.weft-system.svc";
/// Path of the signing endpoint.
pub const SIGN_PATH: &str = "/v1/sign";
/// Header naming the calling node; the bearer token must be that node's.
pub const NODE_HEADER: &str = "x-weft-node";

/// Request and response bodies of the signing endpoint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SignRequest {
    /// PEM certificate signing request.
    pub csr: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SignResponse {
    /// PEM certificates: the workload certificate first, then the intermediate.
    pub chain: Vec<String>,
    /// PEM root certificate.
    pub root: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}
