//! Outbound: a connection the connect hooks captured. Its original destination is read from the
//! eBPF map (keyed by the application socket's address in this pod's netns), the agent's end
//! joins the sockhash so the loopback leg is spliced, and the onward leg is opened.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{listeners::accept_loop, onward, relay, reset, PodContext};

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    accept_loop(listener, move |stream, peer| {
        handle(ctx.clone(), stream, peer)
    })
    .await
}

async fn handle(ctx: Arc<PodContext>, down: TcpStream, peer: SocketAddr) {
    let netns = ctx.netns.cookie();
    let Some(orig) = ctx.maps.take_original_dst(netns, peer) else {
        // Only the connect hook sends traffic here; anything else has no destination to go to.
        warn!(pod = %ctx.key, %peer, "outbound connection without a recorded original destination; reset");
        return reset(down);
    };
    let span = info_span!("outbound", pod = %ctx.key, src = %peer, dst = %orig);
    async move {
        if let Ok(local) = down.local_addr() {
            if let Err(e) = ctx.maps.add_splice(netns, local, peer, &down) {
                debug!(error = %e, "not spliced; bytes take the TCP path");
            }
        }
        let start = Instant::now();
        match onward::connect(&ctx, orig).await {
            Ok(up) => {
                match up.peer_identity() {
                    Some(id) => debug!(dst_identity = %id, transport = up.transport(), "tunneled"),
                    None => debug!("direct: destination is outside the mesh"),
                }
                relay(down, up, start).await
            }
            Err(e) => {
                info!(error = %e, "onward connect failed; reset");
                reset(down)
            }
        }
    }
    .instrument(span)
    .await
}
