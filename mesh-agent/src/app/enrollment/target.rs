//! What a pod's enrollment depends on, and where it comes from.
//!
//! File mode: whoever writes the config directory is the node's operator, and pods name their
//! netns and cgroup in annotations (a pod with only a UID is found as in Kubernetes mode).
//! Kubernetes mode: whoever may create a pod could write those annotations, and so choose
//! which netns and cgroup the root agent hooks. There the agent finds both itself, from the
//! pod's UID (netns/discover.rs), and annotations are ignored, with a message.
//! A sandbox weft-cni reported (CNI ADD: the runtime's own word, over the agent's root-only
//! socket) names the netns in both modes, before the pod has a process; the cgroup then comes
//! from the annotation (file mode) or the kubelet's directory named after the UID.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    config::{SourceKind, CGROUP_ANNOTATION, NETNS_ANNOTATION, SYSTEM_NAMESPACE},
    identity::Identity,
    netns::{discover::Locator, NetnsId},
    state::Pod,
};

/// What enrollment depends on: if any of it changes, the pod is enrolled anew.
#[derive(Debug, Clone)]
pub struct Target {
    pub ip: IpAddr,
    /// The pod's netns by inode: another process of the same pod, or the same netns reached by
    /// another path, is the same target.
    pub netns: NetnsId,
    /// Where the netns was found (shown, not compared).
    pub netns_path: PathBuf,
    pub cgroup: PathBuf,
    pub identity: Identity,
}

impl PartialEq for Target {
    fn eq(&self, o: &Self) -> bool {
        (self.ip, self.netns, &self.cgroup, &self.identity)
            == (o.ip, o.netns, &o.cgroup, &o.identity)
    }
}

/// Why a pod that the state says to enroll has no target.
#[derive(Debug, Clone, PartialEq)]
pub enum NotEnrollable {
    /// Not yet (no IP, no process, a vanished path): retried.
    Retry(String),
    /// Never, as it stands (it is on the node's own netns): reported once, not retried.
    Refused(String),
}

/// How a pod's netns and cgroup are found.
#[derive(Debug, PartialEq)]
pub enum Source<'a> {
    Annotated {
        netns: &'a Path,
        cgroup: &'a Path,
    },
    ByUid(&'a str),
    /// CNI ADD named the netns; the cgroup is the annotated one, else found by UID.
    Sandbox {
        netns: &'a Path,
        cgroup: Cgroup<'a>,
    },
}

#[derive(Debug, PartialEq)]
pub enum Cgroup<'a> {
    Annotated(&'a Path),
    ByUid(&'a str),
}

/// The rule above, as a function of the pod, the mode and the sandbox CNI reported.
pub fn source_of<'a>(
    pod: &'a Pod,
    mode: SourceKind,
    sandbox_netns: Option<&'a Path>,
) -> Result<Source<'a>, String> {
    if let Some(netns) = sandbox_netns {
        let cgroup = match (mode, &pod.cgroup, &pod.uid) {
            (SourceKind::File, Some(c), _) => Cgroup::Annotated(c),
            (_, _, Some(uid)) => Cgroup::ByUid(uid),
            (SourceKind::File, ..) => {
                return Err(format!("neither {CGROUP_ANNOTATION} nor metadata.uid"))
            }
            (SourceKind::Kubernetes, ..) => return Err("no metadata.uid".into()),
        };
        return Ok(Source::Sandbox { netns, cgroup });
    }
    match (mode, &pod.netns, &pod.cgroup, &pod.uid) {
        (SourceKind::File, Some(netns), Some(cgroup), _) => Ok(Source::Annotated { netns, cgroup }),
        (_, _, _, Some(uid)) => Ok(Source::ByUid(uid)),
        (SourceKind::File, ..) => Err(format!(
            "neither {NETNS_ANNOTATION} + {CGROUP_ANNOTATION} nor metadata.uid"
        )),
        (SourceKind::Kubernetes, ..) => Err("no metadata.uid".into()),
    }
}

/// Kubernetes mode: the message for a pod that names its own netns or cgroup.
pub fn ignored_annotations(pod: &Pod, mode: SourceKind) -> Option<String> {
    let named = pod.netns.is_some() || pod.cgroup.is_some();
    (mode == SourceKind::Kubernetes && named).then(|| {
        format!(
            "annotations {NETNS_ANNOTATION} / {CGROUP_ANNOTATION} are ignored in Kubernetes mode \
             (a file-mode contract only); the pod's netns and cgroup are found from its UID"
        )
    })
}

/// Weft's own namespace asks to be enrolled: the message for its pods.
pub fn mesh_itself() -> String {
    format!(
        "namespace {SYSTEM_NAMESPACE} is Weft's own; its pods are never enrolled, whatever their \
         labels say (the mesh never enrolls itself)"
    )
}

impl Target {
    pub fn of(
        pod: &Pod,
        trust_domain: &str,
        mode: SourceKind,
        locator: &mut Option<Locator>,
        node_netns: Option<NetnsId>,
        sandbox_netns: Option<&Path>,
    ) -> Result<Self, NotEnrollable> {
        let retry = NotEnrollable::Retry;
        let ip = pod.ip.ok_or_else(|| retry("no status.podIP".into()))?;
        let (netns_path, cgroup) = match source_of(pod, mode, sandbox_netns).map_err(retry)? {
            Source::Annotated { netns, cgroup } => (netns.to_owned(), cgroup.to_owned()),
            Source::ByUid(uid) => {
                let found = node_locator(locator)?.locate(uid).map_err(retry)?;
                (found.netns, found.cgroup)
            }
            Source::Sandbox { netns, cgroup } => {
                let cgroup = match cgroup {
                    Cgroup::Annotated(c) => c.to_owned(),
                    Cgroup::ByUid(uid) => node_locator(locator)?.cgroup_of(uid).map_err(retry)?,
                };
                (netns.to_owned(), cgroup)
            }
        };
        let netns = NetnsId::of_path(&netns_path)
            .map_err(|e| retry(format!("netns {}: {e}", netns_path.display())))?;
        if Some(netns) == node_netns {
            return Err(NotEnrollable::Refused(format!(
                "its network namespace ({}) is the node's own (hostNetwork): pods on the host \
                 network are never enrolled",
                netns_path.display()
            )));
        }
        Ok(Self {
            ip,
            netns,
            netns_path,
            cgroup,
            identity: Identity::new(trust_domain, &pod.key.namespace, &pod.service_account),
        })
    }
}

/// The node's locator, made on first use.
fn node_locator(locator: &mut Option<Locator>) -> Result<&mut Locator, NotEnrollable> {
    if locator.is_none() {
        let l = Locator::for_this_node()
            .map_err(|e| NotEnrollable::Retry(format!("finding pod cgroups: {e}")))?;
        *locator = Some(l);
    }
    Ok(locator.as_mut().expect("just set"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodKey;

    fn pod(uid: Option<&str>, annotated: bool) -> Pod {
        Pod {
            key: PodKey {
                namespace: "shop".into(),
                name: "web".into(),
            },
            uid: uid.map(str::to_owned),
            node: Some("n1".into()),
            service_account: "web".into(),
            ip: Some("10.0.0.2".parse().unwrap()),
            labels: Default::default(),
            ports: Default::default(),
            netns: annotated.then(|| "/proc/1/ns/net".into()),
            cgroup: annotated.then(|| "/sys/fs/cgroup".into()),
        }
    }

    #[test]
    fn kubernetes_mode_never_takes_the_pods_word_for_its_netns() {
        use SourceKind::{File, Kubernetes};
        let both = pod(Some("u-1"), true);
        assert_eq!(source_of(&both, Kubernetes, None), Ok(Source::ByUid("u-1")));
        assert!(ignored_annotations(&both, Kubernetes)
            .unwrap()
            .contains("ignored in Kubernetes mode"));
        let annotated_only = pod(None, true);
        assert_eq!(
            source_of(&annotated_only, Kubernetes, None),
            Err("no metadata.uid".into())
        );
        // File mode: the operator's annotations first, then the UID.
        assert_eq!(
            source_of(&both, File, None),
            Ok(Source::Annotated {
                netns: Path::new("/proc/1/ns/net"),
                cgroup: Path::new("/sys/fs/cgroup"),
            })
        );
        assert_eq!(ignored_annotations(&both, File), None);
        assert_eq!(
            source_of(&pod(Some("u-1"), false), File, None),
            Ok(Source::ByUid("u-1"))
        );
        assert!(source_of(&pod(None, false), File, None)
            .unwrap_err()
            .contains("neither weft.dev/netns"));
    }

    #[test]
    fn a_sandbox_names_the_netns_and_the_cgroup_comes_as_the_mode_says() {
        use SourceKind::{File, Kubernetes};
        let sb = Path::new("/var/run/netns/cni-1");
        let both = pod(Some("u-1"), true);
        assert_eq!(
            source_of(&both, File, Some(sb)),
            Ok(Source::Sandbox {
                netns: sb,
                cgroup: Cgroup::Annotated(Path::new("/sys/fs/cgroup"))
            })
        );
        assert_eq!(
            source_of(&both, Kubernetes, Some(sb)),
            Ok(Source::Sandbox {
                netns: sb,
                cgroup: Cgroup::ByUid("u-1")
            }),
            "Kubernetes mode never takes the pod's word for its cgroup either"
        );
        assert!(source_of(&pod(None, false), File, Some(sb))
            .unwrap_err()
            .contains("neither weft.dev/cgroup"));
    }

    #[test]
    fn the_nodes_own_netns_is_refused() {
        let node = NetnsId::node().unwrap();
        let mut p = pod(None, true);
        p.netns = Some("/proc/self/ns/net".into());
        let mut locator = None;
        let got = Target::of(
            &p,
            "cluster.local",
            SourceKind::File,
            &mut locator,
            Some(node),
            None,
        );
        assert!(
            matches!(&got, Err(NotEnrollable::Refused(why)) if why.contains("hostNetwork")),
            "{got:?}"
        );
    }
}
