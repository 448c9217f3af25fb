//! AuthorizationPolicy, as Istio's: DENY wins; a workload with no ALLOW policy allows all; with
//! any ALLOW policy, only matching traffic. Decided by `crate::policy` on every inbound
//! connection, and per request (`crate::policy::l7`) when a rule has HTTP fields (methods,
//! paths, hosts, `request.headers[...]` conditions).

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

/// Matches when every present part matches (any `from` entry, any `to` entry and every `when`
/// condition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Further conditions, all of which must hold (Istio's `when`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// One `when` condition, as Istio's: `key` names an attribute (`request.headers[NAME]`,
/// `source.ip`, `source.namespace`, `source.principal`, `destination.port`); the condition
/// holds when the attribute matches one of `values` (if given) and none of `notValues`.
/// Values use the same exact / `prefix*` / `*suffix` / `*` forms as the other fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
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
    /// HTTP methods (`GET`), case-sensitive. HTTP only, like the fields below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths without the query: exact, `/api/*` (prefix), `*.js` (suffix) or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// The request's host (`:authority` / `Host`), case-insensitive, as sent (with a port if the
    /// client sent one: list `example.com:*` too to match any port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

impl Operation {
    /// Whether this operation asks for anything only HTTP carries.
    pub fn has_l7(&self) -> bool {
        [
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
            &self.hosts,
            &self.not_hosts,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }
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
                            methods: vec!["DELETE".into()],
                            paths: vec!["/admin/*".into()],
                            not_hosts: vec!["*.internal".into()],
                            ..Default::default()
                        },
                    }],
                    when: vec![Condition {
                        key: "request.headers[x-client]".into(),
                        values: vec!["iphone".into()],
                        not_values: vec![],
                    }],
                }],
            },
        );
        ap.metadata.namespace = Some("shop".into());
        crate::crd::tests::round_trip(&ap);
    }
}
