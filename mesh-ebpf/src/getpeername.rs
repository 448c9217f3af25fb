//! `cgroup/getpeername4` and `cgroup/getpeername6`: a captured socket reports its original peer,
//! not the agent's in-pod listener, so applications that log or check their peer see the truth.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
    EbpfContext as _,
};
use mesh_common::{SockAddr, AF_INET, AF_INET6};

use crate::maps::ORIG_BY_COOKIE;

const OK: i32 = 1;

fn original(ctx: &SockAddrContext) -> Option<SockAddr> {
    // Safety: bpf_get_socket_cookie is allowed for cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Safety: the value is copied out before the program returns.
    unsafe { ORIG_BY_COOKIE.get(cookie).copied() }
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx) {
        if orig.family == AF_INET {
            // Safety: getpeername4 may rewrite user_ip4/user_port.
            unsafe {
                (*ctx.sock_addr).user_ip4 = orig.addr[0];
                (*ctx.sock_addr).user_port = u32::from(orig.port.to_be());
            }
        }
    }
    OK
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = original(&ctx) {
        let words = if orig.family == AF_INET6 {
            orig.addr
        } else {
            // The socket is IPv6 but the connection IPv4: report the v4-mapped form.
            [0, 0, u32::from_be(0xffff), orig.addr[0]]
        };
        // Safety: getpeername6 may rewrite user_ip6/user_port.
        unsafe {
            (*ctx.sock_addr).user_ip6 = words;
            (*ctx.sock_addr).user_port = u32::from(orig.port.to_be());
        }
    }
    OK
}
