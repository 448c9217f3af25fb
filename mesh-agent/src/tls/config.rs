//! rustls configurations for HBONE. Certificates are resolved per handshake from the cert
//! manager, so a rotated certificate is used by the next handshake without rebuilding anything.

use std::sync::Arc;

use rustls::{
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ClientConfig, ServerConfig, SignatureScheme,
};

use super::{
    verify::{ClientIdentityVerifier, ServerIdentityVerifier},
    ALPN_H2,
};
use crate::identity::{CertManager, Identity};

/// Presents the current certificate of one identity.
#[derive(Debug)]
struct CurrentCert {
    certs: CertManager,
    identity: Identity,
}

impl CurrentCert {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.certs.get(&self.identity).map(|c| c.certified.clone())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The HBONE listener of a pod running as `identity`: requires a client certificate of the
/// trust domain.
pub fn server_config(certs: &CertManager, identity: &Identity) -> Arc<ServerConfig> {
    let verifier = ClientIdentityVerifier {
        bundle: certs.trust(),
        trust_domain: identity.trust_domain.clone(),
    };
    let mut cfg = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by ring")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentCert {
            certs: certs.clone(),
            identity: identity.clone(),
        }));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(cfg)
}

/// A connection from `source` that must reach a server presenting exactly `destination`.
pub fn client_config(
    certs: &CertManager,
    source: &Identity,
    destination: &Identity,
) -> Arc<ClientConfig> {
    let verifier = ServerIdentityVerifier {
        bundle: certs.trust(),
        expected: destination.clone(),
    };
    let mut cfg = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCert {
            certs: certs.clone(),
            identity: source.clone(),
        }));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}
