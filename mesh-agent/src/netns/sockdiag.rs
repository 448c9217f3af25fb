//! Freeing a mesh port held by a TIME_WAIT in a pod's netns.
//!
//! Reserving the mesh's ports (`ports.rs`) keeps new sockets of the pod off them, but a
//! TIME_WAIT left on 15006 or 15008 by a pod socket from before the agent first enrolled the
//! pod still refuses the agent's wildcard bind, for up to 60 s. A TIME_WAIT belongs to no
//! application (its socket is closed), so the agent destroys it with NETLINK_SOCK_DIAG
//! SOCK_DESTROY, as `ss -K state time-wait` does: a dump of the pod's TCP sockets in state
//! TIME_WAIT, then one destroy per socket on the port, named by its full id and cookie, so a
//! live socket that reuses the 4-tuple meanwhile is never hit. Messages come from the
//! rust-netlink crates; the netlink socket is created inside the pod's netns, whose sockets
//! it then sees.

use std::{io, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_TIME_WAIT},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::Netns;

/// The kernel answers sock_diag synchronously; this only bounds a kernel that does not.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// Large enough for one dump datagram (the kernel fills at most about 32 KiB per recv).
const RECV_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the kernel cannot destroy sockets (SOCK_DESTROY needs CONFIG_INET_DIAG_DESTROY): {0}"
    )]
    Unsupported(io::Error),
    #[error("sock_diag netlink: {0}")]
    Io(#[from] io::Error),
    #[error("sock_diag netlink: undecodable answer from the kernel: {0}")]
    Decode(String),
}

/// Destroys the TCP sockets (IPv4 and IPv6) in state TIME_WAIT whose local port is `port`, in
/// the pod's netns. Returns how many were destroyed (one that expired meanwhile is not counted).
pub fn destroy_time_wait(netns: &Netns, port: u16) -> Result<usize, Error> {
    let socket = netns.run(open)??;
    let mut destroyed = 0;
    for family in [AF_INET, AF_INET6] {
        for id in time_waits(&socket, family, port)? {
            if destroy(&socket, family, id)? {
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(socket)
}

/// The request for `family`'s TCP sockets in state TIME_WAIT (`socket_id` unset: a dump), or
/// for one socket (`socket_id` from the dump: a destroy).
fn time_wait_request(family: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::TIME_WAIT,
        socket_id,
    })
}

fn encode<I: NetlinkSerializable>(payload: I, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn dump_request(family: u8) -> Vec<u8> {
    let any = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    encode(time_wait_request(family, any), NLM_F_REQUEST | NLM_F_DUMP)
}

fn destroy_request(family: u8, id: SocketId) -> Vec<u8> {
    let msg = SockDiagDestroy::new(time_wait_request(family, id));
    encode(msg, NLM_F_REQUEST | NLM_F_ACK)
}

/// The ids of `family`'s TIME_WAIT sockets on local port `port`.
fn time_waits(socket: &Socket, family: u8, port: u16) -> Result<Vec<SocketId>, Error> {
    socket.send(&dump_request(family), 0)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if parse_dump(&buf[..n.min(buf.len())], port, &mut found)? {
            return Ok(found);
        }
    }
}

/// Reads one datagram of a dump, adding the TIME_WAIT sockets on `port` to `found`. True when
/// the dump is complete.
fn parse_dump(mut datagram: &[u8], port: u16, found: &mut Vec<SocketId>) -> Result<bool, Error> {
    while !datagram.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(datagram)
            .map_err(|e| Error::Decode(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let h = &r.header;
                // The kernel filters by state already; checked again, as a live socket must
                // never be destroyed.
                if h.state == TCP_TIME_WAIT && h.socket_id.source_port == port {
                    found.push(h.socket_id.clone());
                }
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(Error::Io(e.to_io())),
            _ => {}
        }
        // Messages are 4-byte aligned within a datagram.
        let len = (msg.header.length as usize).next_multiple_of(4);
        if len == 0 || len > datagram.len() {
            break;
        }
        datagram = &datagram[len..];
    }
    Ok(false)
}

/// Destroys one socket. False when it is gone already (its TIME_WAIT expired).
fn destroy(socket: &Socket, family: u8, id: SocketId) -> Result<bool, Error> {
    socket.send(&destroy_request(family, id), 0)?;
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut &mut buf[..], 0)?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n.min(buf.len())])
        .map_err(|e| Error::Decode(e.to_string()))?;
    let NetlinkPayload::Error(ack) = msg.payload else {
        return Err(Error::Decode(format!(
            "expected an ack, got {:?}",
            msg.payload
        )));
    };
    ack_result(ack.code.map(|c| c.get().abs()))
}

/// The outcome of a destroy from the ack's errno (None: done).
fn ack_result(errno: Option<i32>) -> Result<bool, Error> {
    match errno {
        None => Ok(true),
        Some(libc::ENOENT) => Ok(false),
        Some(libc::EOPNOTSUPP) => Err(Error::Unsupported(io::Error::from_raw_os_error(
            libc::EOPNOTSUPP,
        ))),
        Some(e) => Err(Error::Io(io::Error::from_raw_os_error(e))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use netlink_packet_core::DoneMessage;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader};

    use super::*;

    fn socket_id(src: &str, sport: u16, cookie: u8) -> SocketId {
        SocketId {
            source_port: sport,
            destination_port: 8080,
            source_address: src.parse().unwrap(),
            destination_address: src.parse::<IpAddr>().unwrap(),
            interface_id: 0,
            cookie: [cookie; 8],
        }
    }

    fn response(state: u8, id: SocketId) -> Vec<u8> {
        let family = if id.source_address.is_ipv6() {
            AF_INET6
        } else {
            AF_INET
        };
        let r = InetResponse {
            header: InetResponseHeader {
                family,
                state,
                timer: None,
                socket_id: id,
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 0,
            },
            nlas: Default::default(),
        };
        let mut flags = NetlinkHeader::default();
        flags.flags = libc::NLM_F_MULTI as u16;
        let mut msg = NetlinkMessage::new(
            flags,
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(Box::new(r))),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn done() -> Vec<u8> {
        let mut msg = NetlinkMessage::<SockDiagMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(DoneMessage::default()),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn the_dump_asks_for_tcp_time_wait_sockets_only() {
        let req = dump_request(AF_INET6);
        // struct nlmsghdr, then struct inet_diag_req_v2.
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(
            u16::from_ne_bytes(req[4..6].try_into().unwrap()),
            20,
            "SOCK_DIAG_BY_FAMILY"
        );
        let flags = u16::from_ne_bytes(req[6..8].try_into().unwrap());
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(&req[16..20], &[AF_INET6, IPPROTO_TCP, 0, 0]);
        let states = u32::from_ne_bytes(req[20..24].try_into().unwrap());
        assert_eq!(states, 1 << TCP_TIME_WAIT, "TIME_WAIT and nothing else");
        assert_eq!(req.len(), 16 + 56);
    }

    #[test]
    fn a_destroy_names_one_socket_by_its_id_and_cookie() {
        let id = socket_id("10.0.0.2", 15008, 7);
        let req = destroy_request(AF_INET, id.clone());
        assert_eq!(
            u16::from_ne_bytes(req[4..6].try_into().unwrap()),
            21,
            "SOCK_DESTROY"
        );
        let flags = u16::from_ne_bytes(req[6..8].try_into().unwrap());
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        let states = u32::from_ne_bytes(req[20..24].try_into().unwrap());
        assert_eq!(states, 1 << TCP_TIME_WAIT);
        // inet_diag_sockid: sport, dport (big endian), src[16], dst[16], if, cookie[2].
        assert_eq!(&req[24..26], &15008u16.to_be_bytes());
        assert_eq!(&req[28..32], &[10, 0, 0, 2]);
        assert_eq!(&req[64..72], &[7; 8], "the cookie from the dump");
    }

    #[test]
    fn only_time_waits_on_the_port_are_picked_from_a_dump() {
        let mut datagram = Vec::new();
        datagram.extend(response(TCP_TIME_WAIT, socket_id("10.0.0.2", 15008, 1)));
        datagram.extend(response(TCP_TIME_WAIT, socket_id("10.0.0.2", 40000, 2)));
        // A live socket on the port (the kernel would not send it; it must not be picked).
        datagram.extend(response(1, socket_id("10.0.0.2", 15008, 3)));
        datagram.extend(response(TCP_TIME_WAIT, socket_id("fd00::2", 15008, 4)));
        let mut found = Vec::new();
        assert!(
            !parse_dump(&datagram, 15008, &mut found).unwrap(),
            "not done yet"
        );
        let cookies: Vec<u8> = found.iter().map(|id| id.cookie[0]).collect();
        assert_eq!(cookies, [1, 4]);
        assert!(parse_dump(&done(), 15008, &mut found).unwrap(), "done");
        assert!(parse_dump(b"\x05\0\0\0", 15008, &mut found).is_err());
    }

    #[test]
    fn acks_tell_done_gone_and_unsupported_apart() {
        assert!(ack_result(None).unwrap());
        assert!(
            !ack_result(Some(libc::ENOENT)).unwrap(),
            "expired meanwhile"
        );
        assert!(matches!(
            ack_result(Some(libc::EOPNOTSUPP)),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(ack_result(Some(libc::EPERM)), Err(Error::Io(_))));
    }
}
