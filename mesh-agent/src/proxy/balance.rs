//! Choosing the endpoint of a Service for each new connection.
//!
//! Round robin over the ready endpoints, skipping those that recently failed (passive health:
//! a refused or timed-out connect ejects an endpoint for `EJECTION`). Round robin because each
//! agent only sees its own node's connections: per-endpoint load counts would be local and
//! partial, while rotation spreads new connections evenly with no state beyond a counter, and
//! passive health takes the dead ones out. When every endpoint is ejected, they are all tried
//! anyway (in the same order): a whole Service down is better retried than refused outright.
//!
//! Both tables are pruned on every state change (`prune`): positions of Service ports that are
//! gone, and ejections that expired or whose endpoint left, so churn does not grow them.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::state::{Resolved, ServiceKey, State};

/// How long a failed endpoint is skipped.
pub const EJECTION: Duration = Duration::from_secs(10);
/// How many endpoints one connection tries before the client's connection is reset.
pub const MAX_ATTEMPTS: usize = 3;

/// How many entries the balancer holds, for /config_dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BalancerSizes {
    /// Round-robin positions, one per Service port that has had connections.
    pub positions: usize,
    /// Endpoints currently remembered as failed.
    pub ejected: usize,
}

#[derive(Default)]
pub struct Balancer {
    next: Mutex<HashMap<(ServiceKey, u16), usize>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Balancer {
    /// The endpoints to try, in order: healthy ones from the round-robin position, then
    /// ejected ones.
    pub fn candidates(&self, r: &Resolved) -> Vec<SocketAddr> {
        if r.endpoints.is_empty() {
            return Vec::new();
        }
        let start = {
            let mut next = self.next.lock().expect("balancer lock");
            let n = next.entry((r.service.clone(), r.port)).or_default();
            let start = *n % r.endpoints.len();
            *n = n.wrapping_add(1);
            start
        };
        self.arrange(r, start)
    }

    /// The order `candidates` gives the next connection, without taking its turn: what
    /// `meshctl explain` shows.
    pub fn peek(&self, r: &Resolved) -> Vec<SocketAddr> {
        if r.endpoints.is_empty() {
            return Vec::new();
        }
        let next = self.next.lock().expect("balancer lock");
        let start =
            next.get(&(r.service.clone(), r.port)).copied().unwrap_or(0) % r.endpoints.len();
        drop(next);
        self.arrange(r, start)
    }

    fn arrange(&self, r: &Resolved, start: usize) -> Vec<SocketAddr> {
        let rotated = r.endpoints[start..].iter().chain(&r.endpoints[..start]);
        let now = Instant::now();
        let ejected = self.ejected.lock().expect("balancer lock");
        let (healthy, sick): (Vec<SocketAddr>, Vec<SocketAddr>) =
            rotated.partition(|ep| ejected.get(ep).is_none_or(|until| *until <= now));
        healthy.into_iter().chain(sick).collect()
    }

    pub fn failed(&self, endpoint: SocketAddr) {
        self.ejected
            .lock()
            .expect("balancer lock")
            .insert(endpoint, Instant::now() + EJECTION);
    }

    /// Forgets what `state` no longer has: Service ports that are gone, and ejections that
    /// expired or whose endpoint address is no longer a pod or an EndpointSlice address.
    pub fn prune(&self, state: &State) {
        self.next
            .lock()
            .expect("balancer lock")
            .retain(|(service, port), _| {
                state
                    .services
                    .get(service)
                    .is_some_and(|s| s.ports.iter().any(|p| p.port == *port))
            });
        let now = Instant::now();
        let mut ejected = self.ejected.lock().expect("balancer lock");
        if ejected.is_empty() {
            return;
        }
        let known = endpoint_addresses(state);
        ejected.retain(|ep, until| *until > now && known.contains(&ep.ip()));
    }

    pub fn sizes(&self) -> BalancerSizes {
        BalancerSizes {
            positions: self.next.lock().expect("balancer lock").len(),
            ejected: self.ejected.lock().expect("balancer lock").len(),
        }
    }

    pub fn succeeded(&self, endpoint: SocketAddr) {
        let mut ejected = self.ejected.lock().expect("balancer lock");
        if !ejected.is_empty() {
            ejected.remove(&endpoint);
        }
    }
}

/// Every address an endpoint can have: pod IPs and the addresses of EndpointSlices.
fn endpoint_addresses(state: &State) -> HashSet<IpAddr> {
    let pods = state.pods.values().filter_map(|p| p.ip);
    let slices = state
        .endpoint_slices
        .values()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.iter().copied()));
    pods.chain(slices).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(eps: &[&str]) -> Resolved {
        Resolved {
            service: ServiceKey {
                namespace: "shop".into(),
                name: "web".into(),
            },
            port: 80,
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn rotates_and_skips_failed_endpoints_until_they_recover() {
        let b = Balancer::default();
        let r = resolved(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let firsts: Vec<_> = (0..6).map(|_| b.candidates(&r)[0].to_string()).collect();
        assert_eq!(
            firsts,
            [
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.3:80",
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.3:80"
            ]
        );
        b.failed("10.0.0.2:80".parse().unwrap());
        for _ in 0..6 {
            let c = b.candidates(&r);
            assert_ne!(c[0].to_string(), "10.0.0.2:80");
            assert_eq!(c.last().unwrap().to_string(), "10.0.0.2:80", "tried last");
        }
        let next = b.peek(&r);
        assert_eq!(next, b.peek(&r), "peeking takes no turn");
        assert_eq!(next, b.candidates(&r), "the order the next connection gets");
        b.succeeded("10.0.0.2:80".parse().unwrap());
        let firsts: Vec<_> = (0..3).map(|_| b.candidates(&r)[0].to_string()).collect();
        assert!(firsts.contains(&"10.0.0.2:80".to_string()));
        assert!(b.candidates(&resolved(&[])).is_empty());
    }

    /// A state with the Service shop/web (port 80) selecting one pod per address.
    fn state_with(service: bool, pods: &[&str]) -> State {
        use crate::state::{
            services::{ServicePort, TargetPort},
            Pod, PodKey, Service,
        };
        let mut s = State::default();
        for (i, ip) in pods.iter().enumerate() {
            let key = PodKey {
                namespace: "shop".into(),
                name: format!("web-{i}"),
            };
            let pod = Pod {
                key: key.clone(),
                uid: None,
                node: Some("n1".into()),
                service_account: "web".into(),
                ip: Some(ip.parse().unwrap()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ports: Default::default(),
                netns: None,
                cgroup: None,
            };
            s.pods.insert(key, pod);
        }
        if service {
            let key = resolved(&[]).service;
            let port = ServicePort {
                name: None,
                port: 80,
                target_port: TargetPort::Number(80),
                app_protocol: None,
            };
            let svc = Service {
                key: key.clone(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![port],
                selector: Some([("app".to_string(), "web".to_string())].into()),
                labels: Default::default(),
            };
            s.services.insert(key, svc);
        }
        s.reindex();
        s
    }

    #[test]
    fn prune_forgets_services_and_endpoints_that_left_the_state() {
        let b = Balancer::default();
        b.candidates(&resolved(&["10.0.0.1:80", "10.0.0.2:80"]));
        b.failed("10.0.0.1:80".parse().unwrap());
        b.failed("10.0.0.2:80".parse().unwrap());
        let sizes = |positions, ejected| BalancerSizes { positions, ejected };
        assert_eq!(b.sizes(), sizes(1, 2));
        // The Service stays, one of its pods left: only that pod's ejection goes.
        b.prune(&state_with(true, &["10.0.0.1"]));
        assert_eq!(b.sizes(), sizes(1, 1));
        // The Service left: its position goes too.
        b.prune(&state_with(false, &["10.0.0.1"]));
        assert_eq!(b.sizes(), sizes(0, 1));
        b.prune(&State::default());
        assert_eq!(b.sizes(), sizes(0, 0));
    }
}
