//! The inbound connections open on this node, with what their authorization was decided on, so
//! that a policy change (AuthorizationPolicy, or PeerAuthentication turning STRICT for a
//! plaintext connection) re-decides them: a connection no longer allowed is closed (both sides
//! reset), logged and counted, as if it had been denied at the start.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use tokio::sync::oneshot;

use crate::{
    policy::{self, Verdict},
    state::{PodKey, State},
};

#[derive(Default)]
pub struct Live {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    pod: PodKey,
    conn: policy::Connection,
    close: oneshot::Sender<Verdict>,
}

/// A connection's place in the registry; dropping it (the connection ended) takes it out.
pub struct Registration {
    id: u64,
    live: Arc<Live>,
    /// Fires with the denying verdict when a policy change disallows the connection.
    pub closed: oneshot::Receiver<Verdict>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.open.lock().expect("live lock").remove(&self.id);
    }
}

impl Live {
    pub fn register(self: &Arc<Self>, pod: PodKey, conn: policy::Connection) -> Registration {
        let id = self.next.fetch_add(1, Relaxed);
        let (close, closed) = oneshot::channel();
        self.open
            .lock()
            .expect("live lock")
            .insert(id, Entry { pod, conn, close });
        Registration {
            id,
            live: self.clone(),
            closed,
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("live lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-decides every open connection against `state`; closes those now denied and returns
    /// how many. A connection whose pod left the state is left to its own end.
    pub fn recheck(&self, state: &State) -> usize {
        let mut open = self.open.lock().expect("live lock");
        let denied: Vec<(u64, Verdict)> = open
            .iter()
            .filter_map(|(id, e)| {
                let pod = state.pods.get(&e.pod)?;
                let v = policy::admit(state, pod, &e.conn);
                (!v.allowed).then_some((*id, v))
            })
            .collect();
        let n = denied.len();
        for (id, verdict) in denied {
            if let Some(e) = open.remove(&id) {
                let _ = e.close.send(verdict);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recheck_closes_only_what_the_new_state_denies() {
        let live = Arc::new(Live::default());
        let key = PodKey {
            namespace: "shop".into(),
            name: "db".into(),
        };
        let conn = |p: &str| policy::Connection {
            principal: Some(format!("cluster.local/ns/shop/sa/{p}")),
            source_ip: "10.0.0.9".parse().unwrap(),
            port: 5432,
        };
        let mut a = live.register(key.clone(), conn("api"));
        let mut b = live.register(key.clone(), conn("batch"));
        let mut state = State::default();
        state.pods.insert(
            key.clone(),
            crate::state::Pod {
                key: key.clone(),
                uid: None,
                node: Some("n1".into()),
                service_account: "db".into(),
                ip: Some("10.0.0.2".parse().unwrap()),
                labels: Default::default(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            },
        );
        let spec = "{action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/api]}}]}]}";
        state.authorization_policies.insert(
            ("shop".into(), "only-api".into()),
            policy::AuthorizationPolicy {
                namespace: "shop".into(),
                name: "only-api".into(),
                spec: yaml_serde::from_str(spec).unwrap(),
            },
        );
        assert_eq!(live.recheck(&state), 1);
        let v = b.closed.try_recv().expect("batch closed");
        assert_eq!(v.policy, None);
        assert!(a.closed.try_recv().is_err(), "api still allowed");
        assert_eq!(live.len(), 1);
        drop(a);
        assert!(live.is_empty());

        // A plaintext connection (no principal) is closed when the pod turns STRICT.
        let mut plain = live.register(
            key.clone(),
            policy::Connection {
                principal: None,
                ..conn("api")
            },
        );
        state.authorization_policies.clear();
        assert_eq!(live.recheck(&state), 0, "PERMISSIVE keeps it");
        state.set_namespace_mtls("shop", "strict", crate::state::MtlsMode::Strict);
        assert_eq!(live.recheck(&state), 1);
        let v = plain.closed.try_recv().expect("closed");
        assert_eq!(v.policy.as_deref(), Some("shop/strict"));
    }
}
