//! ServiceEntry: destinations outside the mesh that enrolled pods may reach when MeshConfig's
//! outbound policy is REGISTRY_ONLY (egress control comes with the policy work).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "ServiceEntry",
    namespaced,
    shortname = "se"
)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// DNS names, resolved by the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub number: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP (default); only TCP is carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let se = ServiceEntry::new(
            "payments-api",
            ServiceEntrySpec {
                hosts: vec!["api.payments.example".into()],
                addresses: vec!["203.0.113.0/24".into()],
                ports: vec![Port {
                    number: 443,
                    name: Some("https".into()),
                    protocol: None,
                }],
            },
        );
        crate::crd::tests::round_trip(&se);
    }
}
