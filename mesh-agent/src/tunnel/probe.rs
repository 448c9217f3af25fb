//! A handshake without a tunnel, for `meshctl explain`: the mTLS handshake a real connection
//! would make (from the source pod's netns, presenting its certificate, requiring the
//! destination's identity), then closed. It proves both certificates valid the same way traffic
//! does, and that NetworkPolicy lets the tunnel port through.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

use crate::{
    identity::{CertManager, Identity},
    netns::Netns,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The identity the destination presented (verified against the mesh root).
    pub presented: String,
    /// Seconds until the destination's certificate expires.
    pub expires_in_secs: i64,
}

pub async fn handshake(
    certs: &CertManager,
    netns: &Netns,
    source: &Identity,
    destination: &Identity,
    hbone: SocketAddr,
) -> Result<Probe, String> {
    let attempt = async {
        let tls = super::pool::mtls_connect(certs, netns, source, destination, hbone)
            .await
            .map_err(|e| format!("{hbone}: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("the destination presented no certificate")?;
        let presented = Identity::from_cert(leaf).map_err(|e| e.to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
        let expires = cert.validity().not_after.timestamp();
        // Finish as a client that has nothing to send, so the destination sees a clean end.
        let (sender, conn) = h2::client::handshake(tls)
            .await
            .map_err(|e| format!("HTTP/2 with {hbone}: {e}"))?;
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(Probe {
            presented: presented.to_string(),
            expires_in_secs: expires - now,
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            format!(
                "no answer from {hbone} in {}s (a NetworkPolicy dropping the tunnel port?)",
                PROBE_TIMEOUT.as_secs()
            )
        })?
}
