//! OTLP span export: batched, bounded, never blocking a request. SKELETON (issue 11): the
//! tracing helper owns this file.
