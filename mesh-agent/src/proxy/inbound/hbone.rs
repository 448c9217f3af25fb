//! Inbound tunnels: admission and delivery of the CONNECTs a pod's tunnel servers (h2 and QUIC,
//! `tunnel`) accepted. For each: the requested target must be a port of this pod and not one
//! of the agent's own (a CONNECT to :15008 would tunnel into the agent again), authorization
//! policy must allow the verified source, and the application is connected to from inside the
//! pod's netns, from the client's address (the tunnel's verified source IP, and the port its
//! source agent sent, `tunnel::forwarded`) or, where the pod lacks what that needs, 127.0.0.6. A refusal answers the status the tunnel carries (HTTP
//! semantics, shared by h2 and QUIC), is counted and access-logged; then bytes are relayed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::StatusCode;
use mesh_common::ports;
use tokio::net::TcpListener;
use tracing::{info, info_span, Instrument as _};

use crate::{
    identity::Identity,
    metrics::{flags, Reporter},
    policy,
    proxy::{
        inbound::l7::{self, AppLeg},
        live::Registration,
        record::{Peer, Record},
        relay, PodContext,
    },
    tunnel::{self, traceparent::ConnectionId, Connect},
};

/// Serves the pod's HBONE (h2) listener.
pub async fn serve_h2(ctx: Arc<PodContext>, listener: TcpListener) {
    let tls = ctx.hbone_tls.clone();
    let span = info_span!("hbone", pod = %ctx.key);
    let lifecycle = ctx.shared.lifecycle.clone();
    let drain = lifecycle.drain.clone();
    let start = async move { lifecycle.accepting().await };
    tunnel::server::serve(listener, tls, start, drain, move |c| handle(ctx.clone(), c))
        .instrument(span)
        .await
}

/// Serves the pod's QUIC tunnel endpoint; counted while it reads the pod's UDP socket.
pub async fn serve_quic(ctx: Arc<PodContext>, endpoint: quinn::Endpoint) {
    let span = info_span!("hbone", pod = %ctx.key, transport = "quic");
    let _reading = ctx.shared.lifecycle.quic_endpoints.enter();
    let drain = ctx.shared.lifecycle.drain.clone();
    tunnel::quic::server::serve(endpoint, drain, move |c| handle(ctx.clone(), c))
        .instrument(span)
        .await
}

async fn handle(ctx: Arc<PodContext>, c: Connect) {
    // Counted from accept to its end: a draining agent waits for it (`lifecycle`).
    let _carried = ctx.shared.lifecycle.connections.enter();
    // The source agent's id of this connection, or one of our own for a peer that sent none.
    let id = c.id.unwrap_or_else(ConnectionId::new);
    let span = info_span!("inbound", %id, src = %c.peer, src_identity = %c.source, transport = c.transport);
    async move {
        let d = match admit(&ctx, &c.authority, &c.source, c.client, c.transport, id).await {
            Ok(d) => d,
            Err(r) => return c.refuse(r.status, &r.reason).await,
        };
        let down = match c.accept().await {
            Ok(s) => s,
            Err(e) => return info!(error = %e, "hbone: client went away"),
        };
        let span = info_span!("deliver", dst = %d.target);
        relay(&ctx.shared, down, d.up, d.record, d.watch)
            .instrument(span)
            .await
    }
    .instrument(span)
    .await
}

#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// A tunnel admitted and connected: what `relay` needs.
struct Delivery {
    target: SocketAddr,
    up: AppLeg,
    record: Record,
    watch: Option<Registration>,
}

/// Why `target` may not be tunneled to in this pod, if it may not (a pure check).
fn unroutable(target: SocketAddr, pod_ip: IpAddr) -> Option<String> {
    if target.ip() != pod_ip {
        return Some(format!("{target} is not this pod ({pod_ip})"));
    }
    ports::AGENT_OWN.contains(&target.port()).then(|| {
        format!(
            "port {} is the mesh agent's own, not the application's",
            target.port()
        )
    })
}

/// Connects to `authority` (`IP:port`, the original destination) inside the pod, for a tunnel
/// from `source` (its verified identity) at `client` (its address; port 0 when not carried),
/// carried by `transport`, with the connection's `id`. A refusal is counted and access-logged
/// here.
async fn admit(
    ctx: &PodContext,
    authority: &str,
    source: &Identity,
    client: SocketAddr,
    transport: &'static str,
    id: ConnectionId,
) -> Result<Delivery, Refusal> {
    let source_ip = client.ip();
    let target: SocketAddr = authority.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("authority {authority:?} is not IP:port"),
        )
    })?;
    let state = ctx.shared.state.load();
    let mut record = Record::new(
        id,
        Reporter::Destination,
        Peer::at(&state, source_ip, Some(source.clone())),
        Peer::at(&state, ctx.ip, Some(ctx.identity.clone())),
        target,
        state.service_of_endpoint(target),
        transport,
    );
    let shared = &ctx.shared;
    if let Some(reason) = unroutable(target, ctx.ip) {
        record.refused(shared, flags::NO_ROUTE, None, reason.clone());
        return Err(Refusal::new(StatusCode::FORBIDDEN, reason));
    }
    // A pod with L7 rules: its pool decides per request (L4 parts of the rules included).
    if let Some(to) = state
        .pods
        .get(&ctx.key)
        .and_then(|pod| super::to_l7(&state, pod, target))
    {
        drop(state);
        let source = (Some(source.to_string()), source_ip);
        return match l7::pair(ctx, target, source, to.protocol, id) {
            Ok(up) => Ok(Delivery {
                target,
                up: AppLeg::Right(up),
                record,
                watch: None,
            }),
            Err(reason) => {
                let reason = format!("L7 pool: {reason}");
                record.refused(shared, flags::NO_HEALTHY_UPSTREAM, None, reason.clone());
                Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason))
            }
        };
    }
    let conn = policy::Connection {
        principal: Some(source.principal()),
        source_ip,
        port: target.port(),
    };
    let verdict = ctx.authorize(&state, &conn);
    if !verdict.allowed {
        let reason = match &verdict.policy {
            Some(p) => format!("denied by authorization policy {p}: {}", verdict.reason),
            None => format!("denied by authorization: {}", verdict.reason),
        };
        record.refused(shared, flags::DENIED, verdict.policy, reason.clone());
        return Err(Refusal::new(StatusCode::FORBIDDEN, reason));
    }
    record.policy = verdict.policy;
    let watch = shared.live.register(ctx.key.clone(), conn);
    drop(state); // not held across the connect
    match super::connect_to_app(ctx, target, client, None).await {
        Ok(up) => Ok(Delivery {
            target,
            up: AppLeg::Left(up),
            record,
            watch: Some(watch),
        }),
        Err(e) => {
            let reason = format!("delivery to {target}: {e}");
            record.refused(shared, flags::UPSTREAM_FAILURE, None, reason.clone());
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_applications_ports_of_this_pod_are_routable() {
        let pod: IpAddr = "10.2.0.2".parse().unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(unroutable(at("10.2.0.2:8080"), pod), None);
        let other = unroutable(at("10.2.0.3:8080"), pod).expect("another pod");
        assert!(other.contains("is not this pod"), "{other}");
        for port in [15001, 15006, 15008, 15020, 15000] {
            let own = unroutable(at(&format!("10.2.0.2:{port}")), pod).expect("agent port");
            assert!(own.contains("the mesh agent's own"), "{port}: {own}");
        }
    }
}
