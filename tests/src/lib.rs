//! Test harness: builds topologies of network namespaces (nodes, pods, a wire between nodes) and
//! cgroups, starts real agents inside node namespaces, and runs the `weft-probe` client and
//! server inside pods. Everything a test creates is removed when its `Topology` drops.
//!
//! Synchronisation is by readiness (the agent's admin endpoint, a server's greeting), never by
//! sleeping for a guessed time.

pub mod agent;
pub mod features;
pub mod fixture;
pub mod netns;
pub mod probe;
pub mod topology;

pub use agent::Agent;
pub use fixture::OneNode;
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
