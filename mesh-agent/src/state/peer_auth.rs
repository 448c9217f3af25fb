//! PeerAuthentication (weft.dev/v1alpha1), shaped like Istio's: which connections a workload
//! accepts. STRICT: only mTLS (HBONE); PERMISSIVE (default): plaintext to :15006 as well;
//! DISABLE: no mTLS; peers reach it in plaintext.
//!
//! Precedence, as in Istio: a policy with a selector matching the pod, in the pod's namespace;
//! else the namespace-wide policy (no selector); else the mesh-wide policy in the root
//! namespace; else PERMISSIVE.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Pod, State};

/// The namespace whose selector-less PeerAuthentication applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "weft-system";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    Strict,
    #[default]
    Permissive,
    Disable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    /// matchLabels; None applies to the whole namespace.
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
}

impl PeerAuthentication {
    fn selects(&self, pod: &Pod) -> bool {
        match &self.selector {
            None => true,
            Some(labels) => labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v)),
        }
    }
}

impl State {
    /// The mode in force for a pod, and the policy (namespace/name) that set it.
    pub fn mtls_mode(&self, pod: &Pod) -> (MtlsMode, Option<String>) {
        let ns = pod.key.namespace.as_str();
        let policies = || self.peer_authentications.values();
        let found = policies()
            .find(|p| p.namespace == ns && p.selector.is_some() && p.selects(pod))
            .or_else(|| policies().find(|p| p.namespace == ns && p.selector.is_none()))
            .or_else(|| policies().find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none()));
        match found {
            Some(p) => (p.mode, Some(format!("{}/{}", p.namespace, p.name))),
            None => (MtlsMode::Permissive, None),
        }
    }

    /// Test helper: a namespace-wide PeerAuthentication `ns/name` of `mode`.
    #[cfg(test)]
    pub fn set_namespace_mtls(&mut self, ns: &str, name: &str, mode: MtlsMode) {
        self.peer_authentications.insert(
            (ns.into(), name.into()),
            PeerAuthentication {
                namespace: ns.into(),
                name: name.into(),
                selector: None,
                mode,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodKey;

    fn pod(ns: &str, app: &str) -> Pod {
        Pod {
            key: PodKey {
                namespace: ns.into(),
                name: app.into(),
            },
            uid: None,
            node: None,
            service_account: "default".into(),
            ip: None,
            labels: [("app".to_string(), app.to_string())].into(),
            ports: Default::default(),
            netns: None,
            cgroup: None,
        }
    }

    fn policy(ns: &str, name: &str, app: Option<&str>, mode: MtlsMode) -> PeerAuthentication {
        PeerAuthentication {
            namespace: ns.into(),
            name: name.into(),
            selector: app.map(|a| [("app".to_string(), a.to_string())].into()),
            mode,
        }
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_beats_default() {
        let mut s = State::default();
        assert_eq!(
            s.mtls_mode(&pod("shop", "web")),
            (MtlsMode::Permissive, None)
        );
        let mut add = |p: PeerAuthentication| {
            s.peer_authentications
                .insert((p.namespace.clone(), p.name.clone()), p);
        };
        add(policy(ROOT_NAMESPACE, "mesh", None, MtlsMode::Strict));
        add(policy("shop", "ns", None, MtlsMode::Permissive));
        add(policy("shop", "db", Some("db"), MtlsMode::Disable));
        assert_eq!(s.mtls_mode(&pod("other", "x")).0, MtlsMode::Strict);
        assert_eq!(
            s.mtls_mode(&pod("shop", "web")),
            (MtlsMode::Permissive, Some("shop/ns".into()))
        );
        assert_eq!(
            s.mtls_mode(&pod("shop", "db")),
            (MtlsMode::Disable, Some("shop/db".into()))
        );
    }
}
