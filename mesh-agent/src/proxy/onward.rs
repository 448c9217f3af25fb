//! The one place where the onward leg of an outbound connection is made.
//!
//! Today: plain TCP from inside the source pod's netns, so the destination (and any
//! NetworkPolicy on the way) sees the pod's own IP as the source. The identity issue replaces
//! this with the mTLS tunnel to the destination's HBONE port.

use std::{io, net::SocketAddr};

use tokio::net::TcpStream;

use super::{listeners::connect_from_pod, PodContext};

pub async fn connect(ctx: &PodContext, dst: SocketAddr) -> io::Result<TcpStream> {
    connect_from_pod(&ctx.netns, dst, None).await
}
