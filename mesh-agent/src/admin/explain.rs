//! `/debug/explain?from=NS/POD&to=HOST:PORT`: every decision on one path, in the order traffic
//! meets them, from this agent's configuration and its live certificates. The answer
//! `meshctl explain` prints.
//!
//! 1. source: is the pod enrolled and are its hooks attached;
//! 2. destination: the Service and endpoints it resolves to, the pods and nodes behind them, or
//!    the outbound traffic policy for a destination outside the mesh;
//! 3. identities: what each side presents; when the source is on this node, a real mTLS
//!    handshake from its netns proves the destination's certificate (and that the network lets
//!    the tunnel port through);
//! 4. policy: PeerAuthentication and the AuthorizationPolicy rule that decides, by name;
//! 5. transport: what carries the bytes.
//!
//! Steps 2 and 5 render the connection's plan (`proxy::plan`), computed by the very function the
//! outbound path executes (with the balancer's current order, without taking a turn), so explain
//! and traffic cannot disagree. The plan itself is in the JSON answer (`plan`).

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::Status;
use crate::{
    identity::Identity,
    policy,
    proxy::{
        onward::{self, Turn},
        plan::{describe_enrollment, Decision, Direct, Path, Plan, Refusal},
        Shared,
    },
    state::{Enrollment, PodKey, ServiceKey, State, TunnelProtocol},
    tunnel,
};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    /// `allowed`, `denied`, `partly allowed` (some endpoints of a Service) or `unknown`.
    pub verdict: String,
    pub steps: Vec<Step>,
    /// The plan the outbound path would execute for this connection now (a captured source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub lines: Vec<String>,
}

impl Explanation {
    fn step(&mut self, step: &'static str, ok: bool, lines: Vec<String>) {
        self.steps.push(Step { step, ok, lines });
    }

    fn stop(mut self, step: &'static str, why: String) -> Self {
        self.step(step, false, vec![why]);
        self.verdict = "unknown".into();
        self
    }
}

pub mod l7;

pub async fn explain(
    shared: &Shared,
    status: &Status,
    from: &str,
    to: &str,
    http: Option<&l7::HttpProbe>,
) -> Explanation {
    let state = shared.state.load_full();
    let mut ex = Explanation {
        from: from.into(),
        to: to.into(),
        verdict: String::new(),
        steps: Vec::new(),
        plan: None,
    };

    // 1. Source.
    let Some((ns, name)) = from.split_once('/') else {
        return ex.stop("source", format!("--from {from:?}: expected NAMESPACE/POD"));
    };
    let key = PodKey {
        namespace: ns.into(),
        name: name.into(),
    };
    let Some(src) = state.pods.get(&key) else {
        return ex.stop(
            "source",
            format!("no pod {from} in this agent's configuration"),
        );
    };
    let Some(src_ip) = src.ip else {
        return ex.stop("source", format!("pod {from} has no IP yet (status.podIP)"));
    };
    let node = src.node.clone().unwrap_or_default();
    let local = node == shared.node;
    let enrolled = status.pods.iter().find(|p| p.pod == from);
    let mut lines = vec![format!(
        "pod {from} on node {node}, IP {src_ip}, service account {}",
        src.service_account
    )];
    let (captured, ok) = match state.enrollment(src, &node) {
        Enrollment::Enrolled if !local => {
            lines.push(format!(
                "enrolled on node {node}; its hooks are reported by that node's agent (this is {})",
                shared.node
            ));
            (true, true)
        }
        Enrollment::Enrolled => match enrolled {
            Some(p) => {
                lines.push(format!("enrolled; hooks attached: {}", p.hooks.join(", ")));
                (true, true)
            }
            None => {
                let why = status
                    .enrollment_errors
                    .get(from)
                    .or_else(|| status.enrollment_notices.get(from))
                    .cloned()
                    .unwrap_or_else(|| "enrollment in progress".into());
                lines.push(format!(
                    "should be enrolled but is NOT: {why}; its traffic is not captured"
                ));
                (false, false)
            }
        },
        other => {
            lines.push(format!(
                "not enrolled ({}): its traffic is not captured and leaves as plain TCP",
                describe_enrollment(&other)
            ));
            (false, true)
        }
    };
    ex.step("source", ok, lines);

    // 2. Destination.
    let dst = match resolve_target(&state, ns, to).await {
        Ok(d) => d,
        Err(why) => return ex.stop("destination", why),
    };
    // A captured source's connection follows the plan; an uncaptured one goes where the
    // application sends it (kube-proxy picks a Service's endpoint), as plain TCP.
    let legs: Vec<(SocketAddr, Option<Path>)> = if captured {
        let plan = onward::plan(shared, &key, dst, Turn::Peek);
        let legs = match destination_step(&mut ex, &state, &plan) {
            Some(legs) => legs,
            None => {
                ex.verdict = "denied".into();
                ex.plan = Some(plan);
                return ex;
            }
        };
        let legs = if let Decision::HandToL7(_) = &plan.decision {
            let hosts = shared.egress_hosts.load();
            let facts = crate::proxy::plan::Facts {
                trust_domain: &shared.trust_domain,
                mtls: shared.mtls.is_some(),
                egress_hosts: &hosts,
                candidates: None,
                l7_pool: true,
            };
            let probe = http.cloned().unwrap_or_else(|| l7::HttpProbe {
                method: "GET".into(),
                path: "/".into(),
                headers: Vec::new(),
            });
            let routed = l7::route_step(&state, &key, &plan, &probe, &facts);
            ex.step("route", routed.ok, routed.lines);
            if !routed.ok {
                ex.verdict = "denied".into();
                ex.plan = Some(plan);
                return ex;
            }
            routed.legs
        } else {
            if http.is_some() {
                let why = plan
                    .l7_note
                    .clone()
                    .unwrap_or_else(|| "no route, L7 label or HTTP protocol asks for it".into());
                ex.step("route", true, vec![format!("L7 does not apply: {why}")]);
            }
            legs
        };
        ex.plan = Some(plan);
        legs
    } else {
        let mut lines = Vec::new();
        let endpoints = match state.resolve_service(dst) {
            Some(r) => {
                lines.push(format!(
                    "{dst} is Service {} port {}: {} ready endpoint(s); the source is not captured, so kube-proxy picks one",
                    r.service,
                    r.port,
                    r.endpoints.len()
                ));
                r.endpoints
            }
            None => vec![dst],
        };
        for ep in &endpoints {
            lines.push(endpoint_line(&state, *ep, None));
        }
        ex.step("destination", true, lines);
        endpoints.into_iter().map(|ep| (ep, None)).collect()
    };
    let endpoints: Vec<SocketAddr> = legs.iter().map(|(ep, _)| *ep).collect();

    // 3-5, per endpoint.
    let src_id = Identity::new(
        &shared.trust_domain,
        &src.key.namespace,
        &src.service_account,
    );
    let mut id_lines = Vec::new();
    let mut id_ok = true;
    let mut policy_lines = Vec::new();
    let mut delivery_lines = Vec::new();
    let mut transport_lines = Vec::new();
    let mut allowed = 0;
    if captured && shared.mtls.is_some() {
        match shared
            .mtls
            .as_ref()
            .filter(|_| local)
            .map(|m| m.certs.statuses())
        {
            Some(statuses) => {
                let s = statuses.iter().find(|s| s.identity == src_id.to_string());
                match s.and_then(|s| s.expires_in_secs) {
                    Some(t) if t > 0 => id_lines.push(format!(
                        "source presents {src_id}: certificate valid, expires in {t}s"
                    )),
                    _ => {
                        id_ok = false;
                        let why = s.and_then(|s| s.last_error.clone());
                        id_lines.push(format!(
                            "source {src_id}: NO valid certificate ({})",
                            why.unwrap_or_else(|| "not issued yet".into())
                        ));
                    }
                }
            }
            None => id_lines.push(format!(
                "source presents {src_id} (its certificate is held by the agent on node {node})"
            )),
        }
    }
    for (ep, path) in &legs {
        let dst_pod = state.pod_by_ip(ep.ip());
        let tunneled = match (path, &shared.mtls) {
            (
                Some(Path::Tunnel {
                    identity,
                    hbone,
                    transport,
                }),
                Some(mtls),
            ) => {
                let probe = match (local, enrolled) {
                    (true, Some(p)) => match crate::netns::Netns::open(&p.netns) {
                        Ok(netns) => Some(
                            tunnel::probe::handshake(
                                &mtls.certs,
                                &netns,
                                &src_id,
                                identity,
                                *hbone,
                            )
                            .await,
                        ),
                        Err(e) => Some(Err(format!("source netns {}: {e}", p.netns.display()))),
                    },
                    _ => None,
                };
                match probe {
                    Some(Ok(p)) if p.expires_in_secs > 0 => id_lines.push(format!(
                        "{ep}: destination presented {} (verified against the mesh root), expires in {}s",
                        p.presented, p.expires_in_secs
                    )),
                    Some(Ok(p)) => {
                        id_ok = false;
                        id_lines.push(format!("{ep}: destination certificate of {} EXPIRED", p.presented));
                    }
                    Some(Err(e)) => {
                        id_ok = false;
                        id_lines.push(format!("{ep}: handshake as {src_id} requiring {identity} FAILED: {e}"));
                    }
                    None => id_lines.push(format!("{ep}: destination must present {identity}")),
                }
                transport_lines.push(format!(
                    "{ep}: HBONE tunnel to {hbone} over {} (mTLS, from the source pod's own IP){}",
                    serde_json::to_value(transport)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    if *transport == TunnelProtocol::Quic {
                        "; falls back to h2 if UDP is blocked"
                    } else {
                        ""
                    }
                ));
                true
            }
            (Some(Path::Refused(r)), _) => {
                transport_lines.push(format!("{ep}: none: refused ({})", r.reason));
                policy_lines.push(format!(
                    "{ep}: REFUSED at the source (response flag {})",
                    r.flags
                ));
                continue;
            }
            (Some(Path::Tunnel { .. }), None) | (Some(Path::Direct(Direct::NoMtls { .. })), _) => {
                transport_lines.push(format!(
                    "{ep}: plain TCP: mTLS is off on this agent (no --ca-addr); NOT encrypted"
                ));
                false
            }
            (Some(Path::Direct(d)), _) => {
                let why = match d {
                    Direct::NotMeshed { pod, reason } => {
                        format!("{pod} is not meshed ({reason}); plain TCP")
                    }
                    Direct::ServiceEntry(se) => format!(
                        "plain TCP to a destination outside the mesh, let out by ServiceEntry {se}"
                    ),
                    _ => "plain TCP to a destination outside the mesh".into(),
                };
                transport_lines.push(format!("{ep}: {why}"));
                false
            }
            (None, _) => {
                let why = match dst_pod {
                    Some(p) => format!("the source is not captured; plain TCP to {}", p.key),
                    None => "plain TCP to a destination outside the mesh".into(),
                };
                transport_lines.push(format!("{ep}: {why}"));
                false
            }
        };
        let Some(dst_pod) = dst_pod else {
            policy_lines.push(format!(
                "{ep}: no authorization policy applies outside the mesh"
            ));
            allowed += 1;
            continue;
        };
        let decided_by = format!(
            "decided by the agent on node {}",
            dst_pod.node.as_deref().unwrap_or("?")
        );
        let dst_node = dst_pod.node.as_deref().unwrap_or_default();
        let dst_enrolled = state.enrollment(dst_pod, dst_node) == Enrollment::Enrolled;
        if !dst_enrolled {
            policy_lines.push(format!(
                "{ep}: {} is not enrolled: no agent enforces policy for it",
                dst_pod.key
            ));
            delivery_lines.push(format!(
                "{ep}: the application sees {src_ip} (not enrolled: the connection reaches it as sent)"
            ));
            allowed += 1;
            continue;
        }
        let conn = policy::Connection {
            principal: tunneled.then(|| src_id.principal()),
            source_ip: src_ip,
            port: ep.port(),
        };
        if let Some(v) = policy::plaintext_refusal(&state, dst_pod, &conn) {
            policy_lines.push(format!(
                "{ep}: DENIED: PeerAuthentication {} is STRICT and this connection is plaintext ({decided_by})",
                v.policy.unwrap_or_default()
            ));
            continue;
        }
        let l7 = matches!(
            crate::proxy::plan::l7::inbound(&state, dst_pod, *ep),
            crate::proxy::plan::l7::L7Verdict::Hand(_)
        );
        let (v, at) = match (l7, http) {
            (true, probe) => {
                let default = l7::HttpProbe {
                    method: "GET".into(),
                    path: "/".into(),
                    headers: Vec::new(),
                };
                let probe = probe.unwrap_or(&default);
                let parts = probe.parts(*ep).ok();
                let empty = http::HeaderMap::new();
                let req = policy::l7::Request {
                    method: &probe.method,
                    path: &probe.path,
                    host: &ep.ip().to_string(),
                    headers: parts.as_ref().map_or(&empty, |p| &p.headers),
                };
                let v = policy::l7::authorize(&state, dst_pod, &conn, &req);
                (v, format!(" at L7 for {} {}", probe.method, probe.path))
            }
            (false, _) => (policy::evaluate(&state, dst_pod, &conn), String::new()),
        };
        let by = v
            .policy
            .as_deref()
            .map(|p| format!(" by AuthorizationPolicy {p}"))
            .unwrap_or_default();
        let who = conn
            .principal
            .as_deref()
            .unwrap_or("plaintext (no principal)");
        policy_lines.push(format!(
            "{ep}: {}{at}{by}: {} (source {who}, port {}; {decided_by})",
            if v.allowed { "ALLOWED" } else { "DENIED" },
            v.reason,
            ep.port()
        ));
        if v.allowed {
            allowed += 1;
            delivery_lines.push(delivery_line(
                status,
                dst_pod,
                *ep,
                src_ip,
                l7,
                &shared.node,
            ));
        }
    }
    if !id_lines.is_empty() {
        ex.step("identities", id_ok, id_lines);
    } else {
        ex.step(
            "identities",
            true,
            vec!["no mTLS on this path: no identities are presented".into()],
        );
    }
    ex.step("policy", allowed == endpoints.len(), policy_lines);
    ex.step("transport", id_ok, transport_lines);
    if !delivery_lines.is_empty() {
        ex.step("delivery", true, delivery_lines);
    }
    ex.verdict = match allowed {
        0 => "denied",
        n if n == endpoints.len() && id_ok => "allowed",
        n if n == endpoints.len() => "denied",
        _ => "partly allowed",
    }
    .into();
    ex
}

/// Step 2 from the plan: the Service and the endpoints in the order they are tried, or the
/// refusal. None: refused before any connect (the verdict is `denied`).
fn destination_step(
    ex: &mut Explanation,
    state: &State,
    plan: &Plan,
) -> Option<Vec<(SocketAddr, Option<Path>)>> {
    let mut lines = Vec::new();
    let dst = plan.dst;
    let n = match &plan.decision {
        Decision::Connect { candidates, .. } => candidates.len(),
        Decision::Refuse(_) | Decision::HandToL7(_) => 0,
    };
    match (&plan.service, &plan.decision) {
        // The pool picks endpoints of the route's backends, not of the frontend.
        (Some(s), Decision::HandToL7(_)) => {
            lines.push(format!("{dst} is Service {s} port {}", dst.port()))
        }
        (Some(s), _) => lines.push(format!(
            "{dst} is Service {s} port {}: {n} ready endpoint(s)",
            dst.port()
        )),
        (None, _) => {}
    }
    if let Some(note) = &plan.l7_note {
        lines.push(format!("L7 does not apply: {note}"));
    }
    let (candidates, attempts) = match &plan.decision {
        Decision::HandToL7(to) => {
            lines.push(format!(
                "handed to this node's L7 pool ({}): {}; each request is routed and its endpoint chosen there",
                to.protocol.as_str(),
                to.why
            ));
            ex.step("destination", true, lines);
            return Some(Vec::new());
        }
        Decision::Refuse(r) => {
            lines.push(refused_line(r));
            ex.step("destination", false, lines);
            return None;
        }
        Decision::Connect {
            candidates,
            attempts,
        } => (candidates, *attempts),
    };
    if plan.service.is_some() {
        lines.push(format!(
            "a connection tries at most {attempts} of them, in this order (round robin, recently failed endpoints last); a denial stops at once"
        ));
    }
    let mut ok = true;
    for c in candidates {
        if matches!(c.path, Path::Refused(_)) {
            ok = false;
        }
        lines.push(endpoint_line(state, c.endpoint, Some(&c.path)));
    }
    ex.step("destination", ok, lines);
    Some(
        candidates
            .iter()
            .map(|c| (c.endpoint, Some(c.path.clone())))
            .collect(),
    )
}

/// Which address the application at `ep` sees the connection from (`netns::transparent`).
fn delivery_line(
    status: &Status,
    dst_pod: &crate::state::Pod,
    ep: SocketAddr,
    src_ip: std::net::IpAddr,
    l7: bool,
    this_node: &str,
) -> String {
    if l7 {
        return format!(
            "{ep}: the application sees 127.0.0.6 (delivered by the L7 pool, which pools its \
             connections to the application across clients)"
        );
    }
    let node = dst_pod.node.as_deref().unwrap_or("?");
    if node != this_node {
        return format!(
            "{ep}: the application sees {src_ip} unless the agent on node {node} reports \
             otherwise for {} (its /config_dump: delivers_from)",
            dst_pod.key
        );
    }
    let key = dst_pod.key.to_string();
    match status.pods.iter().find(|p| p.pod == key) {
        Some(p) if p.delivers_from.starts_with("127.0.0.6") => {
            format!("{ep}: the application sees {}", p.delivers_from)
        }
        Some(_) => format!("{ep}: the application sees {src_ip}, the client's own address"),
        None => format!("{ep}: {key} is not enrolled yet on this node"),
    }
}

fn refused_line(r: &Refusal) -> String {
    // NR's reason names the outbound traffic policy that refuses.
    let by = if r.flags == crate::metrics::flags::NO_ROUTE {
        " by "
    } else {
        ": "
    };
    format!("REFUSED{by}{} (response flag {})", r.reason, r.flags)
}

/// What an endpoint is: a pod and its node, or a destination outside the mesh and what lets
/// it out.
fn endpoint_line(state: &State, ep: SocketAddr, path: Option<&Path>) -> String {
    if let Some(p) = state.pod_by_ip(ep.ip()) {
        return format!(
            "endpoint {ep}: pod {} on node {}",
            p.key,
            p.node.as_deref().unwrap_or("?")
        );
    }
    let what = match path {
        Some(Path::Direct(Direct::ServiceEntry(se))) => {
            format!("outside the mesh; REGISTRY_ONLY lets it out: listed by ServiceEntry {se}")
        }
        Some(Path::Refused(r)) => refused_line(r),
        Some(_) => "outside the mesh; outbound policy ALLOW_ANY lets it out as plain TCP".into(),
        None => {
            "outside the mesh; the source is not captured, so no outbound policy applies".into()
        }
    };
    format!("endpoint {ep}: {what}")
}

/// `HOST:PORT` → an address: an IP, a Service name (`name`, `name.ns`, `name.ns.svc`,
/// `name.ns.svc.cluster.local`; a bare name is in the source's namespace), or a DNS name.
async fn resolve_target(state: &State, src_ns: &str, to: &str) -> Result<SocketAddr, String> {
    let (host, port) = to
        .rsplit_once(':')
        .ok_or_else(|| format!("--to {to:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--to {to:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let parts: Vec<&str> = host.split('.').collect();
    let key = match parts.as_slice() {
        [name] => Some((src_ns, *name)),
        [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => {
            Some((*ns, *name))
        }
        _ => None,
    };
    if let Some((ns, name)) = key {
        let key = ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        };
        if let Some(svc) = state.services.get(&key) {
            let ip = svc.cluster_ips.first().ok_or_else(|| {
                format!("Service {key} is headless (no cluster IP); name a pod IP")
            })?;
            return Ok(SocketAddr::new(*ip, port));
        }
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            format!("{host:?} is neither a Service of the mesh nor a resolvable name: {e}")
        })?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}
