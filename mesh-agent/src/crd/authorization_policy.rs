//! AuthorizationPolicy, as Istio's: DENY wins; a workload with no ALLOW policy allows all; with
//! any ALLOW policy, only matching traffic. Decided by `crate::policy` on every inbound
//! connection.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "ap"
)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Pods this applies to; the whole namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Action,
    /// A connection matches the policy if it matches any rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// Matches when every present part matches (any `from` entry and any `to` entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

/// Who connects. Principals are SPIFFE IDs without the scheme (`cluster.local/ns/a/sa/b`);
/// plaintext connections have none and match only rules without principals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Destination ports, as strings (Istio's convention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut ap = AuthorizationPolicy::new(
            "frontend-only",
            AuthorizationPolicySpec {
                selector: Some(WorkloadSelector {
                    match_labels: [("app".to_string(), "db".to_string())].into(),
                }),
                action: Action::Deny,
                rules: vec![Rule {
                    from: vec![From {
                        source: Source {
                            not_principals: vec!["cluster.local/ns/shop/sa/web".into()],
                            ip_blocks: vec!["10.0.0.0/8".into()],
                            ..Default::default()
                        },
                    }],
                    to: vec![To {
                        operation: Operation {
                            ports: vec!["5432".into()],
                            ..Default::default()
                        },
                    }],
                }],
            },
        );
        ap.metadata.namespace = Some("shop".into());
        crate::crd::tests::round_trip(&ap);
    }
}
