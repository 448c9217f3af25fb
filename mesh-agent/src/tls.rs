//! mTLS between workloads: TLS 1.3 only, certificates chosen per handshake from the cert
//! manager (so rotation is a live swap), peers verified against the mesh root and by SPIFFE ID.

pub mod config;
pub mod verify;

use std::sync::Arc;

pub use config::{client_config, server_config};
pub use verify::TrustBundle;

/// The crypto provider used everywhere (ring: no C toolchain beyond what Rust needs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN of HBONE: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
