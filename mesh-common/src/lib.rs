//! Types and constants shared by Weft's eBPF programs (`mesh-ebpf`) and its node agent.
//!
//! Every map key and value here is `#[repr(C)]`, `Copy`, and laid out with no implicit padding:
//! the kernel hashes keys byte by byte, so an uninitialised padding byte would make two equal keys
//! differ. Sizes are asserted at compile time below.
//!
//! Byte order, once for all maps: IPv4/IPv6 address words are kept exactly as the kernel stores
//! them (network order in memory); ports are kept in host order.
#![cfg_attr(not(test), no_std)]

/// The layout of Weft's kernel state (map names, key and value structs, program names and
/// pin paths). Bumped whenever any of it changes. Pins record the layout that wrote them and
/// the oldest layout able to read them; an agent adopts pins when each side can read the
/// other's (see the agent's `redirect::layout`).
pub mod layout {
    /// This build's layout.
    pub const VERSION: u32 = 1;
    /// The oldest layout whose pins this build can adopt, and which can adopt this build's:
    /// one below `VERSION` where a migration exists, so a one-version downgrade works too.
    pub const COMPATIBLE_FROM: u32 = 1;
}

pub mod ports {
    /// In-pod outbound capture listener (127.0.0.1 / ::1 inside the pod's netns).
    pub const OUTBOUND: u16 = 15001;
    /// In-pod inbound plaintext capture listener.
    pub const INBOUND: u16 = 15006;
    /// In-pod HBONE listener (mTLS + HTTP/2 CONNECT).
    pub const HBONE: u16 = 15008;
    /// Node admin endpoint (127.0.0.1 in the node's netns).
    pub const ADMIN: u16 = 15000;
    /// Node Prometheus endpoint.
    pub const METRICS: u16 = 15020;
    /// The agent's own ports: never a tunnel's target (a CONNECT to one would tunnel into the
    /// agent itself), whatever a peer asks.
    pub const AGENT_OWN: [u16; 5] = [OUTBOUND, INBOUND, HBONE, ADMIN, METRICS];
    /// Ports on a pod address that inbound steering never touches.
    pub const INBOUND_PASSTHROUGH: [u16; 5] = AGENT_OWN;
}

/// `SO_MARK` the agent sets on every socket it opens, so that the connect hooks never capture the
/// agent's own onward connections even if the agent shares a cgroup with a pod.
pub const AGENT_MARK: u32 = 0x5746_0001;

/// The bit that tells a delivery socket (the agent's last hop to the application, bound to the
/// client's address) from the agent's other sockets; its mark is [`DELIVERY_MARK`].
pub const DELIVERY_BIT: u32 = 0x2;

/// `SO_MARK` of the agent's delivery sockets. The application's accepted socket inherits it
/// from the SYN (`net.ipv4.tcp_fwmark_accept` in the pod), and a policy rule in the pod routes
/// what carries it to `lo` ([`delivery`]): the replies to a client address that is not on the
/// wire come back to the agent instead of leaving the pod.
pub const DELIVERY_MARK: u32 = AGENT_MARK | DELIVERY_BIT;

/// Is `mark` one of the agent's own (a capture hook leaves such a socket alone)?
#[inline(always)]
pub const fn is_agent_mark(mark: u32) -> bool {
    mark & !DELIVERY_BIT == AGENT_MARK
}

/// The policy routing a pod gets for delivery from the client's address.
pub mod delivery {
    /// The routing table holding `local default dev lo` (IPv4 and IPv6).
    pub const TABLE: u32 = 0x5746;
    /// The rule `fwmark DELIVERY_MARK lookup TABLE`, before the main table (32766).
    pub const RULE_PRIORITY: u32 = 32_700;
}

/// Source address the agent uses to deliver inbound connections to the application
/// (the same convention as Istio's inbound passthrough).
pub const INBOUND_DELIVERY_SOURCE: [u8; 4] = [127, 0, 0, 6];

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u32 = 6;

/// Names of the programs in the eBPF object (their ELF symbol names).
pub mod programs {
    pub const CONNECT4: &str = "weft_connect4";
    pub const CONNECT6: &str = "weft_connect6";
    pub const GETPEERNAME4: &str = "weft_getpeername4";
    pub const GETPEERNAME6: &str = "weft_getpeername6";
    pub const SOCK_OPS: &str = "weft_sock_ops";
    pub const SK_MSG: &str = "weft_sk_msg";
    pub const SK_LOOKUP: &str = "weft_sk_lookup";
}

/// Names of the maps (pinned by these names under the agent's bpffs directory).
/// Kernel object names are limited to 15 characters.
pub mod maps {
    /// LRU hash, socket cookie → [`crate::SockAddr`]: original destination recorded by connect4/6,
    /// read by getpeername4/6, deleted by sock_ops when the socket closes.
    pub const ORIG_BY_COOKIE: &str = "WEFT_ORIG_CK";
    /// LRU hash, [`crate::FlowKey`] of the application socket → original destination;
    /// written by sock_ops at ESTABLISHED, read (and deleted) by the agent on accept.
    pub const ORIG_BY_FLOW: &str = "WEFT_ORIG_FLOW";
    /// Sockhash, [`crate::PairKey`] → socket: the two in-pod loopback legs of a captured connection.
    pub const SOCKS: &str = "WEFT_SOCKS";
    /// LRU hash, [`crate::PairKey`] → u32: application sockets whose bytes already took the TCP
    /// path; they stay on it so that no byte is reordered.
    pub const SLOW: &str = "WEFT_SLOW";
    /// Sockhash, [`crate::SockAddr`] (pod address, port 0) → the agent's in-pod :15006 listener.
    pub const INBOUND_LISTENERS: &str = "WEFT_INBOUND";
    /// Hash, [`crate::SockAddr`] (pod address, port 0) → [`crate::PodEntry`]: enrolled pods.
    pub const PODS: &str = "WEFT_PODS";
    /// LPM tries (IPv4 and IPv6) of destination ranges never captured.
    pub const EXCLUDED_V4: &str = "WEFT_EXCL_V4";
    pub const EXCLUDED_V6: &str = "WEFT_EXCL_V6";
    /// Hash, destination port (host order) → u32: destination ports never captured.
    pub const EXCLUDED_PORTS: &str = "WEFT_EXCL_PORTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::stats`].
    pub const STATS: &str = "WEFT_STATS";
    /// Array of one u32: [`crate::CONFIG_SPLICE`] and future switches, set by the agent.
    pub const CONFIG: &str = "WEFT_CONFIG";
    /// Delivery connects in flight (`PairKey` with netns 0: the pod's address and port, the
    /// client's address and port it is bound to) that sk_lookup must leave to the application.
    pub const DELIVERIES: &str = "WEFT_DELIVER";
}

/// Sizes of the maps. LRU maps bound memory even if a cleanup path is missed.
pub mod limits {
    pub const CONNECTIONS: u32 = 65_536;
    pub const PODS: u32 = 1_024;
    pub const EXCLUDED_RANGES: u32 = 256;
    pub const EXCLUDED_PORTS: u32 = 256;
    /// Delivery connects in flight on a node (not LRU: a full map makes the agent deliver from
    /// 127.0.0.6 rather than evict an entry and let sk_lookup steer its own delivery).
    pub const DELIVERIES: u32 = 16_384;
}

/// Indexes into the [`maps::STATS`] per-CPU array.
pub mod stats {
    /// connect4/6 rewrote a connect to the outbound capture listener.
    pub const CONNECT_REDIRECTED: u32 = 0;
    /// connect4/6 left a connect alone (loopback, excluded, agent's own).
    pub const CONNECT_SKIPPED: u32 = 1;
    /// connect4/6 could not record the original destination and refused the connect.
    pub const CONNECT_FAILED_CLOSED: u32 = 2;
    /// sock_ops recorded an established captured connection.
    pub const ESTABLISHED: u32 = 3;
    /// sk_msg spliced a message straight to the peer socket.
    pub const MSG_SPLICED: u32 = 4;
    /// sk_msg let a message take the TCP path.
    pub const MSG_PASSED: u32 = 5;
    /// sk_lookup steered a connection to the inbound capture listener.
    pub const INBOUND_STEERED: u32 = 6;
    /// sk_lookup refused a connection to an enrolled pod whose agent is not listening.
    pub const INBOUND_REFUSED: u32 = 7;
    pub const COUNT: u32 = 8;
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_redirected",
        "connect_skipped",
        "connect_failed_closed",
        "established",
        "msg_spliced",
        "msg_passed",
        "inbound_steered",
        "inbound_refused",
    ];
}

/// A socket address. IPv4 uses `addr[0]`, the rest is zero; IPv4-mapped IPv6 addresses are
/// normalised to IPv4 so that both ends of a loopback leg agree on the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAddr {
    /// Address words as stored by the kernel (network order in memory).
    pub addr: [u32; 4],
    /// Port in host order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

impl SockAddr {
    pub const fn v4(addr: u32, port: u16) -> Self {
        Self {
            addr: [addr, 0, 0, 0],
            port,
            family: AF_INET,
        }
    }

    /// An IPv6 address; IPv4-mapped ones (`::ffff:a.b.c.d`) become IPv4.
    pub fn v6(addr: [u32; 4], port: u16) -> Self {
        if is_v4_mapped(addr) {
            Self::v4(addr[3], port)
        } else {
            Self {
                addr,
                port,
                family: AF_INET6,
            }
        }
    }

    /// The same address with port 0: the key of per-pod maps.
    pub const fn host(self) -> Self {
        Self { port: 0, ..self }
    }
}

/// True for `::ffff:0:0/96`.
pub fn is_v4_mapped(addr: [u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

/// One end of a connection inside one network namespace. Cgroup hooks see every netns, and
/// 127.0.0.1:port repeats in each pod, so the netns cookie is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub netns: u64,
    pub addr: SockAddr,
    pub _pad: u32,
}

/// Both ends of a connection, as seen from the socket that owns the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub netns: u64,
    pub local: SockAddr,
    pub remote: SockAddr,
}

impl PairKey {
    /// The key of the socket at the other end.
    pub const fn peer(self) -> Self {
        Self {
            netns: self.netns,
            local: self.remote,
            remote: self.local,
        }
    }
}

/// What the kernel needs to know about an enrolled pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    /// Netns cookie of the pod's network namespace.
    pub netns: u64,
    /// Bit flags, [`POD_FLAG_ENROLLED`].
    pub flags: u32,
    pub _pad: u32,
}

pub const POD_FLAG_ENROLLED: u32 = 1;

/// Bit in the CONFIG map: splice same-node loopback legs with sk_msg (off unless the agent is
/// started with --splice; see the agent's README section on splicing for why).
pub const CONFIG_SPLICE: u32 = 1;

const _: () = {
    assert!(core::mem::size_of::<SockAddr>() == 20);
    assert!(core::mem::size_of::<FlowKey>() == 32);
    assert!(core::mem::size_of::<PairKey>() == 48);
    assert!(core::mem::size_of::<PodEntry>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    // Safety: all four are repr(C), Copy, and have no padding (sizes asserted above), so every
    // byte pattern is a valid value and no uninitialised byte reaches the kernel.
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::PodEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_addresses_normalise_to_ipv4() {
        let mapped = [
            0,
            0,
            u32::from_be(0xffff),
            u32::from_ne_bytes([10, 0, 0, 7]),
        ];
        let a = SockAddr::v6(mapped, 80);
        assert_eq!(a, SockAddr::v4(u32::from_ne_bytes([10, 0, 0, 7]), 80));
        let native = [u32::from_be(0xfd00_0000), 0, 0, u32::from_be(1)];
        assert_eq!(SockAddr::v6(native, 80).family, AF_INET6);
    }

    #[test]
    fn peer_key_swaps_ends() {
        let k = PairKey {
            netns: 9,
            local: SockAddr::v4(1, 2),
            remote: SockAddr::v4(3, 4),
        };
        assert_eq!(k.peer().local, k.remote);
        assert_eq!(k.peer().peer(), k);
    }
}
