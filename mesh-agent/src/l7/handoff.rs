//! The hand-off of one connection from the agent to an L7 worker. SKELETON (issue 11): the
//! pool helper owns this file.
