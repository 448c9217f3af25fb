//! The node's shared L7 pool (DESIGN.md data path 6).
//!
//! The agent (`supervisor`) runs a few `mesh-agent l7` worker processes and hands each
//! connection that needs L7 to one of them: the accepted socket's file descriptor over a Unix
//! socket (SCM_RIGHTS) with a [`handoff::Handoff`] saying who called and where to. Workers get
//! their configuration as versioned snapshots from the agent over the same socket
//! (`snapshot`), never from the API server, and report each request back (`report`) for the
//! agent's metrics and access log.
//!
//! In a worker, `server` speaks HTTP (hyper) on the handed-over connection, `route` picks the
//! route rule, `filters` apply it, `forward` sends the request on (timeouts, retries) through
//! `upstream` (pooled HTTP connections over HBONE, presenting the SOURCE workload's identity),
//! `trace` propagates trace context and `otlp` exports spans.

pub mod budget;
pub mod context;
pub mod filters;
pub mod forward;
pub mod handoff;
pub mod otlp;
pub mod outbox;
pub mod report;
pub mod request;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod supervisor;
pub mod trace;
pub mod upstream;
pub mod wire;
pub mod worker;

pub use outbox::RequestBatch;
pub use supervisor::{L7Pool, PoolConfig, PoolStatus, Refusal};

use std::os::fd::OwnedFd;

use crate::netns::Netns;

/// How the proxy gives a connection to the pool: the socket, the netns of the pod it belongs
/// to (`Handoff::pod`) and what the worker needs to know. An error says why no worker could
/// take it; the connection is then refused (fail closed), never carried at L4.
pub type Hand = Box<dyn Fn(OwnedFd, &Netns, handoff::Handoff) -> Result<(), String> + Send + Sync>;
