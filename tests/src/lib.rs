//! Test harness: builds topologies of network namespaces (nodes, pods, a wire between nodes) and
//! cgroups, starts real agents inside node namespaces, and runs the `weft-probe` client and
//! server inside pods. Everything a test creates is removed when its `Topology` drops.
//!
//! Synchronisation is by readiness (the agent's admin endpoint, a server's greeting), never by
//! sleeping for a guessed time.

pub mod agent;
pub mod ca;
pub mod cni;
pub mod features;
pub mod fixture;
pub mod gamma;
pub mod http;
pub mod netns;
pub mod otlp;
pub mod peer;
pub mod probe;
pub mod topology;
pub mod wire;

pub use agent::Agent;
pub use ca::Ca;
pub use fixture::{OneNode, TwoNodeMesh};
pub use probe::{Client, ConnectResult};
pub use topology::{Pod, Topology};

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes weft-probe clients send: position `i` of every transfer carries `pattern(i)`, so a
/// test can look for them on the wire.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}
