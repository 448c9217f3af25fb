//! The one place where the onward leg of an outbound connection is made.
//!
//! A destination that is a meshed pod (enrolled on its node, PeerAuthentication not DISABLE) is
//! reached through an HBONE tunnel to its :15008, presenting the source pod's identity and
//! requiring the destination's. Anything else goes as plain TCP, still from inside the source
//! pod's netns so that the destination (and any NetworkPolicy) sees the pod's own IP, if the
//! mesh's outbound traffic policy lets it out (REGISTRY_ONLY: a ServiceEntry must list it).

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

use super::{PodContext, Reset};
use crate::{
    identity::Identity,
    metrics::flags,
    netns::socket::connect_from_pod,
    state::{egress::EgressVerdict, MtlsMode, ServiceKey, State, TunnelProtocol},
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

/// An onward leg made: where it went, and why it was allowed to leave the mesh.
pub struct Onward {
    pub up: Upstream,
    pub service: Option<ServiceKey>,
    /// The endpoint connected to (`dst` itself unless it was a Service).
    pub endpoint: SocketAddr,
    /// The ServiceEntry that let it out under REGISTRY_ONLY.
    pub service_entry: Option<String>,
}

/// An onward leg that could not be made, with Envoy's response flag for it.
pub struct Failed {
    pub error: io::Error,
    pub flags: &'static str,
    pub service: Option<ServiceKey>,
}

/// The onward leg to `dst`: a Service's cluster IP is resolved to one of its endpoints first.
pub async fn connect(ctx: &PodContext, dst: SocketAddr) -> Result<Onward, Failed> {
    let Some(service) = ctx.shared.state.load().resolve_service(dst) else {
        return match connect_to(ctx, dst).await {
            Ok((up, service_entry)) => Ok(Onward {
                up,
                service: None,
                endpoint: dst,
                service_entry,
            }),
            Err((error, flags)) => Err(Failed {
                error,
                flags,
                service: None,
            }),
        };
    };
    let balancer = &ctx.shared.balancer;
    let candidates = balancer.candidates(&service);
    if candidates.is_empty() {
        warn!(service = %service.service, port = service.port, "service has no ready endpoints; reset");
        return Err(Failed {
            error: io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "service {} port {} has no ready endpoints",
                    service.service, service.port
                ),
            ),
            flags: flags::NO_HEALTHY_UPSTREAM,
            service: Some(service.service),
        });
    }
    let mut last = None;
    for endpoint in candidates.into_iter().take(MAX_ATTEMPTS) {
        match connect_to(ctx, endpoint).await {
            Ok((up, service_entry)) => {
                balancer.succeeded(endpoint);
                debug!(service = %service.service, %endpoint, "service endpoint chosen");
                return Ok(Onward {
                    up,
                    service: Some(service.service),
                    endpoint,
                    service_entry,
                });
            }
            // A refusal by policy says nothing about the endpoint's health: do not eject it
            // (the balancer is shared by every pod of the node) and do not try others.
            Err((error, flags)) if flags == flags::DENIED || flags == flags::NO_ROUTE => {
                return Err(Failed {
                    error,
                    flags,
                    service: Some(service.service),
                });
            }
            Err((e, flags)) => {
                warn!(service = %service.service, %endpoint, error = %e,
                    "service endpoint failed; skipped for {}s", EJECTION.as_secs());
                balancer.failed(endpoint);
                last = Some((e, flags));
            }
        }
    }
    let (error, flags) = last.expect("at least one endpoint was tried");
    Err(Failed {
        error,
        flags,
        service: Some(service.service),
    })
}

/// Connects to one endpoint: tunneled when it is meshed, else plain TCP if the outbound
/// traffic policy lets it out (returning the ServiceEntry that did).
async fn connect_to(
    ctx: &PodContext,
    dst: SocketAddr,
) -> Result<(Upstream, Option<String>), (io::Error, &'static str)> {
    let shared = &ctx.shared;
    let (route, transport, egress) = {
        let state = shared.state.load();
        let route = route(&state, &shared.trust_domain, dst);
        let egress =
            (route == Route::Direct).then(|| state.egress(dst, &shared.egress_hosts.load()));
        (route, state.mesh.tunnel, egress)
    };
    // The destination's agent saying 403 is its policy denying us: a denial, not a failure.
    let failed = |e: io::Error| {
        let flags = if crate::tunnel::TunnelRefused::is_denial(&e) {
            flags::DENIED
        } else {
            flags::UPSTREAM_FAILURE
        };
        (e, flags)
    };
    if let (Some(mtls), Route::Tunnel { identity, hbone }) = (&shared.mtls, &route) {
        if transport == TunnelProtocol::Quic {
            match mtls
                .quic
                .connect(&ctx.netns, &ctx.identity, identity, *hbone, dst)
                .await
            {
                Ok(stream) => return Ok((Upstream::Quic(stream, identity.clone()), None)),
                Err(Failure::Refused(e)) => return Err(failed(e)),
                Err(Failure::Unavailable(e)) => {
                    debug!(error = %e, "QUIC unavailable; tunneling over h2")
                }
            }
        }
        let stream = mtls
            .pool
            .connect(&ctx.netns, &ctx.identity, identity, *hbone, dst)
            .await
            .map_err(failed)?;
        return Ok((Upstream::Tunnel(stream, identity.clone()), None));
    }
    let service_entry = match egress {
        Some(EgressVerdict::Refused(why)) => {
            warn!(%dst, "refused: {why}");
            return Err((
                io::Error::new(io::ErrorKind::PermissionDenied, why),
                flags::NO_ROUTE,
            ));
        }
        Some(EgressVerdict::ServiceEntry(name)) => Some(name),
        _ => None,
    };
    let up = connect_from_pod(&ctx.netns, dst, None)
        .await
        .map_err(failed)?;
    Ok((Upstream::Direct(up), service_entry))
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
    fn reset(&mut self) {
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
