//! Moving bytes between the two legs of a connection, with bounded buffers (backpressure, not
//! unbounded buffering) and half-close passed through.

use std::io;

use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite};

use super::Reset;
use crate::config::COPY_BUFFER_BYTES;

/// Bytes moved each way: from the downstream (client side) and from the upstream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub sent: u64,
    pub received: u64,
}

/// Copies both ways until both sides have closed. On an error (e.g. a reset from one side) the
/// other side is reset too, so neither end mistakes a failure for a clean close.
pub async fn bidirectional<D, U>(mut down: D, mut up: U) -> io::Result<Transferred>
where
    D: AsyncRead + AsyncWrite + Unpin + Reset,
    U: AsyncRead + AsyncWrite + Unpin + Reset,
{
    match copy_bidirectional_with_sizes(&mut down, &mut up, COPY_BUFFER_BYTES, COPY_BUFFER_BYTES)
        .await
    {
        Ok((sent, received)) => Ok(Transferred { sent, received }),
        Err(e) => {
            down.reset();
            up.reset();
            Err(e)
        }
    }
}
