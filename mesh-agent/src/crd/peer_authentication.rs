//! PeerAuthentication: which connections a workload accepts (see `state::peer_auth`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use crate::state::MtlsMode;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    shortname = "pa"
)]
#[serde(deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Pods this applies to; the whole namespace when absent (in weft-system: the whole mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// STRICT: only mTLS; PERMISSIVE (default): plaintext too; DISABLE: no mTLS.
    pub mode: MtlsMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut pa = PeerAuthentication::new(
            "strict",
            PeerAuthenticationSpec {
                selector: Some(WorkloadSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                }),
                mtls: Some(MtlsSpec {
                    mode: MtlsMode::Strict,
                }),
            },
        );
        pa.metadata.namespace = Some("shop".into());
        crate::crd::tests::round_trip(&pa);
    }
}
