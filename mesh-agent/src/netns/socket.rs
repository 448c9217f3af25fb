//! The agent's sockets in a pod's network namespace: listeners (TCP and UDP), onward and
//! delivery connects, each created while the thread is briefly inside the pod's netns and
//! marked as the agent's (`AGENT_MARK`), so the connect hooks never capture them. Below both
//! `proxy` and `tunnel`: whoever needs a socket in a pod gets it here.

use std::{io, net::SocketAddr, time::Duration};

use mesh_common::AGENT_MARK;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::Netns;
use crate::config::{CONNECT_TIMEOUT, LISTEN_BACKLOG};

/// A TCP listener on `addr` inside the pod's netns.
pub fn listen(netns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    let std_listener = netns.run(|| -> io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_mark(AGENT_MARK)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(LISTEN_BACKLOG)?;
        Ok(s.into())
    })??;
    TcpListener::from_std(std_listener)
}

/// A UDP socket in the pod's netns, marked as the agent's: the pod's :15008 (QUIC, opened with
/// its TCP listeners) or a QUIC client connection's.
pub fn udp_socket(netns: &Netns, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    netns.run(|| -> io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_mark(AGENT_MARK)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    })?
}

/// Connects from inside the pod's netns (optionally from a given source address), within
/// CONNECT_TIMEOUT.
pub async fn connect_from_pod(
    netns: &Netns,
    dst: SocketAddr,
    bind: Option<SocketAddr>,
) -> io::Result<TcpStream> {
    let socket = pod_socket(netns, dst, bind)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {CONNECT_TIMEOUT:?}"),
        )),
    }
}

fn pod_socket(
    netns: &Netns,
    dst: SocketAddr,
    bind: Option<SocketAddr>,
) -> io::Result<tokio::net::TcpSocket> {
    let std_stream = netns.run(|| -> io::Result<std::net::TcpStream> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        s.set_mark(AGENT_MARK)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        if let Some(src) = bind {
            s.bind(&src.into())?;
        }
        Ok(s.into())
    })??;
    Ok(tokio::net::TcpSocket::from_std_stream(std_stream))
}

/// Ends a TCP connection as a failure (RST), so the peer sees a refusal at once instead of a
/// hang or a clean end of stream that would look like success. A zero linger never blocks.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Accepts from when `start` resolves until `stop` is cancelled (the agent drains), one task
/// per connection; the listener is closed on return. Accept errors never end the loop nor spin
/// it (`crate::accept`).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    start: impl std::future::Future<Output = ()>,
    stop: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::select! {
        _ = start => {}
        _ = stop.cancelled() => return,
    }
    let mut errors = crate::accept::AcceptErrors::new("in-pod");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                errors.accepted();
                // Relayed bytes are already batched by the sender; Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, peer));
            }
            Err(e) => errors.failed(&e).await,
        }
    }
}
