//! Which route rule a request matches (Gateway API precedence), and which backend it goes to.
//! Pure: no I/O.
//!
//! Binding (GEP-1426): a route binds a Service frontend (its cluster IP and port; a parentRef
//! port narrows it to that port). A client in namespace N uses the routes of N that bind the
//! Service when N is not the Service's namespace and has any (consumer routes); otherwise the
//! routes of the Service's own namespace (producer routes); routes of any third namespace never
//! apply. Of GRPCRoutes and HTTPRoutes binding the same frontend, only the GRPCRoutes apply.
//!
//! Precedence, across every rule of every applicable route (the spec's order): Exact path,
//! then the longest PathPrefix, then RegularExpression paths; then a method match; then the
//! most header matches; then the most query parameter matches. Ties: the oldest route
//! (creationTimestamp; none sorts last), then `namespace/name` alphabetically, then the first
//! rule in the route. GRPCRoute: the longest matching service, then method, then the most
//! header matches, with the same ties.

mod matching;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use crate::state::{
    routes::{Backend, Route, RouteKind, RouteRule},
    ServiceKey, State,
};

pub use matching::Request;

/// The rule a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub route: &'a Route,
    pub rule_index: usize,
    pub rule: &'a RouteRule,
}

/// Whether `r` binds `service` port `port` (a parentRef port narrows it).
pub fn binds(r: &Route, service: &ServiceKey, port: u16) -> bool {
    r.parents
        .iter()
        .any(|p| p.service == *service && p.port.is_none_or(|pp| pp == port))
}

/// The routes that apply to requests from a client in `client_ns` to `service` port `port`:
/// consumer routes (in the client's namespace) when there are any, else producer routes (in the
/// Service's namespace); GRPCRoutes only, when any of those is one. In precedence tie order
/// (oldest first, then by namespace/name). Empty: no route applies to this client, and the
/// request goes to the Service as if there were none (GEP-1426 "route presence").
pub fn routes_for<'a>(
    state: &'a State,
    client_ns: &str,
    service: &ServiceKey,
    port: u16,
) -> Vec<&'a Route> {
    let all: Vec<&Route> = state
        .routes
        .values()
        .filter(|r| binds(r, service, port))
        .collect();
    let consumer = |r: &&Route| r.namespace == client_ns && client_ns != service.namespace;
    let mut chosen: Vec<&Route> = if all.iter().any(consumer) {
        all.into_iter().filter(consumer).collect()
    } else {
        all.into_iter()
            .filter(|r| r.namespace == service.namespace)
            .collect()
    };
    if chosen.iter().any(|r| r.kind == RouteKind::Grpc) {
        chosen.retain(|r| r.kind == RouteKind::Grpc);
    }
    chosen.sort_by(|a, b| route_order(a, b));
    chosen
}

/// Whether any route binds `service` port `port` (for any client): the plan hands such
/// connections to L7. A client may still get no route (`routes_for` empty: consumer routes of
/// another namespace only); see [`has_routes_for`].
pub fn has_routes(state: &State, service: &ServiceKey, port: u16) -> bool {
    state.routes.values().any(|r| binds(r, service, port))
}

/// Whether a route applies to a client in `client_ns` calling `service` port `port`.
pub fn has_routes_for(state: &State, client_ns: &str, service: &ServiceKey, port: u16) -> bool {
    !routes_for(state, client_ns, service, port).is_empty()
}

/// Oldest first (a route without a creation time last), then `namespace/name`.
fn route_order(a: &Route, b: &Route) -> Ordering {
    let created = match (&a.created, &b.created) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    created
        .then_with(|| a.namespace.cmp(&b.namespace))
        .then_with(|| a.name.cmp(&b.name))
}

/// The rule `req` matches among `routes`, by the Gateway API's precedence. None: no rule
/// matches (404, flag NR).
pub fn select<'a>(routes: &[&'a Route], req: &http::request::Parts) -> Option<Routed<'a>> {
    let request = Request::new(req);
    let mut best: Option<(matching::Rank, Routed<'a>)> = None;
    for route in routes {
        for (rule_index, rule) in route.rules.iter().enumerate() {
            let Some(rank) = rule
                .matches
                .iter()
                .filter(|m| request.matches(m))
                .map(matching::rank)
                .max()
            else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((r, b)) => match rank.cmp(r) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => {
                        route_order(route, b.route).then(rule_index.cmp(&b.rule_index))
                            == Ordering::Less
                    }
                },
            };
            if better {
                let routed = Routed {
                    route,
                    rule_index,
                    rule,
                };
                best = Some((rank, routed));
            }
        }
    }
    best.map(|(_, routed)| routed)
}

/// The backend for one request, by weight; `roll` is uniform in `0..u32::MAX`. None: no
/// backend, or every backend has weight 0 (500). A backend that is not resolved
/// (`Backend::unresolved`) is picked for its share like any other: the caller answers 500.
pub fn pick_backend(rule: &RouteRule, roll: u32) -> Option<&Backend> {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = u64::from(roll) * total / (u64::from(u32::MAX) + 1);
    for b in &rule.backends {
        if at < u64::from(b.weight) {
            return Some(b);
        }
        at -= u64::from(b.weight);
    }
    None
}
