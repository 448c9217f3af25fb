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
    policy,
    proxy::{listeners::connect_from_pod, PodContext},
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

/// Connects to `authority` (`IP:port`, the original destination) inside the pod, for a tunnel
/// from `source` (its verified identity) at `source_ip`.
pub async fn deliver(
    ctx: &PodContext,
    authority: &str,
    source: &Identity,
    source_ip: IpAddr,
) -> Result<(SocketAddr, TcpStream), Refusal> {
    let target: SocketAddr = authority.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("authority {authority:?} is not IP:port"),
        )
    })?;
    if target.ip() != ctx.ip {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("{target} is not this pod ({})", ctx.ip),
        ));
    }
    let conn = policy::Connection {
        principal: Some(source.principal()),
        source_ip,
        port: target.port(),
    };
    if let Some(denied) = ctx.authorize(&conn) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, denied));
    }
    let bind = target
        .is_ipv4()
        .then(|| SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0));
    match connect_from_pod(&ctx.netns, target, bind).await {
        Ok(up) => Ok((target, up)),
        Err(e) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("delivery to {target}: {e}"),
        )),
    }
}
