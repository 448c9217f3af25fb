//! The agent's picture of the cluster: what its source (file or Kubernetes) says, reduced to
//! what the data path needs. Immutable once built; a new `State` replaces the old one whole.

pub mod workloads;

pub use workloads::{Enrollment, Namespace, Node, Pod, PodKey, State};
