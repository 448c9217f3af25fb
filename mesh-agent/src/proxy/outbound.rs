//! Outbound: a connection the connect hooks captured. Its original destination is read from the
//! eBPF map (keyed by the application socket's address in this pod's netns), the agent's end
//! joins the sockhash so the loopback leg is spliced, and the onward leg is opened.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{copy, listeners::accept_loop, onward, reset, PodContext};

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    accept_loop(listener, move |stream, peer| {
        let ctx = ctx.clone();
        async move { handle(ctx, stream, peer).await }
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
        let up = match onward::connect(&ctx, orig).await {
            Ok(up) => up,
            Err(e) => {
                info!(error = %e, "onward connect failed; reset");
                return reset(down);
            }
        };
        debug!("connection opened");
        match copy::bidirectional(down, up).await {
            Ok(t) => info!(
                sent = t.sent,
                received = t.received,
                duration_ms = start.elapsed().as_millis() as u64,
                "connection closed"
            ),
            Err(e) => info!(error = %e, duration_ms = start.elapsed().as_millis() as u64, "connection reset"),
        }
    }
    .instrument(span)
    .await
}
