//! Nodes, namespaces and pods, and the enrollment rule that joins them.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::{
    services::{EndpointSlice, Service, ServiceKey},
    MeshConfig, PeerAuthentication,
};
use crate::config::{MESH_DISABLED, MESH_ENABLED, MESH_LABEL, SYSTEM_NAMESPACE};

/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl PodKey {
    /// A name usable on bpffs, which forbids dots: `namespace_name`, dots as `~` (Kubernetes
    /// names never contain `~` or `_`, so this is unambiguous).
    pub fn file_name(&self) -> String {
        format!("{}_{}", self.namespace, self.name).replace('.', "~")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub internal_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub key: PodKey,
    pub uid: Option<String>,
    pub node: Option<String>,
    pub service_account: String,
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports (for Services' named targetPorts).
    pub ports: BTreeMap<String, u16>,
    /// File mode: the pod's netns path (`weft.dev/netns`).
    pub netns: Option<PathBuf>,
    /// File mode: the pod's cgroup v2 directory (`weft.dev/cgroup`).
    pub cgroup: Option<PathBuf>,
}

impl Pod {
    /// The workload a pod belongs to, as Istio names it in metrics: a Deployment's pod
    /// (`name-<pod-template-hash>-<suffix>`) is its Deployment; other pods are themselves.
    pub fn workload(&self) -> String {
        let name = &self.key.name;
        if let Some(hash) = self.labels.get("pod-template-hash") {
            if let Some(at) = name.rfind(&format!("-{hash}-")) {
                return name[..at].to_owned();
            }
        }
        name.clone()
    }

    /// Istio's canonical service: its label, else the app name labels, else the workload.
    pub fn canonical_service(&self) -> String {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| self.labels.get(*k).cloned())
        .unwrap_or_else(|| self.workload())
    }
}

/// Serialized for /config_dump: maps keyed by structs become lists of their values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub pods: BTreeMap<PodKey, Pod>,
    /// (namespace, name) → policy.
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub peer_authentications: BTreeMap<(String, String), PeerAuthentication>,
    /// The mesh-wide settings (MeshConfig `weft-system/default`).
    pub mesh: MeshConfig,
    /// (namespace, name) → policy.
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub authorization_policies: BTreeMap<(String, String), crate::policy::AuthorizationPolicy>,
    /// (namespace, name) → entry: what REGISTRY_ONLY lets out.
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub service_entries: BTreeMap<(String, String), super::ServiceEntry>,
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub services: BTreeMap<ServiceKey, Service>,
    /// (namespace, name) → slice.
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    /// `Route::key()` → HTTPRoute or GRPCRoute bound to a Service (GAMMA).
    #[serde(serialize_with = "values", deserialize_with = "keyed")]
    pub routes: BTreeMap<(String, String), super::routes::Route>,
    /// (namespace, name) → grant: which routes of other namespaces may send to its Services.
    #[serde(default, serialize_with = "values", deserialize_with = "keyed")]
    pub reference_grants: BTreeMap<(String, String), super::reference_grants::ReferenceGrant>,
    /// Index: pod IP → pod. Rebuilt by [`State::reindex`] once a source has filled the state.
    #[serde(skip)]
    by_ip: HashMap<IpAddr, PodKey>,
    /// Index: (cluster IP, port) → Service.
    #[serde(skip)]
    pub(super) by_vip: HashMap<(IpAddr, u16), ServiceKey>,
    /// Index: node → its pods.
    #[serde(skip)]
    by_node: HashMap<String, Vec<PodKey>>,
    /// Index: (namespace, service account) → the pods running as that identity.
    #[serde(skip)]
    by_identity: HashMap<(String, String), Vec<PodKey>>,
}

/// A value that knows its key in the state's maps: maps are serialized as lists of values
/// (readable in /config_dump) and read back keyed (the L7 workers' snapshots).
pub trait Keyed {
    type Key: Ord;
    fn key(&self) -> Self::Key;
}

fn keyed<'de, D: serde::Deserializer<'de>, V: Keyed + Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<V::Key, V>, D::Error> {
    let list = Vec::<V>::deserialize(d)?;
    Ok(list.into_iter().map(|v| (v.key(), v)).collect())
}

macro_rules! keyed_by {
    ($t:ty, $k:ty, |$v:ident| $e:expr) => {
        impl Keyed for $t {
            type Key = $k;
            fn key(&self) -> $k {
                let $v = self;
                $e
            }
        }
    };
}
keyed_by!(Pod, PodKey, |p| p.key.clone());
keyed_by!(PeerAuthentication, (String, String), |p| (
    p.namespace.clone(),
    p.name.clone()
));
keyed_by!(crate::policy::AuthorizationPolicy, (String, String), |p| (
    p.namespace.clone(),
    p.name.clone()
));
keyed_by!(super::ServiceEntry, (String, String), |p| (
    p.namespace.clone(),
    p.name.clone()
));
keyed_by!(Service, ServiceKey, |s| s.key.clone());
keyed_by!(EndpointSlice, (String, String), |s| (
    s.namespace.clone(),
    s.name.clone()
));
keyed_by!(super::routes::Route, (String, String), |r| r.key());
keyed_by!(
    super::reference_grants::ReferenceGrant,
    (String, String),
    |g| (g.namespace.clone(), g.name.clone())
);

fn values<S: serde::Serializer, K, V: Serialize>(
    m: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

/// Whether a pod is enrolled, and if not, why: the answer `meshctl explain` gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enrollment {
    Enrolled,
    NotOnThisNode,
    NamespaceNotEnrolled,
    OptedOut,
    /// A pod of Weft's own namespace: the mesh never enrolls itself.
    MeshItself,
    Incomplete(&'static str),
}

impl State {
    /// Rebuilds the indexes after the maps changed.
    pub fn reindex(&mut self) {
        self.by_ip = self
            .pods
            .values()
            .filter_map(|p| Some((p.ip?, p.key.clone())))
            .collect();
        self.by_node.clear();
        self.by_identity.clear();
        for p in self.pods.values() {
            if let Some(node) = &p.node {
                self.by_node
                    .entry(node.clone())
                    .or_default()
                    .push(p.key.clone());
            }
            let id = (p.key.namespace.clone(), p.service_account.clone());
            self.by_identity.entry(id).or_default().push(p.key.clone());
        }
        self.by_vip = self
            .services
            .values()
            .flat_map(|s| {
                s.cluster_ips
                    .iter()
                    .flat_map(move |ip| s.ports.iter().map(move |p| ((*ip, p.port), s.key.clone())))
            })
            .collect();
        self.resolve_route_backends();
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.get(self.by_ip.get(&ip)?)
    }

    pub fn enrollment(&self, pod: &Pod, node: &str) -> Enrollment {
        if pod.node.as_deref() != Some(node) {
            return Enrollment::NotOnThisNode;
        }
        if pod.key.namespace == SYSTEM_NAMESPACE {
            return Enrollment::MeshItself;
        }
        if !self.namespace_asks_for_mesh(&pod.key.namespace) {
            return Enrollment::NamespaceNotEnrolled;
        }
        if pod
            .labels
            .get(MESH_LABEL)
            .is_some_and(|v| v == MESH_DISABLED)
        {
            return Enrollment::OptedOut;
        }
        if pod.ip.is_none() {
            return Enrollment::Incomplete("status.podIP");
        }
        // Kubernetes mode (a UID): the agent finds the netns and cgroup itself.
        if pod.uid.is_none() {
            if pod.netns.is_none() {
                return Enrollment::Incomplete("metadata.annotations[weft.dev/netns]");
            }
            if pod.cgroup.is_none() {
                return Enrollment::Incomplete("metadata.annotations[weft.dev/cgroup]");
            }
        }
        Enrollment::Enrolled
    }

    /// Pods of `node` that must be enrolled.
    pub fn enrolled_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_on(node)
            .filter(move |p| self.enrollment(p, node) == Enrollment::Enrolled)
    }

    /// Whether the namespace carries `weft.dev/mesh: enabled` (which, for Weft's own
    /// namespace, is refused with a message).
    pub fn namespace_asks_for_mesh(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.labels.get(MESH_LABEL))
            .is_some_and(|v| v == MESH_ENABLED)
    }

    /// The pods scheduled on `node`.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// The pods running as ServiceAccount `namespace/service_account`.
    pub fn pods_running_as<'a>(
        &'a self,
        namespace: &str,
        service_account: &str,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.by_identity
            .get(&(namespace.to_owned(), service_account.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            key: PodKey {
                namespace: ns.into(),
                name: "p".into(),
            },
            uid: None,
            node: Some(node.into()),
            service_account: "default".into(),
            ip: Some("10.0.0.2".parse().unwrap()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: Default::default(),
            netns: Some("/run/netns/p".into()),
            cgroup: Some("/sys/fs/cgroup/p".into()),
        }
    }

    fn state() -> State {
        let mut s = State::default();
        for (name, enabled) in [("mesh", true), ("plain", false), (SYSTEM_NAMESPACE, true)] {
            let mut labels = BTreeMap::new();
            if enabled {
                labels.insert(MESH_LABEL.to_string(), MESH_ENABLED.to_string());
            }
            s.namespaces.insert(
                name.into(),
                Namespace {
                    name: name.into(),
                    labels,
                },
            );
        }
        s
    }

    #[test]
    fn workload_and_canonical_service_names() {
        let mut p = pod("mesh", "n1", &[("pod-template-hash", "5d8f7b9c4")]);
        p.key.name = "reviews-v1-5d8f7b9c4-x7k2p".into();
        assert_eq!(p.workload(), "reviews-v1");
        assert_eq!(p.canonical_service(), "reviews-v1");
        p.labels.insert("app".into(), "reviews".into());
        assert_eq!(p.canonical_service(), "reviews");
        let bare = pod("mesh", "n1", &[]);
        assert_eq!(bare.workload(), "p");
    }

    #[test]
    fn namespace_label_enrolls_and_pod_label_opts_out() {
        let s = state();
        assert_eq!(
            s.enrollment(&pod("mesh", "n1", &[]), "n1"),
            Enrollment::Enrolled
        );
        assert_eq!(
            s.enrollment(&pod("mesh", "n2", &[]), "n1"),
            Enrollment::NotOnThisNode
        );
        assert_eq!(
            s.enrollment(&pod("plain", "n1", &[]), "n1"),
            Enrollment::NamespaceNotEnrolled
        );
        assert_eq!(
            s.enrollment(&pod("mesh", "n1", &[(MESH_LABEL, MESH_DISABLED)]), "n1"),
            Enrollment::OptedOut
        );
        // Labels cannot enroll the mesh's own pods: not the namespace's, not the pod's.
        assert_eq!(
            s.enrollment(
                &pod(SYSTEM_NAMESPACE, "n1", &[(MESH_LABEL, MESH_ENABLED)]),
                "n1"
            ),
            Enrollment::MeshItself
        );
        assert!(s.namespace_asks_for_mesh(SYSTEM_NAMESPACE));
        let mut no_ip = pod("mesh", "n1", &[]);
        no_ip.ip = None;
        assert_eq!(
            s.enrollment(&no_ip, "n1"),
            Enrollment::Incomplete("status.podIP")
        );
    }
}
