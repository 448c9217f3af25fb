//! HTTPRoute filters (RequestHeaderModifier, ResponseHeaderModifier, URLRewrite,
//! RequestRedirect, RequestMirror), applied to one request. Pure. SKELETON (issue 11): the
//! route helper owns this file.

use crate::state::routes::RouteRule;

/// What the request filters decided: go on (the request was modified in place) or answer at
/// once (a redirect).
#[derive(Debug)]
pub enum RequestAction {
    Forward,
    Respond(http::Response<()>),
}

/// Applies `rule`'s request filters to `req` (before the backend is chosen).
pub fn apply_request(_rule: &RouteRule, _req: &mut http::request::Parts) -> RequestAction {
    RequestAction::Forward
}

/// Applies `rule`'s response filters to the response.
pub fn apply_response(_rule: &RouteRule, _resp: &mut http::response::Parts) {}
