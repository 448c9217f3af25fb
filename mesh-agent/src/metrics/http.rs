//! Istio's HTTP metrics (istio_requests_total, istio_request_duration_milliseconds,
//! istio_request_bytes, istio_response_bytes) and the per-request record workers report.
//! The telemetry helper owns the metric families and the access-log line; the record below is
//! the contract between the L7 worker (which fills it) and the agent (which counts and logs it).

use serde::{Deserialize, Serialize};

use super::Reporter;

/// One finished request, as an L7 worker reports it to its agent. Values Istio would not know
/// are `unknown`; the agent turns this into metric samples and one access-log line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub reporter: Option<Reporter>,
    /// RFC 3339, when the request's headers arrived.
    pub start_time: String,
    pub duration_ms: f64,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// `name.namespace.svc.<domain>`, or the authority when no Service.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub response_code: u16,
    /// gRPC status from the trailers (or headers), when gRPC.
    pub grpc_response_status: Option<u32>,
    /// Envoy's response flags (`-` none, UT, URX, NR, UH, UF, DC, UC, RBAC ...).
    pub response_flags: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// `namespace/name` and rule index of the route that matched.
    pub route: Option<String>,
    pub route_rule: Option<usize>,
    /// The backend Service (`namespace/name:port`) and endpoint chosen.
    pub backend: Option<String>,
    pub endpoint: Option<String>,
    pub retries: u32,
    /// Why a request was not retried although it could have been (body too large to buffer).
    pub retry_note: Option<String>,
    /// The identity the upstream presented.
    pub upstream_identity: Option<String>,
    /// The deciding L7 AuthorizationPolicy (`namespace/name`), when one decided.
    pub policy: Option<String>,
    pub trace_id: Option<String>,
    /// The L4 connection this request came on.
    pub connection_id: Option<String>,
}
