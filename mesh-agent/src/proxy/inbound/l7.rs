//! Delivery through the node's L7 pool: an inbound connection to a pod with L7 rules (an
//! AuthorizationPolicy with methods/paths, or `weft.dev/l7`) is given to a worker, which
//! enforces and reports per request, then delivers to the application itself.
//!
//! A plaintext connection is a socket: its fd goes to the worker as it is. A tunneled one is a
//! stream inside an HBONE connection, which no other process can take over: the agent hands
//! the worker one end of a socket pair and relays the stream into the other (the cost of that
//! copy is in the benchmark).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
};

use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use crate::{
    l7::handoff::{Handoff, Protocol, Side},
    proxy::{PodContext, Reset},
    tunnel::traceparent::ConnectionId,
};

/// What an inbound connection is delivered to: the application (TCP), or a worker of the
/// pool (the agent's end of a socket pair).
pub type AppLeg = Either<TcpStream, UnixStream>;

/// Gives `fd` (the connection, or the worker's end of a socket pair) to the pool.
fn hand(
    ctx: &PodContext,
    fd: OwnedFd,
    target: SocketAddr,
    source: (Option<String>, IpAddr),
    protocol: Protocol,
    id: ConnectionId,
) -> Result<(), String> {
    let Some(hand) = &ctx.shared.l7 else {
        return Err("this agent runs no L7 pool".into());
    };
    let state = ctx.shared.state.load();
    let handoff = Handoff {
        id: id.traceparent(),
        side: Side::Inbound,
        pod: ctx.key.clone(),
        source_identity: source.0,
        source_ip: source.1,
        dst: target,
        service: state.service_of_endpoint(target),
        protocol,
    };
    hand(fd, &ctx.netns, handoff)
}

/// A tunneled connection: the worker gets one end of a socket pair; the other is returned for
/// the relay from the tunnel stream.
pub fn pair(
    ctx: &PodContext,
    target: SocketAddr,
    source: (Option<String>, IpAddr),
    protocol: Protocol,
    id: ConnectionId,
) -> Result<UnixStream, String> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("no socket pair for the L7 worker: {e}"))?;
    ours.set_nonblocking(true)
        .map_err(|e| format!("socket pair: {e}"))?;
    hand(ctx, theirs.into(), target, source, protocol, id)?;
    UnixStream::from_std(ours).map_err(|e| format!("socket pair: {e}"))
}

/// A plaintext connection: the socket itself goes to the worker.
pub fn socket(
    ctx: &PodContext,
    down: TcpStream,
    target: SocketAddr,
    source_ip: IpAddr,
    protocol: Protocol,
    id: ConnectionId,
) -> Result<(), String> {
    let std = down
        .into_std()
        .map_err(|e| format!("cannot detach the socket: {e}"))?;
    hand(ctx, std.into(), target, (None, source_ip), protocol, id)
}

impl Reset for UnixStream {
    /// A Unix socket has no RST: the worker sees end of stream (and answers nothing more).
    fn reset(&mut self) {
        let _ = socket2::SockRef::from(&*self).shutdown(std::net::Shutdown::Both);
    }
}

impl<A: Reset, B: Reset> Reset for Either<A, B> {
    fn reset(&mut self) {
        match self {
            Either::Left(s) => s.reset(),
            Either::Right(s) => s.reset(),
        }
    }
}
