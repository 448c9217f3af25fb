//! The L7 part of `meshctl explain --http 'METHOD /path' [-H 'name: value']`: for a connection
//! the plan hands to the L7 pool, which route and rule the request matches, its filters, the
//! backends and their weights, the timeout and retry in force; and which endpoints the request
//! can reach, for the rest of explain (identities, policy, transport).
//! It calls the same functions the worker does (`l7::route`), so the two cannot disagree.

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    l7::route,
    proxy::plan::{self, Facts, Path, Plan},
    state::{routes::RouteRule, PodKey, State},
};

/// The request explain is asked about.
#[derive(Debug, Clone, Serialize)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl HttpProbe {
    /// `METHOD /path` (or just `/path`: GET) and `name: value` headers.
    pub fn parse(request: &str, headers: &[String]) -> Result<Self, String> {
        let mut words = request.split_whitespace();
        let (method, path) = match (words.next(), words.next()) {
            (Some(p), None) if p.starts_with('/') => ("GET".to_string(), p.to_string()),
            (Some(m), Some(p)) if p.starts_with('/') => (m.to_ascii_uppercase(), p.to_string()),
            _ => return Err(format!("--http {request:?}: expected 'METHOD /path'")),
        };
        let headers = headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| format!("-H {h:?}: expected 'name: value'"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            method,
            path,
            headers,
        })
    }

    /// The request head the router sees, for a connection to `dst`.
    pub fn parts(&self, dst: SocketAddr) -> Result<http::request::Parts, String> {
        let mut b = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header(http::header::HOST, dst.ip().to_string());
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(())
            .map(|r| r.into_parts().0)
            .map_err(|e| format!("request {} {}: {e}", self.method, self.path))
    }
}

/// What the L7 step found: its lines, whether the request is routed, and the endpoints (with
/// how each is reached) the request may go to.
pub struct Routed {
    pub lines: Vec<String>,
    pub ok: bool,
    pub legs: Vec<(SocketAddr, Option<Path>)>,
}

/// The route step for `plan` (handed to L7) and the request `probe`.
pub fn route_step(
    state: &State,
    source: &PodKey,
    plan: &Plan,
    probe: &HttpProbe,
    facts: &Facts,
) -> Routed {
    let mut lines = Vec::new();
    let fail = |mut lines: Vec<String>, why: String| {
        lines.push(why);
        Routed {
            lines,
            ok: false,
            legs: Vec::new(),
        }
    };
    let Some(frontend) = &plan.service else {
        return fail(lines, "no Service: nothing to route".into());
    };
    let parts = match probe.parts(plan.dst) {
        Ok(p) => p,
        Err(e) => return fail(lines, e),
    };
    let port = plan.dst.port();
    let routes = route::routes_for(state, &source.namespace, frontend, port);
    let request = format!("{} {}", probe.method, probe.path);
    type Backends = Vec<(String, u16, u32, Option<String>)>;
    let (rule, backends): (Option<&RouteRule>, Backends) = if routes.is_empty() {
        lines.push(format!(
            "no route binds {frontend} port {port}: {request} goes to {frontend} itself"
        ));
        (None, vec![(frontend.to_string(), port, 1, None)])
    } else {
        let names: Vec<String> = routes
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        lines.push(format!(
            "routes for clients in namespace {} to {frontend} port {port}: {}",
            source.namespace,
            names.join(", ")
        ));
        let Some(r) = route::select(&routes, &parts) else {
            return fail(
                lines,
                format!("{request} matches no rule: answered 404 (flag NR)"),
            );
        };
        let kind = match r.route.kind {
            crate::state::routes::RouteKind::Http => "HTTPRoute",
            crate::state::routes::RouteKind::Grpc => "GRPCRoute",
        };
        lines.push(format!(
            "{request} matches {kind} {}/{} rule {}",
            r.route.namespace, r.route.name, r.rule_index
        ));
        let b = r
            .rule
            .backends
            .iter()
            .map(|b| {
                let why = b.unresolved.clone();
                (b.service.to_string(), b.port, b.weight, why)
            })
            .collect();
        (Some(r.rule), b)
    };
    if let Some(rule) = rule {
        // Rendered from the rule itself, whatever filters it carries.
        if let Some(f) = serde_json::to_value(rule)
            .ok()
            .and_then(|v| v.get("filters").cloned())
            .filter(|f| f.as_array().is_some_and(|a| !a.is_empty()))
        {
            lines.push(format!("filters: {f}"));
        }
        let t = rule.timeouts;
        lines.push(match (t.request, t.backend_request) {
            (None, None) => "timeout: none".into(),
            (r, b) => format!(
                "timeout: request {}, each try {} (504, flag UT, on expiry)",
                r.map_or("none".into(), |d| format!("{d:?}")),
                b.map_or("none".into(), |d| format!("{d:?}"))
            ),
        });
        lines.push(match &rule.retry {
            None => "retry: none".into(),
            Some(r) => format!(
                "retry: up to {} more tries on {:?}{}{}, within the worker's retry budget",
                r.attempts,
                r.codes,
                match t.backend_request {
                    Some(_) => ", connect failures and tries cut by backendRequest",
                    None => " and connect failures",
                },
                r.backoff
                    .map_or(String::new(), |b| format!(", backoff {b:?}"))
            ),
        });
    }
    let total: u32 = backends.iter().map(|b| b.2).sum();
    let mut legs = Vec::new();
    for (service, bport, weight, unresolved) in &backends {
        let share = if total == 0 {
            0.0
        } else {
            f64::from(*weight) * 100.0 / f64::from(total)
        };
        // The request path answers 500 for this share without looking for endpoints.
        if let Some(why) = unresolved {
            lines.push(format!(
                "backend {service}:{bport} weight {weight} ({share:.0}% of requests): answered 500 ({why})"
            ));
            continue;
        }
        let eps = backend_endpoints(state, service, *bport);
        lines.push(format!(
            "backend {service}:{bport} weight {weight} ({share:.0}% of requests): {} ready endpoint(s)",
            eps.len()
        ));
        if *weight > 0 {
            legs.extend(
                eps.into_iter()
                    .map(|ep| (ep, Some(plan::path(state, ep, facts)))),
            );
        }
    }
    if total == 0 {
        return fail(lines, "every backend has weight 0: answered 500".into());
    }
    Routed {
        lines,
        ok: !legs.is_empty(),
        legs,
    }
}

/// The ready endpoints of `service` (`namespace/name`) port `port`.
fn backend_endpoints(state: &State, service: &str, port: u16) -> Vec<SocketAddr> {
    let Some((ns, name)) = service.split_once('/') else {
        return Vec::new();
    };
    let key = crate::state::ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    };
    state
        .services
        .get(&key)
        .and_then(|s| s.cluster_ips.first())
        .and_then(|vip| state.resolve_service(SocketAddr::new(*vip, port)))
        .map(|r| r.endpoints)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_given_as_method_and_path_with_headers() {
        let p = HttpProbe::parse("delete /orders/1", &["x-client: iphone".into()]).unwrap();
        assert_eq!(
            (p.method.as_str(), p.path.as_str()),
            ("DELETE", "/orders/1")
        );
        assert_eq!(p.headers, [("x-client".to_string(), "iphone".to_string())]);
        assert_eq!(HttpProbe::parse("/x", &[]).unwrap().method, "GET");
        assert!(HttpProbe::parse("GET", &[]).is_err());
        assert!(HttpProbe::parse("GET /", &["nocolon".into()]).is_err());
    }
}
