//! L4 authorization (AuthorizationPolicy, weft.dev/v1alpha1), with Istio's semantics, decided by
//! the destination's agent for every inbound connection:
//!
//! 1. a DENY policy that matches denies (it wins over everything);
//! 2. a workload with no ALLOW policy allows everything else;
//! 3. with any ALLOW policy, only a matching one allows.
//!
//! Policies apply to a pod when they are in its namespace and their selector matches it (no
//! selector: the whole namespace), or when they are in the root namespace without a selector
//! (mesh-wide). A plaintext connection has no principal and no namespace: it only matches rules
//! that ask for neither. Every verdict names the policy that decided it, or says why none did.
//!
//! Rules with HTTP fields (`to.operation` methods / paths / hosts and their `not*`, `when` on
//! `request.headers[...]`) are L7 rules. A pod that some L7 rule applies to
//! (`l7::has_l7_rules`) gets its requests decided one by one by `l7::authorize` in its node's
//! L7 pool (DENY before ALLOW, as above, with every field evaluated). Where traffic is decided
//! at L4 instead (`evaluate`: a port that does not speak HTTP, or no pool), an L7 rule cannot
//! be evaluated, and Weft does exactly what ztunnel does: in an ALLOW policy such a rule
//! matches nothing (it allows nothing at L4); in a DENY policy it is enforced without its HTTP
//! fields, so it denies (more than asked, never less). The verdict's reason then says "L7 rule
//! cannot be evaluated on non-HTTP traffic", and `meshctl explain` shows it.

pub mod l7;
pub mod matching;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    crd::authorization_policy::{Action, AuthorizationPolicySpec},
    state::{peer_auth::ROOT_NAMESPACE, MtlsMode, Pod, State},
};

/// What is known of an inbound connection when it is decided.
#[derive(Debug, Clone)]
pub struct Connection {
    /// SPIFFE ID without the scheme (`cluster.local/ns/a/sa/b`); None for plaintext.
    pub principal: Option<String>,
    pub source_ip: IpAddr,
    pub port: u16,
}

impl Connection {
    /// The source namespace, read from the principal.
    pub fn namespace(&self) -> Option<&str> {
        let p = self.principal.as_deref()?;
        let (_, rest) = p.split_once("/ns/")?;
        rest.split('/').next()
    }
}

/// An AuthorizationPolicy as the state holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub allowed: bool,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
    pub reason: String,
}

fn applies(p: &AuthorizationPolicy, pod: &Pod) -> bool {
    match &p.spec.selector {
        None => p.namespace == pod.key.namespace || p.namespace == ROOT_NAMESPACE,
        Some(sel) => {
            p.namespace == pod.key.namespace
                && sel
                    .match_labels
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v))
        }
    }
}

/// A plaintext connection (no principal) to a pod whose PeerAuthentication is STRICT is refused
/// before any AuthorizationPolicy is consulted; the verdict names the PeerAuthentication.
pub fn plaintext_refusal(state: &State, pod: &Pod, conn: &Connection) -> Option<Verdict> {
    if conn.principal.is_some() {
        return None;
    }
    match state.mtls_mode(pod) {
        (MtlsMode::Strict, policy) => Some(Verdict {
            allowed: false,
            policy,
            reason: "plaintext refused: PeerAuthentication STRICT".into(),
        }),
        _ => None,
    }
}

/// Everything the destination decides for `conn` to `pod`: PeerAuthentication STRICT, then
/// authorization.
pub fn admit(state: &State, pod: &Pod, conn: &Connection) -> Verdict {
    plaintext_refusal(state, pod, conn).unwrap_or_else(|| evaluate(state, pod, conn))
}

/// Why a verdict involved a rule that needs HTTP on traffic decided at L4.
pub const L7_UNEVALUATED: &str = "L7 rule cannot be evaluated on non-HTTP traffic";

/// Decides `conn` to `pod` by AuthorizationPolicy, at L4 (the whole connection).
pub fn evaluate(state: &State, pod: &Pod, conn: &Connection) -> Verdict {
    decide(state, pod, conn, matching::Traffic::Tcp)
}

/// The policies that apply to `pod`, in the state's (namespace, name) order.
pub(crate) fn applicable<'s>(
    state: &'s State,
    pod: &'s Pod,
) -> impl Iterator<Item = &'s AuthorizationPolicy> + 's {
    state
        .authorization_policies
        .values()
        .filter(move |p| applies(p, pod))
}

fn name(p: &AuthorizationPolicy) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// DENY before ALLOW, over `traffic` (a connection at L4, or one request).
pub(crate) fn decide(
    state: &State,
    pod: &Pod,
    conn: &Connection,
    traffic: matching::Traffic<'_>,
) -> Verdict {
    let applicable: Vec<&AuthorizationPolicy> = applicable(state, pod).collect();
    let first_match = |action: Action| {
        applicable.iter().find_map(|p| {
            let m = (p.spec.action == action)
                .then(|| matching::first_match(&p.spec, conn, traffic))
                .flatten()?;
            Some((p, m))
        })
    };
    if let Some((deny, m)) = first_match(Action::Deny) {
        let why = if m.l7_unevaluated {
            format!(" ({L7_UNEVALUATED}: it is enforced without its HTTP fields)")
        } else {
            String::new()
        };
        return Verdict {
            allowed: false,
            policy: Some(name(deny)),
            reason: format!("rule {} of the DENY policy matched{why}", m.rule),
        };
    }
    let allows: Vec<_> = applicable
        .iter()
        .filter(|p| p.spec.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return Verdict {
            allowed: true,
            policy: None,
            reason: "no ALLOW policy applies to this workload".into(),
        };
    }
    if let Some((p, m)) = first_match(Action::Allow) {
        return Verdict {
            allowed: true,
            policy: Some(name(p)),
            reason: format!("rule {} of the ALLOW policy matched", m.rule),
        };
    }
    let mut reason = format!(
        "ALLOW policies apply ({}) and none matched",
        allows
            .iter()
            .map(|p| name(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if matches!(traffic, matching::Traffic::Tcp) {
        let skipped: Vec<String> = allows
            .iter()
            .flat_map(|p| {
                p.spec
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matching::rule_has_l7(r))
                    .map(|(i, _)| format!("rule {i} of {}", name(p)))
            })
            .collect();
        if !skipped.is_empty() {
            reason.push_str(&format!(
                "; {L7_UNEVALUATED}, so it allows nothing here: {}",
                skipped.join(", ")
            ));
        }
    }
    Verdict {
        allowed: false,
        policy: None,
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        crd::{
            authorization_policy::{From, Operation, Rule, Source, To},
            WorkloadSelector,
        },
        state::PodKey,
    };

    pub(crate) fn pod() -> Pod {
        Pod {
            key: PodKey {
                namespace: "shop".into(),
                name: "db-0".into(),
            },
            uid: None,
            node: Some("n1".into()),
            service_account: "db".into(),
            ip: Some("10.1.0.9".parse().unwrap()),
            labels: [("app".to_string(), "db".to_string())].into(),
            ports: Default::default(),
            netns: None,
            cgroup: None,
        }
    }

    pub(crate) fn conn(principal: Option<&str>, ip: &str, port: u16) -> Connection {
        Connection {
            principal: principal.map(str::to_owned),
            source_ip: ip.parse().unwrap(),
            port,
        }
    }

    pub(crate) const WEB: &str = "cluster.local/ns/shop/sa/web";
    const ADMIN: &str = "cluster.local/ns/ops/sa/admin";

    pub(crate) fn policy(
        ns: &str,
        name: &str,
        action: Action,
        selector: bool,
        rules: Vec<Rule>,
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            namespace: ns.into(),
            name: name.into(),
            spec: AuthorizationPolicySpec {
                selector: selector.then(|| WorkloadSelector {
                    match_labels: [("app".to_string(), "db".to_string())].into(),
                }),
                action,
                rules,
            },
        }
    }

    fn from(source: Source) -> Rule {
        Rule {
            from: vec![From { source }],
            ..Default::default()
        }
    }

    pub(crate) fn state(policies: Vec<AuthorizationPolicy>) -> State {
        let mut s = State::default();
        for p in policies {
            s.authorization_policies
                .insert((p.namespace.clone(), p.name.clone()), p);
        }
        s
    }

    fn decide(policies: Vec<AuthorizationPolicy>, c: &Connection) -> Verdict {
        evaluate(&state(policies), &pod(), c)
    }

    #[test]
    fn no_allow_policy_allows_everything() {
        let v = decide(vec![], &conn(None, "10.9.9.9", 5432));
        assert!(v.allowed && v.policy.is_none());
    }

    #[test]
    fn principals_and_plaintext() {
        let only_web = policy(
            "shop",
            "web-only",
            Action::Allow,
            true,
            vec![from(Source {
                principals: vec![WEB.into()],
                ..Default::default()
            })],
        );
        let v = decide(vec![only_web.clone()], &conn(Some(WEB), "10.1.0.2", 5432));
        assert_eq!(
            (v.allowed, v.policy.as_deref()),
            (true, Some("shop/web-only"))
        );
        let v = decide(vec![only_web.clone()], &conn(Some(ADMIN), "10.1.0.2", 5432));
        assert!(!v.allowed && v.reason.contains("shop/web-only"), "{v:?}");
        // Plaintext has no principal: never matches a principals rule.
        assert!(!decide(vec![only_web], &conn(None, "10.1.0.2", 5432)).allowed);
    }

    #[test]
    fn namespaces_ip_blocks_and_ports() {
        let ns = policy(
            "shop",
            "from-shop",
            Action::Allow,
            false,
            vec![from(Source {
                namespaces: vec!["shop".into()],
                ..Default::default()
            })],
        );
        assert!(decide(vec![ns.clone()], &conn(Some(WEB), "10.1.0.2", 1)).allowed);
        assert!(!decide(vec![ns], &conn(Some(ADMIN), "10.1.0.2", 1)).allowed);

        let block = policy(
            "shop",
            "from-node-1",
            Action::Allow,
            true,
            vec![from(Source {
                ip_blocks: vec!["10.1.0.0/24".into()],
                ..Default::default()
            })],
        );
        // ipBlocks match plaintext too: no principal needed.
        assert!(decide(vec![block.clone()], &conn(None, "10.1.0.77", 1)).allowed);
        assert!(!decide(vec![block], &conn(None, "10.2.0.77", 1)).allowed);

        let port = policy(
            "shop",
            "pg-port",
            Action::Allow,
            true,
            vec![Rule {
                from: vec![],
                to: vec![To {
                    operation: Operation {
                        ports: vec!["5432".into()],
                        ..Default::default()
                    },
                }],
                ..Default::default()
            }],
        );
        assert!(decide(vec![port.clone()], &conn(Some(ADMIN), "10.1.0.2", 5432)).allowed);
        assert!(!decide(vec![port], &conn(Some(ADMIN), "10.1.0.2", 22)).allowed);
    }

    #[test]
    fn deny_wins_over_allow_and_root_namespace_applies_mesh_wide() {
        let allow_all = policy(
            "shop",
            "allow-all",
            Action::Allow,
            true,
            vec![Rule::default()],
        );
        let deny_admin = policy(
            ROOT_NAMESPACE,
            "no-ops",
            Action::Deny,
            false,
            vec![from(Source {
                not_principals: vec![WEB.into()],
                namespaces: vec!["ops".into()],
                ..Default::default()
            })],
        );
        let v = decide(
            vec![allow_all.clone(), deny_admin.clone()],
            &conn(Some(ADMIN), "10.1.0.2", 5432),
        );
        assert_eq!(
            (v.allowed, v.policy.as_deref()),
            (false, Some("weft-system/no-ops"))
        );
        let v = decide(
            vec![allow_all, deny_admin],
            &conn(Some(WEB), "10.1.0.2", 5432),
        );
        assert_eq!(
            (v.allowed, v.policy.as_deref()),
            (true, Some("shop/allow-all"))
        );
    }

    #[test]
    fn an_allow_without_rules_allows_nothing_and_other_namespaces_do_not_apply() {
        let nothing = policy("shop", "deny-by-default", Action::Allow, false, vec![]);
        assert!(!decide(vec![nothing], &conn(Some(WEB), "10.1.0.2", 5432)).allowed);
        let elsewhere = policy("ops", "nothing", Action::Allow, false, vec![]);
        assert!(decide(vec![elsewhere], &conn(Some(WEB), "10.1.0.2", 5432)).allowed);
    }
}
