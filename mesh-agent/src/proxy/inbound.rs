//! Inbound plaintext: a connection sk_lookup steered to :15006. The accepted socket's local
//! address is the original destination (pod IP and port); the agent delivers it to the
//! application inside the pod's netns from 127.0.0.6, which arrives over loopback and is
//! therefore not steered again.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use mesh_common::INBOUND_DELIVERY_SOURCE;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument as _};

use super::{copy, listeners::accept_loop, listeners::pod_socket, reset, PodContext};
use crate::config::CONNECT_TIMEOUT;

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    accept_loop(listener, move |stream, peer| {
        let ctx = ctx.clone();
        async move { handle(ctx, stream, peer).await }
    })
    .await
}

async fn handle(ctx: Arc<PodContext>, down: TcpStream, peer: SocketAddr) {
    let Ok(orig) = down.local_addr() else {
        return reset(down);
    };
    if peer.ip().is_loopback() {
        // Our own delivery steered back to us would loop; sk_lookup never does that.
        warn!(pod = %ctx.key, %peer, %orig, "inbound connection from loopback; reset");
        return reset(down);
    }
    let span = info_span!("inbound", pod = %ctx.key, src = %peer, dst = %orig);
    async move {
        let start = Instant::now();
        let up = match deliver(&ctx, orig).await {
            Ok(up) => up,
            Err(e) => {
                info!(error = %e, "delivery to the application failed; reset");
                return reset(down);
            }
        };
        match copy::bidirectional(down, up).await {
            Ok(t) => info!(
                sent = t.sent,
                received = t.received,
                duration_ms = start.elapsed().as_millis() as u64,
                "connection closed"
            ),
            Err(e) => info!(error = %e, "connection reset"),
        }
    }
    .instrument(span)
    .await
}

async fn deliver(ctx: &PodContext, orig: SocketAddr) -> std::io::Result<TcpStream> {
    let bind = orig
        .is_ipv4()
        .then(|| SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0));
    let socket = pod_socket(&ctx.netns, orig, bind)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(orig)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}
