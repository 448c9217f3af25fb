//! Enrollment from a pod's first packet: `weft-cni`, a CNI plugin chained after the cluster's
//! own (as istio-cni is), holds a new pod's start until the node's agent has hooked it.
//!
//! On ADD the plugin (`plugin`, speaking the CNI spec: `spec`) asks the agent over
//! `<state_dir>/cni.sock` (`client` → `server`, one JSON line each way: `protocol`) to enroll
//! the sandbox's netns, with the address the primary CNI gave it (its prevResult). The agent
//! records the sandbox (`sandboxes`: at ADD time the pod's IP is not published and it has no
//! process to find its netns by), enrolls the pod through its ordinary enrollment, and answers
//! (`answer`) when the pod is hooked and its listeners are open, or at once when the pod is not
//! to be meshed. Anything else within the bound fails the ADD with the reason, so the kubelet
//! retries and the pod never runs unmeshed. DEL releases, CHECK reports.
//! `install` is what the DaemonSet's init container runs (`weft-cni install`).

pub mod answer;
pub mod client;
pub mod install;
pub mod plugin;
pub mod protocol;
pub mod sandboxes;
pub mod server;
pub mod spec;

pub use sandboxes::{Sandbox, Sandboxes};
pub use server::{serve, Call, Progress, Server};
