//! `cgroup/connect4` and `cgroup/connect6`: rewrite TCP connects of an enrolled pod's processes to
//! the agent's in-pod outbound listener, recording the original destination by socket cookie.
//!
//! Attached to each enrolled pod's cgroup, so only that pod's sockets get here. Skipped: non-TCP,
//! loopback and unspecified destinations, the agent's own sockets (SO_MARK), excluded ranges and
//! ports. If the original destination cannot be recorded the connect is refused (fail closed):
//! a rewritten connect without its destination could not be routed.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
    EbpfContext as _,
};
use mesh_common::{is_agent_mark, is_v4_mapped, ports, stats, SockAddr, AF_INET, IPPROTO_TCP};

use crate::maps::{count, excluded, ORIG_BY_COOKIE};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

enum Verdict {
    Skip,
    Capture(SockAddr),
}

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    match classify(&ctx, dst4(&ctx)) {
        Verdict::Skip => skip(),
        Verdict::Capture(orig) => {
            if record(&ctx, &orig).is_err() {
                return refuse();
            }
            // Safety: the verifier grants write access to user_ip4/user_port in connect4.
            unsafe {
                (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                (*ctx.sock_addr).user_port = u32::from(ports::OUTBOUND.to_be());
            }
            count(stats::CONNECT_REDIRECTED);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    // Safety: user_ip6 is readable in connect6.
    let words = unsafe { (*ctx.sock_addr).user_ip6 };
    let dst = SockAddr::v6(words, user_port(&ctx));
    match classify(&ctx, dst) {
        Verdict::Skip => skip(),
        Verdict::Capture(orig) => {
            if record(&ctx, &orig).is_err() {
                return refuse();
            }
            // A v4-mapped destination goes to the IPv4 listener (::ffff:127.0.0.1), a native
            // IPv6 one to the IPv6 listener (::1).
            let target = if is_v4_mapped(words) {
                [
                    0,
                    0,
                    u32::from_be(0xffff),
                    u32::from_ne_bytes([127, 0, 0, 1]),
                ]
            } else {
                [0, 0, 0, u32::from_be(1)]
            };
            // Safety: the verifier grants write access to user_ip6/user_port in connect6.
            unsafe {
                (*ctx.sock_addr).user_ip6 = target;
                (*ctx.sock_addr).user_port = u32::from(ports::OUTBOUND.to_be());
            }
            count(stats::CONNECT_REDIRECTED);
            ALLOW
        }
    }
}

fn dst4(ctx: &SockAddrContext) -> SockAddr {
    // Safety: user_ip4 is readable in connect4.
    SockAddr::v4(unsafe { (*ctx.sock_addr).user_ip4 }, user_port(ctx))
}

fn user_port(ctx: &SockAddrContext) -> u16 {
    // Safety: user_port is readable; it holds the port in network order in its low 16 bits.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

fn classify(ctx: &SockAddrContext, dst: SockAddr) -> Verdict {
    // Safety: protocol and sk are readable in every cgroup_sock_addr program.
    let (protocol, sk) = unsafe {
        (
            (*ctx.sock_addr).protocol,
            (*ctx.sock_addr).__bindgen_anon_1.sk,
        )
    };
    if protocol != IPPROTO_TCP || sk.is_null() {
        return Verdict::Skip;
    }
    // Safety: sk was checked non-null; mark is a readable field of bpf_sock.
    if is_agent_mark(unsafe { (*sk).mark }) {
        return Verdict::Skip;
    }
    if is_local(&dst) || excluded(&dst) {
        return Verdict::Skip;
    }
    Verdict::Capture(dst)
}

/// Loopback and unspecified destinations stay inside the pod.
fn is_local(dst: &SockAddr) -> bool {
    if dst.family == AF_INET {
        let first = dst.addr[0].to_ne_bytes()[0];
        return first == 127 || dst.addr[0] == 0;
    }
    let loopback = [0, 0, 0, u32::from_be(1)];
    dst.addr == loopback || dst.addr == [0; 4]
}

fn record(ctx: &SockAddrContext, orig: &SockAddr) -> Result<(), i32> {
    // Safety: bpf_get_socket_cookie is allowed for cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_BY_COOKIE.insert(cookie, orig, 0)
}

fn skip() -> i32 {
    count(stats::CONNECT_SKIPPED);
    ALLOW
}

fn refuse() -> i32 {
    count(stats::CONNECT_FAILED_CLOSED);
    REFUSE
}
