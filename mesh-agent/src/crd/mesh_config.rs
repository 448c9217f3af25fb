//! MeshConfig: mesh-wide settings; only `weft-system/default` is read.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::state::TunnelProtocol;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    namespaced
)]
#[serde(deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// How agents carry meshed traffic between them: h2 (HBONE over HTTP/2, default) or quic.
    #[serde(default)]
    pub tunnel: TunnelProtocol,
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
            },
        );
        mc.metadata.namespace = Some("weft-system".into());
        crate::crd::tests::round_trip(&mc);
    }
}
