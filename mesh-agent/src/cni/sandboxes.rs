//! What the runtime told the agent through weft-cni about pods' sandboxes: where each one's
//! netns is and which addresses the primary CNI gave it. At ADD time in Kubernetes the pod's
//! `status.podIP` is not published yet, and the sandbox has no process by which the agent
//! could find its netns; this is how enrollment knows both before the pod's first packet.
//!
//! Kept in `<state_dir>/cni-pods/` too, one file per pod, so that a restarted agent still
//! knows the sandboxes of pods whose IP the configuration does not carry (file mode), instead
//! of releasing their pinned hooks.
//!
//! A DEL leaves a release mark: the pod is not enrolled again (not even from its state and
//! processes, which may linger while it is torn down) until a new ADD or until it leaves the
//! configuration.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::state::{Pod, PodKey, State};

/// More sandboxes than this on one node is not a node (kubelet's maxPods is 110 by default).
pub const MAX_SANDBOXES: usize = 4096;
/// A sandbox whose pod the configuration has not shown within this is forgotten (an ADD
/// waits at most `protocol::MAX_WAIT`; the kubelet's retry brings a new one).
const UNSEEN_TTL: Duration = Duration::from_secs(600);
const DIR_NAME: &str = "cni-pods";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub pod: PodKey,
    pub uid: Option<String>,
    pub container_id: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

impl Sandbox {
    /// The sandbox is this pod's (same UID, when both are known).
    fn fits(&self, pod: &Pod) -> bool {
        match (&self.uid, &pod.uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

#[derive(Debug)]
struct Known {
    sandbox: Sandbox,
    since: Instant,
    /// The configuration has shown its pod.
    seen: bool,
}

#[derive(Debug, Default)]
pub struct Sandboxes {
    dir: Option<PathBuf>,
    known: BTreeMap<PodKey, Known>,
    /// Released by DEL: pod → its UID (if given).
    released: BTreeMap<PodKey, Option<String>>,
}

impl Sandboxes {
    /// The sandboxes an earlier agent kept in `state_dir` (unreadable files are dropped with a
    /// warning: the next ADD brings them again).
    pub fn load(state_dir: &Path) -> Self {
        let dir = state_dir.join(DIR_NAME);
        let mut s = Self {
            dir: Some(dir.clone()),
            ..Self::default()
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return s;
        };
        for e in entries.filter_map(Result::ok).take(MAX_SANDBOXES) {
            let path = e.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Sandbox>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(sb) => s.remember(sb),
                Err(error) => {
                    warn!(file = %path.display(), %error, "dropping an unreadable CNI sandbox record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        s
    }

    fn remember(&mut self, sandbox: Sandbox) {
        self.known.insert(
            sandbox.pod.clone(),
            Known {
                sandbox,
                since: Instant::now(),
                seen: false,
            },
        );
    }

    /// ADD: the pod's sandbox; false when the node already holds too many.
    pub fn add(&mut self, sandbox: Sandbox) -> bool {
        if self.known.len() >= MAX_SANDBOXES && !self.known.contains_key(&sandbox.pod) {
            return false;
        }
        self.released.remove(&sandbox.pod);
        self.persist(&sandbox);
        self.remember(sandbox);
        true
    }

    /// DEL: forgets the sandbox and marks the pod released.
    pub fn release(&mut self, pod: PodKey, uid: Option<String>) {
        if let Some(k) = self.known.remove(&pod) {
            self.unpersist(&k.sandbox.pod);
        }
        if self.released.len() < MAX_SANDBOXES {
            self.released.insert(pod, uid);
        }
    }

    /// The sandbox CNI reported for this pod, if it is this pod's.
    pub fn of(&self, pod: &Pod) -> Option<&Sandbox> {
        self.known
            .get(&pod.key)
            .map(|k| &k.sandbox)
            .filter(|sb| sb.fits(pod))
    }

    /// Released by DEL and not added since.
    pub fn is_released(&self, pod: &Pod) -> bool {
        match (self.released.get(&pod.key), &pod.uid) {
            (None, _) => false,
            (Some(Some(a)), Some(b)) => a == b,
            (Some(_), _) => true,
        }
    }

    /// The pod as enrollment should see it: its address and (file mode) netns from the
    /// sandbox when the configuration does not carry them yet.
    pub fn patched<'a>(&self, pod: &'a Pod) -> Cow<'a, Pod> {
        let Some(sb) = self.of(pod) else {
            return Cow::Borrowed(pod);
        };
        let ip = pod.ip.is_none() && !sb.ips.is_empty();
        let netns = pod.uid.is_none() && pod.netns.is_none();
        if !ip && !netns {
            return Cow::Borrowed(pod);
        }
        let mut p = pod.clone();
        if ip {
            p.ip = sb.ips.first().copied();
        }
        if netns {
            p.netns = Some(sb.netns.clone());
        }
        Cow::Owned(p)
    }

    /// Forgets what no longer has a pod: sandboxes whose pod was shown and is gone (or came
    /// back with another UID), sandboxes never shown within the TTL, release marks of pods
    /// that left.
    pub fn prune(&mut self, state: &State, now: Instant) {
        let mut gone = Vec::new();
        for (key, k) in &mut self.known {
            match state.pods.get(key) {
                Some(p) if k.sandbox.fits(p) => k.seen = true,
                Some(_) => gone.push(key.clone()),
                None if k.seen || now.duration_since(k.since) > UNSEEN_TTL => {
                    gone.push(key.clone())
                }
                None => {}
            }
        }
        for key in gone {
            self.known.remove(&key);
            self.unpersist(&key);
        }
        self.released.retain(|key, uid| match state.pods.get(key) {
            Some(p) => uid.is_none() || p.uid.is_none() || *uid == p.uid,
            None => false,
        });
    }

    fn path(&self, key: &PodKey) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}.json", key.file_name())))
    }

    fn persist(&self, sb: &Sandbox) {
        let (Some(dir), Some(path)) = (&self.dir, self.path(&sb.pod)) else {
            return;
        };
        let tmp = dir.join(format!(".{}.tmp", sb.pod.file_name()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(sb).expect("serializes")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = written {
            warn!(file = %path.display(), %error, "cannot keep the CNI sandbox record; \
                an agent restart before the pod's IP is published would not know it");
        }
    }

    fn unpersist(&self, key: &PodKey) {
        if let Some(path) = self.path(key) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn pod(name: &str, uid: Option<&str>) -> Pod {
        Pod {
            key: key(name),
            uid: uid.map(str::to_owned),
            node: Some("n1".into()),
            service_account: "web".into(),
            ip: None,
            labels: Default::default(),
            ports: Default::default(),
            netns: None,
            cgroup: Some("/sys/fs/cgroup/p".into()),
        }
    }

    fn sandbox(name: &str, uid: Option<&str>) -> Sandbox {
        Sandbox {
            pod: key(name),
            uid: uid.map(str::to_owned),
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ips: vec!["10.1.0.9".parse().unwrap()],
        }
    }

    fn state(pods: &[Pod]) -> State {
        let mut s = State::default();
        s.pods = pods.iter().map(|p| (p.key.clone(), p.clone())).collect();
        s
    }

    #[test]
    fn a_sandbox_fills_in_what_the_configuration_does_not_say_yet() {
        let mut s = Sandboxes::default();
        s.add(sandbox("web", None));
        let p = pod("web", None);
        let patched = s.patched(&p);
        assert_eq!(patched.ip, Some("10.1.0.9".parse().unwrap()));
        assert_eq!(patched.netns, Some("/run/netns/p".into()));
        // Published: the configuration's word stands.
        let mut published = pod("web", None);
        published.ip = Some("10.1.0.50".parse().unwrap());
        assert_eq!(s.patched(&published).ip, published.ip);
        // Another pod of the same name (another UID) is not this sandbox's.
        let mut s = Sandboxes::default();
        s.add(sandbox("web", Some("u-1")));
        assert!(s.of(&pod("web", Some("u-2"))).is_none());
        assert!(s.of(&pod("web", Some("u-1"))).is_some());
    }

    #[test]
    fn release_marks_hold_until_a_new_add_or_the_pod_leaves() {
        let mut s = Sandboxes::default();
        s.add(sandbox("web", Some("u-1")));
        s.release(key("web"), Some("u-1".into()));
        let p = pod("web", Some("u-1"));
        assert!(s.of(&p).is_none() && s.is_released(&p));
        assert!(
            !s.is_released(&pod("web", Some("u-2"))),
            "a new pod of that name"
        );
        s.prune(&state(std::slice::from_ref(&p)), Instant::now());
        assert!(s.is_released(&p), "the pod is still there");
        s.add(sandbox("web", Some("u-1")));
        assert!(!s.is_released(&p));
        s.release(key("web"), None);
        s.prune(&state(&[]), Instant::now());
        assert!(!s.is_released(&p), "forgotten with its pod");
    }

    #[test]
    fn sandboxes_leave_with_their_pods_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sandboxes::load(dir.path());
        s.add(sandbox("web", None));
        s.add(sandbox("api", None));
        std::fs::write(dir.path().join("cni-pods/garbage.json"), b"{nope").unwrap();
        let mut again = Sandboxes::load(dir.path());
        assert!(
            again.of(&pod("web", None)).is_some(),
            "kept across a restart"
        );
        assert!(!dir.path().join("cni-pods/garbage.json").exists());
        // Not shown yet: kept. Shown, then gone: forgotten, on disk too.
        let now = Instant::now();
        again.prune(&state(&[]), now);
        assert!(again.of(&pod("web", None)).is_some());
        again.prune(&state(&[pod("web", None)]), now);
        again.prune(&state(&[]), now);
        assert!(again.of(&pod("web", None)).is_none());
        assert!(again.of(&pod("api", None)).is_some());
        again.prune(&state(&[]), now + UNSEEN_TTL + Duration::from_secs(1));
        assert!(
            again.of(&pod("api", None)).is_none(),
            "never shown: forgotten after the TTL"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("cni-pods"))
                .unwrap()
                .count(),
            0
        );
    }
}
