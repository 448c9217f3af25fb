//! Moving bytes between the two legs of a connection, with bounded buffers (backpressure, not
//! unbounded buffering) and half-close passed through.

use std::io;

use tokio::{io::copy_bidirectional_with_sizes, net::TcpStream};

use crate::config::COPY_BUFFER_BYTES;

/// Bytes moved each way: from the downstream (client side) and from the upstream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub sent: u64,
    pub received: u64,
}

/// Copies both ways until both sides have closed. On an error (e.g. a reset from one side) the
/// other side is reset too, so neither end mistakes a failure for a clean close.
pub async fn bidirectional(mut down: TcpStream, mut up: TcpStream) -> io::Result<Transferred> {
    match copy_bidirectional_with_sizes(&mut down, &mut up, COPY_BUFFER_BYTES, COPY_BUFFER_BYTES)
        .await
    {
        Ok((sent, received)) => Ok(Transferred { sent, received }),
        Err(e) => {
            super::reset(down);
            super::reset(up);
            Err(e)
        }
    }
}
