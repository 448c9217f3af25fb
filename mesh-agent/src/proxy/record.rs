//! The record of one connection, as the agent that handled it saw it: its id (the same on both
//! agents of a tunneled connection), who to whom (pod, IP, identity), the original destination and the Service it named, the transport, and how it
//! ended. It feeds Istio's TCP metrics (bumped as bytes flow) and writes the connection's one
//! access-log line.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering::Relaxed,
    time::{Instant, SystemTime},
};

use serde::Serialize;

use super::Shared;
use crate::{
    identity::Identity,
    metrics::{access_log::rfc3339, flags, Peers, Reporter, TcpLabels, UNKNOWN},
    state::{PodKey, ServiceKey, State},
    tunnel::traceparent::ConnectionId,
};

/// The DNS suffix of Services in `destination_service` (Kubernetes' default cluster domain).
const CLUSTER_DOMAIN: &str = "cluster.local";

/// One end of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub pod: Option<PodKey>,
    #[serde(skip)]
    pub workload: Option<(String, String)>,
    pub ip: IpAddr,
    /// The SPIFFE ID it proved (tunneled) or will present; None for plaintext.
    pub identity: Option<Identity>,
}

impl Peer {
    /// The pod at `ip`, if the state knows one.
    pub fn at(state: &State, ip: IpAddr, identity: Option<Identity>) -> Self {
        let pod = state.pod_by_ip(ip);
        Self {
            pod: pod.map(|p| p.key.clone()),
            workload: pod.map(|p| (p.workload(), p.canonical_service())),
            ip,
            identity,
        }
    }

    fn workload(&self) -> String {
        self.workload
            .as_ref()
            .map_or(UNKNOWN.into(), |w| w.0.clone())
    }

    fn canonical(&self) -> String {
        self.workload
            .as_ref()
            .map_or(UNKNOWN.into(), |w| w.1.clone())
    }

    fn namespace(&self) -> String {
        self.pod
            .as_ref()
            .map_or(UNKNOWN.into(), |p| p.namespace.clone())
    }

    fn principal(&self) -> String {
        self.identity
            .as_ref()
            .map_or(UNKNOWN.into(), Identity::to_string)
    }
}

pub struct Record {
    /// Made by the source agent, carried to the destination agent in the tunnel request.
    pub id: ConnectionId,
    pub reporter: Reporter,
    pub src: Peer,
    pub dst: Peer,
    /// Where the application connected (a cluster IP for a Service).
    pub original_dst: SocketAddr,
    pub service: Option<ServiceKey>,
    /// `tcp` (plain), `hbone` (HTTP/2 CONNECT over mTLS) or `quic`.
    pub transport: &'static str,
    /// The policy that allowed it (`namespace/name`), when one did.
    pub policy: Option<String>,
    started: SystemTime,
    start: Instant,
}

/// How a connection ended, for its access-log line.
pub enum End {
    /// Both sides closed (or one reset: `error`).
    Closed { error: Option<String> },
    /// Refused before any byte moved.
    Refused {
        flags: &'static str,
        policy: Option<String>,
        reason: String,
    },
    /// Closed because a policy change denies it now.
    Revoked {
        policy: Option<String>,
        reason: String,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    connection_id: ConnectionId,
    reporter: Reporter,
    src: &'a Peer,
    dst: &'a Peer,
    original_dst: SocketAddr,
    service: Option<String>,
    transport: &'static str,
    connection_security_policy: &'static str,
    /// From the source (its requests).
    bytes_received: u64,
    /// To the source (the responses).
    bytes_sent: u64,
    duration_ms: u64,
    /// `allow`, `deny` or `error`.
    verdict: &'static str,
    policy: Option<&'a str>,
    reason: Option<&'a str>,
    response_flags: &'static str,
}

impl Record {
    pub fn new(
        id: ConnectionId,
        reporter: Reporter,
        src: Peer,
        dst: Peer,
        original_dst: SocketAddr,
        service: Option<ServiceKey>,
        transport: &'static str,
    ) -> Self {
        Self {
            id,
            reporter,
            src,
            dst,
            original_dst,
            service,
            transport,
            policy: None,
            started: SystemTime::now(),
            start: Instant::now(),
        }
    }

    pub fn security(&self) -> &'static str {
        if self.transport == "tcp" {
            "none"
        } else {
            "mutual_tls"
        }
    }

    pub fn labels(&self, response_flags: &'static str) -> TcpLabels {
        let (svc, svc_name, svc_ns) = match &self.service {
            Some(s) => (
                format!("{}.{}.svc.{CLUSTER_DOMAIN}", s.name, s.namespace),
                s.name.clone(),
                s.namespace.clone(),
            ),
            // Istio's names for traffic that leaves the mesh: let through, or refused. A fixed
            // name, not the address, keeps the number of series bounded.
            None if self.dst.pod.is_none() => {
                let name = if response_flags == flags::NO_ROUTE {
                    "BlackHoleCluster"
                } else {
                    "PassthroughCluster"
                };
                (name.into(), name.into(), UNKNOWN.into())
            }
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
        TcpLabels {
            reporter: self.reporter,
            peers: Peers {
                source_workload: self.src.workload(),
                source_canonical_service: self.src.canonical(),
                source_workload_namespace: self.src.namespace(),
                source_principal: self.src.principal(),
                destination_workload: self.dst.workload(),
                destination_canonical_service: self.dst.canonical(),
                destination_workload_namespace: self.dst.namespace(),
                destination_principal: self.dst.principal(),
                destination_service: svc,
                destination_service_name: svc_name,
                destination_service_namespace: svc_ns,
            },
            response_flags,
            connection_security_policy: self.security(),
        }
    }

    /// A connection refused before any byte moved: counted opened and closed with its response
    /// flag, and logged.
    pub fn refused(
        self,
        shared: &Shared,
        flags: &'static str,
        policy: Option<String>,
        reason: String,
    ) {
        let c = shared.metrics.tcp(self.labels(flags));
        c.opened.fetch_add(1, Relaxed);
        c.closed.fetch_add(1, Relaxed);
        self.log(
            shared,
            (0, 0),
            End::Refused {
                flags,
                policy,
                reason,
            },
        );
    }

    /// The access-log line; `bytes` = (received from the source, sent to it).
    pub fn log(&self, shared: &Shared, bytes: (u64, u64), end: End) {
        let (verdict, policy, reason, response_flags) = match &end {
            End::Closed { error: None } => ("allow", self.policy.as_deref(), None, flags::NONE),
            End::Closed { error: Some(e) } => (
                "allow",
                self.policy.as_deref(),
                Some(e.as_str()),
                flags::NONE,
            ),
            End::Refused {
                flags,
                policy,
                reason,
            } => {
                let verdict =
                    if *flags == flags::UPSTREAM_FAILURE || *flags == flags::NO_HEALTHY_UPSTREAM {
                        "error"
                    } else {
                        "deny"
                    };
                (verdict, policy.as_deref(), Some(reason.as_str()), *flags)
            }
            End::Revoked { policy, reason } => (
                "deny",
                policy.as_deref(),
                Some(reason.as_str()),
                flags::DENIED,
            ),
        };
        shared.access_log.write(&Line {
            time: rfc3339(self.started),
            connection_id: self.id,
            reporter: self.reporter,
            src: &self.src,
            dst: &self.dst,
            original_dst: self.original_dst,
            service: self.service.as_ref().map(ToString::to_string),
            transport: self.transport,
            connection_security_policy: self.security(),
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            duration_ms: self.start.elapsed().as_millis() as u64,
            verdict,
            policy,
            reason,
            response_flags,
        });
    }
}
