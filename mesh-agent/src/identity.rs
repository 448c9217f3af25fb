//! Workload identity: SPIFFE IDs, the client of the mesh CA, and the manager that keeps one
//! short-lived certificate per local identity, rotated before it expires.

pub mod client;
pub mod manager;
pub mod spiffe;

pub use client::CaClient;
pub use manager::{CertManager, WorkloadCert};
pub use spiffe::Identity;
