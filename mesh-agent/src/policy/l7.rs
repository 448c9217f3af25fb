//! L7 authorization: AuthorizationPolicy `to.operation` methods/paths/hosts and `when`
//! conditions, decided per request on the destination side. SKELETON (issue 11): the policy
//! helper owns this file.
