//! Which route rule a request matches (Gateway API precedence), and which backend it goes to.
//! Pure: no I/O. SKELETON (issue 11): the route helper owns this file; the signatures below are
//! what the worker and the plan call.

use crate::state::{
    routes::{Backend, Route, RouteRule},
    ServiceKey, State,
};

/// The rule a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub route: &'a Route,
    pub rule_index: usize,
    pub rule: &'a RouteRule,
}

/// The routes that apply to requests from a client in `client_ns` to `service` port `port`:
/// consumer routes (in the client's namespace) when there are any, else producer routes (in the
/// Service's namespace). Empty: no route binds this frontend.
pub fn routes_for<'a>(
    state: &'a State,
    client_ns: &str,
    service: &ServiceKey,
    port: u16,
) -> Vec<&'a Route> {
    let binds = |r: &&Route| {
        r.parents
            .iter()
            .any(|p| p.service == *service && p.port.is_none_or(|pp| pp == port))
    };
    let all: Vec<&Route> = state.routes.values().filter(binds).collect();
    let consumer: Vec<&Route> = all
        .iter()
        .copied()
        .filter(|r| r.namespace == client_ns && client_ns != service.namespace)
        .collect();
    if consumer.is_empty() {
        all.into_iter()
            .filter(|r| r.namespace == service.namespace)
            .collect()
    } else {
        consumer
    }
}

/// Whether any route binds `service` port `port` (for any client): the plan hands such
/// connections to L7.
pub fn has_routes(state: &State, service: &ServiceKey, port: u16) -> bool {
    state.routes.values().any(|r| {
        r.parents
            .iter()
            .any(|p| p.service == *service && p.port.is_none_or(|pp| pp == port))
    })
}

/// The rule `req` matches among `routes`, by the Gateway API's precedence. None: no rule
/// matches (404, flag NR).
pub fn select<'a>(routes: &[&'a Route], _req: &http::request::Parts) -> Option<Routed<'a>> {
    let route = routes.first()?;
    let rule = route.rules.first()?;
    Some(Routed {
        route,
        rule_index: 0,
        rule,
    })
}

/// The backend for one request, by weight; `roll` is uniform in `0..u32::MAX`. None: every
/// backend has weight 0 (500).
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
