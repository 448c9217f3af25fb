//! The agent's picture of the cluster: what its source (file or Kubernetes) says, reduced to
//! what the data path needs. Immutable once built; a new `State` replaces the old one whole.

pub mod egress;
pub mod l7;
pub mod mesh;
pub mod peer_auth;
pub mod reference_grants;
pub mod routes;
pub mod services;
pub mod workloads;

pub use egress::ServiceEntry;
pub use mesh::{MeshConfig, OtlpTarget, OutboundMode, Tracing, TunnelProtocol};
pub use peer_auth::{MtlsMode, PeerAuthentication};
pub use services::{Resolved, Service, ServiceKey};
pub use workloads::{Enrollment, Namespace, Node, Pod, PodKey, State};
