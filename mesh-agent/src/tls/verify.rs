//! Peer verification by SPIFFE ID. The chain must lead to the mesh root (webpki path building,
//! validity dates, key usage); then the leaf's one SPIFFE URI SAN decides: a client must be in
//! our trust domain; a server must be exactly the identity the destination is known to run as.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};

use crate::identity::Identity;

/// The roots peers' chains must lead to; replaced whole when the CA's root is (re)learnt.
#[derive(Debug, Default)]
pub struct TrustBundle {
    anchors: ArcSwap<Vec<TrustAnchor<'static>>>,
}

impl TrustBundle {
    pub fn set(&self, roots: &[CertificateDer<'_>]) -> Result<(), webpki::Error> {
        let anchors = roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        self.anchors.store(Arc::new(anchors));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.load().is_empty()
    }

    /// Verifies a chain of ours (e.g. one the CA just issued) and returns its SPIFFE ID.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )
    }

    /// Verifies the chain and returns the leaf's SPIFFE ID.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Identity, rustls::Error> {
        let anchors = self.anchors.load();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        Identity::from_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

fn schemes() -> Vec<SignatureScheme> {
    super::provider()
        .signature_verification_algorithms
        .supported_schemes()
}

fn tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &super::provider().signature_verification_algorithms,
    )
}

/// The signature checks both verifiers share: TLS 1.3 only, ring's algorithms.
macro_rules! tls13_only_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General(
                "TLS 1.2 is not used in the mesh".into(),
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            schemes()
        }
    };
}

/// Client side: the server must present `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    pub bundle: Arc<TrustBundle>,
    pub expected: Identity,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = self.bundle.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if presented != self.expected {
            return Err(rustls::Error::General(format!(
                "destination presented {presented}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    tls13_only_signatures!();
}

/// Server side: any workload of our trust domain may connect; policy decides what it may do.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    pub bundle: Arc<TrustBundle>,
    pub trust_domain: String,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = self.bundle.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        if presented.trust_domain != self.trust_domain {
            return Err(rustls::Error::General(format!(
                "client {presented} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    tls13_only_signatures!();
}
