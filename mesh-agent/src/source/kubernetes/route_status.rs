//! The `status` of HTTPRoutes and GRPCRoutes bound to Services (GAMMA), written in Kubernetes
//! mode: one `status.parents[]` entry per Service parentRef, with `controllerName:
//! weft.dev/mesh` and two conditions, `Accepted` (True/Accepted; False/UnsupportedValue with
//! the parser's field and message, the same words file mode and `meshctl validate` print; or
//! False/NoMatchingParent when the Service or its port does not exist) and `ResolvedRefs`
//! (True/ResolvedRefs; False/BackendNotFound, InvalidKind or RefNotPermitted naming the
//! backendRef: another namespace's Service that no ReferenceGrant there lets the route refer
//! to, as `state::reference_grants` decides for traffic), each with `observedGeneration`.
//! Entries of other controllers are kept.
//!
//! One writer per route, not one per node: every agent watches the same Nodes and the same
//! agent Pods, and computes the owner of a route by rendezvous hashing (highest random weight)
//! the route's `namespace/name` over the names of the Nodes that run a Ready agent pod
//! (`weft-system`, label `app: mesh-agent`, as deploy/kubernetes/agent.yaml). Only the owner
//! writes. The score is the first 8 bytes of SHA-256(node name, NUL, namespace/name): stable
//! across agent versions and platforms, so agents mid-rollout still agree. When an agent joins
//! or leaves, only the routes it gains or loses change owner. While the agents' views differ
//! (a Pod's readiness seen by one agent before another), two agents may both write a route for
//! a moment; they write the same thing, and each write is conditional on the resourceVersion
//! it was computed from, so a stale write is refused, never stored.
//!
//! Writes happen off the watch loop (a slow API server never delays configuration), only when
//! the status differs from what the route already carries (ignoring `lastTransitionTime`, which
//! is kept while a condition's status holds), with a timeout; a failed write is retried.

use std::{collections::HashMap, time::Duration};

use kube::{
    api::{DynamicObject, Patch, PatchParams},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{parse, Kind, Store};
use crate::{
    config::SYSTEM_NAMESPACE,
    source::parse::Parsed,
    state::{routes::RouteKind, ServiceKey, State},
};

/// The `controllerName` of Weft's status entries.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh";
/// The label of the agent DaemonSet's pods (deploy/kubernetes/agent.yaml).
pub const AGENT_POD_LABEL: (&str, &str) = ("app", "mesh-agent");
const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute"];
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed write is retried after this, doubling up to `RETRY_MAX` while writes keep failing.
const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Gateway API's bound on `status.parents` (the API server refuses more).
const MAX_PARENTS: usize = 32;
/// Condition messages are kept this short (the API allows 32768 bytes).
const MAX_MESSAGE: usize = 1024;

/// One route's status, owed by this agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The version the status was computed from: the write is conditional on it.
    pub resource_version: Option<String>,
    /// The whole `status.parents` list (other controllers' entries kept).
    pub parents: Vec<Value>,
}

/// The node that writes the status of route `namespace/name`, among `nodes`.
pub fn owner<'a>(namespace: &str, name: &str, nodes: &[&'a str]) -> Option<&'a str> {
    let score = |node: &str| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(node.as_bytes());
        ctx.update(&[0]);
        ctx.update(format!("{namespace}/{name}").as_bytes());
        let digest = ctx.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(first)
    };
    // Ties (never in practice) go to the smaller name, so every agent still agrees.
    nodes
        .iter()
        .copied()
        .max_by(|a, b| score(a).cmp(&score(b)).then_with(|| b.cmp(a)))
}

/// The Nodes (of the Node list) that run a Ready agent pod.
pub(super) fn agent_nodes(store: &Store) -> Vec<String> {
    let of = |kind: &str| store.kinds.iter().position(|k| k.kind == kind);
    let (Some(nodes), Some(pods)) = (of("Node"), of("Pod")) else {
        return vec![];
    };
    let mut out: Vec<String> = store.objects[pods]
        .iter()
        .filter(|((ns, _), pod)| ns == SYSTEM_NAMESPACE && is_ready_agent(pod))
        .filter_map(|(_, pod)| pod.pointer("/spec/nodeName")?.as_str().map(str::to_owned))
        .filter(|n| store.objects[nodes].contains_key(&(String::new(), n.clone())))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// An agent pod (by label) whose Ready condition is True.
pub(super) fn is_agent_pod(pod: &Value) -> bool {
    pod.pointer(&format!("/metadata/labels/{}", AGENT_POD_LABEL.0))
        .and_then(Value::as_str)
        == Some(AGENT_POD_LABEL.1)
}

fn is_ready_agent(pod: &Value) -> bool {
    is_agent_pod(pod)
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

/// The status writes `node` owes: routes it owns whose status is not yet what it should be.
pub(super) fn plan(store: &Store, state: &State, node: &str) -> Vec<StatusWrite> {
    let agents = agent_nodes(store);
    let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
    let now = now();
    let mut writes = vec![];
    for (i, kind) in store.kinds.iter().enumerate() {
        if !ROUTE_KINDS.contains(&kind.kind) {
            continue;
        }
        for ((ns, name), route) in &store.objects[i] {
            if owner(ns, name, &agents) != Some(node) {
                continue;
            }
            let refused = match parse(route) {
                Ok((Parsed::Object(_), _)) => None,
                Ok(_) => continue,
                Err((field, message)) => {
                    let kept = store
                        .last_good
                        .contains_key(&(i, (ns.clone(), name.clone())));
                    let kept = if kept {
                        "; the previous version stays in force"
                    } else {
                        ""
                    };
                    Some(if field.is_empty() {
                        format!("{message}{kept}")
                    } else {
                        format!("{field}: {message}{kept}")
                    })
                }
            };
            if let Some(w) = route_write(*kind, ns, name, route, refused, state, &now) {
                writes.push(w);
            }
        }
    }
    writes
}

/// The write for one route, None when its status is already right (or it has no Service
/// parent: a Gateway's route is not the mesh's).
fn route_write(
    kind: Kind,
    ns: &str,
    name: &str,
    route: &Value,
    refused: Option<String>,
    state: &State,
    now: &str,
) -> Option<StatusWrite> {
    let generation = route.pointer("/metadata/generation").cloned();
    let current: Vec<Value> = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let resolved = resolved_refs(kind, route, ns, state);
    let ours: Vec<Value> = service_parents(route)
        .map(|parent| {
            let accepted = match &refused {
                Some(message) => cond(false, "UnsupportedValue", message),
                None => accepted(parent, ns, state),
            };
            let previous = current
                .iter()
                .find(|e| e["controllerName"] == CONTROLLER_NAME && e["parentRef"] == *parent);
            let conditions = [("Accepted", accepted), ("ResolvedRefs", resolved.clone())]
                .into_iter()
                .map(|(t, c)| condition(t, c, &generation, previous, now))
                .collect::<Vec<_>>();
            json!({"parentRef": parent, "controllerName": CONTROLLER_NAME, "conditions": conditions})
        })
        .collect();
    if ours.is_empty() || same(&current, &ours) {
        return None;
    }
    let mut parents: Vec<Value> = current
        .into_iter()
        .filter(|e| e["controllerName"] != CONTROLLER_NAME)
        .collect();
    parents.extend(ours);
    // Over the API's bound the whole write would be refused, again and again: ours go last and
    // the excess is dropped (a route with more than 32 parents is unusual).
    parents.truncate(MAX_PARENTS);
    Some(StatusWrite {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        resource_version: route
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parents,
    })
}

/// The route's parentRefs that are Services (group "" and kind Service), as written.
fn service_parents(route: &Value) -> impl Iterator<Item = &Value> {
    route
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] == "Service" && p["group"].as_str().unwrap_or("").is_empty())
}

/// (status, reason, message) of one condition.
type Cond = (bool, &'static str, String);

fn cond(ok: bool, reason: &'static str, message: &str) -> Cond {
    let mut message = message.to_owned();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    (ok, reason, message)
}

fn accepted(parent: &Value, route_ns: &str, state: &State) -> Cond {
    let key = parent_service(parent, route_ns);
    let Some(service) = state.services.get(&key) else {
        return cond(
            false,
            "NoMatchingParent",
            &format!("parent Service {}/{} not found", key.namespace, key.name),
        );
    };
    if let Some(port) = parent["port"].as_u64() {
        if !service.ports.iter().any(|p| u64::from(p.port) == port) {
            return cond(
                false,
                "NoMatchingParent",
                &format!(
                    "parent Service {}/{} has no port {port}",
                    key.namespace, key.name
                ),
            );
        }
    }
    cond(true, "Accepted", "accepted by weft.dev/mesh")
}

/// The Service a Service parentRef names.
fn parent_service(parent: &Value, route_ns: &str) -> ServiceKey {
    ServiceKey {
        namespace: parent["namespace"].as_str().unwrap_or(route_ns).to_owned(),
        name: parent["name"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Whether every backendRef names a Service the route may refer to (its own namespace's, its
/// parent, or one a ReferenceGrant permits), that exists, and one of its ports; the first that
/// does not is named.
fn resolved_refs(kind: Kind, route: &Value, route_ns: &str, state: &State) -> Cond {
    let route_kind = match kind.kind {
        "GRPCRoute" => RouteKind::Grpc,
        _ => RouteKind::Http,
    };
    let parents: Vec<ServiceKey> = service_parents(route)
        .map(|p| parent_service(p, route_ns))
        .collect();
    let parents: Vec<&ServiceKey> = parents.iter().collect();
    let rules = route.pointer("/spec/rules").and_then(Value::as_array);
    for (r, rule) in rules.into_iter().flatten().enumerate() {
        let refs = rule["backendRefs"].as_array();
        for (b, backend) in refs.into_iter().flatten().enumerate() {
            let at = format!("spec.rules[{r}].backendRefs[{b}]");
            let kind = backend["kind"].as_str().unwrap_or("Service");
            let group = backend["group"].as_str().unwrap_or("");
            if kind != "Service" || !group.is_empty() {
                let what = if group.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{group}/{kind}")
                };
                return cond(
                    false,
                    "InvalidKind",
                    &format!("{at}: {what} is not a Service"),
                );
            }
            let name = backend["name"].as_str().unwrap_or_default();
            let ns = backend["namespace"].as_str().unwrap_or(route_ns);
            let key = ServiceKey {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            };
            if let Err(why) = state.backend_permitted(route_kind, route_ns, &parents, &key) {
                return cond(false, "RefNotPermitted", &format!("{at}: {why}"));
            }
            let Some(service) = state.services.get(&key) else {
                return cond(
                    false,
                    "BackendNotFound",
                    &format!("{at}: Service {ns}/{name} not found"),
                );
            };
            let Some(port) = backend["port"].as_u64() else {
                return cond(
                    false,
                    "BackendNotFound",
                    &format!("{at}: a Service backendRef needs a port"),
                );
            };
            if !service.ports.iter().any(|p| u64::from(p.port) == port) {
                return cond(
                    false,
                    "BackendNotFound",
                    &format!("{at}: Service {ns}/{name} has no port {port}"),
                );
            }
        }
    }
    cond(
        true,
        "ResolvedRefs",
        "every backendRef resolves to a Service port",
    )
}

/// A metav1.Condition; its lastTransitionTime is kept while its status holds.
fn condition(
    kind: &str,
    (ok, reason, message): Cond,
    generation: &Option<Value>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p["conditions"].as_array())
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = g.clone();
    }
    c
}

/// Whether the route already carries our entries, as the API server may have normalised them.
fn same(current: &[Value], ours: &[Value]) -> bool {
    said(current) == said(ours)
}

/// What our entries say (parent, condition type, status, reason, message, generation), in a
/// stable order: not when they were first said (`lastTransitionTime`).
fn said(entries: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .filter(|e| e["controllerName"] == CONTROLLER_NAME)
        .map(|e| {
            let p = &e["parentRef"];
            let mut cs: Vec<String> = e["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}={} {} {} {}",
                        c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]
                    )
                })
                .collect();
            cs.sort();
            format!("{}/{}:{} {cs:?}", p["namespace"], p["name"], p["port"])
        })
        .collect();
    v.sort();
    v
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The task that writes statuses: it takes the latest plan (a slow API server never queues
/// stale work) and reports each plan it has finished on `done`.
pub struct Writer {
    pub plans: watch::Sender<Vec<StatusWrite>>,
    pub done: watch::Receiver<u64>,
}

impl Writer {
    pub fn spawn(client: Client) -> Self {
        let (plans, rx) = watch::channel(vec![]);
        let (done_tx, done) = watch::channel(0);
        tokio::spawn(run(client, rx, done_tx));
        Writer { plans, done }
    }
}

type RouteId = (&'static str, String, String);

async fn run(
    client: Client,
    mut plans: watch::Receiver<Vec<StatusWrite>>,
    done: watch::Sender<u64>,
) {
    // What was written, from which version: a plan computed before the watch has delivered
    // our own write must not write it again.
    let mut written: HashMap<RouteId, (Option<String>, Vec<String>)> = HashMap::new();
    let mut retry: Option<Duration> = None;
    loop {
        if let Some(after) = retry {
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(after) => {}
            }
        } else if plans.changed().await.is_err() {
            return;
        }
        let plan = plans.borrow_and_update().clone();
        let mut failed = false;
        for w in &plan {
            let id = (w.kind.kind, w.namespace.clone(), w.name.clone());
            let what = (w.resource_version.clone(), said(&w.parents));
            if written.get(&id) == Some(&what) {
                continue;
            }
            match write(&client, w).await {
                Ok(()) => {
                    info!(kind = w.kind.kind, route = %format!("{}/{}", w.namespace, w.name), "route status written");
                    written.insert(id, what);
                }
                Err(e) => {
                    warn!(kind = w.kind.kind, route = %format!("{}/{}", w.namespace, w.name), error = %e, "route status not written; will retry");
                    failed = true;
                }
            }
        }
        // A route out of the plan is in sync (or no longer ours): nothing to remember.
        written.retain(|id, _| {
            plan.iter()
                .any(|w| w.kind.kind == id.0 && w.namespace == id.1 && w.name == id.2)
        });
        retry = failed.then(|| retry.map_or(RETRY_MIN, |r| (r * 2).min(RETRY_MAX)));
        done.send_modify(|n| *n += 1);
    }
}

async fn write(client: &Client, w: &StatusWrite) -> anyhow::Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &w.namespace, &w.kind.resource());
    let mut patch = json!({"status": {"parents": w.parents}});
    if let Some(rv) = &w.resource_version {
        // Conditional on the version the status was computed from (409 when it changed).
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    tokio::time::timeout(
        WRITE_TIMEOUT,
        api.patch_status(&w.name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer in {WRITE_TIMEOUT:?}"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_owner_is_stable_and_moves_only_what_it_must() {
        // Golden values: agents of every version must agree on these.
        let nodes = ["n1", "n2", "n3"];
        let owners: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|r| owner("shop", r, &nodes).unwrap())
            .collect();
        let again: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|r| owner("shop", r, &["n3", "n1", "n2"]).unwrap())
            .collect();
        assert_eq!(owners, ["n2", "n1", "n2", "n2", "n3", "n1"]);
        assert_eq!(owners, again, "the order of the node list does not matter");
        assert!(
            owners.iter().any(|o| *o != owners[0]),
            "routes spread: {owners:?}"
        );
        // Removing a node moves only its routes.
        for (r, o) in ["a", "b", "c", "d", "e", "f"].iter().zip(&owners) {
            let without_n2 = owner("shop", r, &["n1", "n3"]).unwrap();
            if *o != "n2" {
                assert_eq!(without_n2, *o, "{r} moved though its owner stayed");
            }
        }
        assert_eq!(owner("shop", "a", &[]), None);
    }
}
