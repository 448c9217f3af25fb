//! Opening the in-pod listeners, inside the pod's netns (as ztunnel's in-pod mode does): the
//! pod keeps its IP and routes, and the agent's sockets live where the pod's traffic is.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use mesh_common::ports;
use tokio::net::TcpListener;
use tracing::debug;

use crate::netns::{
    socket::{listen, udp_socket},
    Netns,
};

pub struct InpodListeners {
    pub outbound: Vec<TcpListener>,
    pub inbound: Vec<TcpListener>,
    pub hbone: Vec<TcpListener>,
    /// UDP :15008: the QUIC side of HBONE.
    pub quic: Vec<std::net::UdpSocket>,
}

impl InpodListeners {
    /// Opens the listeners for a pod whose address is `pod_ip`. IPv4 listeners are required;
    /// IPv6 ones are opened when the pod's netns has IPv6.
    pub fn open(netns: &Netns, pod_ip: IpAddr) -> io::Result<Self> {
        let v4_any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6_any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let mut l = Self {
            outbound: vec![listen(
                netns,
                (Ipv4Addr::LOCALHOST, ports::OUTBOUND).into(),
            )?],
            inbound: vec![],
            hbone: vec![listen(netns, (v4_any, ports::HBONE).into())?],
            quic: vec![],
        };
        // QUIC is optional: without it peers fall back to h2.
        for any in [v4_any, v6_any] {
            match udp_socket(netns, (any, ports::HBONE).into()) {
                Ok(s) => l.quic.push(s),
                Err(e) => debug!(error = %e, %any, "no QUIC listener"),
            }
        }
        if pod_ip.is_ipv4() {
            l.inbound
                .push(listen(netns, (v4_any, ports::INBOUND).into())?);
        }
        // IPv6 is optional in the pod; a v6 pod address makes its inbound listener required.
        match listen(netns, (Ipv6Addr::LOCALHOST, ports::OUTBOUND).into()) {
            Ok(v6) => l.outbound.push(v6),
            Err(e) => debug!(error = %e, "no IPv6 outbound listener"),
        }
        match listen(netns, (v6_any, ports::INBOUND).into()) {
            Ok(v6) => l.inbound.push(v6),
            Err(e) if pod_ip.is_ipv6() => return Err(e),
            Err(e) => debug!(error = %e, "no IPv6 inbound listener"),
        }
        if let Ok(v6) = listen(netns, (v6_any, ports::HBONE).into()) {
            l.hbone.push(v6);
        }
        Ok(l)
    }

    /// The inbound listener sk_lookup must steer the pod's address to.
    pub fn inbound_for(&self, pod_ip: IpAddr) -> Option<&TcpListener> {
        self.inbound.iter().find(|l| {
            l.local_addr()
                .is_ok_and(|a| a.is_ipv4() == pod_ip.is_ipv4())
        })
    }
}
