//! The plan of one outbound connection: where it goes and how, decided before any byte moves.
//!
//! [`plan`] is pure (no I/O, no awaits, no clock): it reads the configuration and the node-local
//! facts it is handed as values (the balancer's candidate order, the addresses ServiceEntry
//! hosts resolve to, whether this agent has a CA) and returns a [`Plan`]. The outbound path
//! (`onward::execute`) carries the plan out; `meshctl explain` renders the same plan, so what
//! explain says and what traffic does come from one function and cannot disagree.
//!
//! It lives in `proxy`, not in `policy`: `policy` answers "may this source reach that port"
//! (the destination's decision), while a plan names transports (h2 or QUIC), endpoint order
//! and a retry budget, which are the proxy's concern. It depends on `state` only.
//!
//! The order of decisions, as traffic meets them:
//! 1. a Service's cluster IP resolves to its ready endpoints, in the balancer's order
//!    (none ready: refused, UH);
//! 2. a Service port that routes bind or that asks for L7 (`l7`) is handed to the node's L7
//!    pool, which picks the endpoint per request; never carried at L4 instead (no pool:
//!    refused, UH);
//! 3. per endpoint: a meshed pod is tunneled (HBONE over h2 or QUIC, per MeshConfig) to its
//!    :15008 requiring its identity; anything else is plain TCP if the outbound traffic policy
//!    lets it out (REGISTRY_ONLY: a ServiceEntry must list it; else refused, NR).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use mesh_common::ports;
use serde::Serialize;

pub mod l7;

use super::balance::MAX_ATTEMPTS;
use crate::{
    identity::Identity,
    metrics::flags,
    state::{
        egress::EgressVerdict, Enrollment, MtlsMode, Pod, PodKey, Resolved, ServiceKey, State,
        TunnelProtocol,
    },
};

/// What the plan needs to know about this node, passed in as values.
pub struct Facts<'a> {
    pub trust_domain: &'a str,
    /// Whether this agent has a CA: without one, meshed traffic cannot be tunneled.
    pub mtls: bool,
    /// The addresses ServiceEntry hosts resolve to.
    pub egress_hosts: &'a HashMap<String, Vec<IpAddr>>,
    /// The balancer's order of the endpoints of the Service `dst` names (healthy ones from the
    /// round-robin position, then ejected ones). None: the Service's own (stable) order.
    pub candidates: Option<&'a [SocketAddr]>,
    /// Whether this agent runs an L7 pool.
    pub l7_pool: bool,
}

/// The plan of one connection from `source` to `dst` (its original destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub source: PodKey,
    pub dst: SocketAddr,
    /// The Service `dst` is a cluster IP of.
    pub service: Option<ServiceKey>,
    pub decision: Decision,
    /// Why L7 was asked for but does not apply (the port does not say it speaks HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Try `candidates` in order, at most `attempts` of them: an endpoint that fails to connect
    /// is ejected and the next one tried; a refusal (by the destination's policy, or an
    /// endpoint the outbound traffic policy refuses) ends the connection there.
    Connect {
        candidates: Vec<Candidate>,
        attempts: usize,
    },
    /// Refused before any connect, with Envoy's response flag.
    Refuse(Refusal),
    /// Handed to the node's L7 pool, which routes each request and picks its endpoint.
    HandToL7(l7::ToL7),
}

/// One endpoint to try and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub endpoint: SocketAddr,
    pub path: Path,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Through the destination pod's HBONE endpoint `hbone`, which must present `identity`.
    /// QUIC falls back to h2 when UDP does not get through.
    Tunnel {
        identity: Identity,
        hbone: SocketAddr,
        transport: TunnelProtocol,
    },
    /// Plain TCP from the source pod's netns.
    Direct(Direct),
    /// The outbound traffic policy refuses this endpoint.
    Refused(Refusal),
}

/// Why a connection goes as plain TCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direct {
    /// A pod that is not meshed (why: not enrolled, PeerAuthentication DISABLE, ...).
    NotMeshed { pod: PodKey, reason: String },
    /// A meshed pod, but this agent has no CA: NOT encrypted.
    NoMtls { pod: PodKey },
    /// Outside the mesh, let out by ALLOW_ANY.
    AllowAny,
    /// Outside the mesh, let out under REGISTRY_ONLY by this ServiceEntry (`namespace/name`).
    ServiceEntry(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub reason: String,
    /// Envoy's response flag (`UH`, `NR`).
    pub flags: &'static str,
}

impl Path {
    /// The ServiceEntry that let this leg out of the mesh, if one did.
    pub fn service_entry(&self) -> Option<&str> {
        match self {
            Path::Direct(Direct::ServiceEntry(se)) => Some(se),
            _ => None,
        }
    }
}

/// Decides the connection from `source` to `dst`.
pub fn plan(state: &State, source: &PodKey, dst: SocketAddr, facts: &Facts) -> Plan {
    plan_resolved(state, source, dst, state.resolve_service(dst), facts)
}

/// `plan`, for a caller that has already resolved `dst` (`State::resolve_service`) to ask the
/// balancer for `facts.candidates`: the Service is not resolved twice per connection.
pub fn plan_resolved(
    state: &State,
    source: &PodKey,
    dst: SocketAddr,
    resolved: Option<Resolved>,
    facts: &Facts,
) -> Plan {
    let service = resolved.as_ref().map(|r| r.service.clone());
    let mut l7_note = None;
    let l7 = match &resolved {
        Some(r) => l7::outbound(state, r),
        None => l7::L7Verdict::NotAsked,
    };
    let decision = match resolved {
        // Decided before endpoints: a route's backends need not be the frontend's endpoints.
        Some(_) if matches!(l7, l7::L7Verdict::Hand(_)) => {
            let l7::L7Verdict::Hand(to) = l7 else {
                unreachable!("matched above")
            };
            if facts.l7_pool {
                Decision::HandToL7(to)
            } else {
                Decision::Refuse(Refusal {
                    reason: format!(
                        "needs L7 ({}) but this agent runs no L7 pool (--l7-workers 0); \
                         refused rather than carried at L4",
                        to.why
                    ),
                    flags: flags::NO_HEALTHY_UPSTREAM,
                })
            }
        }
        // A Service's cluster IP: its ready endpoints, in the balancer's order.
        Some(r) => {
            let order = facts.candidates.map_or(r.endpoints, <[_]>::to_vec);
            if order.is_empty() {
                Decision::Refuse(Refusal {
                    reason: format!(
                        "service {} port {} has no ready endpoints",
                        r.service, r.port
                    ),
                    flags: flags::NO_HEALTHY_UPSTREAM,
                })
            } else {
                if let l7::L7Verdict::StaysL4(why) = l7 {
                    l7_note = Some(why);
                }
                let candidates: Vec<Candidate> = order
                    .into_iter()
                    .map(|endpoint| Candidate {
                        endpoint,
                        path: path(state, endpoint, facts),
                    })
                    .collect();
                Decision::Connect {
                    attempts: candidates.len().min(MAX_ATTEMPTS),
                    candidates,
                }
            }
        }
        // Any other address has one way out; a refusal needs no try.
        None => match path(state, dst, facts) {
            Path::Refused(r) => Decision::Refuse(r),
            path => Decision::Connect {
                candidates: vec![Candidate {
                    endpoint: dst,
                    path,
                }],
                attempts: 1,
            },
        },
    };
    Plan {
        source: source.clone(),
        dst,
        service,
        decision,
        l7_note,
    }
}

/// How one endpoint (a pod IP and port, or an address outside the mesh) is reached (also the
/// L7 worker's question for the endpoint it chose).
pub fn path(state: &State, endpoint: SocketAddr, facts: &Facts) -> Path {
    if let Some(pod) = state.pod_by_ip(endpoint.ip()) {
        if let Some(reason) = not_meshed(state, pod) {
            return Path::Direct(Direct::NotMeshed {
                pod: pod.key.clone(),
                reason,
            });
        }
        if !facts.mtls {
            return Path::Direct(Direct::NoMtls {
                pod: pod.key.clone(),
            });
        }
        return Path::Tunnel {
            identity: Identity::new(facts.trust_domain, &pod.key.namespace, &pod.service_account),
            hbone: SocketAddr::new(endpoint.ip(), ports::HBONE),
            transport: state.mesh.tunnel,
        };
    }
    match state.egress(endpoint, facts.egress_hosts) {
        EgressVerdict::ServiceEntry(se) => Path::Direct(Direct::ServiceEntry(se)),
        EgressVerdict::Refused(reason) => Path::Refused(Refusal {
            reason,
            flags: flags::NO_ROUTE,
        }),
        // A cluster IP that is no Service port, or a pod: outside the mesh all the same.
        EgressVerdict::AllowAny | EgressVerdict::InRegistry => Path::Direct(Direct::AllowAny),
    }
}

/// Why a pod is not reached through the mesh, if it is not: not enrolled on its node, or
/// PeerAuthentication DISABLE.
fn not_meshed(state: &State, pod: &Pod) -> Option<String> {
    let node = pod.node.as_deref().unwrap_or_default();
    match state.enrollment(pod, node) {
        Enrollment::Enrolled => match state.mtls_mode(pod) {
            (MtlsMode::Disable, policy) => Some(format!(
                "PeerAuthentication {} is DISABLE",
                policy.unwrap_or_default()
            )),
            _ => None,
        },
        other => Some(describe_enrollment(&other)),
    }
}

/// Why a pod is (not) enrolled, in words.
pub fn describe_enrollment(e: &Enrollment) -> String {
    match e {
        Enrollment::Enrolled => "enrolled".into(),
        Enrollment::NotOnThisNode => "not scheduled on a node".into(),
        Enrollment::NamespaceNotEnrolled => {
            format!(
                "its namespace lacks the label {}={}",
                crate::config::MESH_LABEL,
                crate::config::MESH_ENABLED
            )
        }
        Enrollment::OptedOut => format!(
            "the pod is labelled {}={}",
            crate::config::MESH_LABEL,
            crate::config::MESH_DISABLED
        ),
        Enrollment::MeshItself => format!(
            "{} is Weft's own namespace; the mesh never enrolls itself",
            crate::config::SYSTEM_NAMESPACE
        ),
        Enrollment::Incomplete(field) => format!("{field} is missing"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{
        services::{EndpointSlice, SliceEndpoint},
        services::{ServicePort, TargetPort},
        Namespace, OutboundMode, PeerAuthentication, Service, ServiceEntry,
    };

    const TD: &str = "cluster.local";

    fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            key: PodKey {
                namespace: ns.into(),
                name: name.into(),
            },
            uid: None,
            node: Some("n2".into()),
            service_account: name.into(),
            ip: Some(ip.parse().unwrap()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: BTreeMap::new(),
            netns: Some("/run/netns/x".into()),
            cgroup: Some("/sys/fs/cgroup/x".into()),
        }
    }

    /// `mesh` is enrolled, `plain` is not. Pods: mesh/client (the source), mesh/server,
    /// mesh/web-1..4 (Service mesh/web, 10.96.0.10:80 → 8080), mesh/optout (labelled out),
    /// mesh/legacy (PeerAuthentication DISABLE), plain/plain, mesh/v6 (an IPv6 pod); Service
    /// mesh/empty (selects nothing) and mesh/ext (an EndpointSlice outside the mesh); a
    /// ServiceEntry for 203.0.113.0/24:443 and api.example:443.
    fn state() -> State {
        let mut s = State::default();
        for (ns, enrolled) in [("mesh", true), ("plain", false)] {
            let labels = enrolled
                .then(|| (crate::config::MESH_LABEL.to_string(), "enabled".to_string()))
                .into_iter()
                .collect();
            s.namespaces.insert(
                ns.into(),
                Namespace {
                    name: ns.into(),
                    labels,
                },
            );
        }
        let web = [("app", "web")];
        for p in [
            pod("mesh", "client", "10.1.0.2", &[]),
            pod("mesh", "server", "10.2.0.2", &[]),
            pod("mesh", "web-1", "10.2.0.11", &web),
            pod("mesh", "web-2", "10.2.0.12", &web),
            pod("mesh", "web-3", "10.2.0.13", &web),
            pod(
                "mesh",
                "web-4",
                "10.2.0.14",
                &[("app", "web"), ("weft.dev/mesh", "disabled")],
            ),
            pod(
                "mesh",
                "optout",
                "10.2.0.20",
                &[("weft.dev/mesh", "disabled")],
            ),
            pod("mesh", "legacy", "10.2.0.21", &[("tier", "legacy")]),
            pod("plain", "plain", "10.2.0.30", &[]),
            pod("mesh", "v6", "fd00::2:2", &[]),
        ] {
            s.pods.insert(p.key.clone(), p);
        }
        s.peer_authentications.insert(
            ("mesh".into(), "legacy".into()),
            PeerAuthentication {
                namespace: "mesh".into(),
                name: "legacy".into(),
                selector: Some([("tier".to_string(), "legacy".to_string())].into()),
                mode: MtlsMode::Disable,
            },
        );
        for (name, ip, app) in [
            ("web", "10.96.0.10", Some("web")),
            ("empty", "10.96.0.11", Some("nothing")),
            ("ext", "10.96.0.12", None),
        ] {
            let key = ServiceKey {
                namespace: "mesh".into(),
                name: name.into(),
            };
            s.services.insert(
                key.clone(),
                Service {
                    key,
                    cluster_ips: vec![ip.parse().unwrap()],
                    ports: vec![ServicePort {
                        name: None,
                        port: 80,
                        target_port: TargetPort::Number(8080),
                        app_protocol: None,
                    }],
                    selector: app.map(|a| [("app".to_string(), a.to_string())].into()),
                    labels: Default::default(),
                },
            );
        }
        s.endpoint_slices.insert(
            ("mesh".into(), "ext-1".into()),
            EndpointSlice {
                namespace: "mesh".into(),
                name: "ext-1".into(),
                service: Some("ext".into()),
                endpoints: vec![SliceEndpoint {
                    addresses: vec!["198.51.100.9".parse().unwrap()],
                    ready: true,
                }],
                ports: [(String::new(), 8080)].into(),
            },
        );
        s.service_entries.insert(
            ("mesh".into(), "payments".into()),
            ServiceEntry {
                namespace: "mesh".into(),
                name: "payments".into(),
                hosts: vec!["api.example".into()],
                addresses: vec!["203.0.113.0/24".into()],
                ports: vec![443],
            },
        );
        s.reindex();
        s
    }

    /// One line per plan: what a reader of the table checks at a glance, and every field.
    fn summary(p: &Plan) -> String {
        let svc = p
            .service
            .as_ref()
            .map(|s| format!("svc {s}: "))
            .unwrap_or_default();
        let decision = match &p.decision {
            Decision::Refuse(r) => format!("refuse {}: {}", r.flags, r.reason),
            Decision::HandToL7(to) => format!("l7 {}: {}", to.protocol.as_str(), to.why),
            Decision::Connect {
                candidates,
                attempts,
            } => {
                let legs: Vec<String> = candidates
                    .iter()
                    .map(|c| format!("{} {}", c.endpoint, leg(&c.path)))
                    .collect();
                format!("try {attempts} of [{}]", legs.join(", "))
            }
        };
        format!("{svc}{decision}")
    }

    fn leg(p: &Path) -> String {
        match p {
            Path::Tunnel {
                identity,
                hbone,
                transport,
            } => format!("{transport:?} to {hbone} as {}", identity.principal()),
            Path::Direct(Direct::NotMeshed { pod, reason }) => format!("tcp ({pod}: {reason})"),
            Path::Direct(Direct::NoMtls { pod }) => format!("tcp (no CA; {pod})"),
            Path::Direct(Direct::AllowAny) => "tcp (ALLOW_ANY)".into(),
            Path::Direct(Direct::ServiceEntry(se)) => format!("tcp (ServiceEntry {se})"),
            Path::Refused(r) => format!("refused {}", r.flags),
        }
    }

    struct Case {
        name: &'static str,
        dst: &'static str,
        tunnel: TunnelProtocol,
        outbound: OutboundMode,
        mtls: bool,
        /// The balancer's order, when the case has one.
        candidates: Option<&'static [&'static str]>,
        want: &'static str,
    }

    const fn case(name: &'static str, dst: &'static str, want: &'static str) -> Case {
        Case {
            name,
            dst,
            tunnel: TunnelProtocol::H2,
            outbound: OutboundMode::AllowAny,
            mtls: true,
            candidates: None,
            want,
        }
    }

    #[test]
    fn plans_for_every_kind_of_destination() {
        use OutboundMode::RegistryOnly;
        use TunnelProtocol::Quic;
        let cases = [
            case("meshed pod over h2", "10.2.0.2:8080",
                "try 1 of [10.2.0.2:8080 H2 to 10.2.0.2:15008 as cluster.local/ns/mesh/sa/server]"),
            Case { tunnel: Quic, ..case("meshed pod over QUIC (MeshConfig)", "10.2.0.2:8080",
                "try 1 of [10.2.0.2:8080 Quic to 10.2.0.2:15008 as cluster.local/ns/mesh/sa/server]") },
            case("pod in a namespace not enrolled", "10.2.0.30:8080",
                "try 1 of [10.2.0.30:8080 tcp (plain/plain: its namespace lacks the label weft.dev/mesh=enabled)]"),
            case("pod labelled out of the mesh", "10.2.0.20:8080",
                "try 1 of [10.2.0.20:8080 tcp (mesh/optout: the pod is labelled weft.dev/mesh=disabled)]"),
            case("pod with PeerAuthentication DISABLE", "10.2.0.21:8080",
                "try 1 of [10.2.0.21:8080 tcp (mesh/legacy: PeerAuthentication mesh/legacy is DISABLE)]"),
            Case { mtls: false, ..case("meshed pod, agent without a CA", "10.2.0.2:8080",
                "try 1 of [10.2.0.2:8080 tcp (no CA; mesh/server)]") },
            case("Service: every ready endpoint, stable order, budget of 3", "10.96.0.10:80",
                "svc mesh/web: try 3 of [10.2.0.11:8080 H2 to 10.2.0.11:15008 as cluster.local/ns/mesh/sa/web-1, \
                 10.2.0.12:8080 H2 to 10.2.0.12:15008 as cluster.local/ns/mesh/sa/web-2, \
                 10.2.0.13:8080 H2 to 10.2.0.13:15008 as cluster.local/ns/mesh/sa/web-3, \
                 10.2.0.14:8080 tcp (mesh/web-4: the pod is labelled weft.dev/mesh=disabled)]"),
            Case { candidates: Some(&["10.2.0.13:8080", "10.2.0.11:8080", "10.2.0.12:8080"]),
                ..case("Service: the balancer's order (ejected endpoint last)", "10.96.0.10:80",
                "svc mesh/web: try 3 of [10.2.0.13:8080 H2 to 10.2.0.13:15008 as cluster.local/ns/mesh/sa/web-3, \
                 10.2.0.11:8080 H2 to 10.2.0.11:15008 as cluster.local/ns/mesh/sa/web-1, \
                 10.2.0.12:8080 H2 to 10.2.0.12:15008 as cluster.local/ns/mesh/sa/web-2]") },
            Case { candidates: Some(&["10.2.0.12:8080"]),
                ..case("Service: one endpoint left, budget of 1", "10.96.0.10:80",
                "svc mesh/web: try 1 of [10.2.0.12:8080 H2 to 10.2.0.12:15008 as cluster.local/ns/mesh/sa/web-2]") },
            Case { candidates: Some(&[]), ..case("Service: no endpoint ready (balancer)", "10.96.0.10:80",
                "svc mesh/web: refuse UH: service mesh/web port 80 has no ready endpoints") },
            case("Service selecting no pod", "10.96.0.11:80",
                "svc mesh/empty: refuse UH: service mesh/empty port 80 has no ready endpoints"),
            case("cluster IP on a port the Service lacks: not the Service", "10.96.0.10:81",
                "try 1 of [10.96.0.10:81 tcp (ALLOW_ANY)]"),
            case("outside the mesh, ALLOW_ANY", "198.51.100.1:443",
                "try 1 of [198.51.100.1:443 tcp (ALLOW_ANY)]"),
            Case { outbound: RegistryOnly, ..case("outside the mesh, REGISTRY_ONLY, unlisted", "198.51.100.1:443",
                "refuse NR: outbound traffic policy REGISTRY_ONLY: 198.51.100.1:443 is outside the mesh and no ServiceEntry lists it") },
            Case { outbound: RegistryOnly, ..case("REGISTRY_ONLY, listed by address", "203.0.113.7:443",
                "try 1 of [203.0.113.7:443 tcp (ServiceEntry mesh/payments)]") },
            Case { outbound: RegistryOnly, ..case("REGISTRY_ONLY, listed address on another port", "203.0.113.7:80",
                "refuse NR: outbound traffic policy REGISTRY_ONLY: 203.0.113.7:80 is outside the mesh and no ServiceEntry lists it") },
            Case { outbound: RegistryOnly, ..case("REGISTRY_ONLY, a host that resolves to it", "192.0.2.44:443",
                "try 1 of [192.0.2.44:443 tcp (ServiceEntry mesh/payments)]") },
            Case { outbound: RegistryOnly, ..case("REGISTRY_ONLY, a pod not meshed is in the registry", "10.2.0.30:8080",
                "try 1 of [10.2.0.30:8080 tcp (plain/plain: its namespace lacks the label weft.dev/mesh=enabled)]") },
            Case { outbound: RegistryOnly, ..case("REGISTRY_ONLY, a Service endpoint outside the mesh", "10.96.0.12:80",
                "svc mesh/ext: try 1 of [198.51.100.9:8080 refused NR]") },
            case("IPv6 meshed pod", "[fd00::2:2]:8080",
                "try 1 of [[fd00::2:2]:8080 H2 to [fd00::2:2]:15008 as cluster.local/ns/mesh/sa/v6]"),
            Case { outbound: RegistryOnly, ..case("IPv6 outside the mesh, REGISTRY_ONLY", "[2001:db8::1]:443",
                "refuse NR: outbound traffic policy REGISTRY_ONLY: [2001:db8::1]:443 is outside the mesh and no ServiceEntry lists it") },
        ];
        let resolved = HashMap::from([(
            "api.example".to_string(),
            vec!["192.0.2.44".parse().unwrap()],
        )]);
        let source = PodKey {
            namespace: "mesh".into(),
            name: "client".into(),
        };
        let mut failures = Vec::new();
        for c in &cases {
            let mut s = state();
            s.mesh.tunnel = c.tunnel;
            s.mesh.outbound = c.outbound;
            let order: Option<Vec<SocketAddr>> = c
                .candidates
                .map(|v| v.iter().map(|a| a.parse().unwrap()).collect());
            let facts = Facts {
                trust_domain: TD,
                mtls: c.mtls,
                egress_hosts: &resolved,
                candidates: order.as_deref(),
                l7_pool: true,
            };
            let p = plan(&s, &source, c.dst.parse().unwrap(), &facts);
            let got = summary(&p);
            let want = c.want.split_whitespace().collect::<Vec<_>>().join(" ");
            if got.split_whitespace().collect::<Vec<_>>().join(" ") != want {
                failures.push(format!("{}:\n   got: {got}\n  want: {want}", c.name));
            }
            assert_eq!(p.source, source);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Service mesh/web (10.96.0.10:80), labelled for L7 or bound by a route, with or without
    /// a port that says it speaks HTTP, with or without an L7 pool on this agent.
    #[test]
    fn a_service_port_that_asks_for_l7_is_handed_to_the_pool_or_says_why_not() {
        use crate::state::routes::{Parent, Route, RouteKind};
        let web = ServiceKey {
            namespace: "mesh".into(),
            name: "web".into(),
        };
        let source = PodKey {
            namespace: "mesh".into(),
            name: "client".into(),
        };
        let hosts = HashMap::new();
        let run = |label: bool, route: bool, app: Option<&str>, pool: bool| {
            let mut s = state();
            let svc = s.services.get_mut(&web).expect("web");
            svc.ports[0].app_protocol = app.map(Into::into);
            if label {
                svc.labels.insert("weft.dev/l7".into(), "enabled".into());
            }
            if route {
                let r = Route {
                    kind: RouteKind::Http,
                    namespace: "mesh".into(),
                    name: "web-canary".into(),
                    created: None,
                    parents: vec![Parent {
                        service: web.clone(),
                        port: None,
                    }],
                    rules: Vec::new(),
                };
                s.routes.insert(("mesh".into(), "web-canary".into()), r);
            }
            s.reindex();
            let facts = Facts {
                trust_domain: TD,
                mtls: true,
                egress_hosts: &hosts,
                candidates: None,
                l7_pool: pool,
            };
            plan(&s, &source, "10.96.0.10:80".parse().unwrap(), &facts)
        };
        let p = run(true, false, Some("http"), true);
        assert_eq!(
            summary(&p),
            "svc mesh/web: l7 http: service mesh/web (or its namespace) is labelled weft.dev/l7=enabled"
        );
        let p = run(false, true, Some("kubernetes.io/h2c"), true);
        assert_eq!(
            summary(&p),
            "svc mesh/web: l7 http2: routes bind service mesh/web port 80: mesh/web-canary"
        );
        // No HTTP protocol on the port: L4, and the plan says why.
        let p = run(false, true, None, true);
        assert!(matches!(p.decision, Decision::Connect { .. }), "{p:?}");
        let note = p.l7_note.expect("a note");
        assert!(note.contains("does not say it speaks HTTP"), "{note}");
        // Nothing asks for L7: no note.
        assert_eq!(run(false, false, Some("http"), true).l7_note, None);
        // No pool: refused, never carried at L4.
        let p = run(true, false, Some("http"), false);
        assert!(
            summary(&p).contains("refuse UH: needs L7"),
            "{}",
            summary(&p)
        );
    }

    #[test]
    fn the_plan_is_a_value_explain_can_render() {
        let s = state();
        let facts = Facts {
            trust_domain: TD,
            mtls: true,
            egress_hosts: &HashMap::new(),
            candidates: None,
            l7_pool: true,
        };
        let source = PodKey {
            namespace: "mesh".into(),
            name: "client".into(),
        };
        let p = plan(&s, &source, "10.2.0.2:8080".parse().unwrap(), &facts);
        let v = serde_json::to_value(&p).unwrap();
        let leg = &v["decision"]["connect"]["candidates"][0]["path"]["tunnel"];
        assert_eq!(leg["identity"], "spiffe://cluster.local/ns/mesh/sa/server");
        assert_eq!(leg["transport"], "h2");
        assert_eq!(
            plan(&s, &source, "10.2.0.2:8080".parse().unwrap(), &facts),
            p,
            "pure"
        );
    }
}
