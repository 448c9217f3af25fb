//! Whether a connection is handed to the L7 pool, and why (or why not): the fourth outcome of
//! the plan (DESIGN.md data path 6). Pure, like the rest of the plan.
//!
//! Source side: a connection to a Service port goes to L7 when an HTTPRoute or GRPCRoute binds
//! that port, or the Service (or its namespace) is labelled `weft.dev/l7: enabled`, and the
//! port says it speaks HTTP (`appProtocol`, or an Istio port-name prefix). Destination side: a
//! connection to a pod that an L7 AuthorizationPolicy selects, or that is an endpoint of such
//! a labelled Service, passes the destination node's pool before delivery.
//! A port that does not say it is HTTP stays L4, and the plan says why (`meshctl explain`).

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    policy,
    state::{l7::Protocol, Pod, Resolved, State},
};

/// The hand-off of a connection to the L7 pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToL7 {
    pub protocol: Protocol,
    /// Why L7 applies: the route, policy or label.
    pub why: String,
}

/// What the L7 question came to for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L7Verdict {
    /// Nothing asks for L7.
    NotAsked,
    /// Asked for, but the port does not say it speaks HTTP: carried at L4 (why).
    StaysL4(String),
    Hand(ToL7),
}

/// The source side's answer for a connection to the Service port `r`.
pub fn outbound(state: &State, r: &Resolved) -> L7Verdict {
    let Some(service) = state.services.get(&r.service) else {
        return L7Verdict::NotAsked;
    };
    let Some(port) = service.ports.iter().find(|p| p.port == r.port) else {
        return L7Verdict::NotAsked;
    };
    let routes: Vec<String> = state
        .routes
        .values()
        .filter(|rt| crate::l7::route::binds(rt, &r.service, r.port))
        .map(|rt| format!("{}/{}", rt.namespace, rt.name))
        .collect();
    let why = if !routes.is_empty() {
        format!(
            "routes bind service {} port {}: {}",
            r.service,
            r.port,
            routes.join(", ")
        )
    } else if state.l7_labelled(service) {
        format!(
            "service {} (or its namespace) is labelled {}={}",
            r.service,
            crate::config::L7_LABEL,
            crate::config::L7_ENABLED
        )
    } else {
        return L7Verdict::NotAsked;
    };
    decide(port.http_protocol(), why, r.port)
}

/// The destination side's answer for a connection to `dst` on the local pod `pod`.
pub fn inbound(state: &State, pod: &Pod, dst: SocketAddr) -> L7Verdict {
    let service_port = state.service_port_of_endpoint(dst);
    let protocol = service_port.and_then(|(_, p)| p.http_protocol());
    let why = if policy::l7::has_l7_rules(state, pod) {
        format!(
            "an AuthorizationPolicy with L7 rules applies to pod {}",
            pod.key
        )
    } else if let Some((service, _)) = service_port.filter(|(s, _)| state.l7_labelled(s)) {
        format!(
            "pod {} is an endpoint of service {}, labelled {}={}",
            pod.key,
            service.key,
            crate::config::L7_LABEL,
            crate::config::L7_ENABLED
        )
    } else {
        return L7Verdict::NotAsked;
    };
    decide(protocol, why, dst.port())
}

fn decide(protocol: Option<Protocol>, why: String, port: u16) -> L7Verdict {
    match protocol {
        Some(protocol) => L7Verdict::Hand(ToL7 { protocol, why }),
        None => L7Verdict::StaysL4(format!(
            "{why}, but port {port} does not say it speaks HTTP (set appProtocol: http, http2 \
             or grpc, or name the port http-*, http2-* or grpc-*): carried at L4"
        )),
    }
}
