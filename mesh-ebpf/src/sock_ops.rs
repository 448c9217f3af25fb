//! `sock_ops` on each enrolled pod's cgroup.
//!
//! - TCP_CONNECT: a captured socket (one connect4/6 recorded) asks for state callbacks, so that its
//!   entries are removed however it ends, even if it never connects.
//! - ACTIVE_ESTABLISHED: the original destination moves from the cookie map to a map keyed by the
//!   socket's (netns, local address), where the agent finds it on accept; the socket joins the
//!   sockhash so that sk_msg can splice it to the agent's end.
//! - STATE → CLOSE: all of the socket's entries are removed (no growth under churn).

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use mesh_common::{stats, FlowKey, PairKey, SockAddr, AF_INET, AF_INET6, CONFIG_SPLICE};

use crate::maps::{count, enabled, ORIG_BY_COOKIE, ORIG_BY_FLOW, SLOW, SOCKS};

#[sock_ops]
pub fn weft_sock_ops(ctx: SockOpsContext) -> u32 {
    let family = ctx.family();
    if family != u32::from(AF_INET) && family != u32::from(AF_INET6) {
        return 0;
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    0
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    // Safety: bpf_get_socket_cookie is allowed for sock_ops programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

fn captured(ctx: &SockOpsContext) -> Option<SockAddr> {
    // Safety: the value is copied out before the program returns.
    unsafe { ORIG_BY_COOKIE.get(cookie(ctx)).copied() }
}

/// The socket's two ends, keyed with its netns (127.0.0.1:port repeats in every pod).
fn pair(ctx: &SockOpsContext) -> PairKey {
    // Safety: bpf_get_netns_cookie is allowed for sock_ops programs (Linux 5.15+).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // local_port is host order; remote_port is network order in the u32's upper half.
    let local_port = ctx.local_port() as u16;
    let remote_port = u32::from_be(ctx.remote_port()) as u16;
    let (local, remote) = if ctx.family() == u32::from(AF_INET) {
        (
            SockAddr::v4(ctx.local_ip4(), local_port),
            SockAddr::v4(ctx.remote_ip4(), remote_port),
        )
    } else {
        (
            SockAddr::v6(ctx.local_ip6(), local_port),
            SockAddr::v6(ctx.remote_ip6(), remote_port),
        )
    };
    PairKey {
        netns,
        local,
        remote,
    }
}

fn flow(key: &PairKey) -> FlowKey {
    FlowKey {
        netns: key.netns,
        addr: key.local,
        _pad: 0,
    }
}

fn on_connect(ctx: &SockOpsContext) {
    if captured(ctx).is_some() {
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    }
}

fn on_established(ctx: &SockOpsContext) {
    let Some(orig) = captured(ctx) else { return };
    let key = pair(ctx);
    if ORIG_BY_FLOW.insert(flow(&key), orig, 0).is_err() {
        return;
    }
    count(stats::ESTABLISHED);
    if !enabled(CONFIG_SPLICE) {
        return;
    }
    let mut key = key;
    // Safety: ctx.ops points at the live bpf_sock_ops the kernel handed us.
    let ops = unsafe { &mut *ctx.ops };
    // A full sockhash only costs the splice: sk_msg then leaves this socket on the TCP path.
    let _ = SOCKS.update(&mut key, ops, u64::from(BPF_ANY));
}

fn on_close(ctx: &SockOpsContext) {
    let key = pair(ctx);
    let _ = ORIG_BY_COOKIE.remove(cookie(ctx));
    let _ = ORIG_BY_FLOW.remove(flow(&key));
    let _ = SLOW.remove(key);
}
