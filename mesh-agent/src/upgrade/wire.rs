//! The hand-over socket: a Unix SOCK_SEQPACKET socket, one JSON message per packet, at most one
//! passed descriptor per message (SCM_RIGHTS). Seqpacket keeps message boundaries and ties each
//! descriptor to its message, so neither side needs framing; every call is blocking with a
//! timeout (sessions run on blocking threads), and a peer that sends garbage, too much or
//! nothing gets an error naming it, never a hang.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use nix::sys::{
    socket::{
        self, recvmsg, sendmsg, setsockopt, sockopt, AddressFamily, Backlog, ControlMessage,
        ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    },
    time::TimeVal,
};
use serde::{de::DeserializeOwned, Serialize};

/// The largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("the other agent closed the hand-over socket")]
    Closed,
    #[error("timed out waiting for the other agent")]
    TimedOut,
    #[error("message of {0} bytes or more is over the limit of {MAX_MESSAGE}")]
    Oversize(usize),
    #[error("passed descriptors were truncated")]
    Truncated,
    #[error("more than one descriptor with one message")]
    TooManyFds,
    #[error("unreadable message: {0}")]
    Json(#[from] serde_json::Error),
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> WireError {
    move |errno| match errno {
        nix::errno::Errno::EAGAIN => WireError::TimedOut,
        errno => WireError::Sys { what, errno },
    }
}

/// A listening hand-over socket at `path` (which must not exist).
pub fn listen(path: &Path) -> Result<OwnedFd, WireError> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).map_err(sys("hand-over socket path"))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(sys("binding the hand-over socket"))?;
    socket::listen(&fd, Backlog::new(4).expect("small backlog")).map_err(sys("listen"))?;
    Ok(fd)
}

/// Connects to the hand-over socket at `path`. `Ok(None)`: nobody listens there (no socket
/// file, or a stale one whose agent is gone).
pub fn connect(path: &Path) -> Result<Option<OwnedFd>, WireError> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).map_err(sys("hand-over socket path"))?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => Ok(None),
        Err(e) => Err(sys("connecting to the hand-over socket")(e)),
    }
}

fn seqpacket() -> Result<OwnedFd, WireError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("creating a Unix socket"))
}

/// Bounds every later send and receive on `fd` by `timeout`.
pub fn set_timeout(fd: &OwnedFd, timeout: Duration) -> Result<(), WireError> {
    let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros().max(1) as _);
    setsockopt(fd, sockopt::ReceiveTimeout, &tv).map_err(sys("SO_RCVTIMEO"))?;
    setsockopt(fd, sockopt::SendTimeout, &tv).map_err(sys("SO_SNDTIMEO"))
}

pub fn send<T: Serialize>(
    fd: &OwnedFd,
    msg: &T,
    pass: Option<BorrowedFd<'_>>,
) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::Oversize(body.len()));
    }
    let raw: Vec<RawFd> = pass.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(&body)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(sys("sending on the hand-over socket"))?;
    Ok(())
}

/// One message and the descriptor that came with it (close-on-exec, owned).
pub fn recv<T: DeserializeOwned>(fd: &OwnedFd) -> Result<(T, Option<OwnedFd>), WireError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let (len, passed) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(sys("receiving on the hand-over socket"))?;
        let mut passed = Vec::new();
        for c in msg.cmsgs().map_err(sys("reading passed descriptors"))? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // Safety: the kernel just installed these descriptors in this process; each is
                // owned here exactly once.
                #[allow(unsafe_code)]
                passed.extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(WireError::Truncated);
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(WireError::Oversize(MAX_MESSAGE + 1));
        }
        (msg.bytes, passed)
    };
    if len == 0 {
        return Err(WireError::Closed);
    }
    if passed.len() > 1 {
        return Err(WireError::TooManyFds);
    }
    let msg = serde_json::from_slice(&buf[..len])?;
    Ok((msg, passed.into_iter().next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_message_arrives_whole_with_its_descriptor() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        send(&a, &"hello", Some(std::os::fd::AsFd::as_fd(&file))).unwrap();
        send(&a, &42u32, None).unwrap();
        let (m, fd): (String, _) = recv(&b).unwrap();
        assert_eq!(m, "hello");
        assert!(fd.is_some());
        let (n, fd): (u32, _) = recv(&b).unwrap();
        assert_eq!((n, fd.is_none()), (42, true));
    }

    #[test]
    fn garbage_silence_and_a_closed_peer_are_errors() {
        let (a, b) = pair();
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"\xff not json")],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(recv::<u32>(&b), Err(WireError::Json(_))));
        set_timeout(&b, Duration::from_millis(20)).unwrap();
        assert!(matches!(recv::<u32>(&b), Err(WireError::TimedOut)));
        drop(a);
        assert!(matches!(recv::<u32>(&b), Err(WireError::Closed)));
    }

    #[test]
    fn an_oversize_message_is_refused_on_both_ends() {
        let (a, b) = pair();
        let big = "x".repeat(MAX_MESSAGE + 10);
        assert!(matches!(send(&a, &big, None), Err(WireError::Oversize(_))));
        socket::setsockopt(&a, sockopt::SndBuf, &(4 * MAX_MESSAGE)).unwrap();
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(big.as_bytes())],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(recv::<String>(&b), Err(WireError::Oversize(_))));
    }
}
