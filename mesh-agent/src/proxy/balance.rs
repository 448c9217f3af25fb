//! Choosing the endpoint of a Service for each new connection.
//!
//! Round robin over the ready endpoints, skipping those that recently failed (passive health:
//! a refused or timed-out connect ejects an endpoint for `EJECTION`). Round robin because each
//! agent only sees its own node's connections: per-endpoint load counts would be local and
//! partial, while rotation spreads new connections evenly with no state beyond a counter, and
//! passive health takes the dead ones out. When every endpoint is ejected, they are all tried
//! anyway (in the same order): a whole Service down is better retried than refused outright.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::state::{Resolved, ServiceKey};

/// How long a failed endpoint is skipped.
pub const EJECTION: Duration = Duration::from_secs(10);
/// How many endpoints one connection tries before the client's connection is reset.
pub const MAX_ATTEMPTS: usize = 3;

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

    pub fn succeeded(&self, endpoint: SocketAddr) {
        let mut ejected = self.ejected.lock().expect("balancer lock");
        if !ejected.is_empty() {
            ejected.remove(&endpoint);
        }
    }
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
}
