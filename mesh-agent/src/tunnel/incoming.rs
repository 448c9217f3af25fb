//! What a tunnel server yields: one accepted CONNECT, with the peer's verified identity and the
//! authority it asked for. Whoever admits it (`proxy`, inbound) answers with `accept` (200, and
//! the stream to relay) or `refuse` (a status and the reason to log); h2 and QUIC look the same
//! from there.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

use super::traceparent::ConnectionId;
use super::{quic::header, quic::QuicStream, H2Stream};
use crate::identity::Identity;

/// An accepted tunnel request, not yet answered.
pub struct Connect {
    /// The identity the peer proved in the mTLS handshake.
    pub source: Identity,
    /// The peer's address (the source pod's IP: tunnels are opened from inside its netns).
    pub peer: SocketAddr,
    /// The client's address as the application should see it: the peer's IP, with the port
    /// its source agent sent (`forwarded`), or port 0 when none came (QUIC, ztunnel).
    pub client: SocketAddr,
    /// What the CONNECT asked for: `IP:port` of the original destination (unparsed).
    pub authority: String,
    /// `hbone` (h2) or `quic`: the access log's transport.
    pub transport: &'static str,
    /// The source agent's id of this connection, if it sent one (ztunnel does too).
    pub id: Option<ConnectionId>,
    reply: Reply,
}

enum Reply {
    H2 {
        respond: h2::server::SendResponse<Bytes>,
        body: h2::RecvStream,
    },
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

impl Connect {
    pub(super) fn h2(
        source: Identity,
        peer: SocketAddr,
        client: SocketAddr,
        authority: String,
        id: Option<ConnectionId>,
        respond: h2::server::SendResponse<Bytes>,
        body: h2::RecvStream,
    ) -> Self {
        Self {
            source,
            peer,
            client,
            authority,
            transport: "hbone",
            id,
            reply: Reply::H2 { respond, body },
        }
    }

    pub(super) fn quic(
        source: Identity,
        peer: SocketAddr,
        authority: String,
        id: Option<ConnectionId>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Self {
        Self {
            source,
            client: SocketAddr::new(peer.ip(), 0),
            peer,
            authority,
            transport: "quic",
            id,
            reply: Reply::Quic { send, recv },
        }
    }

    /// Answers 200: the stream now carries the connection's bytes.
    pub async fn accept(self) -> io::Result<TunnelStream> {
        match self.reply {
            Reply::H2 { mut respond, body } => {
                let ok = Response::builder()
                    .status(StatusCode::OK)
                    .body(())
                    .expect("static response");
                let send = respond
                    .send_response(ok, false)
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
                Ok(TunnelStream::H2(H2Stream::new(send, body)))
            }
            Reply::Quic { mut send, recv } => {
                header::write_status(&mut send, 200).await?;
                Ok(TunnelStream::Quic(QuicStream::new(send, recv)))
            }
        }
    }

    /// Answers `status` and ends the stream; `why` is logged.
    pub async fn refuse(self, status: StatusCode, why: &str) {
        warn!(
            status = status.as_u16(),
            authority = %self.authority,
            "tunnel stream refused: {why}"
        );
        match self.reply {
            Reply::H2 { respond, .. } => refuse_h2(respond, status),
            Reply::Quic { send, recv } => refuse_quic(send, recv, status.as_u16()).await,
        }
    }
}

pub(super) fn refuse_h2(mut respond: h2::server::SendResponse<Bytes>, status: StatusCode) {
    let resp = Response::builder()
        .status(status)
        .body(())
        .expect("static response");
    let _ = respond.send_response(resp, true);
}

pub(super) async fn refuse_quic(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    status: u16,
) {
    let _ = header::write_status(&mut send, status).await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
}

/// An accepted tunnel stream, whichever transport carried it.
pub enum TunnelStream {
    H2(H2Stream),
    Quic(QuicStream),
}

impl TunnelStream {
    /// Aborts the stream: the far end sees a failure, not a clean end.
    pub fn reset(&mut self) {
        match self {
            TunnelStream::H2(s) => s.reset(),
            TunnelStream::Quic(s) => s.reset(),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::H2(s) => Pin::new(s).poll_read(cx, buf),
            TunnelStream::Quic(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelStream::H2(s) => Pin::new(s).poll_write(cx, buf),
            TunnelStream::Quic(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::H2(s) => Pin::new(s).poll_flush(cx),
            TunnelStream::Quic(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelStream::H2(s) => Pin::new(s).poll_shutdown(cx),
            TunnelStream::Quic(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
