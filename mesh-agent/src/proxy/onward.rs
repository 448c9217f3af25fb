//! The one place where the onward leg of an outbound connection is made.
//!
//! A destination that is a meshed pod (enrolled on its node, PeerAuthentication not DISABLE) is
//! reached through an HBONE tunnel to its :15008, presenting the source pod's identity and
//! requiring the destination's. Anything else goes as plain TCP, still from inside the source
//! pod's netns so that the destination (and any NetworkPolicy) sees the pod's own IP.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use mesh_common::ports;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{listeners::connect_from_pod, PodContext, Reset};
use crate::{
    identity::Identity,
    state::TunnelProtocol,
    state::{MtlsMode, State},
    tunnel::{quic::client::Failure, quic::QuicStream, H2Stream},
};
use tracing::{debug, warn};

use super::balance::{EJECTION, MAX_ATTEMPTS};

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the destination pod's HBONE endpoint, which must present `identity`.
    Tunnel {
        identity: Identity,
        hbone: SocketAddr,
    },
    /// Plain TCP: the destination is not in the mesh (or has mTLS disabled).
    Direct,
}

pub fn route(state: &State, trust_domain: &str, dst: SocketAddr) -> Route {
    let Some(pod) = state.pod_by_ip(dst.ip()) else {
        return Route::Direct;
    };
    let node = pod.node.as_deref().unwrap_or_default();
    if state.enrollment(pod, node) != crate::state::Enrollment::Enrolled
        || state.mtls_mode(pod).0 == MtlsMode::Disable
    {
        return Route::Direct;
    }
    Route::Tunnel {
        identity: Identity::new(trust_domain, &pod.key.namespace, &pod.service_account),
        hbone: SocketAddr::new(dst.ip(), ports::HBONE),
    }
}

/// The onward leg to `dst`: a Service's cluster IP is resolved to one of its endpoints first.
pub async fn connect(ctx: &PodContext, dst: SocketAddr) -> io::Result<Upstream> {
    let Some(service) = ctx.shared.state.load().resolve_service(dst) else {
        return connect_to(ctx, dst).await;
    };
    let balancer = &ctx.shared.balancer;
    let candidates = balancer.candidates(&service);
    if candidates.is_empty() {
        warn!(service = %service.service, port = service.port, "service has no ready endpoints; reset");
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "service {} port {} has no ready endpoints",
                service.service, service.port
            ),
        ));
    }
    let mut last = None;
    for endpoint in candidates.into_iter().take(MAX_ATTEMPTS) {
        match connect_to(ctx, endpoint).await {
            Ok(up) => {
                balancer.succeeded(endpoint);
                debug!(service = %service.service, %endpoint, "service endpoint chosen");
                return Ok(up);
            }
            Err(e) => {
                warn!(service = %service.service, %endpoint, error = %e,
                    "service endpoint failed; skipped for {}s", EJECTION.as_secs());
                balancer.failed(endpoint);
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one endpoint was tried"))
}

async fn connect_to(ctx: &PodContext, dst: SocketAddr) -> io::Result<Upstream> {
    let shared = &ctx.shared;
    if let Some(mtls) = &shared.mtls {
        let (route, transport) = {
            let state = shared.state.load();
            (route(&state, &shared.trust_domain, dst), state.mesh.tunnel)
        };
        if let Route::Tunnel { identity, hbone } = route {
            if transport == TunnelProtocol::Quic {
                match mtls
                    .quic
                    .connect(&ctx.netns, &ctx.identity, &identity, hbone, dst)
                    .await
                {
                    Ok(stream) => return Ok(Upstream::Quic(stream, identity)),
                    Err(Failure::Refused(e)) => return Err(e),
                    Err(Failure::Unavailable(e)) => {
                        debug!(error = %e, "QUIC unavailable; tunneling over h2")
                    }
                }
            }
            let stream = mtls
                .pool
                .connect(&ctx.netns, &ctx.identity, &identity, hbone, dst)
                .await?;
            return Ok(Upstream::Tunnel(stream, identity));
        }
    }
    Ok(Upstream::Direct(
        connect_from_pod(&ctx.netns, dst, None).await?,
    ))
}

/// The onward leg, whichever way it goes.
pub enum Upstream {
    Direct(TcpStream),
    /// HBONE over HTTP/2.
    Tunnel(H2Stream, Identity),
    /// The same tunnel over QUIC.
    Quic(QuicStream, Identity),
}

impl Upstream {
    /// The identity the destination proved, if it was tunneled.
    pub fn peer_identity(&self) -> Option<&Identity> {
        match self {
            Upstream::Direct(_) => None,
            Upstream::Tunnel(_, id) | Upstream::Quic(_, id) => Some(id),
        }
    }

    /// What carries the bytes: `tcp` (plain), `hbone` (h2) or `quic`.
    pub fn transport(&self) -> &'static str {
        match self {
            Upstream::Direct(_) => "tcp",
            Upstream::Tunnel(..) => "hbone",
            Upstream::Quic(..) => "quic",
        }
    }
}

impl Reset for Upstream {
    fn reset(self) {
        match self {
            Upstream::Direct(s) => s.reset(),
            Upstream::Tunnel(s, _) => s.reset(),
            Upstream::Quic(s, _) => s.reset(),
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tunnel(s, _) => Pin::new(s).poll_read(cx, buf),
            Upstream::Quic(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tunnel(s, _) => Pin::new(s).poll_write(cx, buf),
            Upstream::Quic(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tunnel(s, _) => Pin::new(s).poll_flush(cx),
            Upstream::Quic(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tunnel(s, _) => Pin::new(s).poll_shutdown(cx),
            Upstream::Quic(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
