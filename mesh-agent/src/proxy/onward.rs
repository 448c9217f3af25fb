//! The one place where the onward leg of an outbound connection is made.
//!
//! Today: plain TCP from inside the source pod's netns, so the destination (and any
//! NetworkPolicy on the way) sees the pod's own IP as the source. The identity issue replaces
//! this with the mTLS tunnel to the destination's HBONE port.

use std::{io, net::SocketAddr};

use tokio::net::TcpStream;

use super::{listeners::pod_socket, PodContext};
use crate::config::CONNECT_TIMEOUT;

pub async fn connect(ctx: &PodContext, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = pod_socket(&ctx.netns, dst, None)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}
