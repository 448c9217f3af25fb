//! The one place where the onward leg of an outbound connection is made: it carries out the
//! connection's [`Plan`] (decided by `plan`, the same one `meshctl explain` renders).
//!
//! At run time, as the plan says: candidates are tried in order within the retry budget; an
//! endpoint that fails to connect is ejected by the balancer and the next one tried; a denial
//! (the destination's policy, or the outbound traffic policy) stops at once and ejects nothing;
//! a QUIC tunnel that does not get through falls back to h2. Every leg starts inside the
//! source pod's netns, so the destination (and any NetworkPolicy) sees the pod's own IP.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    balance::EJECTION,
    plan::{self, Candidate, Decision, Facts, Path, Plan},
    PodContext, Reset, Shared,
};
use crate::{
    identity::Identity,
    metrics::flags,
    netns::socket::connect_from_pod,
    state::{PodKey, TunnelProtocol},
    tunnel::{quic::client::Failure, quic::QuicStream, traceparent::ConnectionId, H2Stream},
};
use tracing::{debug, warn};

/// Whether planning takes this connection's turn in the balancer's rotation (traffic) or only
/// looks at the order the next connection would get (explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Take,
    Peek,
}

/// Gathers this node's facts (configuration, the balancer's order, resolved egress hosts,
/// whether there is a CA) and plans the connection from `source` to `dst`.
pub fn plan(shared: &Shared, source: &PodKey, dst: SocketAddr, turn: Turn) -> Plan {
    let state = shared.state.load();
    let resolved = state.resolve_service(dst);
    let order = resolved.as_ref().map(|r| match turn {
        Turn::Take => shared.balancer.candidates(r),
        Turn::Peek => shared.balancer.peek(r),
    });
    let hosts = shared.egress_hosts.load();
    let facts = Facts {
        trust_domain: &shared.trust_domain,
        mtls: shared.mtls.is_some(),
        egress_hosts: &hosts,
        candidates: order.as_deref(),
        l7_pool: shared.l7.is_some(),
    };
    plan::plan_resolved(&state, source, dst, resolved, &facts)
}

/// An onward leg made: where it went, and why it was allowed to leave the mesh.
pub struct Onward {
    pub up: Upstream,
    /// The endpoint connected to (`dst` itself unless it was a Service).
    pub endpoint: SocketAddr,
    /// The ServiceEntry that let it out under REGISTRY_ONLY.
    pub service_entry: Option<String>,
}

/// An onward leg that could not be made, with Envoy's response flag for it.
pub struct Failed {
    pub error: io::Error,
    pub flags: &'static str,
}

/// Carries out `plan` for the connection `id` of the application socket at `client`.
pub async fn execute(
    ctx: &PodContext,
    plan: &Plan,
    id: ConnectionId,
    client: SocketAddr,
) -> Result<Onward, Failed> {
    let (candidates, attempts) = match &plan.decision {
        Decision::Refuse(r) => {
            match &plan.service {
                Some(service) if r.flags == flags::NO_HEALTHY_UPSTREAM => {
                    warn!(%service, port = plan.dst.port(), "service has no ready endpoints; reset")
                }
                _ => warn!(flags = r.flags, "refused: {}", r.reason),
            }
            let kind = if r.flags == flags::NO_ROUTE {
                io::ErrorKind::PermissionDenied
            } else {
                io::ErrorKind::ConnectionRefused
            };
            return Err(Failed {
                error: io::Error::new(kind, r.reason.clone()),
                flags: r.flags,
            });
        }
        Decision::Connect {
            candidates,
            attempts,
        } => (candidates, *attempts),
        // The outbound listener hands these to the pool before any onward leg.
        Decision::HandToL7(_) => {
            return Err(Failed {
                error: io::Error::other("the connection belongs to the L7 pool"),
                flags: flags::NO_HEALTHY_UPSTREAM,
            })
        }
    };
    let balancer = &ctx.shared.balancer;
    let mut last = None;
    for c in candidates.iter().take(attempts) {
        match leg(ctx, c, plan.dst, id, client).await {
            Ok(up) => {
                if let Some(service) = &plan.service {
                    balancer.succeeded(c.endpoint);
                    debug!(%service, endpoint = %c.endpoint, "service endpoint chosen");
                }
                return Ok(Onward {
                    up,
                    endpoint: c.endpoint,
                    service_entry: c.path.service_entry().map(str::to_owned),
                });
            }
            // A refusal by policy says nothing about the endpoint's health: do not eject it
            // (the balancer is shared by every pod of the node) and do not try others.
            Err((error, flags)) if flags == flags::DENIED || flags == flags::NO_ROUTE => {
                return Err(Failed { error, flags });
            }
            Err((e, flags)) => {
                if let Some(service) = &plan.service {
                    warn!(%service, endpoint = %c.endpoint, error = %e,
                        "service endpoint failed; skipped for {}s", EJECTION.as_secs());
                    balancer.failed(c.endpoint);
                }
                last = Some((e, flags));
            }
        }
    }
    let (error, flags) = last.unwrap_or_else(|| {
        let e = io::Error::new(io::ErrorKind::ConnectionRefused, "no endpoint to try");
        (e, flags::NO_HEALTHY_UPSTREAM)
    });
    Err(Failed { error, flags })
}

/// One candidate's leg, as its path says. `dst` is the original destination (a tunnel's
/// authority is the endpoint itself).
async fn leg(
    ctx: &PodContext,
    c: &Candidate,
    dst: SocketAddr,
    id: ConnectionId,
    client: SocketAddr,
) -> Result<Upstream, (io::Error, &'static str)> {
    // The destination's agent saying 403 is its policy denying us: a denial, not a failure.
    let failed = |e: io::Error| {
        let flags = if crate::tunnel::TunnelRefused::is_denial(&e) {
            flags::DENIED
        } else {
            flags::UPSTREAM_FAILURE
        };
        (e, flags)
    };
    let target = c.endpoint;
    match (&c.path, &ctx.shared.mtls) {
        (Path::Refused(r), _) => {
            warn!(%dst, endpoint = %target, flags = r.flags, "refused: {}", r.reason);
            let e = io::Error::new(io::ErrorKind::PermissionDenied, r.reason.clone());
            Err((e, r.flags))
        }
        (
            Path::Tunnel {
                identity,
                hbone,
                transport,
            },
            Some(mtls),
        ) => {
            if *transport == TunnelProtocol::Quic {
                match mtls
                    .quic
                    .connect(&ctx.netns, &ctx.identity, identity, *hbone, target, id)
                    .await
                {
                    Ok(stream) => return Ok(Upstream::Quic(stream, identity.clone())),
                    Err(Failure::Refused(e)) => return Err(failed(e)),
                    Err(Failure::Unavailable(e)) => {
                        debug!(error = %e, "QUIC unavailable; tunneling over h2")
                    }
                }
            }
            let stream = mtls
                .pool
                .connect(
                    &ctx.netns,
                    &ctx.identity,
                    identity,
                    *hbone,
                    target,
                    id,
                    Some(client),
                )
                .await
                .map_err(failed)?;
            Ok(Upstream::Tunnel(stream, identity.clone()))
        }
        // Planned with a CA that is gone: never fall back to plain TCP for a meshed pod.
        (Path::Tunnel { .. }, None) => Err((
            io::Error::other("mTLS is off on this agent"),
            flags::UPSTREAM_FAILURE,
        )),
        (Path::Direct(_), _) => connect_from_pod(&ctx.netns, target, None)
            .await
            .map(Upstream::Direct)
            .map_err(failed),
    }
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
