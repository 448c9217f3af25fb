//! L7 authorization: AuthorizationPolicy `to.operation` methods/paths/hosts and `when`
//! conditions, decided per request on the destination side. SKELETON (issue 11): the policy
//! helper owns this file.

use crate::state::{Pod, State};

/// Whether a policy that applies to `pod` has rules only HTTP can answer: connections to it
/// then pass the L7 pool of its node.
pub fn has_l7_rules(_state: &State, _pod: &Pod) -> bool {
    false
}

/// Envoy's body for a request its RBAC filter denied.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What an L7 rule can ask of a request.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// The verdict for one request on the destination side (L4 parts of the rules included).
pub fn authorize(
    state: &State,
    pod: &Pod,
    conn: &super::Connection,
    _req: &Request,
) -> super::Verdict {
    super::evaluate(state, pod, conn)
}
