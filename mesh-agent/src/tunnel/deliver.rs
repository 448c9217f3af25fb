//! The last hop of every tunnel, whatever carried it: check that the requested target is a port
//! of this pod, that authorization policy allows the verified source to reach it, and connect
//! to it from inside the pod's netns. The refusal carries the status the
//! tunnel answers with (HTTP semantics, shared by h2 and QUIC) and the reason that is logged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::StatusCode;
use mesh_common::INBOUND_DELIVERY_SOURCE;
use tokio::net::TcpStream;

use crate::{
    identity::Identity,
    metrics::{flags, Reporter},
    policy,
    proxy::{
        listeners::connect_from_pod,
        live::Registration,
        record::{Peer, Record},
        PodContext,
    },
    tunnel::traceparent::ConnectionId,
};

#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
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
pub struct Delivery {
    pub target: SocketAddr,
    pub up: TcpStream,
    pub record: Record,
    pub watch: Registration,
}

/// Connects to `authority` (`IP:port`, the original destination) inside the pod, for a tunnel
/// from `source` (its verified identity) at `source_ip`, carried by `transport`, with the
/// source agent's connection `id`. A refusal is counted and access-logged here.
pub async fn deliver(
    ctx: &PodContext,
    authority: &str,
    source: &Identity,
    source_ip: IpAddr,
    transport: &'static str,
    id: ConnectionId,
) -> Result<Delivery, Refusal> {
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
    if target.ip() != ctx.ip {
        let reason = format!("{target} is not this pod ({})", ctx.ip);
        record.refused(shared, flags::NO_ROUTE, None, reason.clone());
        return Err(Refusal::new(StatusCode::FORBIDDEN, reason));
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
    let bind = target
        .is_ipv4()
        .then(|| SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0));
    match connect_from_pod(&ctx.netns, target, bind).await {
        Ok(up) => Ok(Delivery {
            target,
            up,
            record,
            watch,
        }),
        Err(e) => {
            let reason = format!("delivery to {target}: {e}");
            record.refused(shared, flags::UPSTREAM_FAILURE, None, reason.clone());
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason))
        }
    }
}
