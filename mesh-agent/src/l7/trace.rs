//! Trace context: W3C `traceparent`/`tracestate` and B3 (single and multi-header), read from a
//! request, continued by a span of the pool, written onward. SKELETON (issue 11): the tracing
//! helper owns this file.
