//! Outbound: a connection the connect hooks captured. Its original destination is read from the
//! eBPF map (keyed by the application socket's address in this pod's netns), the agent's end
//! joins the sockhash so the loopback leg is spliced, the connection is planned (`plan`) and
//! the plan carried out (`onward`). Each connection gets its id here (`traceparent`).

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{
    onward::{self, Turn},
    plan::{l7::ToL7, Decision, Plan},
    record::{Peer, Record},
    relay, reset, PodContext,
};
use crate::{
    l7::handoff::{Handoff, Side},
    metrics::Reporter,
    tunnel::traceparent::ConnectionId,
};

pub(super) async fn handle(ctx: Arc<PodContext>, down: TcpStream, peer: SocketAddr) {
    // Counted from accept to its end: a draining agent waits for it (`lifecycle`).
    let _carried = ctx.shared.lifecycle.connections.enter();
    let netns = ctx.netns.cookie();
    let Some(orig) = ctx.maps.take_original_dst(netns, peer) else {
        // Only the connect hook sends traffic here; anything else has no destination to go to.
        warn!(pod = %ctx.key, %peer, "outbound connection without a recorded original destination; reset");
        return reset(down);
    };
    // The connection's id, from here to the destination agent's access log.
    let id = ConnectionId::new();
    let span = info_span!("outbound", pod = %ctx.key, %id, src = %peer, dst = %orig);
    async move {
        if let Ok(local) = down.local_addr() {
            if let Err(e) = ctx.maps.add_splice(netns, local, peer, &down) {
                debug!(error = %e, "not spliced; bytes take the TCP path");
            }
        }
        let shared = &ctx.shared;
        let plan = onward::plan(shared, &ctx.key, orig, Turn::Take);
        if let Decision::HandToL7(to) = &plan.decision {
            return hand_to_l7(&ctx, down, peer, orig, &plan, to, id);
        }
        // The application socket's address as the destination should deliver from: the pod's
        // IP (the accepted socket shows loopback, where the connect hook sent it) and its port.
        let client = SocketAddr::new(ctx.ip, peer.port());
        match onward::execute(&ctx, &plan, id, client).await {
            Ok(o) => {
                let record = {
                    let state = shared.state.load();
                    let tunneled = o.up.peer_identity().cloned();
                    let src_id = tunneled.is_some().then(|| ctx.identity.clone());
                    match &tunneled {
                        Some(dst_id) => {
                            debug!(dst_identity = %dst_id, transport = o.up.transport(), "tunneled")
                        }
                        None => debug!("direct: destination is outside the mesh"),
                    }
                    let mut r = Record::new(
                        id,
                        Reporter::Source,
                        Peer::at(&state, ctx.ip, src_id),
                        Peer::at(&state, o.endpoint.ip(), tunneled),
                        orig,
                        plan.service,
                        o.up.transport(),
                    );
                    r.policy = o.service_entry;
                    r
                };
                relay(shared, down, o.up, record, None).await
            }
            Err(f) => {
                info!(error = %f.error, "onward connect failed; reset");
                refused(&ctx, orig, &plan, id).refused(shared, f.flags, None, f.error.to_string());
                reset(down)
            }
        }
    }
    .instrument(span)
    .await
}

/// Gives the connection to the node's L7 pool; if no worker can take it, it is refused (reset)
/// with the reason, never carried at L4.
fn hand_to_l7(
    ctx: &PodContext,
    down: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    plan: &Plan,
    to: &ToL7,
    id: ConnectionId,
) {
    let shared = &ctx.shared;
    let handoff = Handoff {
        id: id.traceparent(),
        side: Side::Outbound,
        pod: ctx.key.clone(),
        source_identity: shared.mtls.as_ref().map(|_| ctx.identity.to_string()),
        source_ip: peer.ip(),
        dst: orig,
        service: plan.service.clone(),
        protocol: to.protocol,
    };
    let reason = match (&shared.l7, down.into_std()) {
        (Some(hand), Ok(std)) => match hand(std.into(), &ctx.netns, handoff) {
            Ok(()) => {
                debug!(
                    protocol = to.protocol.as_str(),
                    "handed to the L7 pool: {}", to.why
                );
                return;
            }
            Err(reason) => reason,
        },
        (None, _) => "this agent runs no L7 pool".to_string(),
        (_, Err(e)) => format!("cannot detach the socket: {e}"),
    };
    debug!(reason = %reason, "connection needs L7 but no worker took it; refused");
    refused(ctx, orig, plan, id).refused(
        shared,
        crate::metrics::flags::NO_HEALTHY_UPSTREAM,
        None,
        format!("L7 pool: {reason}"),
    );
}

/// The record of a connection refused before any onward leg.
fn refused(ctx: &PodContext, orig: SocketAddr, plan: &Plan, id: ConnectionId) -> Record {
    let state = ctx.shared.state.load();
    Record::new(
        id,
        Reporter::Source,
        Peer::at(&state, ctx.ip, None),
        Peer::at(&state, orig.ip(), None),
        orig,
        plan.service.clone(),
        "tcp",
    )
}
