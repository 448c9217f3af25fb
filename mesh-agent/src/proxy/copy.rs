//! Moving bytes between the two legs of a connection, with bounded buffers (backpressure, not
//! unbounded buffering) and half-close passed through, counted as they move.
//!
//! An idle connection holds no copy buffer: reads go into one scratch buffer per runtime thread
//! and are written on at once; only bytes the writer cannot take yet are kept, per direction,
//! until it can (at most one read's worth, so still bounded). `tokio::io::copy_bidirectional`
//! allocates two buffers per connection up front, which made idle connections cost ~128 KiB
//! of heap each.

use std::{
    cell::Cell,
    future::poll_fn,
    io,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Reset;
use crate::{config::COPY_BUFFER_BYTES, metrics::TcpCounters};

/// Reads per direction before the copy yields to the runtime, so one busy connection cannot
/// starve the others on its thread.
const READS_PER_POLL: usize = 32;

thread_local! {
    /// The buffer every copy on this thread reads into. Taken for the duration of one read and
    /// write (never across an await), so no connection keeps it.
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Copies both ways until both sides have closed; returns the bytes moved (from `down`, to
/// `down`). On an error (e.g. a reset from one side) the other side is reset too, so neither end
/// mistakes a failure for a clean close.
pub async fn bidirectional<D, U>(down: &mut D, up: &mut U) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin + Reset,
    U: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let (mut to_up, mut to_down) = (Leg::default(), Leg::default());
    let (mut from_down, mut from_up) = (None, None);
    let r = poll_fn(|cx| {
        if from_down.is_none() {
            if let Poll::Ready(n) = to_up.poll(cx, &mut *down, &mut *up)? {
                from_down = Some(n);
            }
        }
        if from_up.is_none() {
            if let Poll::Ready(n) = to_down.poll(cx, &mut *up, &mut *down)? {
                from_up = Some(n);
            }
        }
        match (from_down, from_up) {
            (Some(a), Some(b)) => Poll::Ready(Ok((a, b))),
            _ => Poll::Pending,
        }
    })
    .await;
    if r.is_err() {
        down.reset();
        up.reset();
    }
    r
}

/// One direction of a copy.
#[derive(Default)]
struct Leg {
    /// Bytes read that the writer has not taken yet (from `written` on). Allocated only when a
    /// write stalls, released once the reader has nothing more.
    backlog: Vec<u8>,
    written: usize,
    /// The reader has ended (EOF); the writer is shut down once the backlog is out.
    eof: bool,
    shut_down: bool,
    need_flush: bool,
    moved: u64,
}

impl Leg {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..READS_PER_POLL {
            ready!(self.drain(cx, w))?;
            if self.eof {
                if !self.shut_down {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.shut_down = true;
                }
                return Poll::Ready(Ok(self.moved));
            }
            if self.read_and_write(cx, r, w)?.is_pending() {
                // Nothing to read: nothing to keep either, and what was written goes out.
                self.backlog = Vec::new();
                if self.need_flush {
                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes the backlog out; Ready once it is empty.
    fn drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.written < self.backlog.len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.backlog[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.backlog.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// One read into the thread's scratch buffer, written on at once; what the writer does not
    /// take goes to the backlog. Pending only when the reader has nothing.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = SCRATCH
            .take()
            .unwrap_or_else(|| vec![0; COPY_BUFFER_BYTES].into_boxed_slice());
        let result = self.read_and_write_with(cx, r, w, &mut buf);
        SCRATCH.set(Some(buf));
        result
    }

    fn read_and_write_with<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        buf: &mut [u8],
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let n = {
            let mut rb = ReadBuf::new(buf);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            rb.filled().len()
        };
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        self.moved += n as u64;
        self.need_flush = true;
        let mut off = 0;
        while off < n {
            match Pin::new(&mut *w).poll_write(cx, &buf[off..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(k)) => off += k,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.backlog.extend_from_slice(&buf[off..n]);
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
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

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    impl Reset for DuplexStream {
        fn reset(&mut self) {}
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// Pipes far smaller than a read make every write stall: the backlog path carries the
    /// bytes, in order, and each end's EOF reaches the other.
    #[tokio::test]
    async fn copies_both_ways_through_stalling_writers_and_passes_half_close() {
        let (mut a, mut down) = duplex(1000);
        let (mut up, mut b) = duplex(700);
        let relay = tokio::spawn(async move { bidirectional(&mut down, &mut up).await });
        let (to_b, to_a) = (bytes(1 << 20, 1), bytes(300_000, 7));
        let (a_side, b_side) = tokio::join!(
            async {
                a.write_all(&to_b).await.unwrap();
                a.shutdown().await.unwrap();
                let mut got = Vec::new();
                a.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                let mut got = Vec::new();
                b.read_to_end(&mut got).await.unwrap();
                b.write_all(&to_a).await.unwrap();
                b.shutdown().await.unwrap();
                got
            }
        );
        assert!(b_side == to_b, "a to b intact");
        assert!(a_side == to_a, "b to a intact");
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved, (1 << 20, 300_000));
    }
}
