//! Inbound plaintext: a connection sk_lookup steered to :15006. The accepted socket's local
//! address is the original destination (pod IP and port); the agent delivers it to the
//! application inside the pod's netns from the client's address (`netns::transparent`; sk_lookup
//! leaves such a delivery alone while it connects), or from 127.0.0.6 where the pod lacks what
//! that needs. Tunneled connections (:15008, h2 and QUIC) are admitted and delivered by `hbone`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use mesh_common::INBOUND_DELIVERY_SOURCE;
use tokio::net::TcpStream;
use tracing::{info, info_span, warn, Instrument as _};

use crate::{
    metrics::{flags, Reporter},
    netns::{
        socket::connect_from_pod,
        transparent::{self, Delivery},
    },
    tunnel::traceparent::ConnectionId,
};

use super::{
    record::{Peer, Record},
    relay, reset, PodContext,
};

pub mod hbone;
pub mod l7;

/// Connects to the application at `target` inside the pod: the last hop of every inbound
/// connection, plaintext or tunneled. From `client` (the source workload's address; port 0 when
/// the tunnel did not carry it) where the pod allows it, else from 127.0.0.6 for IPv4 (Istio's
/// inbound passthrough convention). `avoid` is a port the delivery must not take.
async fn connect_to_app(
    ctx: &PodContext,
    target: SocketAddr,
    client: SocketAddr,
    avoid: Option<u16>,
) -> std::io::Result<TcpStream> {
    // A client of the other family cannot be the source of a connect to `target`.
    if ctx.delivery == Delivery::ClientAddress && client.is_ipv4() == target.is_ipv4() {
        return transparent::connect(&ctx.netns, &ctx.maps, target, client, avoid).await;
    }
    let bind = target
        .is_ipv4()
        .then(|| SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0));
    connect_from_pod(&ctx.netns, target, bind).await
}

/// The hand-off to L7 of an inbound connection to `pod`, if its plan asks for one.
fn to_l7(
    state: &crate::state::State,
    pod: &crate::state::Pod,
    dst: SocketAddr,
) -> Option<super::plan::l7::ToL7> {
    match super::plan::l7::inbound(state, pod, dst) {
        super::plan::l7::L7Verdict::Hand(to) => Some(to),
        _ => None,
    }
}

pub(super) async fn handle(ctx: Arc<PodContext>, down: TcpStream, peer: SocketAddr) {
    // Counted from accept to its end: a draining agent waits for it (`lifecycle`).
    let _carried = ctx.shared.lifecycle.connections.enter();
    let Ok(orig) = down.local_addr() else {
        return reset(down);
    };
    if peer.ip().is_loopback() {
        // Our own delivery steered back to us would loop; sk_lookup never does that.
        warn!(pod = %ctx.key, %peer, %orig, "inbound connection from loopback; reset");
        return reset(down);
    }
    // Plaintext carries no id from a source agent: this connection's story starts here.
    let id = ConnectionId::new();
    let span = info_span!("inbound", pod = %ctx.key, %id, src = %peer, dst = %orig);
    // Admission is synchronous: its refusals are logged in the connection's span too.
    let entered = span.enter();
    let state = ctx.shared.state.load();
    let shared = &ctx.shared;
    let mut record = Record::new(
        id,
        Reporter::Destination,
        Peer::at(&state, peer.ip(), None),
        Peer::at(&state, orig.ip(), None),
        orig,
        state.service_of_endpoint(orig),
        "tcp",
    );
    let conn = crate::policy::Connection {
        principal: None,
        source_ip: peer.ip(),
        port: orig.port(),
    };
    if let Some(pod) = state.pods.get(&ctx.key) {
        if let Some(v) = crate::policy::plaintext_refusal(&state, pod, &conn) {
            let policy = v.policy.as_deref().unwrap_or_default();
            warn!(pod = %ctx.key, %peer, %orig, %policy, "plaintext refused: PeerAuthentication STRICT");
            record.refused(shared, flags::DENIED, v.policy, v.reason);
            return reset(down);
        }
    }
    // A pod with L7 rules: its pool decides per request (L4 parts of the rules included).
    if let Some(to) = state
        .pods
        .get(&ctx.key)
        .and_then(|pod| to_l7(&state, pod, orig))
    {
        drop(state);
        if let Err(reason) = l7::socket(&ctx, down, orig, peer.ip(), to.protocol, id) {
            warn!(%reason, "connection needs L7 but no worker took it; refused");
            record.refused(
                shared,
                flags::NO_HEALTHY_UPSTREAM,
                None,
                format!("L7 pool: {reason}"),
            );
        }
        return;
    }
    let verdict = ctx.authorize(&state, &conn);
    if !verdict.allowed {
        record.refused(shared, flags::DENIED, verdict.policy, verdict.reason);
        return reset(down);
    }
    record.policy = verdict.policy;
    let watch = shared.live.register(ctx.key.clone(), conn);
    drop(state);
    drop(entered);
    async move {
        // The client's own port stays with the agent's accepted socket, whose 4-tuple the
        // application's socket would otherwise repeat.
        let client = SocketAddr::new(peer.ip(), 0);
        match connect_to_app(&ctx, orig, client, Some(peer.port())).await {
            Ok(up) => relay(&ctx.shared, down, up, record, Some(watch)).await,
            Err(e) => {
                info!(error = %e, "delivery to the application failed; reset");
                let reason = format!("delivery to the application: {e}");
                record.refused(&ctx.shared, flags::UPSTREAM_FAILURE, None, reason);
                reset(down)
            }
        }
    }
    .instrument(span)
    .await
}
