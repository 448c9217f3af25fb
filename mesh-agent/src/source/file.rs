//! File mode: every regular, non-hidden file in the directory (symlinks followed, so a
//! Kubernetes ConfigMap mount works) is read as a stream of YAML documents. A document that
//! fails is reported with its file, index and field path; the other documents still apply, and
//! the object it used to define (same kind, namespace and name, as far as the broken document
//! still says) keeps its last good version. A file that stops being valid YAML, or that cannot
//! be read at all (EMFILE, EACCES, a vanished mount), keeps the last good versions of its
//! objects; so does everything under a directory that cannot be listed. Deleting a document or
//! a file deletes its objects: that is a change, not a mistake. An object is defined once: a
//! second definition of the same kind, namespace and name is rejected, naming both places.

pub mod read;
pub mod yaml;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use read::{ConfigFs, Listing, RealFs};

use super::objects::Object;
pub use super::parse::{parse_document, Parsed};
use crate::state::State;

/// A rejected document: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based index of the document in its file (0: the whole file or directory).
    pub document: usize,
    /// Field path inside the document (empty when the document itself is unreadable).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Documents of one kind the agent does not act on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ignored {
    /// `apiVersion kind`, e.g. `apps/v1 Deployment`.
    pub kind: String,
    pub documents: usize,
    /// Where the first of them is (`file: document N`, or the Kubernetes object).
    pub first: String,
    pub reason: String,
}

/// Ignored documents, one entry per kind.
#[derive(Debug, Default)]
pub struct IgnoredKinds(BTreeMap<String, Ignored>);

impl IgnoredKinds {
    pub fn note(&mut self, value: &yaml_serde::Value, at: impl FnOnce() -> String, reason: &str) {
        let text = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or("?");
        let kind = format!("{} {}", text("apiVersion"), text("kind"));
        self.0
            .entry(kind.clone())
            .or_insert_with(|| Ignored {
                kind,
                documents: 0,
                first: at(),
                reason: reason.to_owned(),
            })
            .documents += 1;
    }

    pub fn into_vec(self) -> Vec<Ignored> {
        self.0.into_values().collect()
    }
}

/// A directory's worth of configuration: the state and what was not applied.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub state: State,
    /// Rejected documents.
    pub errors: Vec<ConfigError>,
    /// What could not be read this time (a directory, a file): the last good versions of its
    /// objects are in `state`.
    pub unreadable: Vec<ConfigError>,
    /// Documents of kinds the agent does not act on, once per kind.
    pub ignored: Vec<Ignored>,
}

/// (apiVersion, kind, namespace, name) of a document, as far as it says.
type ObjectId = (String, String, String, String);

/// A document that was applied.
#[derive(Debug, Clone)]
struct Good {
    id: Option<ObjectId>,
    document: usize,
    value: yaml_serde::Value,
}

/// The last good document of every object, per file: what stays in force when a new version
/// of the document is rejected or its file cannot be read.
#[derive(Debug, Default)]
pub struct LastGood {
    by_file: HashMap<PathBuf, Vec<Good>>,
    /// The device the directory was on.
    dev: Option<u64>,
}

const KEPT: &str = "; the previous version stays in force";

/// Reads a directory, or a single file, into a `State` with every rejected document (nothing
/// previous: what `meshctl validate` and a first load see).
pub fn load_dir(path: &Path) -> Loaded {
    let fs = RealFs;
    let listing = match fs.entry(path) {
        Ok(read::Entry::File(f)) => Listing {
            files: vec![(path.to_owned(), f)],
            ..Listing::default()
        },
        Err(e) => Listing {
            unreadable: vec![(path.to_owned(), format!("cannot read: {e}"))],
            ..Listing::default()
        },
        _ => read::list(&fs, path),
    };
    load_listing(&fs, &listing, &mut LastGood::default())
}

/// As `load_dir` for a directory, keeping the last good version of what is now rejected or
/// cannot be read.
pub fn load_dir_keeping(fs: &dyn ConfigFs, dir: &Path, last: &mut LastGood) -> Loaded {
    load_listing(fs, &read::list(fs, dir), last)
}

/// A directory that is suddenly empty and on another device is an unmounted volume, not a
/// decision to delete everything: it is treated as unreadable until files appear in it.
fn unmounted(dir: &Path, listing: &Listing, last: &mut LastGood) -> Option<(PathBuf, String)> {
    let (Some(before), Some(now)) = (last.dev, listing.dev) else {
        last.dev = listing.dev.or(last.dev);
        return None;
    };
    if before != now && listing.files.is_empty() && !last.by_file.is_empty() {
        return Some((
            dir.to_owned(),
            format!(
                "the directory is empty and on another file system than before (device {before}, now {now}): \
                 an unmounted volume?"
            ),
        ));
    }
    last.dev = Some(now);
    None
}

/// A document that would apply, and where it comes from.
struct Candidate {
    file: PathBuf,
    good: Good,
    object: Object,
}

/// What one load collects before the objects are applied.
#[derive(Default)]
struct Pass {
    candidates: Vec<Candidate>,
    loaded: Loaded,
    ignored: IgnoredKinds,
}

impl Pass {
    /// Applies a previously accepted document again (it parsed before, so it parses now).
    fn keep(&mut self, file: &Path, good: &Good) {
        if let Ok(Parsed::Object(object)) = parse_document(good.value.clone()) {
            self.candidates.push(Candidate {
                file: file.to_owned(),
                good: good.clone(),
                object,
            });
        }
    }
}

fn load_listing(fs: &dyn ConfigFs, listing: &Listing, last: &mut LastGood) -> Loaded {
    let mut pass = Pass::default();
    let listed: HashSet<&Path> = listing.files.iter().map(|(p, _)| p.as_path()).collect();
    let mut unreadable = listing.unreadable.clone();
    unreadable.extend(unmounted(&listing.root, listing, last));
    for (path, why) in &unreadable {
        // Files the last good configuration had under what cannot be read now.
        let kept: Vec<&PathBuf> = last
            .by_file
            .keys()
            .filter(|f| f.starts_with(path) && !listed.contains(f.as_path()))
            .collect();
        let note = match kept.len() {
            0 => String::new(),
            n => format!("; the last good version of {n} file(s) under it stays in force"),
        };
        pass.loaded.unreadable.push(ConfigError {
            file: path.clone(),
            document: 0,
            field: String::new(),
            message: format!("{why}{note}"),
        });
        for file in kept {
            for good in &last.by_file[file] {
                pass.keep(file, good);
            }
        }
    }
    for (file, _) in &listing.files {
        let previous = last
            .by_file
            .get(file)
            .map(Vec::as_slice)
            .unwrap_or_default();
        load_file(fs, file, previous, &mut pass);
    }
    let Pass {
        candidates,
        mut loaded,
        ignored,
    } = pass;
    loaded.ignored = ignored.into_vec();
    last.by_file = apply_once(candidates, last, &mut loaded);
    loaded.state.reindex();
    loaded
}

/// Applies the candidates, each object once: of several definitions of one object the one in
/// force before (or else the first) applies, and the others are rejected, naming it. Returns
/// the new last good documents.
fn apply_once(
    candidates: Vec<Candidate>,
    last: &LastGood,
    loaded: &mut Loaded,
) -> HashMap<PathBuf, Vec<Good>> {
    let mut by_id: HashMap<&ObjectId, Vec<usize>> = HashMap::new();
    for (i, c) in candidates.iter().enumerate() {
        if let Some(id) = &c.good.id {
            by_id.entry(id).or_default().push(i);
        }
    }
    let was_in = |c: &Candidate| {
        let id = c.good.id.as_ref();
        last.by_file
            .get(&c.file)
            .is_some_and(|docs| docs.iter().any(|g| g.id.as_ref() == id))
    };
    let mut rejected = HashSet::new();
    for group in by_id.values().filter(|g| g.len() > 1) {
        let winner = *group
            .iter()
            .find(|i| was_in(&candidates[**i]))
            .unwrap_or(&group[0]);
        let w = &candidates[winner];
        for &i in group.iter().filter(|i| **i != winner) {
            let c = &candidates[i];
            let (_, kind, ns, name) = c.good.id.as_ref().expect("grouped by id");
            let object = if ns.is_empty() {
                format!("{kind} {name}")
            } else {
                format!("{kind} {ns}/{name}")
            };
            loaded.errors.push(ConfigError {
                file: c.file.clone(),
                document: c.good.document,
                field: "metadata.name".into(),
                message: format!(
                    "{object} is also defined in {} (document {}), which stays in force: \
                     an object is defined once; remove one of them",
                    w.file.display(),
                    w.good.document
                ),
            });
            rejected.insert(i);
        }
    }
    let mut next: HashMap<PathBuf, Vec<Good>> = HashMap::new();
    for (i, c) in candidates.into_iter().enumerate() {
        if rejected.contains(&i) {
            continue;
        }
        c.object.apply(&mut loaded.state);
        next.entry(c.file).or_default().push(c.good);
    }
    next
}

fn object_id(value: &yaml_serde::Value) -> Option<ObjectId> {
    let text = |v: Option<&yaml_serde::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let meta = value.get("metadata");
    let kind = text(value.get("kind"))?;
    // As the API server would default it, so `default/x` and `x` are one object.
    let cluster_scoped = matches!(kind.as_str(), "Node" | "Namespace");
    let namespace = text(meta.and_then(|m| m.get("namespace")))
        .unwrap_or_else(|| if cluster_scoped { "" } else { "default" }.into());
    Some((
        text(value.get("apiVersion"))?,
        kind,
        namespace,
        text(meta.and_then(|m| m.get("name")))?,
    ))
}

/// Reads one file's documents into the pass; what cannot be read or parsed keeps `previous`.
fn load_file(fs: &dyn ConfigFs, file: &Path, previous: &[Good], pass: &mut Pass) {
    let err = |document, field: &str, message: String| ConfigError {
        file: file.to_owned(),
        document,
        field: field.to_owned(),
        message,
    };
    let kept = if previous.is_empty() { "" } else { KEPT };
    let bytes = match fs.read(file, yaml::MAX_FILE_BYTES) {
        Ok(b) => b,
        Err(e) => {
            let e = err(0, "", format!("cannot read file: {e}{kept}"));
            pass.loaded.unreadable.push(e);
            previous.iter().for_each(|g| pass.keep(file, g));
            return;
        }
    };
    let text = match yaml::checked(&bytes) {
        Ok(t) => t,
        Err(refused) => {
            pass.loaded
                .errors
                .push(err(refused.document(), "", format!("{refused}{kept}")));
            previous.iter().for_each(|g| pass.keep(file, g));
            return;
        }
    };
    let before = |id: &ObjectId| previous.iter().find(|g| g.id.as_ref() == Some(id));
    let mut seen: Vec<ObjectId> = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = match yaml_serde::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error: the objects this file
                // defined and that were not read yet keep their last good version.
                let rest: Vec<&Good> = previous
                    .iter()
                    .filter(|g| g.id.as_ref().is_none_or(|id| !seen.contains(id)))
                    .collect();
                let note = if rest.is_empty() { "" } else { KEPT };
                let e = err(document, "", format!("invalid YAML: {e}{note}"));
                pass.loaded.errors.push(e);
                rest.into_iter().for_each(|g| pass.keep(file, g));
                return;
            }
        };
        let id = object_id(&value);
        match parse_document(value.clone()) {
            Ok(Parsed::Object(object)) => pass.candidates.push(Candidate {
                file: file.to_owned(),
                good: Good {
                    id: id.clone(),
                    document,
                    value,
                },
                object,
            }),
            Ok(Parsed::Empty) => {}
            Ok(Parsed::Ignored(reason)) => {
                let at = || format!("{}: document {document}", file.display());
                pass.ignored.note(&value, at, reason);
            }
            Err((field, message)) => match id.as_ref().and_then(before) {
                Some(last) => {
                    pass.loaded
                        .errors
                        .push(err(document, &field, format!("{message}{KEPT}")));
                    pass.keep(file, last);
                }
                None => pass.loaded.errors.push(err(document, &field, message)),
            },
        }
        seen.extend(id);
    }
}

/// Watches the directory and publishes a new `State` whenever a file changes (or, while
/// something cannot be read, when reading it again gives another answer). Listing, reading and
/// parsing run on a blocking thread: a slow disk or a costly file never holds up the runtime
/// that serves traffic and the admin endpoint.
pub async fn watch(dir: PathBuf, interval: Duration, tx: watch::Sender<Option<Loaded>>) {
    watch_with(Arc::new(RealFs), dir, interval, tx).await
}

pub async fn watch_with(
    fs: Arc<dyn ConfigFs>,
    dir: PathBuf,
    interval: Duration,
    tx: watch::Sender<Option<Loaded>>,
) {
    let mut last_listing: Option<Listing> = None;
    let mut last_good = LastGood::default();
    let mut published: Option<(Vec<ConfigError>, Vec<ConfigError>)> = None;
    let mut logged_kinds = HashSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (f, d) = (fs.clone(), dir.clone());
        let Ok(listing) = tokio::task::spawn_blocking(move || read::list(&*f, &d)).await else {
            return;
        };
        let retrying = published.as_ref().is_some_and(|(_, u)| !u.is_empty());
        if last_listing.as_ref() == Some(&listing) && !retrying {
            continue;
        }
        let (f, d, mut lg) = (fs.clone(), listing, std::mem::take(&mut last_good));
        let job = tokio::task::spawn_blocking(move || {
            let loaded = load_listing(&*f, &d, &mut lg);
            (loaded, lg, d)
        });
        let Ok((loaded, lg, listing)) = job.await else {
            return;
        };
        last_good = lg;
        let unchanged = last_listing.as_ref() == Some(&listing);
        last_listing = Some(listing);
        let report = (loaded.errors.clone(), loaded.unreadable.clone());
        if unchanged && published.as_ref() == Some(&report) {
            // Still unreadable in the same way: nothing new to say or apply.
            continue;
        }
        log_load(&loaded, &mut logged_kinds);
        published = Some(report);
        if tx.send(Some(loaded)).is_err() {
            return;
        }
    }
}

fn log_load(loaded: &Loaded, logged_kinds: &mut HashSet<String>) {
    for e in &loaded.errors {
        warn!(file = %e.file.display(), document = e.document, field = %e.field, "rejected: {}", e.message);
    }
    for e in &loaded.unreadable {
        warn!(path = %e.file.display(), "cannot read configuration: {}", e.message);
    }
    for i in &loaded.ignored {
        if logged_kinds.insert(i.kind.clone()) {
            info!(kind = %i.kind, first = %i.first, "documents of this kind are not used: {}", i.reason);
        }
    }
    info!(
        pods = loaded.state.pods.len(),
        namespaces = loaded.state.namespaces.len(),
        rejected = loaded.errors.len(),
        unreadable = loaded.unreadable.len(),
        "configuration loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path) -> (State, Vec<ConfigError>) {
        let l = load_dir(dir);
        (l.state, l.errors)
    }

    fn keeping(dir: &Path, last: &mut LastGood) -> (State, Vec<ConfigError>) {
        let l = load_dir_keeping(&RealFs, dir, last);
        (l.state, l.errors)
    }

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
        let (state, errors) = load(dir.path());
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
        let other = GOOD
            .replace("name: shop", "name: shop2")
            .replace("namespace: shop", "namespace: shop2");
        std::fs::write(dir.path().join("b.yaml"), format!("{other}{bad}")).unwrap();
        let (state, errors) = load(dir.path());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 3);
        assert_eq!(errors[0].field, "status.podIP");
        assert!(errors[0].file.ends_with("b.yaml"));
        assert_eq!(state.pods.len(), 2);
    }

    #[test]
    fn a_rejected_document_keeps_the_previous_version_of_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        let mut last = LastGood::default();
        std::fs::write(&file, GOOD).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty());
        let ip = |s: &State| s.pods.values().next().and_then(|p| p.ip);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));

        // The pod's document breaks: it is rejected, and the pod stays as it was.
        std::fs::write(&file, GOOD.replace("podIP: 10.0.1.2", "podIP: ten")).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "status.podIP");
        assert!(errors[0].message.ends_with(KEPT), "{}", errors[0]);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));
        // Still broken on the next reload: still the last good version.
        let (state, _) = keeping(dir.path(), &mut last);
        assert_eq!(ip(&state), Some("10.0.1.2".parse().unwrap()));

        // A YAML syntax error before it: the objects after the error keep their versions.
        std::fs::write(&file, format!("{GOOD}---\n: : [\n")).unwrap();
        keeping(dir.path(), &mut last);
        let broken = GOOD.replace("kind: Namespace", "kind: Namespace\n  bad: [");
        std::fs::write(&file, broken).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
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
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty());
        assert_eq!(ip(&state), Some("10.0.1.9".parse().unwrap()));
        std::fs::remove_file(&file).unwrap();
        let (state, _) = keeping(dir.path(), &mut last);
        assert!(state.pods.is_empty());
        // A first load (or `meshctl validate`) has no previous version to keep.
        std::fs::write(&file, GOOD.replace("podIP: 10.0.1.2", "podIP: ten")).unwrap();
        let (_, errors) = load(dir.path());
        assert!(!errors[0].message.ends_with(KEPT));
    }

    #[test]
    fn shipped_examples_validate() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/file-mode");
        let (state, errors) = load(&dir);
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
        let v: yaml_serde::Value = yaml_serde::from_str(ok).unwrap();
        assert!(matches!(
            parse_document(v),
            Ok(Parsed::Object(Object::PeerAuthentication(_)))
        ));
        let typo = ok.replace("mode: STRICT", "mdoe: STRICT");
        let v: yaml_serde::Value = yaml_serde::from_str(&typo).unwrap();
        let (field, msg) = parse_document(v).err().unwrap();
        assert_eq!(
            field, "spec.mtls.mdoe",
            "the path names the unknown field itself"
        );
        assert!(msg.contains("mdoe"), "{msg}");
        let bad_mode = ok.replace("STRICT", "SOMETIMES");
        let v: yaml_serde::Value = yaml_serde::from_str(&bad_mode).unwrap();
        assert_eq!(parse_document(v).err().unwrap().0, "spec.mtls.mode");
    }

    #[test]
    fn services_and_slices_parse_and_their_mistakes_are_named() {
        let parse = |text: &str| parse_document(yaml_serde::from_str(text).unwrap());
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n";
        let mut state = State::default();
        match parse(svc) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
            _ => panic!("a valid Service parses"),
        }
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\nendpoints: [{addresses: [10.1.0.5], conditions: {ready: true}}]\nports: [{port: 8080}]\n";
        match parse(slice) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
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

    const ROUTE_SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web-v2, namespace: shop}\nspec: {clusterIP: 10.96.0.21, ports: [{port: 80}]}\n";

    fn canary(parent: &str, weight: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: canary, namespace: shop}}\n\
             spec: {{parentRefs: [{parent}], rules: [{{backendRefs: [{{name: web, port: 80, weight: 90}}, {{name: web-v2, port: 80, weight: {weight}}}]}}]}}\n"
        )
    }

    const WEB: &str = "{group: \"\", kind: Service, name: web, port: 80}";

    #[test]
    fn mesh_http_routes_apply_and_gateway_routes_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let routes = format!(
            "{}---\n{}",
            canary(WEB, "10"),
            canary("{name: public-gw}", "10").replace("name: canary", "name: ingress")
        );
        std::fs::write(dir.path().join("svc.yaml"), ROUTE_SERVICES).unwrap();
        std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
        let l = load_dir(dir.path());
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(
            l.state.routes.len(),
            1,
            "the Gateway's route is not the mesh's"
        );
        let route = &l.state.routes[&("shop".to_string(), "canary".to_string())];
        let weights: Vec<u32> = route.rules[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [90, 10]);
        assert!(route.rules[0].backends.iter().all(|b| b.is_resolved()));
        assert_eq!(l.ignored.len(), 1);
        assert!(l.ignored[0].reason.contains("Gateway"), "{:?}", l.ignored);
    }

    #[test]
    fn a_refused_route_keeps_the_last_good_version_and_validate_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("svc.yaml"), ROUTE_SERVICES).unwrap();
        let file = dir.path().join("route.yaml");
        let mut last = LastGood::default();
        std::fs::write(&file, canary(WEB, "10")).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty(), "{errors:?}");
        let weight = |s: &State| {
            s.routes
                .values()
                .next()
                .map(|r| r.rules[0].backends[1].weight)
        };
        assert_eq!(weight(&state), Some(10));

        // A bad weight: refused with its field, and the 90/10 split stays in force.
        std::fs::write(&file, canary(WEB, "ten")).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.rules[0].backendRefs[1].weight");
        assert!(errors[0].message.ends_with(KEPT), "{}", errors[0]);
        assert_eq!(weight(&state), Some(10));
        // A check beyond the schema (a bad regex) too.
        let bad_regex = canary(WEB, "50").replace(
            "rules: [{",
            "rules: [{matches: [{headers: [{type: RegularExpression, name: x-client, value: \"(iphone\"}]}], ",
        );
        std::fs::write(&file, &bad_regex).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert_eq!(errors[0].field, "spec.rules[0].matches[0].headers[0].value");
        assert!(
            errors[0].message.contains("regular expression"),
            "{}",
            errors[0]
        );
        assert_eq!(weight(&state), Some(10));
        // `meshctl validate` (a first load) reports the same error, without a version to keep.
        let (state, errors) = load(dir.path());
        assert_eq!(errors[0].field, "spec.rules[0].matches[0].headers[0].value");
        assert!(!errors[0].message.ends_with(KEPT));
        assert!(state.routes.is_empty());
        // Fixed: the new split applies.
        std::fs::write(&file, canary(WEB, "50")).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(weight(&state), Some(50));
    }

    #[test]
    fn a_route_to_a_missing_service_is_kept_with_that_backend_unresolved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("route.yaml"), canary(WEB, "10")).unwrap();
        let only_web = ROUTE_SERVICES.split("---").next().unwrap();
        std::fs::write(dir.path().join("svc.yaml"), only_web).unwrap();
        let (state, errors) = load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let backends = &state.routes.values().next().unwrap().rules[0].backends;
        assert!(backends[0].is_resolved());
        let why = backends[1]
            .unresolved
            .as_deref()
            .expect("web-v2 does not exist");
        assert!(why.contains("shop/web-v2"), "{why}");
        std::fs::write(dir.path().join("svc.yaml"), ROUTE_SERVICES).unwrap();
        let (state, _) = load(dir.path());
        assert!(state.routes.values().next().unwrap().rules[0].backends[1].is_resolved());
    }

    const BILLING: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: billing, namespace: payments}\nspec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}\n";

    fn grant(to_name: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
             metadata: {{name: shop-to-billing, namespace: payments}}\n\
             spec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}}]\n  \
             to: [{{group: '', kind: Service{to_name}}}]\n"
        )
    }

    #[test]
    fn a_backend_in_another_namespace_resolves_only_while_a_reference_grant_permits_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("svc.yaml"),
            format!("{ROUTE_SERVICES}---\n{BILLING}"),
        )
        .unwrap();
        let route = canary(WEB, "10").replace(
            "{name: web-v2, port: 80,",
            "{name: billing, namespace: payments, port: 80,",
        );
        std::fs::write(dir.path().join("route.yaml"), route).unwrap();
        let file = dir.path().join("grant.yaml");
        let mut last = LastGood::default();
        let billing = |s: &State| {
            let r = &s.routes[&("shop".to_string(), "canary".to_string())];
            r.rules[0].backends[1].unresolved.clone()
        };
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty(), "{errors:?}");
        let why = billing(&state).expect("no grant: not permitted");
        assert!(
            why.starts_with("RefNotPermitted: Service payments/billing"),
            "{why}"
        );
        let route = &state.routes[&("shop".to_string(), "canary".to_string())];
        let status = state.route_status(route).resolved_refs.unwrap_err();
        assert_eq!(status.0, "RefNotPermitted", "{status:?}");

        // A grant for every Service of payments, then for billing by name: permitted.
        for to in ["", ", name: billing"] {
            std::fs::write(&file, grant(to)).unwrap();
            let (state, errors) = keeping(dir.path(), &mut last);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(billing(&state), None, "grant to {to:?}");
        }
        // A grant for another Service: not this one.
        std::fs::write(&file, grant(", name: ledger")).unwrap();
        let (state, _) = keeping(dir.path(), &mut last);
        assert!(billing(&state).is_some_and(|w| w.starts_with("RefNotPermitted")));

        // A grant refused (no `to`): named with its field, and the previous one stays.
        std::fs::write(&file, grant("")).unwrap();
        keeping(dir.path(), &mut last);
        std::fs::write(
            &file,
            grant("").replace("to: [{group: '', kind: Service}]", "to: []"),
        )
        .unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.to");
        assert!(errors[0].message.ends_with(KEPT), "{}", errors[0]);
        assert_eq!(billing(&state), None);

        // Deleted: the backend is taken away again.
        std::fs::remove_file(&file).unwrap();
        let (state, errors) = keeping(dir.path(), &mut last);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(billing(&state).is_some_and(|w| w.starts_with("RefNotPermitted")));
    }

    #[test]
    fn authorization_policy_mistakes_are_named() {
        let ap = |rule: &str| {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{action: ALLOW, rules: [{rule}]}}\n"
            );
            parse_document(yaml_serde::from_str(&text).unwrap())
        };
        assert!(matches!(
            ap("{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['5432']}}]}"),
            Ok(Parsed::Object(Object::AuthorizationPolicy(_)))
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
        let (field, _) = parse_document(yaml_serde::from_str(bad_action).unwrap())
            .err()
            .unwrap();
        assert_eq!(field, "spec.action");
    }

    #[test]
    fn service_entries_apply_and_name_their_mistakes() {
        let doc = |spec: &str| -> yaml_serde::Value {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: ServiceEntry\nmetadata: {{name: e, namespace: shop}}\nspec: {spec}\n"
            );
            yaml_serde::from_str(&text).unwrap()
        };
        let mut state = State::default();
        match parse_document(doc(
            "{hosts: [api.example.com], addresses: [203.0.113.0/24], ports: [{number: 443}]}",
        )) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
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
        let doc = |meta: &str, spec: &str| -> yaml_serde::Value {
            let text = format!(
                "apiVersion: weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {meta}\nspec: {spec}\n"
            );
            yaml_serde::from_str(&text).unwrap()
        };
        let home = "{name: default, namespace: weft-system}";
        let mut state = State::default();
        assert_eq!(state.mesh.tunnel, crate::state::TunnelProtocol::H2);
        match parse_document(doc(home, "{tunnel: quic}")) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
            _ => panic!("a valid MeshConfig parses"),
        }
        assert_eq!(state.mesh.tunnel, crate::state::TunnelProtocol::Quic);
        match parse_document(doc(home, "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
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
        let v: yaml_serde::Value = yaml_serde::from_str("apiVersion: v1").unwrap();
        assert_eq!(parse_document(v).err().unwrap().0, "kind");
        let v: yaml_serde::Value = yaml_serde::from_str("[1, 2]").unwrap();
        assert!(parse_document(v).is_err());
    }

    fn pod_names(state: &State) -> Vec<String> {
        state.pods.keys().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn a_directory_that_cannot_be_listed_keeps_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), GOOD).unwrap();
        let fs = read::fake::Failing::default();
        let mut last = LastGood::default();
        assert_eq!(
            pod_names(&load_dir_keeping(&fs, dir.path(), &mut last).state),
            ["web"]
        );

        fs.fail(dir.path(), libc::EMFILE);
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert_eq!(pod_names(&loaded.state), ["web"], "the pod is not released");
        assert_eq!(loaded.state.enrolled_pods("n1").count(), 1);
        assert!(loaded.errors.is_empty());
        let e = &loaded.unreadable[0];
        assert_eq!(e.file, dir.path());
        assert!(e.message.contains("Too many open files"), "{e}");
        assert!(
            e.message.contains("1 file(s) under it stays in force"),
            "{e}"
        );
        // Still failing next time: still the last good state, not an empty one.
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert_eq!(pod_names(&loaded.state), ["web"]);

        fs.heal();
        std::fs::remove_file(dir.path().join("all.yaml")).unwrap();
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert!(loaded.unreadable.is_empty());
        assert!(
            loaded.state.pods.is_empty(),
            "a deletion read is a deletion"
        );
    }

    #[test]
    fn a_file_or_subdirectory_that_cannot_be_read_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("team");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("all.yaml"), GOOD).unwrap();
        let other = GOOD
            .replace("name: web", "name: api")
            .replace("name: shop", "name: shop2");
        std::fs::write(
            sub.join("api.yaml"),
            other.replace("namespace: shop", "namespace: shop2"),
        )
        .unwrap();
        let fs = read::fake::Failing::default();
        let mut last = LastGood::default();
        let names = |l: &Loaded| {
            let mut n = pod_names(&l.state);
            n.sort();
            n
        };
        assert_eq!(
            names(&load_dir_keeping(&fs, dir.path(), &mut last)),
            ["api", "web"]
        );

        fs.fail(&dir.path().join("all.yaml"), libc::EACCES);
        fs.fail(&sub, libc::EIO);
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert_eq!(names(&loaded), ["api", "web"]);
        let messages: Vec<String> = loaded.unreadable.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("team: cannot read directory")
                    && m.contains("Input/output error")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(
                |m| m.contains("all.yaml: cannot read file: Permission denied")
                    && m.ends_with(KEPT)
            ),
            "{messages:?}"
        );
        fs.heal();
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert!(loaded.unreadable.is_empty());
        assert_eq!(names(&loaded), ["api", "web"]);
    }

    /// A ConfigMap volume as the kubelet lays it out: `..2024_…/` holds the files, `..data`
    /// links to it, each visible name links through `..data`; an update writes a new directory
    /// and swaps `..data` with a rename.
    fn configmap(dir: &Path, version: &str, files: &[(&str, &str)]) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        for (name, text) in files {
            std::fs::write(data.join(name), text).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), link).unwrap();
            }
        }
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[tokio::test]
    async fn a_configmap_mount_is_read_and_its_swap_hot_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        configmap(
            dir.path(),
            "2024_01_01_00_00_00.1",
            &[("cluster.yaml", GOOD)],
        );
        let (state, errors) = load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            pod_names(&state),
            ["web"],
            "read through the symlinks, once"
        );

        let (tx, mut rx) = watch::channel(None);
        let watcher = tokio::spawn(watch(dir.path().to_owned(), Duration::from_millis(20), tx));
        let ip = |l: &Loaded| l.state.pods.values().next().and_then(|p| p.ip);
        rx.changed().await.unwrap();
        let first = rx.borrow_and_update().clone().unwrap();
        assert_eq!(ip(&first), Some("10.0.1.2".parse().unwrap()));

        // Same size, same second: only the link swap says the content changed.
        configmap(
            dir.path(),
            "2024_01_01_00_00_00.2",
            &[("cluster.yaml", &GOOD.replace("10.0.1.2", "10.0.1.3"))],
        );
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                let l = rx.borrow_and_update().clone().unwrap();
                if ip(&l) != ip(&first) {
                    return l;
                }
            }
        })
        .await
        .expect("the swapped ConfigMap was reloaded");
        assert_eq!(ip(&next), Some("10.0.1.3".parse().unwrap()));
        watcher.abort();
    }

    #[test]
    fn a_single_file_is_validated_by_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&good, GOOD).unwrap();
        std::fs::write(&bad, GOOD.replace("podIP: 10.0.1.2", "podIP: ten")).unwrap();
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let (state, errors) = load(&good);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(pod_names(&state), ["web"]);
        assert_eq!(pod_names(&load(&link).0), ["web"]);
        let (state, errors) = load(&bad);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].file.as_path(), errors[0].field.as_str()),
            (bad.as_path(), "status.podIP")
        );
        assert!(state.pods.is_empty());
        let missing = load_dir(&dir.path().join("nope.yaml"));
        assert!(
            missing.unreadable[0].message.contains("No such file"),
            "{:?}",
            missing.unreadable
        );
    }

    #[test]
    fn one_object_in_two_files_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = LastGood::default();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        assert!(load_dir_keeping(&RealFs, dir.path(), &mut last)
            .errors
            .is_empty());
        // A second Pod shop/web, in a file that sorts first: the one in force stays.
        let second = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.1.99}\n";
        std::fs::write(dir.path().join("a.yaml"), second).unwrap();
        let loaded = load_dir_keeping(&RealFs, dir.path(), &mut last);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let e = &loaded.errors[0];
        assert!(e.file.ends_with("a.yaml"), "{e}");
        assert!(
            e.message.contains("Pod shop/web is also defined in")
                && e.message.contains("b.yaml (document 2)"),
            "{e}"
        );
        let ip = loaded.state.pods.values().next().and_then(|p| p.ip);
        assert_eq!(ip, Some("10.0.1.2".parse().unwrap()));
        // On a first load, the first definition applies; a missing namespace is `default`.
        let (state, errors) = load(dir.path());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].file.ends_with("b.yaml") && errors[0].message.contains("a.yaml"),
            "{}",
            errors[0]
        );
        assert_eq!(
            state.pods.values().next().and_then(|p| p.ip),
            Some("10.0.1.99".parse().unwrap())
        );
        std::fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: default}\n").unwrap();
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let (_, errors) = load(dir.path());
        assert!(
            errors[0].message.contains("Pod default/x is also defined"),
            "{errors:?}"
        );
    }

    #[test]
    fn kinds_the_agent_does_not_use_are_reported_once_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let deploy = |n: &str| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {n}}}\n---\n")
        };
        std::fs::write(
            dir.path().join("x.yaml"),
            format!("{}{}{GOOD}", deploy("a"), deploy("b")),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("y.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        )
        .unwrap();
        let loaded = load_dir(dir.path());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let seen: Vec<(&str, usize)> = loaded
            .ignored
            .iter()
            .map(|i| (i.kind.as_str(), i.documents))
            .collect();
        assert_eq!(seen, [("apps/v1 Deployment", 2), ("v1 ConfigMap", 1)]);
        assert!(
            loaded.ignored[0].first.ends_with("x.yaml: document 1"),
            "{:?}",
            loaded.ignored
        );
        assert_eq!(loaded.ignored[0].reason, "Weft does not use this kind");
    }

    #[test]
    fn a_file_too_deep_or_too_large_is_refused_before_parsing_and_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut last = LastGood::default();
        load_dir_keeping(&RealFs, dir.path(), &mut last);
        // 200 KB of nested `[`: once minutes of a runtime thread.
        std::fs::write(&file, format!("{GOOD}---\nx: {}", "[".repeat(200_000))).unwrap();
        let start = std::time::Instant::now();
        let loaded = load_dir_keeping(&RealFs, dir.path(), &mut last);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let e = &loaded.errors[0];
        assert_eq!(e.document, 3);
        assert!(e.message.contains("nested deeper than 64 at line"), "{e}");
        assert!(e.message.ends_with(KEPT), "{e}");
        assert_eq!(pod_names(&loaded.state), ["web"]);
        std::fs::write(&file, vec![b' '; yaml::MAX_FILE_BYTES + 10]).unwrap();
        let loaded = load_dir_keeping(&RealFs, dir.path(), &mut last);
        assert!(
            loaded.errors[0].message.contains("larger than"),
            "{}",
            loaded.errors[0]
        );
        assert_eq!(pod_names(&loaded.state), ["web"]);
    }

    /// A read that blocks (a hung mount, a slow disk, a costly parse) holds up a blocking thread,
    /// not the runtime: on a single-threaded runtime another task keeps running meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn reading_and_parsing_run_off_the_runtime() {
        struct Slow(
            std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
            std::sync::mpsc::Sender<()>,
        );
        impl ConfigFs for Slow {
            fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
                RealFs.read_dir(dir)
            }
            fn entry(&self, path: &Path) -> std::io::Result<read::Entry> {
                RealFs.entry(path)
            }
            fn read(&self, path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
                let _ = self.1.send(());
                let _ = self.0.lock().unwrap().recv_timeout(Duration::from_secs(5));
                RealFs.read(path, limit)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), GOOD).unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let fs = Arc::new(Slow(std::sync::Mutex::new(gate), entered_tx));
        let (tx, mut rx) = watch::channel(None);
        let start = std::time::Instant::now();
        tokio::spawn(watch_with(
            fs,
            dir.path().to_owned(),
            Duration::from_millis(10),
            tx,
        ));
        // Wait (without blocking the runtime) until the read is stuck.
        while entered.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the runtime was blocked by the read"
        );
        release.send(()).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(pod_names(&rx.borrow().as_ref().unwrap().state), ["web"]);
    }

    #[test]
    fn an_unmounted_volume_is_not_an_empty_configuration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), GOOD).unwrap();
        let fs = read::fake::Failing::default();
        let mut last = LastGood::default();
        load_dir_keeping(&fs, dir.path(), &mut last);

        // The volume goes: what is left is an empty directory on the parent's device.
        std::fs::remove_file(dir.path().join("all.yaml")).unwrap();
        fs.remount(dir.path());
        for _ in 0..2 {
            let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
            assert_eq!(pod_names(&loaded.state), ["web"]);
            let e = &loaded.unreadable[0];
            assert!(
                e.message.contains("another file system") && e.message.contains("stays in force"),
                "{e}"
            );
        }
        // Files on the new device: that is the configuration now.
        let other = GOOD.replace("name: web", "name: api");
        std::fs::write(dir.path().join("all.yaml"), other).unwrap();
        let loaded = load_dir_keeping(&fs, dir.path(), &mut last);
        assert!(loaded.unreadable.is_empty(), "{:?}", loaded.unreadable);
        assert_eq!(pod_names(&loaded.state), ["api"]);
        std::fs::remove_file(dir.path().join("all.yaml")).unwrap();
        assert!(load_dir_keeping(&fs, dir.path(), &mut last)
            .state
            .pods
            .is_empty());
    }
}
