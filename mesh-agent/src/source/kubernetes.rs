//! Kubernetes mode: one kube-rs watcher per kind (list, then watch; on `410 Gone` or any break
//! the watcher lists again and the kind's objects are replaced atomically at the end of that
//! list), feeding a store of raw objects. Every object goes through the file source's parser
//! (`parse_document`), so both modes accept and reject exactly the same things; an object that
//! fails keeps its last good version. Nothing is published before every kind has completed its
//! first list: the agent is not ready on a partial picture of the cluster.
//!
//! Pods of other nodes are kept trimmed to what the data path needs of them (name, namespace,
//! UID, labels, node, service account, address): the store's memory grows with the cluster by
//! that much per pod, not by whole Pod objects.
//!
//! Weft's own CRDs are optional: a kind whose CRD is not installed (404) counts as empty, with a
//! warning, and is retried; so are the Gateway API's route kinds and ReferenceGrants.
//!
//! HTTPRoutes and GRPCRoutes bound to Services get their `status` written by exactly one agent
//! (`route_status`: rendezvous hashing over the Nodes that run an agent).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use futures_util::StreamExt as _;
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    file::IgnoredKinds,
    parse::{parse_document, Parsed},
    ConfigError, Loaded,
};

pub mod route_status;

/// A kind the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Weft's CRDs: absent from a cluster until installed.
    pub optional: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    optional: bool,
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        optional,
    }
}

pub const KINDS: &[Kind] = &[
    kind("", "v1", "Node", "nodes", false),
    kind("", "v1", "Namespace", "namespaces", false),
    kind("", "v1", "Pod", "pods", false),
    kind("", "v1", "Service", "services", false),
    kind(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        false,
    ),
    kind(
        "weft.dev",
        "v1alpha1",
        "PeerAuthentication",
        "peerauthentications",
        true,
    ),
    kind("weft.dev", "v1alpha1", "MeshConfig", "meshconfigs", true),
    kind(
        "weft.dev",
        "v1alpha1",
        "ServiceEntry",
        "serviceentries",
        true,
    ),
    kind(
        "weft.dev",
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
    // Refused with its reason (not enforced yet), as in file mode: never ignored in silence.
    kind(
        "weft.dev",
        "v1alpha1",
        "TrafficPolicy",
        "trafficpolicies",
        true,
    ),
    kind(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        "httproutes",
        true,
    ),
    kind(
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
        "grpcroutes",
        true,
    ),
    // Which routes may send to another namespace's Services (state::reference_grants).
    kind(
        "gateway.networking.k8s.io",
        "v1beta1",
        "ReferenceGrant",
        "referencegrants",
        true,
    ),
];

/// What the CA watches: it signs identities of pods on the calling node, so it needs pods and
/// nodes, nothing more (deploy/kubernetes/ca-rbac.yaml grants just these; watching a kind it
/// may not list would keep it from ever becoming ready).
pub const CA_KINDS: &[Kind] = &[
    kind("", "v1", "Node", "nodes", false),
    kind("", "v1", "Pod", "pods", false),
];

type Key = (String, String);

/// The raw objects of every kind, as the watchers report them.
pub struct Store {
    kinds: &'static [Kind],
    /// Pods of this node are kept whole; others are trimmed (None: trim every pod, as the CA,
    /// which needs only identities and nodes).
    node: Option<String>,
    objects: Vec<BTreeMap<Key, serde_json::Value>>,
    /// A relist in progress: the objects listed so far.
    relisting: Vec<Option<BTreeMap<Key, serde_json::Value>>>,
    synced: Vec<bool>,
    /// Last version of each object that parsed, for when a newer one does not.
    last_good: HashMap<(usize, Key), serde_json::Value>,
}

impl Store {
    pub fn new(kinds: &'static [Kind], node: Option<String>) -> Self {
        Self {
            kinds,
            node,
            objects: vec![BTreeMap::new(); kinds.len()],
            relisting: vec![None; kinds.len()],
            synced: vec![false; kinds.len()],
            last_good: HashMap::new(),
        }
    }

    /// Applies one watcher event for kind `i`.
    pub fn event(&mut self, i: usize, event: watcher::Event<DynamicObject>) {
        let kind = self.kinds[i];
        match event {
            watcher::Event::Init => self.relisting[i] = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                let (key, value) = self.raw(&kind, obj);
                self.relisting[i]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, value);
            }
            watcher::Event::InitDone => {
                self.objects[i] = self.relisting[i].take().unwrap_or_default();
                if !self.synced[i] {
                    info!(
                        kind = kind.kind,
                        objects = self.objects[i].len(),
                        "initial list complete"
                    );
                }
                self.synced[i] = true;
            }
            watcher::Event::Apply(obj) => {
                let (key, value) = self.raw(&kind, obj);
                self.objects[i].insert(key, value);
            }
            watcher::Event::Delete(obj) => {
                let (key, _) = self.raw(&kind, obj);
                self.objects[i].remove(&key);
                self.last_good.remove(&(i, key));
            }
        }
    }

    /// The object as the API server sent it, with apiVersion and kind filled in (list items
    /// omit them); another node's pod trimmed.
    fn raw(&self, kind: &Kind, obj: DynamicObject) -> (Key, serde_json::Value) {
        let key = (
            obj.metadata.namespace.clone().unwrap_or_default(),
            obj.metadata.name.clone().unwrap_or_default(),
        );
        let mut value = serde_json::to_value(&obj).unwrap_or_default();
        if kind.kind == "Pod" {
            let on = value.pointer("/spec/nodeName").and_then(|n| n.as_str());
            if self.node.is_none() || on != self.node.as_deref() {
                value = trim_pod(&value);
            }
        }
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.kind.into());
        }
        (key, value)
    }

    /// Kind `i` cannot be listed because it does not exist in this cluster (a CRD not installed).
    pub fn absent(&mut self, i: usize) {
        self.objects[i].clear();
        self.synced[i] = true;
    }

    /// Every kind has completed its first list.
    pub fn ready(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// The state, through the same parser as the file source.
    pub fn build(&mut self) -> Loaded {
        let mut loaded = Loaded::default();
        let mut ignored = IgnoredKinds::default();
        for (i, objects) in self.objects.iter().enumerate() {
            for (key, value) in objects {
                let id = (i, key.clone());
                let name = || format!("kubernetes:{}/{}/{}", self.kinds[i].kind, key.0, key.1);
                match parse(value) {
                    Ok((Parsed::Object(object), _)) => {
                        object.apply(&mut loaded.state);
                        self.last_good.insert(id, value.clone());
                    }
                    Ok((Parsed::Empty, _)) => {}
                    Ok((Parsed::Ignored(reason), yaml)) => ignored.note(&yaml, name, reason),
                    Err((field, message)) => {
                        let last = self.last_good.get(&id).and_then(|v| match parse(v) {
                            Ok((Parsed::Object(o), _)) => Some(o),
                            _ => None,
                        });
                        let kept = if last.is_some() {
                            "; the previous version stays in force"
                        } else {
                            ""
                        };
                        if let Some(object) = last {
                            object.apply(&mut loaded.state);
                        }
                        loaded.errors.push(ConfigError {
                            file: PathBuf::from(name()),
                            document: 0,
                            field,
                            message: format!("{message}{kept}"),
                        });
                    }
                }
            }
        }
        loaded.ignored = ignored.into_vec();
        loaded.state.reindex();
        loaded
    }
}

fn parse(value: &serde_json::Value) -> Result<(Parsed, yaml_serde::Value), (String, String)> {
    let yaml = yaml_serde::to_value(value).map_err(|e| (String::new(), e.to_string()))?;
    Ok((parse_document(yaml.clone())?, yaml))
}

/// What the agent needs of a pod on another node: who it is, where, and its address; of an
/// agent pod, also its conditions (the route-status owner is chosen among Ready agents).
fn trim_pod(pod: &serde_json::Value) -> serde_json::Value {
    let meta = &pod["metadata"];
    let mut status = serde_json::json!({"podIP": pod["status"]["podIP"]});
    if route_status::is_agent_pod(pod) {
        status["conditions"] = pod["status"]["conditions"].clone();
    }
    serde_json::json!({
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "labels": meta.get("labels").cloned().unwrap_or_else(|| serde_json::json!({})),
        },
        "spec": {
            "nodeName": pod["spec"]["nodeName"],
            "serviceAccountName": pod["spec"]["serviceAccountName"],
        },
        "status": status,
    })
}

fn is_absent(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

/// Watches `kinds` (`KINDS` for an agent, `CA_KINDS` for the CA) and publishes a new state
/// after each batch of changes, once all kinds have completed their first list.
/// `node`: this agent's node, whose pods are kept whole (None for the CA).
pub async fn watch_kinds(
    client: Client,
    kinds: &'static [Kind],
    node: Option<String>,
    tx: watch::Sender<Option<Loaded>>,
) {
    // An agent (not the CA) writes the status of the routes it owns.
    let writer = node
        .as_ref()
        .map(|_| route_status::Writer::spawn(client.clone()));
    run(client, kinds, node, tx, writer).await
}

/// `watch_kinds`, with the route-status writer given (tests watch its progress).
async fn run(
    client: Client,
    kinds: &'static [Kind],
    node: Option<String>,
    tx: watch::Sender<Option<Loaded>>,
    writer: Option<route_status::Writer>,
) {
    let (events, mut rx) = mpsc::channel(1024);
    for (i, k) in kinds.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &k.resource());
        let events = events.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(item) = stream.next().await {
                if events.send((i, item)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(events);
    let mut store = Store::new(kinds, node);
    let mut logged_kinds = std::collections::HashSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for (i, item) in batch {
            match item {
                Ok(event) => store.event(i, event),
                Err(e) if kinds[i].optional && is_absent(&e) => {
                    if !store.synced[i] {
                        warn!(
                            kind = kinds[i].kind,
                            "not served by this cluster (CRD not installed?); treated as empty"
                        );
                    }
                    store.absent(i);
                }
                Err(e) => warn!(kind = kinds[i].kind, error = %e, "watch failed; retrying"),
            }
        }
        if store.ready() {
            // Parsing every object is work in proportion to the cluster: off the runtime.
            let job = tokio::task::spawn_blocking(move || {
                let loaded = store.build();
                let writes = store
                    .node
                    .as_deref()
                    .map(|n| route_status::plan(&store, &loaded.state, n));
                (store, loaded, writes)
            });
            let Ok((back, loaded, writes)) = job.await else {
                return;
            };
            store = back;
            if let (Some(w), Some(writes)) = (&writer, writes) {
                w.plans.send_replace(writes);
            }
            for e in &loaded.errors {
                warn!(object = %e.file.display(), field = %e.field, "rejected: {}", e.message);
            }
            for i in loaded
                .ignored
                .iter()
                .filter(|i| logged_kinds.insert(i.kind.clone()))
            {
                info!(kind = %i.kind, first = %i.first, "objects of this kind are not used: {}", i.reason);
            }
            tx.send_replace(Some(loaded));
        }
    }
}

#[cfg(test)]
mod tests;
