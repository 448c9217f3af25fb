//! B3 propagation (Zipkin; https://github.com/openzipkin/b3-propagation): the single `b3`
//! header and the `x-b3-*` headers.

use http::{HeaderMap, HeaderValue};

use super::{Decision, SpanId, TraceId};

pub const B3: &str = "b3";
pub const X_B3_TRACEID: &str = "x-b3-traceid";
pub const X_B3_SPANID: &str = "x-b3-spanid";
pub const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
pub const X_B3_FLAGS: &str = "x-b3-flags";
/// The headers this format owns (removed before writing ours).
pub const HEADERS: &[&str] = &[
    B3,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
];

/// Longest valid single header: 32 + 16 + 1 + 16 digits and three dashes.
const MAX_SINGLE_LEN: usize = 68;

/// How the request carried B3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `b3: {TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`.
    Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: TraceId,
    /// The trace id was 16 digits (64 bits).
    pub short: bool,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
}

/// What B3 headers a request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3 {
    pub format: Format,
    /// None when the headers carry only a decision, or are malformed.
    pub ids: Option<Ids>,
    pub decision: Decision,
}

/// The request's B3; None when it has no B3 header at all. The single header wins over the
/// multi headers, as the B3 spec says.
pub fn parse(headers: &HeaderMap) -> Option<B3> {
    if let Some(v) = headers.get(B3) {
        let (ids, decision) = v
            .to_str()
            .ok()
            .filter(|s| s.len() <= MAX_SINGLE_LEN)
            .and_then(|s| parse_single(s.trim()))
            .unwrap_or((None, Decision::Deferred));
        return Some(B3 {
            format: Format::Single,
            ids,
            decision,
        });
    }
    if !HEADERS[1..].iter().any(|h| headers.contains_key(*h)) {
        return None;
    }
    Some(parse_multi(headers))
}

fn parse_single(s: &str) -> Option<(Option<Ids>, Decision)> {
    let parts: Vec<&str> = s.split('-').collect();
    if let [only] = parts[..] {
        return Some((None, decision(only)?));
    }
    let (trace, span) = (parts.first()?, parts.get(1)?);
    let decision = match parts.get(2) {
        Some(d) => decision(d)?,
        None => Decision::Deferred,
    };
    let parent = match parts.get(3) {
        Some(p) => Some(SpanId::parse_hex(p)?),
        None => None,
    };
    if parts.len() > 4 {
        return None;
    }
    Some((Some(ids(trace, span, parent)?), decision))
}

fn decision(s: &str) -> Option<Decision> {
    match s {
        "1" => Some(Decision::Sampled),
        "0" => Some(Decision::NotSampled),
        "d" => Some(Decision::Debug),
        _ => None,
    }
}

fn ids(trace: &str, span: &str, parent: Option<SpanId>) -> Option<Ids> {
    Some(Ids {
        trace_id: TraceId::parse_hex(trace)?,
        short: trace.len() == 16,
        span_id: SpanId::parse_hex(span)?,
        parent,
    })
}

fn parse_multi(headers: &HeaderMap) -> B3 {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // A malformed parent drops the ids with it: the context would be half believable.
    let parent = get(X_B3_PARENTSPANID).map(SpanId::parse_hex);
    let ids = match (get(X_B3_TRACEID), get(X_B3_SPANID), parent) {
        (_, _, Some(None)) => None,
        (Some(t), Some(s), p) => ids(t, s, p.flatten()),
        _ => None,
    };
    let decision = if get(X_B3_FLAGS) == Some("1") {
        Decision::Debug
    } else {
        match get(X_B3_SAMPLED) {
            Some("1") | Some("true") => Decision::Sampled,
            Some("0") | Some("false") => Decision::NotSampled,
            _ => Decision::Deferred,
        }
    };
    B3 {
        format: Format::Multi,
        ids,
        decision,
    }
}

/// Writes `ids` and `decision` in `format` (a decided state only: the pool always decides).
pub fn write(headers: &mut HeaderMap, format: Format, ids: &Ids, decision: Decision) {
    let trace = if ids.short {
        format!("{:016x}", ids.trace_id.value())
    } else {
        ids.trace_id.to_string()
    };
    let value = |s: &str| HeaderValue::from_str(s).expect("hex digits are a valid header value");
    match format {
        Format::Single => {
            let state = match decision {
                Decision::Debug => "d",
                Decision::NotSampled => "0",
                Decision::Sampled | Decision::Deferred => "1",
            };
            let mut v = format!("{trace}-{}-{state}", ids.span_id);
            if let Some(p) = ids.parent {
                v.push_str(&format!("-{p}"));
            }
            headers.insert(B3, value(&v));
        }
        Format::Multi => {
            headers.insert(X_B3_TRACEID, value(&trace));
            headers.insert(X_B3_SPANID, value(&ids.span_id.to_string()));
            if let Some(p) = ids.parent {
                headers.insert(X_B3_PARENTSPANID, value(&p.to_string()));
            }
            // Debug implies sampled; the spec says not to send both.
            match decision {
                Decision::Debug => headers.insert(X_B3_FLAGS, value("1")),
                Decision::NotSampled => headers.insert(X_B3_SAMPLED, value("0")),
                Decision::Sampled | Decision::Deferred => headers.insert(X_B3_SAMPLED, value("1")),
            };
        }
    }
}
