//! A QUIC bidirectional stream as one byte stream. Finishing the send side is the half-close;
//! a reset aborts both directions so the far end sees a failure, not a clean end.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Application error code of an aborted tunnel stream.
const CANCELLED: VarInt = VarInt::from_u32(1);

pub struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    /// A client stream's place on its pooled connection, given back on drop.
    _slot: Option<crate::tunnel::slot::Slot>,
}

impl QuicStream {
    pub fn new(send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            _slot: None,
        }
    }

    /// Holds `slot` for as long as the stream lives.
    pub fn holding(mut self, slot: crate::tunnel::slot::Slot) -> Self {
        self._slot = Some(slot);
        self
    }

    pub fn reset(&mut self) {
        let _ = self.send.reset(CANCELLED);
        let _ = self.recv.stop(CANCELLED);
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}
