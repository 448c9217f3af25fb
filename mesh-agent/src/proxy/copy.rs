//! Moving bytes between the two legs of a connection, with bounded buffers (backpressure, not
//! unbounded buffering) and half-close passed through, counted as they move.

use std::{
    io,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{Context, Poll},
};

use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite, ReadBuf};

use super::Reset;
use crate::{config::COPY_BUFFER_BYTES, metrics::TcpCounters};

/// Copies both ways until both sides have closed; returns the bytes moved (from `down`, to
/// `down`). On an error (e.g. a reset from one side) the other side is reset too, so neither end
/// mistakes a failure for a clean close.
pub async fn bidirectional<D, U>(down: &mut D, up: &mut U) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin + Reset,
    U: AsyncRead + AsyncWrite + Unpin + Reset,
{
    match copy_bidirectional_with_sizes(down, up, COPY_BUFFER_BYTES, COPY_BUFFER_BYTES).await {
        Ok(moved) => Ok(moved),
        Err(e) => {
            down.reset();
            up.reset();
            Err(e)
        }
    }
}

/// The downstream (source) side of a connection, counting what it reads (the source's bytes,
/// Istio's "received") and what is written to it ("sent") into the connection's metrics, live.
pub struct Counted<S> {
    inner: S,
    counters: Arc<TcpCounters>,
    pub received: u64,
    pub sent: u64,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<TcpCounters>) -> Self {
        Self {
            inner,
            counters,
            received: 0,
            sent: 0,
        }
    }
}

impl<S: Reset> Reset for Counted<S> {
    fn reset(&mut self) {
        self.inner.reset()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.received += n;
            this.counters.received.fetch_add(n, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.sent += n as u64;
            this.counters.sent.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
