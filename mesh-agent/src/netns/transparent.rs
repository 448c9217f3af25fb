//! Delivery from the client's own address: the application's accepted socket shows the client
//! pod's IP (and, where the tunnel carries it, its port) instead of the mesh's 127.0.0.6.
//!
//! The agent's last hop to the application is a socket in the pod's netns with IP_TRANSPARENT,
//! bound to the client's address, marked [`DELIVERY_MARK`]. Three pieces of pod state make the
//! application's replies to that address come back to it rather than leave by the pod's default
//! route toward a client that is not on the wire there, all set once per pod at enrollment and
//! none per connection:
//! - `net.ipv4.tcp_fwmark_accept = 1`: an accepted socket takes the mark of the SYN that opened
//!   it, so the application's socket (and its SYN-ACK) carries [`DELIVERY_MARK`]. Only the
//!   agent's delivery sets that mark in a pod; every other connection is accepted with mark 0,
//!   as before. `net.ipv4.fwmark_reflect = 1` does the same for what the kernel answers
//!   without a socket (the RST from a closed port);
//! - the policy rule `fwmark DELIVERY_MARK lookup TABLE` (IPv4 and IPv6);
//! - in that table, `local default dev lo`: what carries the mark is delivered locally, to the
//!   agent's socket, which owns the 4-tuple.
//!
//! No iptables, no conntrack and no per-connection entry: nothing to clean up when a connection
//! closes, nothing that a pod's traffic without the mark meets. The one kernel entry per
//! connection is brief: sk_lookup would steer the delivery's SYN (from a non-loopback source)
//! to the pod's :15006 like any inbound connection, so the agent enters the connect in the
//! `WEFT_DELIVER` map for the time of the connect (`Maps::add_delivery`).
//!
//! Why not a TC program on the pod's interface, as the issue suggests: the replies are routed
//! at the socket, before TC egress sees them, so TC would have to redirect them back into the
//! pod's stack, where they would need the same policy route to be taken as local. The mark on
//! the socket reaches the same end one step earlier, for every packet of the connection.
//!
//! Where something this needs is missing (IP_TRANSPARENT without CAP_NET_ADMIN, a procfs that
//! cannot be written, a kernel without policy routing), the pod is delivered from 127.0.0.6 as
//! before; the missing piece is named once per pod (`Delivery::Loopback`), in the agent's log,
//! `/config_dump` and `meshctl explain`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use mesh_common::{delivery, DELIVERY_MARK, INBOUND_DELIVERY_SOURCE};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
use socket2::{Domain, Protocol, Type};
use tokio::net::TcpStream;

use super::Netns;
use crate::{config::CONNECT_TIMEOUT, redirect::Maps};

/// How a pod's inbound connections reach its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// From the client's address (see the module).
    ClientAddress,
    /// From 127.0.0.6: `missing` names what the kernel or the agent's privileges lack.
    Loopback { missing: String },
}

impl Delivery {
    /// What `meshctl explain` and `/config_dump` say the application sees.
    pub fn describe(&self) -> String {
        match self {
            Delivery::ClientAddress => "the client's address".into(),
            Delivery::Loopback { missing } => format!("127.0.0.6 (missing: {missing})"),
        }
    }
}

/// Where the sysctls are written: /proc/sys, or the host's procfs at /host/proc in a container
/// (as `ports`). Either shows the netns of the thread that opens it.
const PROCFS: [&str; 2] = ["/proc/sys", "/host/proc/sys"];
/// `tcp_fwmark_accept`, and `fwmark_reflect`: a reply the kernel makes without a socket (the
/// RST from a closed port of the application) carries the mark of what it answers, so a
/// delivery to a closed port is refused at once instead of timing out. Neither changes
/// anything for a packet without a mark. The IPv6 one is best effort.
const SYSCTLS: [(&str, bool); 3] = [
    ("net/ipv4/tcp_fwmark_accept", true),
    ("net/ipv4/fwmark_reflect", true),
    ("net/ipv6/fwmark_reflect", false),
];

/// The kernel answers rtnetlink synchronously; this only bounds a kernel that does not.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// `lo` is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Readies the pod's netns for delivery from client addresses (idempotent: a restarted agent
/// finds it done). `pod_ip` decides which address family must work.
/// `WEFT_TEST_NO_TRANSPARENT=FEATURE` makes it report FEATURE as missing, for the tests of the
/// fallback (a kernel without these features is not at hand); nothing else reads it.
pub fn prepare(netns: &Netns, pod_ip: IpAddr) -> Delivery {
    if let Some(feature) = std::env::var("WEFT_TEST_NO_TRANSPARENT")
        .ok()
        .filter(|f| !f.is_empty())
    {
        return Delivery::Loopback {
            missing: format!("{feature} (WEFT_TEST_NO_TRANSPARENT)"),
        };
    }
    match netns.run(|| prepare_here(pod_ip)) {
        Ok(Ok(())) => Delivery::ClientAddress,
        Ok(Err(missing)) => Delivery::Loopback { missing },
        Err(e) => Delivery::Loopback {
            missing: format!("entering the pod's netns: {e}"),
        },
    }
}

/// Removes the pod's rule and route (the pod leaves the mesh). `tcp_fwmark_accept` stays: it
/// changes nothing for a SYN without a mark, and the agent cannot know who else set it.
pub fn release(netns: &Netns) {
    let _ = netns.run(|| {
        let Ok(nl) = open() else { return };
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let _ = request(&nl, RouteNetlinkMessage::DelRule(rule(family)), 0);
            let _ = request(&nl, RouteNetlinkMessage::DelRoute(local_route(family)), 0);
        }
    });
}

fn prepare_here(pod_ip: IpAddr) -> Result<(), String> {
    let probe = socket2::Socket::new(
        Domain::for_address(SocketAddr::new(pod_ip, 0)),
        Type::STREAM,
        None,
    )
    .map_err(|e| format!("a TCP socket in the pod: {e}"))?;
    set_transparent(&probe, pod_ip.is_ipv6())
        .map_err(|e| format!("IP_TRANSPARENT (needs CAP_NET_ADMIN): {e}"))?;
    for (name, needed) in SYSCTLS {
        if let (Err(e), true) = (write_sysctl(name), needed) {
            return Err(format!("{}: {e}", name.replace('/', ".")));
        }
    }
    let nl = open().map_err(|e| format!("rtnetlink: {e}"))?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let needed = matches!(
            (family, pod_ip),
            (AddressFamily::Inet, IpAddr::V4(_)) | (AddressFamily::Inet6, IpAddr::V6(_))
        );
        let done = add(&nl, RouteNetlinkMessage::NewRule(rule(family)))
            .map_err(|e| format!("policy routing (ip rule fwmark, CONFIG_IP_MULTIPLE_TABLES): {e}"))
            .and_then(|()| {
                add(&nl, RouteNetlinkMessage::NewRoute(local_route(family)))
                    .map_err(|e| format!("a local route in table {}: {e}", delivery::TABLE))
            });
        // The other family is best effort: a pod with IPv6 disabled still delivers IPv4.
        if let (Err(e), true) = (done, needed) {
            return Err(e);
        }
    }
    Ok(())
}

fn write_sysctl(name: &str) -> io::Result<()> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no procfs");
    for root in PROCFS {
        let path = format!("{root}/{name}");
        let path = path.as_str();
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return Ok(());
        }
        match std::fs::write(path, "1") {
            Ok(()) => return Ok(()),
            Err(e) => last = io::Error::new(e.kind(), format!("{path}: {e}")),
        }
    }
    Err(last)
}

/// IP_TRANSPARENT / IPV6_TRANSPARENT: neither nix nor socket2 0.5 offers the IPv6 one.
#[allow(unsafe_code)]
fn set_transparent(s: &impl AsRawFd, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    let on: libc::c_int = 1;
    // Safety: a valid fd and an int option of the documented size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fwmark DELIVERY_MARK lookup TABLE priority RULE_PRIORITY`.
fn rule(family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader {
        family,
        action: RuleAction::ToTable,
        ..RuleHeader::default()
    };
    m.attributes = vec![
        RuleAttribute::Priority(delivery::RULE_PRIORITY),
        RuleAttribute::FwMark(DELIVERY_MARK),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(delivery::TABLE),
    ];
    m
}

/// `local default dev lo table TABLE`.
fn local_route(family: AddressFamily) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    let any: IpAddr = match family {
        AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        _ => Ipv4Addr::UNSPECIFIED.into(),
    };
    m.attributes = vec![
        RouteAttribute::Table(delivery::TABLE),
        RouteAttribute::Destination(RouteAddress::from(any)),
        RouteAttribute::Oif(LOOPBACK_IFINDEX),
    ];
    m
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(socket)
}

/// Adds a rule or route; one that is there already is success.
fn add(nl: &Socket, msg: RouteNetlinkMessage) -> io::Result<()> {
    match request(nl, msg, NLM_F_CREATE | NLM_F_EXCL) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Sends one request and reads the kernel's acknowledgement.
fn request(nl: &Socket, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    nl.send(&buf, 0)?;
    let mut answer = vec![0u8; 8192];
    let n = nl.recv(&mut &mut answer[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n.min(answer.len())])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}

/// Connects to the application at `app` inside the pod from `client` (IP_TRANSPARENT), within
/// CONNECT_TIMEOUT. Port 0 in `client` lets the kernel choose one; `avoid` is a port the
/// delivery must not take (a plaintext client's own: the agent's accepted socket holds the
/// 4-tuple the application's socket would get).
pub async fn connect(
    netns: &Netns,
    maps: &Maps,
    app: SocketAddr,
    client: SocketAddr,
    avoid: Option<u16>,
) -> io::Result<TcpStream> {
    let prepared = netns
        .run(|| bound_socket(client, avoid))
        .and_then(|r| r)
        .and_then(|(socket, bound)| match maps.add_delivery(app, bound) {
            Ok(()) => Ok((socket, bound)),
            Err(e) => Err(io::Error::other(e.to_string())),
        });
    let (socket, bound) = match prepared {
        Ok(p) => p,
        // Nothing was sent yet: this connection is delivered as without the feature.
        Err(e) => {
            tracing::debug!(%client, error = %e, "delivery from the client's address unavailable; from 127.0.0.6");
            let loopback = SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0);
            let bind = app.is_ipv4().then_some(loopback);
            return super::socket::connect_from_pod(netns, app, bind).await;
        }
    };
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let r = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(app)).await;
    maps.remove_delivery(app, bound);
    match r {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {app} from {bound} timed out after {CONNECT_TIMEOUT:?}"),
        )),
    }
}

/// A transparent delivery socket bound to `client`, and the address it got. The client's own
/// port is taken when free; a port held by an earlier connection (its TIME_WAIT) or `avoid`
/// gives way to one the kernel chooses.
fn bound_socket(
    client: SocketAddr,
    avoid: Option<u16>,
) -> io::Result<(socket2::Socket, SocketAddr)> {
    let mut want = client;
    if avoid == Some(want.port()) {
        want.set_port(0);
    }
    for _ in 0..3 {
        let s = socket2::Socket::new(
            Domain::for_address(client),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_mark(DELIVERY_MARK)?;
        set_transparent(&s, client.is_ipv6())?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        match s.bind(&want.into()) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && want.port() != 0 => {
                want.set_port(0);
                continue;
            }
            r => r?,
        }
        let bound = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("delivery socket has no address"))?;
        if avoid == Some(bound.port()) {
            continue;
        }
        return Ok((s, bound));
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no port free for a delivery from {}", client.ip()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkDeserializable, NetlinkSerializable};

    /// The messages round-trip through the crate's own parser with the attributes `ip rule`
    /// and `ip route` would send.
    #[test]
    fn rule_and_route_carry_mark_table_and_loopback() {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let msg = RouteNetlinkMessage::NewRule(rule(family));
            let mut buf = vec![0; msg.buffer_len()];
            msg.serialize(&mut buf);
            let mut header = NetlinkHeader::default();
            header.message_type = msg.message_type();
            let back = RouteNetlinkMessage::deserialize(&header, &buf).unwrap();
            let RouteNetlinkMessage::NewRule(r) = back else {
                panic!("not a rule")
            };
            assert!(r.attributes.contains(&RuleAttribute::FwMark(DELIVERY_MARK)));
            assert!(r
                .attributes
                .contains(&RuleAttribute::Table(delivery::TABLE)));
            assert_eq!(r.header.action, RuleAction::ToTable);
            let route = local_route(family);
            assert_eq!(route.header.kind, RouteType::Local);
            assert!(route
                .attributes
                .contains(&RouteAttribute::Oif(LOOPBACK_IFINDEX)));
        }
    }

    #[test]
    fn fallback_names_what_is_missing() {
        let d = Delivery::Loopback {
            missing: "IP_TRANSPARENT".into(),
        };
        assert_eq!(d.describe(), "127.0.0.6 (missing: IP_TRANSPARENT)");
        assert_eq!(Delivery::ClientAddress.describe(), "the client's address");
    }
}
