//! L7 authorization: AuthorizationPolicy `to.operation` methods/paths/hosts and `when`
//! conditions, decided per request on the destination side. SKELETON (issue 11): the policy
//! helper owns this file.

use crate::state::{Pod, State};

/// Whether a policy that applies to `pod` has rules only HTTP can answer: connections to it
/// then pass the L7 pool of its node.
pub fn has_l7_rules(_state: &State, _pod: &Pod) -> bool {
    false
}
