//! HTTPRoute and GRPCRoute (Gateway API) bound to Services (GAMMA): what the L7 pool routes by.
//!
//! The model is what `source` made of a valid route object; `l7::route` selects among them.
//! SKELETON (issue 11): the fields below are the contract the L7 worker reads; the route
//! helper owns this file and may add fields, not remove these.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServiceKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339), for the spec's tie-break; None sorts last.
    pub created: Option<String>,
    /// The Service frontends this route binds to.
    pub parents: Vec<Parent>,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub service: ServiceKey,
    /// Narrows the route to one port of the Service.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

/// One backendRef.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub service: ServiceKey,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// The whole request, retries included (504 on expiry).
    pub request: Option<Duration>,
    /// Each try to a backend.
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Response codes that are retried (connect failures always are).
    pub codes: Vec<u16>,
    /// Retries after the first try.
    pub attempts: u32,
    pub backoff: Option<Duration>,
}
