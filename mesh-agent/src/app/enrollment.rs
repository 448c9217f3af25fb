//! Enrollment: keeps the set of hooked pods equal to the set the state says to enroll.
//!
//! Enrolling a pod, in this order so that no connection is captured without a listener:
//! reserve the mesh's ports in the pod's ephemeral range, open the in-pod listeners (inside the
//! pod's netns; a TIME_WAIT of the pod holding one of their ports is destroyed), register the
//! pod address and its inbound listener in the maps, start the accept loops, then attach (or
//! adopt) the hooks. A pod is enrolled anew only when its target
//! changes (address, identity, cgroup, or its netns by inode); failures are retried with a
//! per-pod backoff.
//! Un-enrolling runs the other way: hooks first, so new connects go direct at once; established
//! connections are left to finish.
//! What weft-cni reports of a sandbox (its netns and address, before the configuration has
//! them) completes the pod it belongs to; its requests are answered after each reconcile
//! (`cni.rs`).

mod cni;
mod retry;
mod target;

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Once},
    time::Instant,
};

use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{
    cni::{Call, Sandboxes},
    config::SourceKind,
    identity::Identity,
    netns::{discover::Locator, ports, sockdiag, transparent, Netns, NetnsId},
    proxy::{self, InpodListeners, PodContext, Shared},
    redirect::{PodHooks, Redirect},
    state::{self, Pod, PodKey, State},
    upgrade::{Inherited, Registry},
};
use retry::{Report, Retries};
use target::{NotEnrollable, Target};

/// What the state asks of this node's pods, as found on the node.
struct Desired {
    targets: BTreeMap<PodKey, Target>,
    /// To enroll, but not found yet: why.
    unlocated: Vec<(PodKey, String)>,
    notices: BTreeMap<PodKey, String>,
    /// Never enrollable as they stand (their notice says why).
    refused: Vec<PodKey>,
}

struct Enrolled {
    target: Target,
    ctx: Arc<PodContext>,
    hooks: PodHooks,
    tasks: Vec<JoinHandle<()>>,
    /// Its listeners came from the agent this one took over from.
    inherited: bool,
}

/// One enrolled pod as /config_dump shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub pod: String,
    pub ip: IpAddr,
    pub identity: Identity,
    /// Where the netns was found when the pod was enrolled.
    pub netns: PathBuf,
    /// The netns itself (what enrollment compares).
    pub netns_inode: u64,
    pub netns_cookie: u64,
    pub cgroup: PathBuf,
    pub hooks: Vec<&'static str>,
    pub pin_dir: PathBuf,
    /// True when the hooks were pinned by an earlier agent and taken over.
    pub adopted: bool,
    /// True when its listening sockets were handed over by the agent this one replaced.
    pub listeners_inherited: bool,
    /// The address the application sees inbound connections from (`netns::transparent`).
    pub delivers_from: String,
}

pub struct Enrollment {
    redirect: Redirect,
    shared: Arc<Shared>,
    mode: SourceKind,
    pods: BTreeMap<PodKey, Enrolled>,
    retries: Retries,
    /// Pods not enrolled, or enrolled differently than they ask, and why (logged once).
    notices: BTreeMap<PodKey, String>,
    swept: bool,
    /// Kubernetes mode: finds pods' netns and cgroup from their UID (made on first use).
    locator: Option<Locator>,
    /// The node's own netns: never a pod's.
    node_netns: Option<NetnsId>,
    /// Every enrolled pod's listening sockets, for a successor agent.
    registry: Arc<Registry>,
    /// The predecessor's sockets not yet claimed by a pod (until the first reconcile is over).
    inherited: Inherited,
    /// Sandboxes weft-cni reported, and its requests waiting for an answer.
    sandboxes: Sandboxes,
    calls: Vec<Call>,
    refused: Vec<PodKey>,
    /// A configuration has been reconciled.
    loaded: bool,
}

impl Enrollment {
    pub fn new(
        redirect: Redirect,
        shared: Arc<Shared>,
        cgroup_root: Option<PathBuf>,
        mode: SourceKind,
        registry: Arc<Registry>,
        inherited: Inherited,
    ) -> Self {
        let node_netns = NetnsId::node()
            .map_err(|e| warn!(error = %e, "cannot identify the node's network namespace"))
            .ok();
        Self {
            redirect,
            shared,
            mode,
            pods: BTreeMap::new(),
            retries: Retries::default(),
            notices: BTreeMap::new(),
            swept: false,
            locator: cgroup_root.map(|root| Locator::new(root, PathBuf::from("/proc"))),
            node_netns,
            registry,
            inherited,
            sandboxes: Sandboxes::default(),
            calls: Vec::new(),
            refused: Vec::new(),
            loaded: false,
        }
    }

    /// Closes the predecessor's sockets that no pod claimed (pods it had and this agent does
    /// not enroll).
    pub fn release_inherited(&mut self) {
        let left = std::mem::take(&mut self.inherited);
        if left.unclaimed() > 0 {
            info!(
                pods = left.unclaimed(),
                "closing inherited listeners no enrolled pod claimed"
            );
        }
    }

    pub fn reconcile(&mut self, state: &State) {
        let now = Instant::now();
        self.sandboxes.prune(state, now);
        let Desired {
            targets: desired,
            unlocated,
            notices,
            refused,
        } = self.desired(state);
        self.notify(notices);
        self.refused = refused;
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
        self.retries
            .retain(|k| desired.contains_key(k) || unlocated.iter().any(|(u, _)| u == k));
        for (key, why) in unlocated {
            let report = self.retries.record(&key, why.clone(), None, now);
            log_failure(&key, report, "cannot enroll yet", &why);
        }
        for (key, target) in desired {
            if self.pods.contains_key(&key) || !self.retries.due(&key, &target, now) {
                continue;
            }
            match self.enroll(&key, target.clone()) {
                Ok(()) => self.retries.succeeded(&key),
                Err(e) => {
                    let why = format!("{e:#}");
                    let report = self.retries.record(&key, why.clone(), Some(target), now);
                    log_failure(&key, report, "enrollment failed", &why);
                }
            }
        }
        // An enrolled pod has nothing to retry (keeps the retry timer from firing for it).
        let enrolled = &self.pods;
        self.retries.retain(|k| !enrolled.contains_key(k));
        self.loaded = true;
    }

    fn desired(&mut self, state: &State) -> Desired {
        let td = self.shared.trust_domain.clone();
        let node = self.shared.node.clone();
        let mut desired = BTreeMap::new();
        let mut unlocated = Vec::new();
        let mut notices = BTreeMap::new();
        let mut refused = Vec::new();
        for p in state.pods_on(&node) {
            if state.enrollment(p, &node) == state::Enrollment::MeshItself
                && asks_for_mesh(state, p)
            {
                notices.insert(p.key.clone(), target::mesh_itself());
            }
        }
        // The configuration's pods, completed by what weft-cni reported of their sandboxes;
        // a pod released by CNI DEL stays released.
        let pods: Vec<_> = state
            .pods_on(&node)
            .filter(|p| !self.sandboxes.is_released(p))
            .map(|p| {
                (
                    self.sandboxes.patched(p),
                    self.sandboxes.of(p).map(|s| s.netns.clone()),
                )
            })
            .filter(|(p, _)| state.enrollment(p, &node) == state::Enrollment::Enrolled)
            .collect();
        for (p, sandbox_netns) in &pods {
            if let Some(why) = target::ignored_annotations(p, self.mode) {
                notices.insert(p.key.clone(), why);
            }
            let found = Target::of(
                p,
                &td,
                self.mode,
                &mut self.locator,
                self.node_netns,
                sandbox_netns.as_deref(),
            );
            match found {
                Ok(t) => {
                    desired.insert(p.key.clone(), t);
                }
                Err(NotEnrollable::Refused(why)) => {
                    notices.insert(p.key.clone(), why);
                    refused.push(p.key.clone());
                }
                Err(NotEnrollable::Retry(why)) => match self.pods.get(&p.key) {
                    // Enrolled, and no process to find it by for now (its first one exited, the
                    // next not yet there): the netns lives on in the file the agent holds.
                    Some(e) if still_matches(&e.target, p, &td) => {
                        debug!(pod = %p.key, reason = %why, "keeping enrollment on the open netns");
                        desired.insert(p.key.clone(), e.target.clone());
                    }
                    _ => unlocated.push((p.key.clone(), why)),
                },
            }
        }
        Desired {
            targets: desired,
            unlocated,
            notices,
            refused,
        }
    }

    /// Logs each notice when it first appears (or changes), not on every reconcile.
    fn notify(&mut self, notices: BTreeMap<PodKey, String>) {
        for (key, why) in &notices {
            if self.notices.get(key) != Some(why) {
                warn!(pod = %key, "{why}");
            }
        }
        self.notices = notices;
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
        let path = &target.netns_path;
        let netns =
            Netns::open(path).with_context(|| format!("opening netns {}", path.display()))?;
        if netns.id() != target.netns {
            anyhow::bail!("netns {} changed while it was opened", path.display());
        }
        // Before binding: from now on no new socket of the pod takes the mesh's ports.
        if let Err(e) = ports::reserve_mesh_ports(&netns) {
            warn!(pod = %key, error = %e, "cannot reserve the mesh's ports in the pod \
                (net.ipv4.ip_local_reserved_ports); a pod socket holding one blocks enrollment \
                until it closes");
        }
        let (listeners, inherited) = match self.inherited.take_pod(key, target.netns.ino) {
            Some(Ok(l)) => (l, true),
            Some(Err(e)) => {
                warn!(pod = %key, error = %e, "the previous agent's listeners for this pod are \
                    unusable; opening new ones");
                (open_listeners(key, &netns, target.ip)?, false)
            }
            None => (open_listeners(key, &netns, target.ip)?, false),
        };
        if let Err(e) = self.registry.add_pod(key, target.netns.ino, &listeners) {
            warn!(pod = %key, error = %e, "cannot keep the pod's listeners for a successor; \
                an upgrade will rebind them");
        }
        let maps = self.redirect.maps.clone();
        let inbound = listeners
            .inbound_for(target.ip)
            .context("no inbound listener for the pod's address family")?;
        maps.register_pod(target.ip, netns.cookie(), inbound)?;
        if let Some(mtls) = &self.shared.mtls {
            mtls.certs.ensure(&target.identity);
        }
        // Once per enrollment: a pod without what this needs is named here, then delivered
        // from 127.0.0.6 without further noise.
        let delivery = transparent::prepare(&netns, target.ip);
        if let transparent::Delivery::Loopback { missing } = &delivery {
            warn!(pod = %key, "inbound connections reach the application from 127.0.0.6, \
                not the client's address: missing {missing}");
        }
        let ctx = Arc::new(PodContext {
            delivery,
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
                self.registry.remove_pod(key, target.netns.ino);
                self.redirect.maps.unregister_pod(target.ip);
                return Err(e).context("attaching eBPF hooks");
            }
        };
        info!(pod = %key, ip = %target.ip, adopted = hooks.adopted, listeners_inherited = inherited, "pod enrolled");
        self.pods.insert(
            key.clone(),
            Enrolled {
                target,
                ctx,
                hooks,
                tasks,
                inherited,
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
        transparent::release(&e.ctx.netns);
        self.registry.remove_pod(key, e.target.netns.ino);
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

    /// When a failed enrollment is next due for a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.next_due()
    }

    pub fn failures(&self) -> BTreeMap<String, String> {
        self.retries.reasons()
    }

    /// Pods the agent refuses to enroll as they ask (the mesh itself, the host network,
    /// Kubernetes-mode annotations), with the reason.
    pub fn notices(&self) -> BTreeMap<String, String> {
        self.notices
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
                netns: e.target.netns_path.clone(),
                netns_inode: e.target.netns.ino,
                netns_cookie: e.ctx.netns.cookie(),
                cgroup: e.target.cgroup.clone(),
                hooks: e.hooks.names().to_vec(),
                pin_dir: e.hooks.dir.clone(),
                adopted: e.hooks.adopted,
                listeners_inherited: e.inherited,
                delivers_from: e.ctx.delivery.describe(),
            })
            .collect()
    }
}

/// Opens the pod's listeners. A bind refused because a TIME_WAIT holds a mesh port (left by a
/// pod socket from before its ports were reserved) is freed by destroying those TIME_WAITs,
/// then tried once more; a live socket of the pod is never touched, and its conflict is retried
/// as any failure.
fn open_listeners(key: &PodKey, netns: &Netns, ip: IpAddr) -> anyhow::Result<InpodListeners> {
    use anyhow::Context as _;
    let busy = match InpodListeners::open(netns, ip) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => e,
        r => return r.context("opening in-pod listeners"),
    };
    let mut freed = 0;
    for port in ports::MESH_PORTS {
        match sockdiag::destroy_time_wait(netns, port) {
            Ok(0) => {}
            Ok(n) => {
                info!(pod = %key, port, count = n, "destroyed TIME_WAIT sockets holding a mesh port");
                freed += n;
            }
            Err(e @ sockdiag::Error::Unsupported(_)) => {
                static ONCE: Once = Once::new();
                ONCE.call_once(|| {
                    warn!(error = %e, "cannot free mesh ports held by TIME_WAIT; \
                        enrollment waits for them to expire (up to 60 s)")
                });
                break;
            }
            Err(e) => {
                return Err(busy).context(format!(
                    "opening in-pod listeners (freeing TIME_WAIT on :{port}: {e})"
                ));
            }
        }
    }
    if freed == 0 {
        return Err(busy).context("opening in-pod listeners");
    }
    InpodListeners::open(netns, ip).context("opening in-pod listeners after freeing TIME_WAIT")
}

/// A pod (or its namespace) labelled to be enrolled.
fn asks_for_mesh(state: &State, pod: &Pod) -> bool {
    use crate::config::{MESH_ENABLED, MESH_LABEL};
    state.namespace_asks_for_mesh(&pod.key.namespace)
        || pod
            .labels
            .get(MESH_LABEL)
            .is_some_and(|v| v == MESH_ENABLED)
}

/// The enrolled target still fits the pod (same address and identity).
fn still_matches(t: &Target, pod: &Pod, trust_domain: &str) -> bool {
    Some(t.ip) == pod.ip
        && t.identity == Identity::new(trust_domain, &pod.key.namespace, &pod.service_account)
}

/// A new reason at warn; the same reason again only at debug.
fn log_failure(key: &PodKey, report: Report, what: &str, why: &str) {
    match report {
        Report::New => warn!(pod = %key, reason = %why, "{what}; will retry"),
        Report::Repeat => debug!(pod = %key, reason = %why, "{what} again; will retry"),
        Report::Unchanged => {}
    }
}
