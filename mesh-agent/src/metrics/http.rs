//! Istio's HTTP metrics (istio_requests_total, istio_request_duration_milliseconds,
//! istio_request_bytes, istio_response_bytes) and the per-request record workers report.
//! SKELETON (issue 11): the telemetry helper owns this file.
