//! MeshConfig (weft.dev/v1alpha1): settings that apply to the whole mesh. There is one, named
//! `default` in the root namespace; without it every setting has its default.

use serde::{Deserialize, Serialize};

use super::peer_auth::ROOT_NAMESPACE;

/// The only MeshConfig the agents read.
pub const MESH_CONFIG_NAME: &str = "default";
pub const MESH_CONFIG_NAMESPACE: &str = ROOT_NAMESPACE;

/// How agents carry meshed traffic between them. Both ends always serve both; this chooses what
/// the client side opens.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    /// HBONE: HTTP/2 CONNECT over mTLS on TCP (wire-compatible with Istio's ztunnel).
    #[default]
    H2,
    /// The same CONNECT semantics and identities over QUIC (UDP); falls back to h2 where UDP
    /// is blocked.
    Quic,
}

/// What enrolled pods may reach outside the mesh (Istio's `outboundTrafficPolicy.mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Any destination; those outside the mesh are reached as plain TCP.
    #[default]
    AllowAny,
    /// Only pods and Services the cluster knows, and hosts a ServiceEntry lists.
    RegistryOnly,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshConfig {
    pub tunnel: TunnelProtocol,
    pub outbound: OutboundMode,
}
