//! `sk_lookup` on each enrolled pod's netns: steer incoming TCP connections for the pod's
//! address to the agent's in-pod :15006 listener, which sees the original destination as its
//! local address. Connections to the mesh's own ports (HBONE :15008 above all) and connections
//! from inside the pod (a loopback source such as the agent's delivery address 127.0.0.6, or the
//! pod's own address) are left to the normal lookup, and so are the agent's deliveries from a
//! client's address (`DELIVERIES`: the agent enters each one for the time of its connect). The
//! ingress ifindex cannot tell local traffic apart: for locally delivered packets the kernel
//! reports the device that owns the destination address, not `lo`.
//! An enrolled pod whose listener is gone (agent down) refuses the connection: fail closed.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_common::{ports, stats, PairKey, SockAddr, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::maps::{count, DELIVERIES, INBOUND_LISTENERS, PODS};

#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    // Safety: these bpf_sk_lookup fields are readable in sk_lookup programs.
    let l = unsafe { &*ctx.lookup };
    if l.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let port = l.local_port as u16;
    if ports::INBOUND_PASSTHROUGH.contains(&port) {
        return SK_PASS;
    }
    let (pod, remote) = if l.family == u32::from(AF_INET) {
        (SockAddr::v4(l.local_ip4, 0), SockAddr::v4(l.remote_ip4, 0))
    } else if l.family == u32::from(AF_INET6) {
        (SockAddr::v6(l.local_ip6, 0), SockAddr::v6(l.remote_ip6, 0))
    } else {
        return SK_PASS;
    };
    if remote == pod || is_loopback(&remote) {
        return SK_PASS;
    }
    if PODS.get_ptr(pod).is_none() {
        return SK_PASS;
    }
    if is_delivery(l, pod, remote) {
        return SK_PASS;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, pod, 0) {
        Ok(()) => {
            count(stats::INBOUND_STEERED);
            SK_PASS
        }
        Err(_) => {
            count(stats::INBOUND_REFUSED);
            SK_DROP
        }
    }
}

/// Is this the agent's own delivery to the application, from the client's address?
fn is_delivery(l: &aya_ebpf::bindings::bpf_sk_lookup, pod: SockAddr, remote: SockAddr) -> bool {
    let mut key = PairKey {
        netns: 0,
        local: pod,
        remote,
    };
    key.local.port = l.local_port as u16;
    // remote_port is in network order (the kernel's own field); local_port is in host order.
    key.remote.port = u16::from_be(l.remote_port);
    DELIVERIES.get_ptr(key).is_some()
}

fn is_loopback(a: &SockAddr) -> bool {
    if a.family == AF_INET {
        a.addr[0].to_ne_bytes()[0] == 127
    } else {
        a.addr == [0, 0, 0, u32::from_be(1)]
    }
}
