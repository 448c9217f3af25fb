//! The Kubernetes source against a fake API server that replays responses recorded from a
//! cluster (testdata/kube/): lists, a watch stream with ADDED, MODIFIED, BOOKMARK and a
//! `410 Gone` that forces a relist, and a 404 for a CRD that is not installed. It also takes
//! status PATCHes (route status) and records them.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{stream, StreamExt as _};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use kube::{api::DynamicObject, runtime::watcher::Event};

use super::*;
use crate::state::State;

const NODES: &str = include_str!("../../../testdata/kube/nodes-list.json");
const NAMESPACES: &str = include_str!("../../../testdata/kube/namespaces-list.json");
const PODS_1: &str = include_str!("../../../testdata/kube/pods-list-1.json");
const PODS_WATCH_1: &str = include_str!("../../../testdata/kube/pods-watch-1.jsonl");
const PODS_2: &str = include_str!("../../../testdata/kube/pods-list-2.json");
const SERVICES: &str = include_str!("../../../testdata/kube/services-list.json");
const SLICES: &str = include_str!("../../../testdata/kube/endpointslices-list.json");
const PEER_AUTH: &str = include_str!("../../../testdata/kube/peerauthentications-list.json");
const TRAFFIC: &str = include_str!("../../../testdata/kube/trafficpolicies-list.json");
const NOT_FOUND: &str = include_str!("../../../testdata/kube/not-found.json");

/// Per path: the list responses in order (the last one repeats) and the watch streams in order
/// (after the last, watches stay open with no events).
#[derive(Default)]
struct Script {
    lists: HashMap<&'static str, Vec<(u16, &'static str)>>,
    watches: HashMap<&'static str, Vec<&'static str>>,
    /// Requests seen: (path, watch?).
    seen: Vec<(String, bool)>,
    /// PATCH requests: (path, content type, body).
    patches: Vec<(String, String, serde_json::Value)>,
    /// The status of the nth PATCH's answer (200 after the list).
    patch_answers: Vec<u16>,
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(script: &Mutex<Script>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let watch = req.uri().query().unwrap_or("").contains("watch=true");
    let mut s = script.lock().unwrap();
    let n = s
        .seen
        .iter()
        .filter(|(p, w)| *p == path && *w == watch)
        .count();
    s.seen.push((path.clone(), watch));
    if watch {
        let events = s
            .watches
            .get(path.as_str())
            .and_then(|w| w.get(n))
            .copied()
            .unwrap_or("");
        let lines: Vec<Result<Frame<Bytes>, Infallible>> = events
            .lines()
            .map(|l| Ok(Frame::data(Bytes::from(format!("{l}\n")))))
            .collect();
        // After its events, a watch stays open, as the API server's does.
        let body = StreamBody::new(stream::iter(lines).chain(stream::pending()));
        return Response::new(http_body_util::BodyExt::boxed(body));
    }
    let (status, text) = s
        .lists
        .get(path.as_str())
        .and_then(|l| l.get(n).or(l.last()))
        .copied()
        .unwrap_or((404, NOT_FOUND));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(text.as_bytes())).boxed())
        .unwrap()
}

/// Records a PATCH and answers as the API server does, with the object (here: its identity
/// and a new resourceVersion).
async fn patched(script: &Mutex<Script>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let answer = {
        let mut s = script.lock().unwrap();
        let n = s.patches.len();
        s.patches.push((path.clone(), content_type, body));
        s.patch_answers.get(n).copied().unwrap_or(200)
    };
    if answer != 200 {
        return Response::builder()
            .status(answer)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "etcdserver: request timed out", "reason": "InternalError", "code": answer
            }).to_string())).boxed())
            .unwrap();
    }
    // .../namespaces/NS/PLURAL/NAME/status
    let parts: Vec<&str> = path.split('/').collect();
    let object = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": parts[parts.len() - 4], "name": parts[parts.len() - 2], "resourceVersion": "999"},
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(object.to_string())).boxed())
        .unwrap()
}

async fn fake_api_server(script: Script) -> (Client, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = script.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let script = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let script = script.clone();
                    async move {
                        if req.method() == hyper::Method::PATCH {
                            return Ok::<_, Infallible>(patched(&script, req).await);
                        }
                        Ok(respond(&script, &req))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let config = kube::Config::new(url.parse().unwrap());
    (Client::try_from(config).unwrap(), script)
}

fn recorded() -> Script {
    let mut s = Script::default();
    s.lists.insert("/api/v1/nodes", vec![(200, NODES)]);
    s.lists
        .insert("/api/v1/namespaces", vec![(200, NAMESPACES)]);
    s.lists
        .insert("/api/v1/pods", vec![(200, PODS_1), (200, PODS_2)]);
    s.watches.insert("/api/v1/pods", vec![PODS_WATCH_1]);
    s.lists.insert("/api/v1/services", vec![(200, SERVICES)]);
    s.lists.insert(
        "/apis/discovery.k8s.io/v1/endpointslices",
        vec![(200, SLICES)],
    );
    s.lists.insert(
        "/apis/weft.dev/v1alpha1/peerauthentications",
        vec![(200, PEER_AUTH)],
    );
    s.lists.insert(
        "/apis/weft.dev/v1alpha1/trafficpolicies",
        vec![(200, TRAFFIC)],
    );
    // No MeshConfig CRD in this cluster.
    s.lists.insert(
        "/apis/weft.dev/v1alpha1/meshconfigs",
        vec![(404, NOT_FOUND)],
    );
    s
}

fn pods(state: &State) -> Vec<String> {
    state.pods.keys().map(|k| k.name.clone()).collect()
}

#[tokio::test]
async fn lists_watches_and_resyncs_after_410_from_recorded_responses() {
    let (client, script) = fake_api_server(recorded()).await;
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(watch_kinds(client, KINDS, Some("n1".into()), tx));

    // Every published state; the first only once every kind has listed.
    let mut seen_api_pod = false;
    let final_state = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            rx.changed().await.unwrap();
            let Some(loaded) = rx.borrow_and_update().clone() else {
                continue;
            };
            let names = pods(&loaded.state);
            assert!(
                names.contains(&"web-7d9f8b6c5-x2x4z".to_string()),
                "never published before the first complete list: {names:?}"
            );
            if let Some(api) = loaded
                .state
                .pods
                .values()
                .find(|p| p.key.name.starts_with("api-"))
            {
                seen_api_pod |= api.ip == Some("10.1.0.3".parse().unwrap());
            }
            if names.contains(&"worker-0".to_string()) {
                return loaded;
            }
        }
    })
    .await
    .expect("the relist after 410 was published");

    assert!(seen_api_pod, "the watch's ADDED then MODIFIED were applied");
    // The relist replaced the pods: api was deleted while the watch was gone.
    assert_eq!(
        pods(&final_state.state),
        ["web-7d9f8b6c5-x2x4z", "worker-0"]
    );
    let state = &final_state.state;
    assert_eq!(
        state.nodes["n1"].internal_ip,
        Some("192.168.1.11".parse().unwrap())
    );
    let web = state
        .resolve_service("10.96.0.10:80".parse().unwrap())
        .expect("the Service");
    assert_eq!(web.endpoints, vec!["10.1.0.2:8080".parse().unwrap()]);
    // Enrolled by namespace label; its netns and cgroup are found on the node from its UID.
    let enrolled: Vec<_> = state
        .enrolled_pods("n1")
        .map(|p| p.key.name.clone())
        .collect();
    assert_eq!(enrolled, ["web-7d9f8b6c5-x2x4z"]);
    assert_eq!(state.peer_authentications.len(), 1);
    assert_eq!(final_state.errors.len(), 2, "{:?}", final_state.errors);
    let e = &final_state.errors[0];
    assert_eq!(
        e.file.to_string_lossy(),
        "kubernetes:PeerAuthentication/shop/typo"
    );
    assert_eq!(e.field, "spec.mtls");
    assert!(e.message.contains("mode"), "{e}");
    // A TrafficPolicy is watched and refused with the reason, as in file mode, not ignored.
    let e = &final_state.errors[1];
    assert_eq!(
        e.file.to_string_lossy(),
        "kubernetes:TrafficPolicy/shop/web"
    );
    assert!(e.message.contains("not enforced"), "{e}");

    let seen = script.lock().unwrap().seen.clone();
    let pod_lists = seen
        .iter()
        .filter(|(p, w)| p == "/api/v1/pods" && !w)
        .count();
    assert!(
        pod_lists >= 2,
        "410 Gone made the watcher list again: {seen:?}"
    );
}

fn pod(name: &str, ip: &str) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"nodeName": "n1"},
        "status": {"podIP": ip}
    }))
    .unwrap()
}

#[test]
fn the_index_follows_watch_events_and_keeps_last_good_objects() {
    static TWO: &[Kind] = &[
        kind("", "v1", "Pod", "pods", false),
        kind("", "v1", "Namespace", "namespaces", false),
    ];
    let mut store = Store::new(TWO, Some("n1".into()));
    store.event(0, Event::Init);
    store.event(0, Event::InitApply(pod("a", "10.0.0.1")));
    store.event(0, Event::InitDone);
    assert!(!store.ready(), "namespaces have not listed yet");
    store.event(1, Event::Init);
    store.event(1, Event::InitDone);
    assert!(store.ready());
    assert_eq!(pods(&store.build().state), ["a"]);

    store.event(0, Event::Apply(pod("b", "10.0.0.2")));
    store.event(0, Event::Delete(pod("a", "10.0.0.1")));
    assert_eq!(pods(&store.build().state), ["b"]);

    // A broken update keeps the last good version of that object, and says so.
    store.event(0, Event::Apply(pod("b", "not-an-ip")));
    let loaded = store.build();
    assert_eq!(
        loaded.state.pods.values().next().unwrap().ip,
        Some("10.0.0.2".parse().unwrap())
    );
    assert_eq!(loaded.errors[0].field, "status.podIP");
    assert!(loaded.errors[0]
        .message
        .ends_with("the previous version stays in force"));

    // Another node's pod is kept trimmed to what the data path needs.
    let mut far = pod("far", "10.2.0.9");
    far.data["spec"] = serde_json::json!({
        "nodeName": "n2", "serviceAccountName": "far",
        "containers": [{"name": "c", "image": "big", "env": [{"name": "A", "value": "x"}]}]
    });
    store.event(0, Event::Apply(far));
    let kept = &store.objects[0][&("shop".to_string(), "far".to_string())];
    assert!(kept["spec"].get("containers").is_none(), "{kept}");
    let state = store.build().state;
    let far = state.pods.values().find(|p| p.key.name == "far").unwrap();
    assert_eq!(
        (far.ip, far.node.as_deref(), far.service_account.as_str()),
        (Some("10.2.0.9".parse().unwrap()), Some("n2"), "far")
    );
    store.event(0, Event::Delete(pod("far", "10.2.0.9")));

    // A relist replaces the kind atomically: nothing half-listed is ever built.
    store.event(0, Event::Init);
    store.event(0, Event::InitApply(pod("c", "10.0.0.3")));
    assert_eq!(pods(&store.build().state), ["b"]);
    store.event(0, Event::InitDone);
    assert_eq!(pods(&store.build().state), ["c"]);
}

/// The (group, resource) pairs a manifest's ClusterRoles grant get, list and watch on.
fn watchable(manifest: &str) -> std::collections::BTreeSet<(String, String)> {
    granted(manifest, &["get", "list", "watch"])
}

/// The (group, resource) pairs a manifest's ClusterRoles grant all of `wanted` on.
fn granted(manifest: &str, wanted: &[&str]) -> std::collections::BTreeSet<(String, String)> {
    use serde::Deserialize as _;
    let mut granted = std::collections::BTreeSet::new();
    for doc in yaml_serde::Deserializer::from_str(manifest) {
        let v = serde_json::Value::deserialize(doc).expect("manifest parses");
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for rule in v["rules"].as_array().into_iter().flatten() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            if !wanted.iter().all(|v| verbs.contains(v)) {
                continue;
            }
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().into_iter().flatten() {
                    granted.insert((
                        g.as_str().unwrap_or("").into(),
                        r.as_str().unwrap_or("").into(),
                    ));
                }
            }
        }
    }
    granted
}

/// A kind the agent or the CA watches but may not list keeps it from ever becoming ready (a 403
/// is not a missing CRD): every watched kind must be granted by the shipped RBAC.
#[test]
fn every_watched_kind_is_granted_by_the_shipped_rbac() {
    let agent = watchable(include_str!(
        "../../../../deploy/kubernetes/agent-rbac.yaml"
    ));
    let ca = watchable(include_str!("../../../../deploy/kubernetes/ca-rbac.yaml"));
    for (who, kinds, granted) in [("agent", KINDS, &agent), ("CA", CA_KINDS, &ca)] {
        for k in kinds {
            assert!(
                granted.contains(&(k.group.to_string(), k.plural.to_string())),
                "the {who} watches {} ({}/{}) but its ClusterRole does not grant get/list/watch on it",
                k.kind, k.group, k.plural
            );
        }
    }
}

const ROUTE_NODES: &str = include_str!("../../../testdata/kube/routes-nodes-list.json");
const ROUTE_NAMESPACES: &str = include_str!("../../../testdata/kube/routes-namespaces-list.json");
const ROUTE_PODS: &str = include_str!("../../../testdata/kube/routes-pods-list.json");
const ROUTE_SERVICES: &str = include_str!("../../../testdata/kube/routes-services-list.json");
const NO_SLICES: &str = include_str!("../../../testdata/kube/endpointslices-empty-list.json");
const HTTP_ROUTES: &str = include_str!("../../../testdata/kube/httproutes-list.json");
const GRPC_ROUTES: &str = include_str!("../../../testdata/kube/grpcroutes-list.json");

/// Three nodes; Ready agents on n1 and n2 (n3's is not Ready); Services orders and orders-v1;
/// four HTTPRoutes (testdata/kube/httproutes-list.json). Weft's CRDs are not installed.
fn routes_cluster() -> Script {
    let mut s = Script::default();
    s.lists.insert("/api/v1/nodes", vec![(200, ROUTE_NODES)]);
    s.lists
        .insert("/api/v1/namespaces", vec![(200, ROUTE_NAMESPACES)]);
    s.lists.insert("/api/v1/pods", vec![(200, ROUTE_PODS)]);
    s.lists
        .insert("/api/v1/services", vec![(200, ROUTE_SERVICES)]);
    s.lists.insert(
        "/apis/discovery.k8s.io/v1/endpointslices",
        vec![(200, NO_SLICES)],
    );
    s.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        vec![(200, HTTP_ROUTES)],
    );
    s.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        vec![(200, GRPC_ROUTES)],
    );
    s
}

/// Runs the agent of `node` against its own fake API server until its status writer has
/// finished a plan made from the full list; returns the PATCHes it sent, by route name.
async fn status_patches(node: &str) -> BTreeMap<String, (String, serde_json::Value)> {
    let (client, script) = fake_api_server(routes_cluster()).await;
    status_writes(client, node, 1, &script)
        .await
        .into_iter()
        .map(|(name, content_type, body)| (name, (content_type, body)))
        .collect()
}

/// The PATCHes the agent of `node` sent once its writer has finished `plans` plans, in order:
/// (route name, content type, body).
async fn status_writes(
    client: Client,
    node: &str,
    plans: u64,
    script: &Mutex<Script>,
) -> Vec<(String, String, serde_json::Value)> {
    let writer = route_status::Writer::spawn(client.clone());
    let mut done = writer.done.clone();
    let (tx, _rx) = watch::channel(None);
    tokio::spawn(run(client, KINDS, Some(node.into()), tx, Some(writer)));
    tokio::time::timeout(Duration::from_secs(20), done.wait_for(|n| *n >= plans))
        .await
        .expect("the status writer finished its plans")
        .unwrap();
    let patches = script.lock().unwrap().patches.clone();
    patches
        .into_iter()
        .map(|(path, content_type, body)| {
            let name = path
                .strip_prefix("/apis/gateway.networking.k8s.io/v1/namespaces/shop/")
                .and_then(|p| p.strip_suffix("/status"))
                .unwrap_or_else(|| panic!("a status PATCH of a route: {path}"))
                .replace("httproutes/", "")
                .replace("grpcroutes/", "grpc:");
            (name, content_type, body)
        })
        .collect()
}

#[tokio::test]
async fn a_failed_status_write_is_retried_and_what_succeeded_is_not_written_again() {
    let mut cluster = routes_cluster();
    cluster.patch_answers = vec![500];
    let (client, script) = fake_api_server(cluster).await;
    let writes = status_writes(client, "n1", 2, &script).await;
    let names: Vec<&str> = writes.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["broken", "orders-split", "broken"]);
    assert_eq!(
        conditions(&writes[0].2),
        conditions(&writes[2].2),
        "the same status, retried"
    );
}

/// Our entry's conditions as (type, status, reason, message, observedGeneration).
fn conditions(body: &serde_json::Value) -> Vec<(String, String, String, String, i64)> {
    let ours: Vec<_> = body["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["controllerName"] == route_status::CONTROLLER_NAME)
        .collect();
    assert_eq!(ours.len(), 1, "one entry per Service parent: {body}");
    ours[0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(
                c["lastTransitionTime"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z')),
                "{c}"
            );
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
                c["message"].as_str().unwrap().to_owned(),
                c["observedGeneration"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What the agent's own parser says of route `name` of `list` (a recorded list of `kind`):
/// None when it is not the mesh's (no status is owed), Some(None) when accepted, else
/// Some(Some("field: message")). (Whether a mesh route is accepted is the route model's
/// business; the status must say what the parser says.)
fn parser_verdict(list: &str, kind: &str, name: &str) -> Option<Option<String>> {
    let list: serde_json::Value = serde_json::from_str(list).unwrap();
    let mut route = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metadata"]["name"] == name)
        .unwrap()
        .clone();
    route["apiVersion"] = "gateway.networking.k8s.io/v1".into();
    route["kind"] = kind.into();
    match crate::source::parse::parse_document(yaml_serde::to_value(&route).unwrap()) {
        Ok(crate::source::parse::Parsed::Object(_)) => Some(None),
        Ok(_) => None,
        Err((field, message)) => Some(Some(format!("{field}: {message}"))),
    }
}

fn accepted_condition(name: &str, generation: i64) -> (String, String, String, String, i64) {
    let verdict = parser_verdict(HTTP_ROUTES, "HTTPRoute", name).expect("a mesh route");
    let (status, reason, message) = match verdict {
        None => ("True", "Accepted", "accepted by weft.dev/mesh".to_owned()),
        Some(refusal) => ("False", "UnsupportedValue", refusal),
    };
    (
        "Accepted".into(),
        status.into(),
        reason.into(),
        message,
        generation,
    )
}

#[tokio::test]
async fn route_status_is_written_once_by_its_owner_with_the_parsers_verdict() {
    let (n1, n2) = tokio::join!(status_patches("n1"), status_patches("n2"));
    // Owners by rendezvous over the Ready agents' nodes (n1, n2): n3's agent is not Ready, or
    // orders-split and broken would be n3's. The Gateway's route is not the mesh's.
    assert_eq!(
        n1.keys().collect::<Vec<_>>(),
        ["broken", "orders-split"],
        "n1 writes exactly the routes it owns"
    );
    // The GRPCRoute is watched and goes through the same parser: it is owed a status unless
    // the parser says it is not the mesh's.
    let grpc = parser_verdict(GRPC_ROUTES, "GRPCRoute", "orders-grpc");
    let mut n2_owns = vec!["grpc:orders-grpc", "orders-canary"];
    if grpc.is_none() {
        n2_owns.remove(0);
    }
    assert_eq!(
        n2.keys().collect::<Vec<_>>(),
        n2_owns,
        "n2 writes exactly the routes it owns"
    );
    if let Some(verdict) = grpc {
        let c = conditions(&n2["grpc:orders-grpc"].1);
        assert_eq!(
            c[0].1,
            if verdict.is_none() { "True" } else { "False" },
            "{c:?}"
        );
        assert_eq!(c[1].1, "True", "{c:?}");
    }

    // A refused route: Accepted=False with the parser's field and message.
    let (content_type, broken) = &n1["broken"];
    assert_eq!(content_type, "application/merge-patch+json");
    assert_eq!(
        broken["metadata"]["resourceVersion"], "263",
        "conditional on the version seen"
    );
    let c = conditions(broken);
    assert_eq!(c[0].0, "Accepted");
    assert_eq!(
        (c[0].1.as_str(), c[0].2.as_str()),
        ("False", "UnsupportedValue")
    );
    assert!(
        c[0].3.starts_with("spec.parentRefs[0].port: ") && c[0].3.contains("eighty"),
        "{c:?}"
    );
    assert_eq!(
        c[1],
        (
            "ResolvedRefs".into(),
            "True".into(),
            "ResolvedRefs".into(),
            "every backendRef resolves to a Service port".into(),
            3
        )
    );

    // A backend that does not exist: ResolvedRefs=False, BackendNotFound, naming it.
    let c = conditions(&n2["orders-canary"].1);
    assert_eq!(c[0], accepted_condition("orders-canary", 1));
    assert_eq!(
        c[1],
        (
            "ResolvedRefs".into(),
            "False".into(),
            "BackendNotFound".into(),
            "spec.rules[0].backendRefs[1]: Service shop/orders-v2 not found".into(),
            1
        )
    );

    // Everything resolves; another controller's entry is kept as it was.
    let body = &n1["orders-split"].1;
    let c = conditions(body);
    assert_eq!(c[0], accepted_condition("orders-split", 2));
    assert_eq!(c[1].1, "True");
    let parents = body["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{body}");
    assert_eq!(parents[0]["controllerName"], "example.com/other-mesh");
    let ours = &parents[1];
    assert_eq!(
        ours["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "orders", "port": 80})
    );
}

/// The agent may write exactly the status of the route kinds it watches, and the DaemonSet's
/// pods carry the label the status owner is chosen by.
#[test]
fn the_shipped_rbac_lets_the_agent_write_route_status_and_agents_are_found_by_label() {
    let rbac = include_str!("../../../../deploy/kubernetes/agent-rbac.yaml");
    let writable = granted(rbac, &["patch"]);
    for plural in ["httproutes", "grpcroutes"] {
        assert!(KINDS.iter().any(|k| k.plural == plural));
        let status = (
            "gateway.networking.k8s.io".to_string(),
            format!("{plural}/status"),
        );
        assert!(
            writable.contains(&status),
            "{status:?} not granted: {writable:?}"
        );
    }
    assert_eq!(
        writable.len(),
        2,
        "the agent writes nothing else: {writable:?}"
    );
    let daemonset: serde_json::Value =
        yaml_serde::from_str(include_str!("../../../../deploy/kubernetes/agent.yaml")).unwrap();
    let (key, value) = route_status::AGENT_POD_LABEL;
    assert_eq!(
        daemonset["spec"]["template"]["metadata"]["labels"][key],
        value
    );
    assert_eq!(
        daemonset["metadata"]["namespace"],
        crate::config::SYSTEM_NAMESPACE
    );
}

const GRANTS: &str = include_str!("../../../testdata/kube/referencegrants-list.json");
const GRANT_ROUTES: &str =
    include_str!("../../../testdata/kube/referencegrant-httproutes-list.json");
const GRANT_SERVICES: &str =
    include_str!("../../../testdata/kube/referencegrant-services-list.json");
const GRANTS_PATH: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";

/// The routes cluster's nodes and agents, with route shop/orders-billing sending `/pay` to
/// Service payments/billing; the recorded ReferenceGrants (one lets shop's HTTPRoutes refer to
/// billing) when `granted`, else none (the API has no ReferenceGrant kind: 404, as if empty).
fn grants_cluster(granted: bool) -> Script {
    let mut s = routes_cluster();
    s.lists
        .insert("/api/v1/services", vec![(200, GRANT_SERVICES)]);
    s.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        vec![(200, GRANT_ROUTES)],
    );
    s.lists
        .remove("/apis/gateway.networking.k8s.io/v1/grpcroutes");
    if granted {
        s.lists.insert(GRANTS_PATH, vec![(200, GRANTS)]);
    }
    s
}

/// The node that owns orders-billing's status among the cluster's Ready agents.
fn grant_route_owner() -> &'static str {
    route_status::owner("shop", "orders-billing", &["n1", "n2"]).unwrap()
}

/// orders-billing's `/pay` backend (payments/billing) in `state`: None when it resolves.
fn billing_unresolved(state: &State) -> Option<String> {
    let route = &state.routes[&("shop".to_string(), "orders-billing".to_string())];
    route.rules[0].backends[0].unresolved.clone()
}

#[tokio::test]
async fn a_reference_grant_from_the_api_server_lets_a_route_reach_another_namespace() {
    let owner = grant_route_owner();
    for granted in [false, true] {
        let (client, script) = fake_api_server(grants_cluster(granted)).await;
        let writer = route_status::Writer::spawn(client.clone());
        let mut done = writer.done.clone();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(run(client, KINDS, Some(owner.into()), tx, Some(writer)));
        tokio::time::timeout(Duration::from_secs(20), done.wait_for(|n| *n >= 1))
            .await
            .expect("the status writer finished a plan")
            .unwrap();
        let state = rx.borrow().clone().expect("a published state").state;
        let s = script.lock().unwrap();
        assert!(
            s.seen.iter().any(|(p, watch)| p == GRANTS_PATH && !watch),
            "ReferenceGrants are listed: {:?}",
            s.seen
        );
        let (_, _, body) = s
            .patches
            .iter()
            .find(|(p, _, _)| p.ends_with("/shop/httproutes/orders-billing/status"))
            .unwrap_or_else(|| panic!("orders-billing's status written: {:?}", s.patches));
        let c = conditions(body);
        assert_eq!((c[0].0.as_str(), c[0].1.as_str()), ("Accepted", "True"));
        if granted {
            assert_eq!(billing_unresolved(&state), None);
            assert_eq!(
                c[1],
                (
                    "ResolvedRefs".into(),
                    "True".into(),
                    "ResolvedRefs".into(),
                    "every backendRef resolves to a Service port".into(),
                    5
                )
            );
        } else {
            let why = billing_unresolved(&state).expect("not permitted");
            assert!(why.starts_with("RefNotPermitted:"), "{why}");
            assert_eq!(
                (c[1].1.as_str(), c[1].2.as_str()),
                ("False", "RefNotPermitted"),
                "{c:?}"
            );
            assert!(
                c[1].3
                    .starts_with("spec.rules[0].backendRefs[0]: Service payments/billing is in another namespace"),
                "{c:?}"
            );
        }
    }
}

/// The items of a recorded list, as the watcher hands them over.
fn items(list: &str) -> Vec<DynamicObject> {
    let list: serde_json::Value = serde_json::from_str(list).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_value(i.clone()).unwrap())
        .collect()
}

#[test]
fn deleting_the_reference_grant_takes_the_backend_away_and_the_status_says_so() {
    let owner = grant_route_owner();
    let mut store = Store::new(KINDS, Some(owner.into()));
    let lists = [
        ("Node", ROUTE_NODES),
        ("Namespace", ROUTE_NAMESPACES),
        ("Pod", ROUTE_PODS),
        ("Service", GRANT_SERVICES),
        ("HTTPRoute", GRANT_ROUTES),
        ("ReferenceGrant", GRANTS),
    ];
    for (i, k) in KINDS.iter().enumerate() {
        store.event(i, Event::Init);
        for (_, list) in lists.iter().filter(|(kind, _)| *kind == k.kind) {
            for item in items(list) {
                store.event(i, Event::InitApply(item));
            }
        }
        store.event(i, Event::InitDone);
    }
    let resolved_refs = |store: &Store, state: &State| {
        let writes = route_status::plan(store, state, owner);
        let w = writes
            .iter()
            .find(|w| w.name == "orders-billing")
            .expect("a status owed");
        let c = conditions(&serde_json::json!({"status": {"parents": w.parents}}));
        (c[1].1.clone(), c[1].2.clone())
    };
    let loaded = store.build();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.state.reference_grants.len(), 2);
    assert_eq!(billing_unresolved(&loaded.state), None);
    assert_eq!(
        resolved_refs(&store, &loaded.state),
        ("True".into(), "ResolvedRefs".into())
    );

    let grant = KINDS
        .iter()
        .position(|k| k.kind == "ReferenceGrant")
        .unwrap();
    store.event(grant, Event::Delete(items(GRANTS).remove(0)));
    let loaded = store.build();
    let why = billing_unresolved(&loaded.state).expect("taken away");
    assert!(why.starts_with("RefNotPermitted:"), "{why}");
    assert_eq!(
        resolved_refs(&store, &loaded.state),
        ("False".into(), "RefNotPermitted".into())
    );
}
