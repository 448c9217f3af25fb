//! Weft's node agent: captures enrolled pods' TCP traffic with eBPF and carries it onward.
//! `main.rs`, `bin/meshctl.rs` and `bin/weft-cni.rs` are thin; wiring lives in `app`.
#![deny(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod app;
pub mod ca;
pub mod cli;
pub mod cni;
pub mod config;
pub mod crd;
pub mod http_server;
pub mod identity;
pub mod l7;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod source;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
