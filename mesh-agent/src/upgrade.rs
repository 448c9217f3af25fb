//! Hitless agent upgrades: a new agent takes the old one's listening sockets and the old one
//! drains.
//!
//! In order, as the new agent starts (same state directory, same bpffs pins):
//! 1. it takes `handover.lock` in the state directory, so hand-overs happen one at a time (a
//!    third agent waits for the second to finish taking over);
//! 2. it connects to the running agent's `handover.sock` and receives every listening socket
//!    the old agent holds — each enrolled pod's 15001 / 15006 / 15008 TCP and 15008 UDP, the
//!    node's admin and metrics listeners — by SCM_RIGHTS (`handover`). Same sockets, same
//!    accept queues: no SYN is refused and no queued connection is reset. Nobody listening
//!    (first start, or the old agent crashed) means fresh sockets, as before;
//! 3. it adopts the pinned programs and maps, loads the configuration and enrolls its pods on
//!    the inherited sockets; once its L7 workers have that configuration it accepts on them,
//!    beside the old agent;
//! 4. it tells the old agent to drain and waits for its answer, which comes once the old agent
//!    no longer reads the pods' UDP sockets; only then does it start its own QUIC endpoints;
//! 5. it publishes its own `handover.sock` (renamed over the old path) and releases the lock.
//!
//! The old agent, told to drain (or sent SIGTERM): stops reconciling (its successor owns the
//! pins now), stops accepting, sends GOAWAY on its HBONE connections, closes its QUIC
//! connections, lets its L7 workers finish their in-flight requests and its connections finish
//! until the drain deadline, closes what is left cleanly, logs how many, and exits.

pub mod check;
pub mod drain;
pub mod handover;
pub mod lock;
pub mod wire;

pub use handover::{Inherited, Predecessor, Registry};

/// Version of the hand-over protocol; both agents must speak the same one.
pub const PROTOCOL: u32 = 1;
pub const SOCKET: &str = "handover.sock";
pub const LOCK: &str = "handover.lock";
