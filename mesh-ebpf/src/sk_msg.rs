//! `sk_msg` on the sockhash: splice the in-pod loopback legs of a captured connection, so bytes
//! between the application's socket and the agent's socket never traverse the TCP stack.
//!
//! The application's socket (remote port 15001) joins the sockhash at ESTABLISHED; the agent adds
//! its accepted end after accept. Until both are there, messages take the normal TCP path. Once
//! an application socket has sent a byte on the TCP path it stays on it (`SLOW`): bytes spliced
//! later would be read before the ones still queued in TCP, and reorder the stream. The agent's
//! end never needs that guard: the application's end is in the map before the agent can write.

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    helpers::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
    EbpfContext as _,
};
use mesh_common::{ports, stats, PairKey, SockAddr, AF_INET, AF_INET6};

use crate::maps::{count, SLOW, SOCKS};

#[sk_msg]
pub fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    let Some(me) = pair(&ctx) else {
        return SK_PASS;
    };
    let app_side = me.remote.port == ports::OUTBOUND;
    if app_side && SLOW.get_ptr(me).is_some() {
        count(stats::MSG_PASSED);
        return SK_PASS;
    }
    let mut peer = me.peer();
    if SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(stats::MSG_SPLICED);
    } else {
        if app_side {
            let _ = SLOW.insert(me, 1, 0);
        }
        count(stats::MSG_PASSED);
    }
    SK_PASS
}

fn pair(ctx: &SkMsgContext) -> Option<PairKey> {
    // Safety: these sk_msg_md fields are readable in sk_msg programs.
    let md = unsafe { &*ctx.msg };
    // Safety: bpf_get_netns_cookie is allowed for sk_msg programs (Linux 5.15+).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // local_port is host order; remote_port is network order in the u32's upper half.
    let local_port = md.local_port as u16;
    let remote_port = u32::from_be(md.remote_port) as u16;
    let (local, remote) = if md.family == u32::from(AF_INET) {
        (
            SockAddr::v4(md.local_ip4, local_port),
            SockAddr::v4(md.remote_ip4, remote_port),
        )
    } else if md.family == u32::from(AF_INET6) {
        (
            SockAddr::v6(md.local_ip6, local_port),
            SockAddr::v6(md.remote_ip6, remote_port),
        )
    } else {
        return None;
    };
    Some(PairKey {
        netns,
        local,
        remote,
    })
}
