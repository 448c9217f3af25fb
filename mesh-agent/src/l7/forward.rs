//! One request through a worker.
//!
//! Source side: the routes bound to the Service frontend the client named pick a rule
//! (`route`), its filters apply (`filters`), a backend is drawn by weight, and the request is
//! sent to one of the backend's endpoints (round robin) over HBONE as the source workload,
//! within the rule's timeouts and retries. Without routes (a Service labelled
//! `weft.dev/l7: enabled`), the frontend itself is the backend.
//! Destination side: the request is authorized (AuthorizationPolicy, L7 rules included) and
//! delivered to the pod's application.
//! Every request is reported when its response ends (`report`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use mesh_common::INBOUND_DELIVERY_SOURCE;
use tracing::{debug, warn};

use super::{
    context::Context,
    filters::{self, RequestAction},
    handoff::{Handoff, Protocol, Side},
    report::{self, add_flag, Reported, Traced},
    request, route,
    trace::{Span, SpanKind},
    upstream::{Body, BoxError, Failed, Key, Version, Via},
};
use crate::{
    identity::Identity,
    metrics::{flags, http::RequestRecord},
    netns::Netns,
    policy,
    proxy::plan::{self, Facts, Path},
    state::{
        routes::{RouteRule, Timeouts},
        ServiceKey, State, TunnelProtocol,
    },
    tunnel::traceparent::ConnectionId,
};

/// Request bodies up to this size are buffered so the request can be retried (or mirrored);
/// larger ones stream through and are not retried (said in the access log).
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// The header naming the worker (its pid) on responses a worker makes itself.
pub const WORKER_HEADER: &str = "x-weft-l7-worker";
/// How long a mirrored request may take before it is dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// One handed-over connection, shared by its requests.
pub struct Conn {
    pub ctx: Arc<Context>,
    pub netns: Netns,
    pub h: Handoff,
    pub id: ConnectionId,
    pub source: Option<Identity>,
}

/// Handles one request; never fails (errors are responses with Envoy's flags).
pub async fn handle(conn: Arc<Conn>, req: hyper::Request<Incoming>) -> http::Response<Body> {
    let started = Instant::now();
    let state = conn.ctx.state.load_full();
    let (mut parts, body) = req.into_parts();
    let mut rec = report::begin(&state, &conn.h, &parts);
    let kind = match conn.h.side {
        Side::Outbound => SpanKind::Client,
        Side::Inbound => SpanKind::Server,
    };
    let tracer = &conn.ctx.tracer;
    let span = Span::start(
        &parts.headers,
        kind,
        tracer.sampling_percent(),
        SystemTime::now(),
    );
    // Every copy of the request sent on carries this hop's span as its parent.
    span.inject(&mut parts.headers);
    rec.trace_id = Some(span.trace_id_hex());
    let version = parts.version;
    let request_bytes = Arc::new(AtomicU64::new(0));
    let body = report::count_request(body.map_err(Into::into).boxed(), request_bytes.clone());
    let req = http::Request::from_parts(parts, body);
    let resp = match conn.h.side {
        Side::Outbound => outbound(&conn, &state, req, &mut rec).await,
        Side::Inbound => inbound(&conn, &state, req, &mut rec).await,
    };
    let traced = Traced {
        span,
        kind,
        peer: (kind == SpanKind::Server).then(|| SocketAddr::new(conn.h.source_ip, 0)),
        pod: conn.h.pod.name.clone(),
        version,
    };
    Reported::wrap(resp, rec, conn.ctx.clone(), started, request_bytes, traced)
}

/// A response the worker makes itself, with its flag.
pub fn local(
    status: StatusCode,
    body: &str,
    flag: &str,
    rec: &mut RequestRecord,
) -> http::Response<Body> {
    if flag != flags::NONE {
        add_flag(rec, flag);
    }
    let mut resp = http::Response::new(full(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    // Which worker answered, for whoever debugs it (the upstream never made this response).
    headers.insert(WORKER_HEADER, http::HeaderValue::from(std::process::id()));
    resp
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e| match e {}).boxed()
}

async fn outbound(
    conn: &Arc<Conn>,
    state: &Arc<State>,
    req: http::Request<Body>,
    rec: &mut RequestRecord,
) -> http::Response<Body> {
    let Some(frontend) = conn.h.service.clone() else {
        return local(
            StatusCode::BAD_GATEWAY,
            "no Service for this connection",
            flags::NO_ROUTE,
            rec,
        );
    };
    let port = conn.h.dst.port();
    let routes = route::routes_for(state, &conn.h.pod.namespace, &frontend, port);
    let (mut parts, mut body) = req.into_parts();
    let (rule, chosen) = if routes.is_empty() {
        (None, None)
    } else {
        let Some(routed) = route::select(&routes, &parts) else {
            return local(
                StatusCode::NOT_FOUND,
                "no route matched",
                flags::NO_ROUTE,
                rec,
            );
        };
        rec.route = Some(format!("{}/{}", routed.route.namespace, routed.route.name));
        rec.route_rule = Some(routed.rule_index);
        // Before the backend: a redirect rule has no backends.
        if let RequestAction::Respond(resp) =
            filters::apply_request_on(routed.rule, &mut parts, port)
        {
            let (p, ()) = resp.into_parts();
            return http::Response::from_parts(p, full(Bytes::new()));
        }
        let Some(b) = route::pick_backend(routed.rule, rand::random::<u32>()) else {
            return local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no backend can receive this request (every weight is 0)",
                flags::NO_ROUTE,
                rec,
            );
        };
        if let Some(why) = &b.unresolved {
            rec.backend = Some(format!("{}:{}", b.service, b.port));
            return local(StatusCode::INTERNAL_SERVER_ERROR, why, flags::NO_ROUTE, rec);
        }
        if let RequestAction::Respond(resp) =
            filters::apply_backend_request(routed.rule, b, &mut parts)
        {
            let (p, ()) = resp.into_parts();
            return http::Response::from_parts(p, full(Bytes::new()));
        }
        (Some(routed.rule), Some(b))
    };
    let backend = chosen.map_or((frontend, port), |b| (b.service.clone(), b.port));
    if let Some(rule) = rule {
        let targets = filters::mirrors_for(rule, chosen, rand::random::<u32>());
        if !targets.is_empty() {
            body = match mirror_whole(conn, state, &parts, &targets, body).await {
                Ok(b) => b,
                Err(e) => {
                    return local(
                        StatusCode::BAD_REQUEST,
                        &format!("request body: {e}"),
                        flags::DOWNSTREAM_RESET,
                        rec,
                    )
                }
            };
        }
    }
    rec.backend = Some(format!("{}:{}", backend.0, backend.1));
    report::set_service(rec, Some(&backend.0));
    let timeouts = rule.map(|r| r.timeouts).unwrap_or_default();
    let req = http::Request::from_parts(parts, body);
    let send = send(conn, state, req, &backend, rule, timeouts, rec);
    let mut resp = match timeouts.request {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                flags::UPSTREAM_TIMEOUT,
                rec,
            ),
        },
        None => send.await,
    };
    if let Some(rule) = rule {
        let (mut p, b) = resp.into_parts();
        filters::apply_response(rule, &mut p);
        if let Some(backend) = chosen {
            filters::apply_backend_response(backend, &mut p);
        }
        resp = http::Response::from_parts(p, b);
    }
    resp
}

/// Mirrors the request when its body can be buffered (known length up to
/// [`MAX_BUFFERED_BODY`]): a mirror gets the request whole or not at all, since a head whose
/// body never comes is not a copy and leaves the mirror waiting for it. Returns the body to
/// send on; Err: the client's body failed.
async fn mirror_whole(
    conn: &Arc<Conn>,
    state: &Arc<State>,
    parts: &http::request::Parts,
    targets: &[&crate::state::routes::Backend],
    body: Body,
) -> Result<Body, BoxError> {
    match body.size_hint().upper() {
        Some(n) if n <= MAX_BUFFERED_BODY => {
            let bytes = body.collect().await?.to_bytes();
            mirror(conn, state, parts, targets, &bytes);
            Ok(full(bytes))
        }
        _ => {
            debug!(
                "not mirrored: request body larger than {MAX_BUFFERED_BODY} bytes or of unknown length"
            );
            Ok(body)
        }
    }
}

/// Sends a copy of the request (its head and its buffered `body`) to each mirror target,
/// answer discarded, bounded by the connect and a short response timeout. A mirror never
/// delays or fails the real request.
fn mirror(
    conn: &Arc<Conn>,
    state: &Arc<State>,
    parts: &http::request::Parts,
    targets: &[&crate::state::routes::Backend],
    body: &Bytes,
) {
    for t in targets {
        let backend = (t.service.clone(), t.port);
        let Ok(eps) = endpoints(conn, state, &backend) else {
            continue;
        };
        let Some(ep) = eps.into_iter().next() else {
            continue;
        };
        let authority = report::authority(parts).unwrap_or_default();
        let Ok(req) = request::build(
            request::copy_parts(parts),
            full(body.clone()),
            ep.key.version,
            &authority,
            false,
        ) else {
            continue;
        };
        let conn = conn.clone();
        tokio::spawn(async move {
            let ctx = &conn.ctx;
            let send = ctx.upstreams.send(ctx, &conn.netns, &ep.key, req, conn.id);
            match tokio::time::timeout(MIRROR_TIMEOUT, send).await {
                Ok(Ok(resp)) => {
                    let _ = resp.into_body().collect().await;
                }
                Ok(Err(f)) => debug!(error = %f.error, "mirror failed"),
                Err(_) => debug!("mirror timed out"),
            }
        });
    }
}

/// An endpoint of the backend and how to reach it.
struct Endpoint {
    key: Key,
}

/// Sends the request to the backend's endpoints, with the rule's retries.
async fn send(
    conn: &Conn,
    state: &Arc<State>,
    req: http::Request<Body>,
    backend: &(ServiceKey, u16),
    rule: Option<&RouteRule>,
    timeouts: Timeouts,
    rec: &mut RequestRecord,
) -> http::Response<Body> {
    let endpoints = match endpoints(conn, state, backend) {
        Ok(e) => e,
        Err((status, msg, flag)) => return local(status, &msg, flag, rec),
    };
    let retry = rule.and_then(|r| r.retry.clone());
    let (mut parts, body) = req.into_parts();
    let upgrade = request::is_upgrade(&parts);
    // The client's upgrade goes with the one try an upgrade gets.
    let mut on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let authority = report::authority(&parts).unwrap_or_else(|| conn.h.dst.to_string());
    // Buffer what can be retried; stream the rest.
    let mut body = match (&retry, body.size_hint().upper()) {
        (Some(_), Some(n)) if n <= MAX_BUFFERED_BODY && !upgrade => match body.collect().await {
            Ok(c) => TryBody::Buffered(c.to_bytes()),
            Err(e) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    &format!("request body: {e}"),
                    flags::DOWNSTREAM_RESET,
                    rec,
                )
            }
        },
        (Some(_), _) => {
            rec.retry_note = Some(format!(
                "not retried: request body larger than {MAX_BUFFERED_BODY} bytes or of unknown length"
            ));
            TryBody::Streaming(Some(body))
        }
        (None, _) => TryBody::Streaming(Some(body)),
    };
    let tries = match (&retry, &body) {
        (Some(r), TryBody::Buffered(_)) => 1 + r.attempts,
        _ => 1,
    };
    conn.ctx.budget.request();
    let mut last = None;
    for attempt in 0..tries {
        if attempt > 0 {
            if !conn.ctx.budget.try_retry() {
                rec.retry_note = Some("retry budget of this worker spent".into());
                break;
            }
            rec.retries += 1;
            if let Some(backoff) = retry.as_ref().and_then(|r| r.backoff) {
                tokio::time::sleep(backoff * 2u32.saturating_pow(attempt - 1).min(8)).await;
            }
        }
        let ep = &endpoints[(conn.ctx.next_endpoint.fetch_add(1, Relaxed)) % endpoints.len()];
        let mut these = request::copy_parts(&parts);
        if let Some(u) = on_upgrade.take() {
            these.extensions.insert(u);
        }
        let up = match request::build(these, body.next_try(), ep.key.version, &authority, upgrade) {
            Ok(r) => r,
            Err(e) => return local(StatusCode::BAD_REQUEST, &e, flags::NONE, rec),
        };
        rec.endpoint = Some(ep.key.endpoint.to_string());
        report::set_destination(rec, state, ep.key.endpoint.ip());
        if let Via::Tunnel { destination, .. } = &ep.key.via {
            rec.upstream_identity = Some(destination.to_string());
            rec.destination_principal = destination.to_string();
        }
        let result = try_once(conn, ep, up, upgrade, timeouts.backend_request).await;
        let retriable = match &result {
            Try::Response(resp) => retry
                .as_ref()
                .is_some_and(|r| r.codes.contains(&resp.status().as_u16())),
            Try::Failed(f) => f.before_request || body.resendable(),
            // GEP-1731: a try cut by backendRequest is retried (whatever the codes) when its
            // body can be sent again; each try has its own backendRequest bound.
            Try::TimedOut => body.resendable(),
        };
        last = Some(result);
        if !retriable || retry.is_none() {
            break;
        }
    }
    let exhausted = retry.is_some() && rec.retries > 0;
    match last {
        Some(Try::Response(resp)) => {
            if exhausted
                && retry
                    .as_ref()
                    .is_some_and(|r| r.codes.contains(&resp.status().as_u16()))
            {
                add_flag(rec, flags::RETRIES_EXHAUSTED);
            }
            let (p, b) = resp.into_parts();
            http::Response::from_parts(p, b.map_err(Into::into).boxed())
        }
        Some(Try::Failed(f)) => {
            warn!(error = %f.error, flags = f.flags, "upstream request failed");
            if exhausted {
                add_flag(rec, flags::RETRIES_EXHAUSTED);
            }
            let status = if f.flags == flags::DENIED {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            local(
                status,
                &format!(
                    "upstream connect error or disconnect/reset before headers: {}",
                    f.error
                ),
                f.flags,
                rec,
            )
        }
        Some(Try::TimedOut) => {
            if exhausted {
                add_flag(rec, flags::RETRIES_EXHAUSTED);
            }
            local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                flags::UPSTREAM_TIMEOUT,
                rec,
            )
        }
        None => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no try was made",
            flags::NO_HEALTHY_UPSTREAM,
            rec,
        ),
    }
}

/// A request body as the tries see it: buffered (every try sends a copy) or streaming (the
/// first try takes it; it cannot be sent again).
enum TryBody {
    Buffered(Bytes),
    Streaming(Option<Body>),
}

impl TryBody {
    fn next_try(&mut self) -> Body {
        match self {
            TryBody::Buffered(b) => full(b.clone()),
            TryBody::Streaming(b) => b.take().unwrap_or_else(|| full(Bytes::new())),
        }
    }

    /// Whether another try can send the whole body again.
    fn resendable(&self) -> bool {
        matches!(self, TryBody::Buffered(_))
    }
}

enum Try {
    Response(hyper::Response<Incoming>),
    Failed(Failed),
    TimedOut,
}

async fn try_once(
    conn: &Conn,
    ep: &Endpoint,
    req: http::Request<Body>,
    upgrade: bool,
    timeout: Option<Duration>,
) -> Try {
    let ctx = &conn.ctx;
    if upgrade {
        return upgrade_exchange(conn, ep, req).await;
    }
    let fut = ctx.upstreams.send(ctx, &conn.netns, &ep.key, req, conn.id);
    let r = match timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => return Try::TimedOut,
        },
        None => fut.await,
    };
    match r {
        Ok(resp) => Try::Response(resp),
        Err(f) => Try::Failed(f),
    }
}

/// A WebSocket (or other `Upgrade`) exchange: on 101 both sides are joined byte for byte.
async fn upgrade_exchange(conn: &Conn, ep: &Endpoint, mut req: http::Request<Body>) -> Try {
    let down = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let ctx = &conn.ctx;
    let mut resp = match ctx
        .upstreams
        .send_upgrade(ctx, &conn.netns, &ep.key, req, conn.id)
        .await
    {
        Ok(r) => r,
        Err(f) => return Try::Failed(f),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let up = hyper::upgrade::on(&mut resp);
        if let Some(down) = down {
            tokio::spawn(async move {
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let mut d = hyper_util::rt::TokioIo::new(d);
                        let mut u = hyper_util::rt::TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                            debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => debug!(error = %e, "upgrade not completed"),
                }
            });
        }
    }
    Try::Response(resp)
}

/// The endpoints of `backend` and how each is reached from this connection's pod.
fn endpoints(
    conn: &Conn,
    state: &State,
    backend: &(ServiceKey, u16),
) -> Result<Vec<Endpoint>, (StatusCode, String, &'static str)> {
    let (service, port) = backend;
    let unresolved = |why: String| (StatusCode::INTERNAL_SERVER_ERROR, why, flags::NO_ROUTE);
    let svc = state
        .services
        .get(service)
        .ok_or_else(|| unresolved(format!("backend Service {service} does not exist")))?;
    let sp = svc
        .ports
        .iter()
        .find(|p| p.port == *port)
        .ok_or_else(|| unresolved(format!("backend Service {service} has no port {port}")))?;
    let vip = svc
        .cluster_ips
        .first()
        .ok_or_else(|| unresolved(format!("backend Service {service} is headless")))?;
    let resolved = state
        .resolve_service(SocketAddr::new(*vip, *port))
        .ok_or_else(|| {
            unresolved(format!(
                "backend Service {service} port {port} does not resolve"
            ))
        })?;
    if resolved.endpoints.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream: {service} port {port} has no ready endpoints"),
            flags::NO_HEALTHY_UPSTREAM,
        ));
    }
    let version = match sp.http_protocol() {
        Some(Protocol::Http) => Version::Http1,
        Some(Protocol::Http2 | Protocol::Grpc) => Version::Http2,
        // Not declared: speak what the client spoke.
        None => match conn.h.protocol {
            Protocol::Http => Version::Http1,
            _ => Version::Http2,
        },
    };
    let hosts = Default::default();
    let facts = Facts {
        trust_domain: &conn.ctx.trust_domain,
        mtls: conn.source.is_some(),
        egress_hosts: &hosts,
        candidates: None,
        l7_pool: true,
    };
    let mut out = Vec::new();
    let mut refused = None;
    for endpoint in resolved.endpoints {
        let via = match plan::path(state, endpoint, &facts) {
            Path::Tunnel {
                identity,
                hbone,
                transport,
            } => match &conn.source {
                Some(source) => Via::Tunnel {
                    source: source.clone(),
                    destination: identity,
                    hbone,
                    quic: transport == TunnelProtocol::Quic,
                },
                None => continue,
            },
            Path::Direct(_) => Via::Direct { bind: None },
            Path::Refused(r) => {
                refused = Some(r.reason);
                continue;
            }
        };
        out.push(Endpoint {
            key: Key {
                pod: conn.h.pod.clone(),
                endpoint,
                via,
                version,
            },
        });
    }
    if out.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            refused.unwrap_or_else(|| format!("no endpoint of {service} can be reached")),
            flags::NO_HEALTHY_UPSTREAM,
        ));
    }
    Ok(out)
}

/// Destination side: authorize, then deliver to the application in the pod.
async fn inbound(
    conn: &Conn,
    state: &Arc<State>,
    req: http::Request<Body>,
    rec: &mut RequestRecord,
) -> http::Response<Body> {
    let Some(pod) = state.pods.get(&conn.h.pod) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pod is no longer in the configuration",
            flags::NO_HEALTHY_UPSTREAM,
            rec,
        );
    };
    rec.destination_principal = Identity::new(
        &conn.ctx.trust_domain,
        &pod.key.namespace,
        &pod.service_account,
    )
    .to_string();
    let l4 = policy::Connection {
        principal: conn.source.as_ref().map(Identity::principal),
        source_ip: conn.h.source_ip,
        port: conn.h.dst.port(),
    };
    let (parts, body) = req.into_parts();
    let host = report::authority(&parts).unwrap_or_default();
    let verdict = policy::l7::authorize(
        state,
        pod,
        &l4,
        &policy::l7::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            host: &host,
            headers: &parts.headers,
        },
    );
    rec.policy = verdict.policy.clone();
    if !verdict.allowed {
        debug!(policy = verdict.policy.as_deref().unwrap_or("-"), reason = %verdict.reason, "request denied");
        let mut resp = local(StatusCode::FORBIDDEN, "", flags::DENIED, rec);
        *resp.body_mut() = full(Bytes::from_static(policy::l7::DENIED_BODY.as_bytes()));
        return resp;
    }
    let version = match conn.h.protocol {
        Protocol::Http => Version::Http1,
        Protocol::Http2 | Protocol::Grpc => Version::Http2,
    };
    let bind = conn
        .h
        .dst
        .is_ipv4()
        .then(|| SocketAddr::new(Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into(), 0));
    let ep = Endpoint {
        key: Key {
            pod: conn.h.pod.clone(),
            endpoint: conn.h.dst,
            via: Via::Direct { bind },
            version,
        },
    };
    let upgrade = request::is_upgrade(&parts);
    let authority = if host.is_empty() {
        conn.h.dst.to_string()
    } else {
        host
    };
    let up = match request::build(parts, body, version, &authority, upgrade) {
        Ok(r) => r,
        Err(e) => return local(StatusCode::BAD_REQUEST, &e, flags::NONE, rec),
    };
    match try_once(conn, &ep, up, upgrade, None).await {
        Try::Response(resp) => {
            let (p, b) = resp.into_parts();
            http::Response::from_parts(p, b.map_err(Into::into).boxed())
        }
        Try::Failed(f) => local(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("delivery to the application: {}", f.error),
            flags::UPSTREAM_FAILURE,
            rec,
        ),
        Try::TimedOut => local(
            StatusCode::GATEWAY_TIMEOUT,
            "delivery timed out",
            flags::UPSTREAM_TIMEOUT,
            rec,
        ),
    }
}
