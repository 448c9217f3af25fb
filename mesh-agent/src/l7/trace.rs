//! Trace context: W3C `traceparent`/`tracestate` and B3 (single and multi-header), read from a
//! request, continued by a span of the pool, written onward.
//!
//! The worker makes one [`Span`] per request and side, the client side on the source node
//! (its parent is whatever the calling application sent) and the server side on the
//! destination node (its parent is the client span, through the headers the client side
//! wrote), so a trace shows app → client span → server span → app:
//!
//! ```ignore
//! // ctx.tracer: otlp::Tracer, updated from each snapshot's `state.mesh.tracing`.
//! let span = trace::Span::start(req.headers(), SpanKind::Client, ctx.tracer.sampling_percent(), SystemTime::now());
//! span.inject(outgoing.headers_mut());          // traceparent (+ B3 when the request came with B3)
//! record.trace_id = Some(span.trace_id_hex());  // the access log's trace id
//! // ... forward, get the response, fill `record` ...
//! let attrs = SpanAttrs::from_record(&record, SpanKind::Client, &ctx.node, &pod.name);
//! if let Some(done) = span.finish(attrs, SystemTime::now()) {
//!     ctx.tracer.record(done);                  // never blocks
//! }
//! ```
//!
//! The sampling decision a request arrives with (W3C sampled flag, B3 `1`/`0`/`d`) is kept, so
//! the whole trace is recorded or none of it; only a request without one (a new trace, or B3
//! that defers) is sampled by MeshConfig's percentage. Malformed or oversized trace headers are
//! treated as absent: the request starts a new trace and the bad headers are not passed on.

use std::{fmt, time::SystemTime};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub mod b3;
pub mod record;
pub mod w3c;

pub use record::{AttrValue, Resource, SpanAttrs, SpanRecord, SpanStatus};

/// A W3C/B3 trace id: 128 bits, never zero. A 64-bit B3 id is the same id with its high half
/// zero (W3C's rule for 64-bit ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl TraceId {
    pub fn new(v: u128) -> Option<Self> {
        (v != 0).then_some(Self(v))
    }

    fn random() -> Self {
        Self(rand::random::<u128>().max(1))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn value(self) -> u128 {
        self.0
    }

    /// 32 hex digits (or 16, B3's short form), either case; None for anything else or zero.
    pub fn parse_hex(s: &str) -> Option<Self> {
        (matches!(s.len(), 16 | 32) && is_hex(s))
            .then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
            .and_then(Self::new)
    }
}

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// A span id: 64 bits, never zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl SpanId {
    pub fn new(v: u64) -> Option<Self> {
        (v != 0).then_some(Self(v))
    }

    fn random() -> Self {
        Self(rand::random::<u64>().max(1))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// 16 hex digits, either case; None for anything else or zero.
    pub fn parse_hex(s: &str) -> Option<Self> {
        (s.len() == 16 && is_hex(s))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .and_then(Self::new)
    }
}

impl fmt::Display for SpanId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

macro_rules! hex_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                <$t>::parse_hex(&text)
                    .ok_or_else(|| serde::de::Error::custom(format!("{text:?}: not an id")))
            }
        }
    };
}
hex_serde!(TraceId);
hex_serde!(SpanId);

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Which side of the hop a span describes (OTLP's span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// The source node's worker calling the destination (outbound side).
    Client,
    /// The destination node's worker serving the call before delivery (inbound side).
    Server,
}

/// A sampling decision a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sampled,
    NotSampled,
    /// B3 debug (`d`, `x-b3-flags: 1`): sampled, and said so onward.
    Debug,
    /// No decision: ours to make.
    Deferred,
}

/// The trace context a request arrived with (all formats folded into one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's trace and span; None: the request starts a new trace.
    pub ids: Option<(TraceId, SpanId)>,
    pub decision: Decision,
    /// W3C `tracestate`, passed on unchanged (bounded, see `w3c::tracestate`).
    pub tracestate: Option<String>,
    /// How B3 came, to write it back the same way; None when the request had no B3 header.
    pub b3: Option<b3::Format>,
    /// The trace id came as a 64-bit B3 id: B3 headers onward keep it 16 digits long.
    pub short_trace_id: bool,
}

impl Incoming {
    /// Reads the request's trace headers. W3C wins over B3 when both are valid (B3 is still
    /// written back, with the W3C ids, so B3 applications keep working).
    pub fn extract(headers: &HeaderMap) -> Self {
        let b3 = b3::parse(headers);
        let b3_format = b3.as_ref().map(|b| b.format);
        if let Some(p) = w3c::parse(headers) {
            return Self {
                ids: Some((p.trace_id, p.span_id)),
                decision: if p.sampled {
                    Decision::Sampled
                } else {
                    Decision::NotSampled
                },
                tracestate: w3c::tracestate(headers),
                b3: b3_format,
                short_trace_id: false,
            };
        }
        let (ids, decision) = b3.map_or((None, Decision::Deferred), |b| (b.ids, b.decision));
        Self {
            ids: ids.map(|i| (i.trace_id, i.span_id)),
            decision,
            tracestate: None,
            b3: b3_format,
            short_trace_id: ids.is_some_and(|i| i.short),
        }
    }
}

/// One span of the pool: this request's hop, as a child of the caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span (None at the root of a new trace).
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub debug: bool,
    pub kind: SpanKind,
    pub start: SystemTime,
    tracestate: Option<String>,
    b3: Option<b3::Format>,
    short_trace_id: bool,
}

impl Span {
    /// Continues the request's trace (or starts one) with a fresh span id. `sampling_percent`
    /// (0..=100, MeshConfig `tracing.sampling`; 0 when tracing is off) decides only for
    /// requests that carry no decision.
    pub fn start(
        headers: &HeaderMap,
        kind: SpanKind,
        sampling_percent: f64,
        now: SystemTime,
    ) -> Self {
        Self::continue_from(Incoming::extract(headers), kind, sampling_percent, now)
    }

    /// As `start`, from an already extracted context.
    pub fn continue_from(
        incoming: Incoming,
        kind: SpanKind,
        sampling_percent: f64,
        now: SystemTime,
    ) -> Self {
        let (trace_id, parent) = match incoming.ids {
            Some((t, s)) => (t, Some(s)),
            None => (TraceId::random(), None),
        };
        let sampled = match incoming.decision {
            Decision::Sampled | Decision::Debug => true,
            Decision::NotSampled => false,
            Decision::Deferred => sample(sampling_percent),
        };
        Self {
            trace_id,
            span_id: SpanId::random(),
            parent,
            sampled,
            debug: incoming.decision == Decision::Debug,
            kind,
            start: now,
            tracestate: incoming.tracestate,
            b3: incoming.b3,
            short_trace_id: incoming.short_trace_id && trace_id.0 >> 64 == 0,
        }
    }

    /// The trace id for the access log and RequestRecord: 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.to_string()
    }

    pub fn span_id_hex(&self) -> String {
        self.span_id.to_string()
    }

    /// Writes this span's context onto the request going onward, replacing every trace header
    /// it had: `traceparent` always (with `tracestate` when one came), and B3 in the form the
    /// request used (single `b3`, or `x-b3-*`) when it came with B3.
    pub fn inject(&self, headers: &mut HeaderMap) {
        for name in w3c::HEADERS.iter().chain(b3::HEADERS) {
            headers.remove(*name);
        }
        headers.insert(
            w3c::TRACEPARENT,
            w3c::traceparent(self.trace_id, self.span_id, self.sampled),
        );
        if let Some(value) = self
            .tracestate
            .as_deref()
            .and_then(|t| http::HeaderValue::from_str(t).ok())
        {
            headers.insert(w3c::TRACESTATE, value);
        }
        if let Some(format) = self.b3 {
            let decision = match (self.debug, self.sampled) {
                (true, _) => Decision::Debug,
                (false, true) => Decision::Sampled,
                (false, false) => Decision::NotSampled,
            };
            let ids = b3::Ids {
                trace_id: self.trace_id,
                short: self.short_trace_id,
                span_id: self.span_id,
                parent: self.parent,
            };
            b3::write(headers, format, &ids, decision);
        }
    }

    /// The finished span for export; None when it is not sampled.
    pub fn finish(self, attrs: SpanAttrs, end: SystemTime) -> Option<SpanRecord> {
        self.sampled.then(|| record::finish(self, attrs, end))
    }
}

/// True for `percent`% of calls.
fn sample(percent: f64) -> bool {
    if percent >= 100.0 {
        true
    } else if percent > 0.0 {
        rand::random::<f64>() * 100.0 < percent
    } else {
        false // also NaN
    }
}

#[cfg(test)]
mod tests;
