//! MeshConfig: mesh-wide settings; only `weft-system/default` is read.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::state::{OutboundMode, TunnelProtocol};

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    namespaced
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// How agents carry meshed traffic between them: h2 (HBONE over HTTP/2, default) or quic.
    #[serde(default)]
    pub tunnel: TunnelProtocol,
    /// What enrolled pods may reach outside the mesh.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Spans of the L7 pool, exported over OTLP/HTTP; without it no spans are recorded (trace
    /// headers are still propagated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The OTLP/HTTP collector: HOST:PORT, HOST (port 4318) or http://HOST[:PORT][/PATH]
    /// (path /v1/traces unless given).
    pub otlp: String,
    /// Percent (0-100) of requests arriving without a sampling decision whose trace is
    /// recorded; default 1. A decision the request carries (W3C flags, B3 sampled) is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// ALLOW_ANY (default): destinations outside the mesh are reached as plain TCP.
    /// REGISTRY_ONLY: only pods and Services of the cluster, and hosts listed by a ServiceEntry.
    #[serde(default)]
    pub mode: OutboundMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut mc = MeshConfig::new(
            "default",
            MeshConfigSpec {
                tunnel: TunnelProtocol::Quic,
                outbound_traffic_policy: OutboundTrafficPolicy {
                    mode: OutboundMode::RegistryOnly,
                },
                tracing: Some(TracingSpec {
                    otlp: "http://collector.observability:4318".into(),
                    sampling: Some(12.5),
                }),
            },
        );
        mc.metadata.namespace = Some("weft-system".into());
        crate::crd::tests::round_trip(&mc);
    }
}
