//! File mode: every regular, non-hidden file in the directory is read as a stream of YAML
//! documents. A document that fails is reported with its file, index and field path; the other
//! documents still apply, and the object it used to define (same kind, namespace and name, as
//! far as the broken document still says) keeps its last good version. A file that stops being
//! valid YAML keeps the last good versions of the objects it defined after the error. Deleting
//! a document or a file deletes its objects: that is a change, not a mistake.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::objects::{
    check_authorization_policy, check_mesh_config, check_service_entry, EndpointSliceObject,
    NamespaceObject, NodeObject, Object, PodObject, ServiceObject,
};

use crate::{
    crd::{self, API_VERSION},
    state::State,
};

/// A rejected document: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub document: usize,
    /// Field path inside the document (empty when the document itself is unreadable).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A directory's worth of configuration: the state and the documents that were rejected.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub state: State,
    pub errors: Vec<ConfigError>,
}

/// (apiVersion, kind, namespace, name) of a document, as far as it says.
type ObjectId = (String, String, String, String);

/// The last good document of every object, per file: what stays in force when a new version
/// of the document is rejected.
#[derive(Debug, Default)]
pub struct LastGood {
    by_file: HashMap<PathBuf, Vec<(ObjectId, serde_yaml::Value)>>,
}

const KEPT: &str = "; the previous version stays in force";

/// Reads the whole directory into a `State`, with every rejected document (nothing previous:
/// what `meshctl validate` and a first load see).
pub fn load_dir(dir: &Path) -> (State, Vec<ConfigError>) {
    load_dir_keeping(dir, &mut LastGood::default())
}

/// As `load_dir`, keeping the last good version of objects whose document is now rejected.
pub fn load_dir_keeping(dir: &Path, last: &mut LastGood) -> (State, Vec<ConfigError>) {
    let mut state = State::default();
    let mut errors = Vec::new();
    let files = match list(dir) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ConfigError {
                file: dir.to_owned(),
                document: 0,
                field: String::new(),
                message: format!("cannot read directory: {e}"),
            });
            return (state, errors);
        }
    };
    let mut next = HashMap::new();
    for (file, _) in files {
        let previous = last
            .by_file
            .get(&file)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let good = load_file(&file, &mut state, &mut errors, previous);
        next.insert(file, good);
    }
    last.by_file = next;
    state.reindex();
    (state, errors)
}

fn object_id(value: &serde_yaml::Value) -> Option<ObjectId> {
    let text = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let meta = value.get("metadata");
    Some((
        text(value.get("apiVersion"))?,
        text(value.get("kind"))?,
        text(meta.and_then(|m| m.get("namespace"))).unwrap_or_default(),
        text(meta.and_then(|m| m.get("name")))?,
    ))
}

/// Applies a previously accepted document again (it parsed before, so it parses now).
fn reapply(value: &serde_yaml::Value, state: &mut State) {
    if let Ok(Some(object)) = parse_document(value.clone()) {
        object.apply(state);
    }
}

/// Regular files in the directory (recursively), sorted, with their modification times.
fn list(dir: &Path) -> std::io::Result<Vec<(PathBuf, (SystemTime, u64))>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            out.extend(list(&entry.path())?);
        } else if meta.is_file() {
            out.push((entry.path(), (meta.modified()?, meta.len())));
        }
    }
    out.sort();
    Ok(out)
}

/// Applies one file's documents; returns its good documents (the new last good versions).
fn load_file(
    file: &Path,
    state: &mut State,
    errors: &mut Vec<ConfigError>,
    previous: &[(ObjectId, serde_yaml::Value)],
) -> Vec<(ObjectId, serde_yaml::Value)> {
    let err = |document, field: &str, message: String| ConfigError {
        file: file.to_owned(),
        document,
        field: field.to_owned(),
        message,
    };
    let mut good: Vec<(ObjectId, serde_yaml::Value)> = Vec::new();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errors.push(err(0, "", format!("cannot read file: {e}")));
            return good;
        }
    };
    let before = |id: &ObjectId| previous.iter().find(|(p, _)| p == id).map(|(_, v)| v);
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let index = i + 1;
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error: the objects this file
                // defined and that were not read yet keep their last good version.
                let kept: Vec<_> = previous
                    .iter()
                    .filter(|(id, _)| !good.iter().any(|(g, _)| g == id))
                    .cloned()
                    .collect();
                let note = if kept.is_empty() { "" } else { KEPT };
                errors.push(err(index, "", format!("invalid YAML: {e}{note}")));
                for (id, v) in kept {
                    reapply(&v, state);
                    good.push((id, v));
                }
                break;
            }
        };
        let id = object_id(&value);
        match parse_document(value.clone()) {
            Ok(Some(object)) => {
                object.apply(state);
                if let Some(id) = id {
                    good.push((id, value));
                }
            }
            Ok(None) => {}
            Err((field, message)) => match id.and_then(|id| Some((before(&id)?.clone(), id))) {
                Some((last, id)) => {
                    errors.push(err(index, &field, format!("{message}{KEPT}")));
                    reapply(&last, state);
                    good.push((id, last));
                }
                None => errors.push(err(index, &field, message)),
            },
        }
    }
    good
}

/// Parses one document. `Ok(None)`: empty, or a kind this agent does not use.
pub fn parse_document(value: serde_yaml::Value) -> Result<Option<Object>, (String, String)> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(map) = value.as_mapping() else {
        return Err((
            String::new(),
            "expected a Kubernetes object (a mapping)".into(),
        ));
    };
    let text = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = text("kind").ok_or(("kind".to_string(), "missing field `kind`".to_string()))?;
    let api_version = text("apiVersion").ok_or((
        "apiVersion".to_string(),
        "missing field `apiVersion`".to_string(),
    ))?;
    Ok(Some(match (api_version.as_str(), kind.as_str()) {
        ("v1", "Node") => Object::Node(typed::<NodeObject>(value)?),
        ("v1", "Namespace") => Object::Namespace(typed::<NamespaceObject>(value)?),
        ("v1", "Pod") => Object::Pod(typed::<PodObject>(value)?),
        ("v1", "Service") => {
            let s = typed::<ServiceObject>(value)?;
            s.check()?;
            Object::Service(s)
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            typed::<super::objects::http_route::HttpRouteObject>(value)?.check()?;
            // A Gateway's route: not the mesh's.
            return Ok(None);
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(typed::<EndpointSliceObject>(value)?)
        }
        (API_VERSION, "PeerAuthentication") => {
            Object::PeerAuthentication(typed::<crd::PeerAuthentication>(value)?)
        }
        (API_VERSION, "MeshConfig") => {
            let mc = typed::<crd::MeshConfig>(value)?;
            check_mesh_config(&mc)?;
            Object::MeshConfig(mc)
        }
        (API_VERSION, "AuthorizationPolicy") => {
            let ap = typed::<crd::AuthorizationPolicy>(value)?;
            check_authorization_policy(&ap)?;
            Object::AuthorizationPolicy(ap)
        }
        (API_VERSION, "ServiceEntry") => {
            let se = typed::<crd::ServiceEntry>(value)?;
            check_service_entry(&se)?;
            Object::ServiceEntry(se)
        }
        // Known kinds whose enforcement is not built yet: refused, never silently ignored (a
        // policy that looks applied but is not would be worse than an error).
        (API_VERSION, kind @ "TrafficPolicy") => {
            typed::<crd::TrafficPolicy>(value).map(drop)?;
            return Err((
                "kind".into(),
                format!("{kind} is valid but not enforced by this agent version; refusing it rather than ignoring it"),
            ));
        }
        (API_VERSION, other) => {
            return Err((
                "kind".into(),
                format!("unknown {API_VERSION} kind {other:?}"),
            ));
        }
        _ => return Ok(None),
    }))
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, e.into_inner().to_string())
    })
}

/// Watches the directory and publishes a new `State` whenever a file changes. Rejected
/// documents are logged once per change.
pub async fn watch(dir: PathBuf, interval: Duration, tx: watch::Sender<Option<Loaded>>) {
    let mut last = None;
    let mut last_good = LastGood::default();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let fingerprint = list(&dir).ok();
        if last.is_some() && fingerprint == last {
            continue;
        }
        last = fingerprint;
        let (state, errors) = load_dir_keeping(&dir, &mut last_good);
        for e in &errors {
            warn!(file = %e.file.display(), document = e.document, field = %e.field, "rejected: {}", e.message);
        }
        info!(
            pods = state.pods.len(),
            namespaces = state.namespaces.len(),
            rejected = errors.len(),
            "configuration loaded"
        );
        if tx.send(Some(Loaded { state, errors })).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  annotations: {weft.dev/netns: /run/netns/web, weft.dev/cgroup: /sys/fs/cgroup/web}
spec: {nodeName: n1, serviceAccountName: web}
status: {podIP: 10.0.1.2}
"#;

    #[test]
    fn multi_document_file_builds_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), GOOD).unwrap();
        let (state, errors) = load_dir(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.enrolled_pods("n1").count(), 1);
        let pod = state.enrolled_pods("n1").next().unwrap();
        assert_eq!(pod.service_account, "web");
        assert_eq!(pod.ip, Some("10.0.1.2".parse().unwrap()));
    }

    #[test]
    fn bad_document_is_named_and_the_rest_applies() {
        let dir = tempfile::tempdir().unwrap();
        let bad =
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: not-an-ip}\n";
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), format!("{GOOD}{bad}")).unwrap();
        let (state, errors) = load_dir(dir.path());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 3);
        assert_eq!(errors[0].field, "status.podIP");
        assert!(errors[0].file.ends_with("b.yaml"));
        assert_eq!(state.pods.len(), 1);
    }

    #[test]
    fn a_rejected_document_keeps_the_previous_version_of_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        let mut last = LastGood::default();
        std::fs::write(&file, GOOD).unwrap();
        let (state, errors) = load_dir_keeping(dir.path(), &mut last);
        assert!(errors.is_empty());
        let ip = |s: &State| s.pods.values().next().and_then(|p| p.ip);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));

        // The pod's document breaks: it is rejected, and the pod stays as it was.
        std::fs::write(&file, GOOD.replace("podIP: 10.0.1.2", "podIP: ten")).unwrap();
        let (state, errors) = load_dir_keeping(dir.path(), &mut last);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "status.podIP");
        assert!(errors[0].message.ends_with(KEPT), "{}", errors[0]);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));
        // Still broken on the next reload: still the last good version.
        let (state, _) = load_dir_keeping(dir.path(), &mut last);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));

        // A YAML syntax error before it: the objects after the error keep their versions.
        std::fs::write(&file, format!("{GOOD}---\n: : [\n")).unwrap();
        load_dir_keeping(dir.path(), &mut last);
        let broken = GOOD.replace("kind: Namespace", "kind: Namespace\n  bad: [");
        std::fs::write(&file, broken).unwrap();
        let (state, errors) = load_dir_keeping(dir.path(), &mut last);
        assert!(
            errors[0].message.starts_with("invalid YAML"),
            "{}",
            errors[0]
        );
        assert!(errors[0].message.ends_with(KEPT), "{}", errors[0]);
        assert_eq!(state.namespaces.len(), 1);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));

        // Fixed with a new address: the new version applies. Deleted: the pod is gone.
        std::fs::write(&file, GOOD.replace("10.0.1.2", "10.0.1.9")).unwrap();
        let (state, errors) = load_dir_keeping(dir.path(), &mut last);
        assert!(errors.is_empty());
        assert_eq!(ip(&state), Some("10.0.1.9".parse().unwrap()));
        std::fs::remove_file(&file).unwrap();
        let (state, _) = load_dir_keeping(dir.path(), &mut last);
        assert!(state.pods.is_empty());
        // A first load (or `meshctl validate`) has no previous version to keep.
        std::fs::write(&file, GOOD.replace("podIP: 10.0.1.2", "podIP: ten")).unwrap();
        let (_, errors) = load_dir(dir.path());
        assert!(!errors[0].message.ends_with(KEPT));
    }

    #[test]
    fn shipped_examples_validate() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/file-mode");
        let (state, errors) = load_dir(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            state.enrolled_pods("node-a").count(),
            1,
            "web is enrolled, debug opted out"
        );
        let web = state
            .resolve_service("10.96.0.10:80".parse().unwrap())
            .expect("the example Service");
        assert_eq!(web.endpoints, vec!["10.1.0.2:8080".parse().unwrap()]);
    }

    #[test]
    fn peer_authentication_parses_and_typos_are_named() {
        let ok = "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n";
        let v: serde_yaml::Value = serde_yaml::from_str(ok).unwrap();
        assert!(matches!(
            parse_document(v),
            Ok(Some(Object::PeerAuthentication(_)))
        ));
        let typo = ok.replace("mode: STRICT", "mdoe: STRICT");
        let v: serde_yaml::Value = serde_yaml::from_str(&typo).unwrap();
        let (field, msg) = parse_document(v).err().unwrap();
        assert_eq!(
            field, "spec.mtls.mdoe",
            "the path names the unknown field itself"
        );
        assert!(msg.contains("mdoe"), "{msg}");
        let bad_mode = ok.replace("STRICT", "SOMETIMES");
        let v: serde_yaml::Value = serde_yaml::from_str(&bad_mode).unwrap();
        assert_eq!(parse_document(v).err().unwrap().0, "spec.mtls.mode");
    }

    #[test]
    fn services_and_slices_parse_and_their_mistakes_are_named() {
        let parse = |text: &str| parse_document(serde_yaml::from_str(text).unwrap());
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n";
        let mut state = State::default();
        match parse(svc) {
            Ok(Some(o)) => o.apply(&mut state),
            _ => panic!("a valid Service parses"),
        }
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\nendpoints: [{addresses: [10.1.0.5], conditions: {ready: true}}]\nports: [{port: 8080}]\n";
        match parse(slice) {
            Ok(Some(o)) => o.apply(&mut state),
            _ => panic!("a valid EndpointSlice parses"),
        }
        state.reindex();
        let r = state
            .resolve_service("10.96.0.10:80".parse().unwrap())
            .unwrap();
        assert_eq!(r.endpoints, vec!["10.1.0.5:8080".parse().unwrap()]);

        let (field, msg) = parse(&svc.replace("10.96.0.10", "10.96.0.300"))
            .err()
            .unwrap();
        assert_eq!(field, "spec.clusterIP");
        assert!(msg.contains("10.96.0.300"), "{msg}");
        let (field, _) = parse(&svc.replace("port: 80,", "port: eighty,"))
            .err()
            .unwrap();
        assert_eq!(field, "spec.ports[0].port");
        let (field, _) = parse(&slice.replace("10.1.0.5", "pod-a")).err().unwrap();
        assert_eq!(field, "endpoints[0].addresses[0]");
    }

    #[test]
    fn mesh_http_routes_are_refused_with_the_reason_and_gateway_routes_left_alone() {
        let parse = |text: &str| parse_document(serde_yaml::from_str(text).unwrap());
        let route = |parent: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: canary, namespace: shop}}\n\
                 spec: {{parentRefs: [{parent}], rules: [{{backendRefs: [{{name: web-v2, port: 80, weight: 10}}]}}]}}\n"
            )
        };
        assert!(matches!(parse(&route("{name: public-gw}")), Ok(None)));
        let (field, msg) = parse(&route("{group: \"\", kind: Service, name: web, port: 80}"))
            .err()
            .unwrap();
        assert_eq!(field, "spec.parentRefs");
        assert!(
            msg.contains("Service web") && msg.contains("not applied"),
            "{msg}"
        );
        let (field, _) = parse(&route("{kind: Service, name: web, port: eighty}"))
            .err()
            .unwrap();
        assert_eq!(field, "spec.parentRefs[0].port");
    }

    #[test]
    fn authorization_policy_mistakes_are_named() {
        let ap = |rule: &str| {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{action: ALLOW, rules: [{rule}]}}\n"
            );
            parse_document(serde_yaml::from_str(&text).unwrap())
        };
        assert!(matches!(
            ap("{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['5432']}}]}"),
            Ok(Some(Object::AuthorizationPolicy(_)))
        ));
        let (field, msg) = ap("{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}")
            .err()
            .unwrap();
        assert_eq!(field, "spec.rules[0].from[0].source.ipBlocks[0]");
        assert!(msg.contains("10.0.0.0/33"), "{msg}");
        let (field, _) = ap("{to: [{operation: {ports: ['http']}}]}").err().unwrap();
        assert_eq!(field, "spec.rules[0].to[0].operation.ports[0]");
        let (field, _) = ap("{from: [{source: {principal: [x]}}]}").err().unwrap();
        assert_eq!(field, "spec.rules[0].from[0].source.principal");
        let bad_action = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: AUDIT}\n";
        let (field, _) = parse_document(serde_yaml::from_str(bad_action).unwrap())
            .err()
            .unwrap();
        assert_eq!(field, "spec.action");
    }

    #[test]
    fn service_entries_apply_and_name_their_mistakes() {
        let doc = |spec: &str| -> serde_yaml::Value {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: ServiceEntry\nmetadata: {{name: e, namespace: shop}}\nspec: {spec}\n"
            );
            serde_yaml::from_str(&text).unwrap()
        };
        let mut state = State::default();
        match parse_document(doc(
            "{hosts: [api.example.com], addresses: [203.0.113.0/24], ports: [{number: 443}]}",
        )) {
            Ok(Some(o)) => o.apply(&mut state),
            other => panic!("a valid ServiceEntry parses: {:?}", other.err()),
        }
        assert_eq!(state.egress_hosts(), ["api.example.com"]);
        for (spec, field, words) in [
            (
                "{hosts: ['*.example.com'], ports: [{number: 443}]}",
                "spec.hosts[0]",
                "wildcard hosts are not supported",
            ),
            (
                "{addresses: [10.0.0.0/33], ports: [{number: 443}]}",
                "spec.addresses[0]",
                "not an IP address or CIDR",
            ),
            (
                "{addresses: [10.0.0.1], ports: []}",
                "spec.ports",
                "at least one port",
            ),
            (
                "{ports: [{number: 443}]}",
                "spec.hosts",
                "would let nothing out",
            ),
            (
                "{addresses: [10.0.0.1], ports: [{number: 53, protocol: UDP}]}",
                "spec.ports[0].protocol",
                "only TCP",
            ),
            (
                "{addresses: [10.0.0.1], ports: [{number: 443}], location: MESH_EXTERNAL}",
                "spec.location",
                "unknown field",
            ),
        ] {
            let (f, msg) = parse_document(doc(spec))
                .err()
                .unwrap_or_else(|| panic!("{spec} accepted"));
            assert_eq!(f, field, "{spec}: {msg}");
            assert!(msg.contains(words), "{spec}: {msg}");
        }
    }

    #[test]
    fn mesh_config_sets_the_tunnel_and_names_its_mistakes() {
        let doc = |meta: &str, spec: &str| -> serde_yaml::Value {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {meta}\nspec: {spec}\n"
            );
            serde_yaml::from_str(&text).unwrap()
        };
        let home = "{name: default, namespace: weft-system}";
        let mut state = State::default();
        assert_eq!(state.mesh.tunnel, crate::state::TunnelProtocol::H2);
        match parse_document(doc(home, "{tunnel: quic}")) {
            Ok(Some(o)) => o.apply(&mut state),
            _ => panic!("a valid MeshConfig parses"),
        }
        assert_eq!(state.mesh.tunnel, crate::state::TunnelProtocol::Quic);
        match parse_document(doc(home, "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")) {
            Ok(Some(o)) => o.apply(&mut state),
            _ => panic!("a valid MeshConfig parses"),
        }
        assert_eq!(
            state.mesh.outbound,
            crate::state::OutboundMode::RegistryOnly
        );
        let (field, msg) = parse_document(doc(home, "{outboundTrafficPolicy: {mode: DENY}}"))
            .err()
            .unwrap();
        assert_eq!(field, "spec.outboundTrafficPolicy.mode");
        assert!(msg.contains("REGISTRY_ONLY"), "{msg}");

        let (field, msg) = parse_document(doc(home, "{tunnel: udp}")).err().unwrap();
        assert_eq!(field, "spec.tunnel");
        assert!(msg.contains("h2") && msg.contains("quic"), "{msg}");
        let (field, _) = parse_document(doc(home, "{tunel: quic}")).err().unwrap();
        assert_eq!(field, "spec.tunel");
        let (field, msg) = parse_document(doc("{name: mine, namespace: shop}", "{}"))
            .err()
            .unwrap();
        assert_eq!(field, "metadata.name");
        assert!(msg.contains("weft-system/default") && msg.contains("shop/mine"));
    }

    #[test]
    fn missing_kind_and_non_mapping_are_errors() {
        let v: serde_yaml::Value = serde_yaml::from_str("apiVersion: v1").unwrap();
        assert_eq!(parse_document(v).err().unwrap().0, "kind");
        let v: serde_yaml::Value = serde_yaml::from_str("[1, 2]").unwrap();
        assert!(parse_document(v).is_err());
    }
}
