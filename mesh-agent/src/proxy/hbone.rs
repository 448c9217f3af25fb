//! HBONE (:15008): the endpoint of mTLS + HTTP/2 CONNECT tunnels from other agents.
//!
//! The listener is opened at enrollment so the port is owned by the mesh from the start; until
//! the tunnel (identity issue) lands, a connection here is refused with a reset and a log line.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use super::{listeners::accept_loop, reset, PodContext};

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    accept_loop(listener, move |stream, peer| {
        let pod = ctx.key.clone();
        async move {
            info!(%pod, %peer, "hbone: tunnel termination is not available in this build; reset");
            reset(stream);
        }
    })
    .await
}
