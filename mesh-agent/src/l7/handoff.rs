//! The hand-off of one connection from the agent to an L7 worker: what travels with the file
//! descriptors. The pool helper owns the transport (framing, SCM_RIGHTS); this struct is the
//! contract between the agent's proxy (which fills it) and the worker's server (which reads it).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::state::{PodKey, ServiceKey};

/// Which side of the mesh the worker serves this connection on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A connection an enrolled pod of this node opened (captured at :15001): route it, then
    /// forward over HBONE as the source workload.
    Outbound,
    /// A tunneled or plaintext connection to an enrolled pod of this node with L7 rules:
    /// enforce, report, then deliver to the pod's application.
    Inbound,
}

pub use crate::state::l7::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The connection id (traceparent form, `tunnel::traceparent::ConnectionId`).
    pub id: String,
    pub side: Side,
    /// The enrolled pod of this node the connection belongs to: the source pod (outbound) or
    /// the destination pod (inbound).
    pub pod: PodKey,
    /// The caller's SPIFFE identity: the source pod's own (outbound) or the verified tunnel
    /// peer's (inbound); None for plaintext inbound.
    pub source_identity: Option<String>,
    pub source_ip: IpAddr,
    /// The original destination (a Service's cluster IP and port, or a pod's IP and port).
    pub dst: SocketAddr,
    /// The Service `dst` belongs to.
    pub service: Option<ServiceKey>,
    pub protocol: Protocol,
}
