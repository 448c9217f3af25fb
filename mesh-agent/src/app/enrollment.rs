//! Enrollment: keeps the set of hooked pods equal to the set the state says to enroll.
//!
//! Enrolling a pod, in this order so that no connection is captured without a listener:
//! open the in-pod listeners (inside the pod's netns), register the pod address and its inbound
//! listener in the maps, start the accept loops, then attach (or adopt) the hooks.
//! Un-enrolling runs the other way: hooks first, so new connects go direct at once; established
//! connections are left to finish.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, sync::Arc};

use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    identity::Identity,
    netns::{discover::Locator, Netns},
    proxy::{self, InpodListeners, PodContext, Shared},
    redirect::{PodHooks, Redirect},
    state::{Pod, PodKey, State},
};

/// What enrollment depends on: if any of it changes, the pod is enrolled anew.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    ip: IpAddr,
    netns: PathBuf,
    cgroup: PathBuf,
    identity: Identity,
}

impl Target {
    /// File mode names the pod's netns and cgroup; Kubernetes mode finds them from its UID.
    fn of(pod: &Pod, trust_domain: &str, locator: &mut Option<Locator>) -> Result<Self, String> {
        let ip = pod.ip.ok_or("no status.podIP")?;
        let (netns, cgroup) = match (&pod.netns, &pod.cgroup, &pod.uid) {
            (Some(n), Some(c), _) => (n.clone(), c.clone()),
            (_, _, Some(uid)) => {
                if locator.is_none() {
                    *locator = Some(
                        Locator::for_this_node()
                            .map_err(|e| format!("finding pod cgroups: {e}"))?,
                    );
                }
                let found = locator.as_mut().expect("just set").locate(uid)?;
                (found.netns, found.cgroup)
            }
            _ => return Err("neither weft.dev/netns + weft.dev/cgroup nor metadata.uid".into()),
        };
        Ok(Self {
            ip,
            netns,
            cgroup,
            identity: Identity::new(trust_domain, &pod.key.namespace, &pod.service_account),
        })
    }
}

struct Enrolled {
    target: Target,
    ctx: Arc<PodContext>,
    hooks: PodHooks,
    tasks: Vec<JoinHandle<()>>,
}

/// One enrolled pod as /config_dump shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub pod: String,
    pub ip: IpAddr,
    pub identity: Identity,
    pub netns: PathBuf,
    pub netns_cookie: u64,
    pub cgroup: PathBuf,
    pub hooks: Vec<&'static str>,
    pub pin_dir: PathBuf,
    /// True when the hooks were pinned by an earlier agent and taken over.
    pub adopted: bool,
}

pub struct Enrollment {
    redirect: Redirect,
    shared: Arc<Shared>,
    pods: BTreeMap<PodKey, Enrolled>,
    failures: BTreeMap<PodKey, String>,
    swept: bool,
    /// Kubernetes mode: finds pods' netns and cgroup from their UID (made on first use).
    locator: Option<Locator>,
}

impl Enrollment {
    pub fn new(redirect: Redirect, shared: Arc<Shared>, cgroup_root: Option<PathBuf>) -> Self {
        Self {
            redirect,
            shared,
            pods: BTreeMap::new(),
            failures: BTreeMap::new(),
            swept: false,
            locator: cgroup_root.map(|root| Locator::new(root, PathBuf::from("/proc"))),
        }
    }

    pub fn reconcile(&mut self, state: &State) {
        let td = self.shared.trust_domain.clone();
        let mut desired = BTreeMap::new();
        let mut unlocated = Vec::new();
        for p in state.enrolled_pods(&self.shared.node) {
            match Target::of(p, &td, &mut self.locator) {
                Ok(t) => {
                    desired.insert(p.key.clone(), t);
                }
                Err(e) => unlocated.push((p.key.clone(), e)),
            }
        }
        if let Some(l) = &mut self.locator {
            let uids: Vec<&str> = state
                .pods_on(&self.shared.node)
                .filter_map(|p| p.uid.as_deref())
                .collect();
            l.retain(&uids);
        }
        let gone: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(k, e)| desired.get(*k) != Some(&e.target))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.unenroll(&key);
        }
        if !self.swept {
            self.sweep_pinned(&desired);
        }
        self.failures.retain(|k, _| desired.contains_key(k));
        for (key, why) in unlocated {
            warn!(pod = %key, "cannot enroll yet: {why}; will retry");
            self.failures.insert(key, why);
        }
        for (key, target) in desired {
            if self.pods.contains_key(&key) {
                continue;
            }
            match self.enroll(&key, target) {
                Ok(()) => {
                    self.failures.remove(&key);
                }
                Err(e) => {
                    warn!(pod = %key, error = format!("{e:#}"), "enrollment failed; will retry");
                    self.failures.insert(key, format!("{e:#}"));
                }
            }
        }
    }

    /// Hooks pinned by an earlier agent for pods that are no longer to be enrolled.
    fn sweep_pinned(&mut self, desired: &BTreeMap<PodKey, Target>) {
        let keep: Vec<String> = desired.keys().map(PodKey::file_name).collect();
        for key in self.redirect.pinned_pods() {
            if !keep.contains(&key) {
                info!(pod = key, "releasing pod hooked by an earlier agent");
                self.redirect.detach_pinned(&key);
            }
        }
        self.swept = true;
    }

    fn enroll(&mut self, key: &PodKey, target: Target) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let netns = Netns::open(&target.netns)
            .with_context(|| format!("opening netns {}", target.netns.display()))?;
        let listeners =
            InpodListeners::open(&netns, target.ip).context("opening in-pod listeners")?;
        let maps = self.redirect.maps.clone();
        let inbound = listeners
            .inbound_for(target.ip)
            .context("no inbound listener for the pod's address family")?;
        maps.register_pod(target.ip, netns.cookie(), inbound)?;
        if let Some(mtls) = &self.shared.mtls {
            mtls.certs.ensure(&target.identity);
        }
        let ctx = Arc::new(PodContext {
            key: key.clone(),
            ip: target.ip,
            identity: target.identity.clone(),
            netns,
            maps,
            hbone_tls: self
                .shared
                .mtls
                .as_ref()
                .map(|m| crate::tls::server_config(&m.certs, &target.identity)),
            shared: self.shared.clone(),
        });
        let tasks = proxy::serve(ctx.clone(), listeners);
        let hooks = match self
            .redirect
            .attach_pod(&key.file_name(), &target.cgroup, &ctx.netns)
        {
            Ok(h) => h,
            Err(e) => {
                tasks.iter().for_each(|t| t.abort());
                self.redirect.maps.unregister_pod(target.ip);
                return Err(e).context("attaching eBPF hooks");
            }
        };
        info!(pod = %key, ip = %target.ip, adopted = hooks.adopted, "pod enrolled");
        self.pods.insert(
            key.clone(),
            Enrolled {
                target,
                ctx,
                hooks,
                tasks,
            },
        );
        Ok(())
    }

    fn unenroll(&mut self, key: &PodKey) {
        let Some(e) = self.pods.remove(key) else {
            return;
        };
        self.redirect.detach_pod(e.hooks);
        self.redirect.maps.unregister_pod(e.target.ip);
        for t in e.tasks {
            t.abort();
        }
        let still_used = self
            .pods
            .values()
            .any(|p| p.target.identity == e.target.identity);
        if let (Some(mtls), false) = (&self.shared.mtls, still_used) {
            mtls.certs.release(&e.target.identity);
        }
        info!(pod = %key, "pod released");
    }

    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failures
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    pub fn status(&self) -> Vec<PodStatus> {
        self.pods
            .iter()
            .map(|(k, e)| PodStatus {
                pod: k.to_string(),
                ip: e.target.ip,
                identity: e.target.identity.clone(),
                netns: e.target.netns.clone(),
                netns_cookie: e.ctx.netns.cookie(),
                cgroup: e.target.cgroup.clone(),
                hooks: e.hooks.names().to_vec(),
                pin_dir: e.hooks.dir.clone(),
                adopted: e.hooks.adopted,
            })
            .collect()
    }
}
