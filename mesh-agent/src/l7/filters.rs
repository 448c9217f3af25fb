//! HTTPRoute and GRPCRoute filters (RequestHeaderModifier, ResponseHeaderModifier, URLRewrite,
//! RequestRedirect, RequestMirror) applied to one request. Pure.
//!
//! Order: the rule's filters in the order written, then (once the backend is chosen) that
//! backend's own filters. A RequestRedirect answers at once; a mirror is not applied here (the
//! worker sends copies to [`mirrors_for`]).

#[cfg(test)]
mod tests;
mod url;

use http::{HeaderName, HeaderValue};

use crate::state::routes::{Backend, Filter, HeaderModifier, PathMatch, PathModifier, RouteRule};

pub use url::{location, replace_prefix};

/// What the request filters decided: go on (the request was modified in place) or answer at
/// once (a redirect).
#[derive(Debug)]
pub enum RequestAction {
    Forward,
    Respond(http::Response<()>),
}

/// Applies `rule`'s request filters to `req` (before the backend is chosen). A redirect's port,
/// when neither the filter nor its scheme says one, is the port the client called, taken from
/// the Host header (or the scheme's default); [`apply_request_on`] takes it from the caller.
pub fn apply_request(rule: &RouteRule, req: &mut http::request::Parts) -> RequestAction {
    let port = url::host_port(req).unwrap_or_else(|| url::default_port(&url::scheme(req)));
    apply_request_on(rule, req, port)
}

/// As [`apply_request`], with the frontend (Service) port the client called.
pub fn apply_request_on(
    rule: &RouteRule,
    req: &mut http::request::Parts,
    frontend_port: u16,
) -> RequestAction {
    apply_list(&rule.filters, matched_prefix(rule), req, frontend_port)
}

/// Applies the chosen backend's own request filters (after the rule's).
pub fn apply_backend_request(
    rule: &RouteRule,
    backend: &Backend,
    req: &mut http::request::Parts,
) -> RequestAction {
    let port = url::host_port(req).unwrap_or_else(|| url::default_port(&url::scheme(req)));
    apply_list(&backend.filters, matched_prefix(rule), req, port)
}

/// Applies `rule`'s response filters to the response.
pub fn apply_response(rule: &RouteRule, resp: &mut http::response::Parts) {
    response_list(&rule.filters, resp);
}

/// Applies the chosen backend's own response filters (after the rule's).
pub fn apply_backend_response(backend: &Backend, resp: &mut http::response::Parts) {
    response_list(&backend.filters, resp);
}

/// Every mirror target of the rule (rule-level RequestMirror filters).
pub fn mirrors(rule: &RouteRule) -> Vec<&Backend> {
    rule.filters
        .iter()
        .filter_map(|f| match f {
            Filter::RequestMirror(m) => Some(&m.backend),
            _ => None,
        })
        .collect()
}

/// The mirror targets for one request: the rule's and the chosen backend's, each kept when
/// `roll` (uniform in `0..=u32::MAX`) falls in its percentage, and resolved.
pub fn mirrors_for<'a>(
    rule: &'a RouteRule,
    backend: Option<&'a Backend>,
    roll: u32,
) -> Vec<&'a Backend> {
    let own = backend.map(|b| b.filters.as_slice()).unwrap_or_default();
    rule.filters
        .iter()
        .chain(own)
        .filter_map(|f| match f {
            Filter::RequestMirror(m) if m.applies(roll) && m.backend.is_resolved() => {
                Some(&m.backend)
            }
            _ => None,
        })
        .collect()
}

/// The prefix ReplacePrefixMatch replaces: the rule's one PathPrefix match (parse guarantees
/// there is exactly one where the modifier is used).
fn matched_prefix(rule: &RouteRule) -> Option<&str> {
    match rule.matches.as_slice() {
        [m] => match &m.path {
            Some(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        },
        _ => None,
    }
}

fn apply_list(
    filters: &[Filter],
    prefix: Option<&str>,
    req: &mut http::request::Parts,
    frontend_port: u16,
) -> RequestAction {
    for f in filters {
        match f {
            Filter::RequestHeaderModifier(m) => modify(&mut req.headers, m),
            Filter::UrlRewrite { hostname, path } => {
                if let Some(p) = path {
                    let new = new_path(p, prefix, req.uri.path());
                    url::set_path(req, &new);
                }
                if let Some(h) = hostname {
                    url::set_host(req, h);
                }
            }
            Filter::RequestRedirect(r) => {
                return RequestAction::Respond(url::redirect(r, prefix, req, frontend_port));
            }
            Filter::ResponseHeaderModifier(_) | Filter::RequestMirror(_) => {}
        }
    }
    RequestAction::Forward
}

fn response_list(filters: &[Filter], resp: &mut http::response::Parts) {
    for f in filters {
        if let Filter::ResponseHeaderModifier(m) = f {
            modify(&mut resp.headers, m);
        }
    }
}

/// The path a rewrite or redirect makes of `path`.
pub fn new_path(m: &PathModifier, prefix: Option<&str>, path: &str) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => {
            if p.is_empty() {
                "/".into()
            } else {
                p.clone()
            }
        }
        PathModifier::ReplacePrefixMatch(r) => match prefix {
            Some(prefix) => replace_prefix(path, prefix, r),
            None => path.to_owned(),
        },
    }
}

/// Set replaces every value, add appends one more (a separate field: equivalent to the spec's
/// comma-joined value, and correct for Set-Cookie), remove drops every value.
fn modify(headers: &mut http::HeaderMap, m: &HeaderModifier) {
    let pair = |(n, v): &(String, String)| {
        Some((
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (name, value) in m.set.iter().filter_map(pair) {
        headers.insert(name, value);
    }
    for (name, value) in m.add.iter().filter_map(pair) {
        headers.append(name, value);
    }
    for name in &m.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}
