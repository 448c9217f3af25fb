//! mTLS between workloads: TLS 1.3 only, certificates chosen per handshake from the cert
//! manager (so rotation is a live swap), peers verified against the mesh root and by SPIFFE ID.

pub mod config;
pub mod verify;

use std::sync::Arc;

pub use config::{client_config, server_config};
pub use verify::TrustBundle;

/// The crypto provider used everywhere (ring: no C toolchain beyond what Rust needs).
/// Built once and shared: configs are made per connection and signatures checked per handshake.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// ALPN of HBONE: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
