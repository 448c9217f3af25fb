//! W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`.

use http::{HeaderMap, HeaderValue};

use super::{SpanId, TraceId};

pub use crate::tunnel::traceparent::TRACEPARENT;
pub const TRACESTATE: &str = "tracestate";
/// The headers this format owns (removed before writing ours).
pub const HEADERS: &[&str] = &[TRACEPARENT, TRACESTATE];

/// Longer values are not read: version 00 is 55 characters, later versions may append
/// fields, none needs more than this.
const MAX_TRACEPARENT_LEN: usize = 256;
/// What the spec asks a proxy to pass on at least; longer lists lose members (see `tracestate`).
const MAX_TRACESTATE_LEN: usize = 512;
/// Members longer than this go first when a list is cut (the spec's order).
const LONG_MEMBER: usize = 128;
const MAX_MEMBERS: usize = 32;
/// Bytes read from all `tracestate` fields together before giving up on them.
const MAX_TRACESTATE_INPUT: usize = 8192;

/// A valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// The request's `traceparent`; None when absent, repeated or invalid.
pub fn parse(headers: &HeaderMap) -> Option<Parent> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let value = all.next()?;
    if all.next().is_some() || value.len() > MAX_TRACEPARENT_LEN {
        return None;
    }
    parse_value(value.to_str().ok()?.trim_matches([' ', '\t']))
}

fn parse_value(v: &str) -> Option<Parent> {
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // version-traceid-parentid-flags[-later fields, versions after 00 only]
    let (head, rest) = (v.get(..55)?, v.get(55..)?);
    let mut parts = head.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace, 32)
        && lower_hex(span, 16)
        && lower_hex(flags, 2)
        && if version == "00" {
            rest.is_empty()
        } else {
            rest.is_empty() || rest.starts_with('-')
        };
    if !valid {
        return None;
    }
    Some(Parent {
        trace_id: TraceId::new(u128::from_str_radix(trace, 16).ok()?)?,
        span_id: SpanId::new(u64::from_str_radix(span, 16).ok()?)?,
        sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
    })
}

/// `00-<trace>-<span>-<01|00>`.
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> HeaderValue {
    let flags = if sampled { "01" } else { "00" };
    HeaderValue::from_str(&format!("00-{trace}-{span}-{flags}"))
        .expect("hex digits and dashes are a valid header value")
}

/// The request's `tracestate` (all its fields, in order) to pass on, cut to 512 characters as
/// the spec allows (long members first, then from the end); None when absent or malformed (a
/// list that cannot be parsed is not passed on in part).
pub fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut members = Vec::new();
    let mut read = 0;
    for value in headers.get_all(TRACESTATE) {
        read += value.len();
        if read > MAX_TRACESTATE_INPUT {
            return None;
        }
        for m in value.to_str().ok()?.split(',') {
            let m = m.trim_matches([' ', '\t']);
            if m.is_empty() {
                continue;
            }
            if !valid_member(m) {
                return None;
            }
            members.push(m);
        }
    }
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return None;
    }
    let joined_len = |m: &[&str]| {
        m.iter()
            .map(|s| s.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    if joined_len(&members) > MAX_TRACESTATE_LEN {
        members.retain(|m| m.len() <= LONG_MEMBER);
    }
    while joined_len(&members) > MAX_TRACESTATE_LEN {
        members.pop();
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// `key=value` with the spec's character sets (keys lowercase, `@` for multi-tenant keys).
fn valid_member(m: &str) -> bool {
    let Some((key, value)) = m.split_once('=') else {
        return false;
    };
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
        && key.bytes().filter(|b| *b == b'@').count() <= 1;
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ');
    key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn traceparent_values_the_spec_accepts_and_refuses() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse(&headers(&[(TRACEPARENT, ok)])).expect("valid");
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert_eq!(traceparent(p.trace_id, p.span_id, true), ok);
        // Other flag bits do not make it sampled; only bit 0 does.
        let p = parse(&headers(&[(TRACEPARENT, &ok.replace("-01", "-02"))])).unwrap();
        assert!(!p.sampled);
        // A later version may append fields.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-ever";
        assert!(parse(&headers(&[(TRACEPARENT, later)])).unwrap().sampled);
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01-",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(parse(&headers(&[(TRACEPARENT, bad)])), None, "{bad:?}");
        }
        // Two traceparents: which one would be the caller's? Neither.
        assert_eq!(
            parse(&headers(&[(TRACEPARENT, ok), (TRACEPARENT, ok)])),
            None
        );
        let huge = format!(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "a".repeat(300)
        );
        assert_eq!(parse(&headers(&[(TRACEPARENT, &huge)])), None);
    }

    #[test]
    fn tracestate_is_joined_validated_and_bounded() {
        let h = headers(&[
            (TRACESTATE, "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
            (TRACESTATE, ",vendor@tenant=x"),
        ]);
        assert_eq!(
            tracestate(&h).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor@tenant=x")
        );
        for bad in ["novalue", "Upper=1", "a=b=c", "a=", "=b"] {
            assert_eq!(tracestate(&headers(&[(TRACESTATE, bad)])), None, "{bad}");
        }
        assert_eq!(tracestate(&HeaderMap::new()), None);
        // Over 512: the long member goes first, then members from the end.
        let long = format!("long={}", "x".repeat(200));
        let many: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "v".repeat(20)))
            .collect();
        let value = format!("first=1,{long},{}", many.join(","));
        let cut = tracestate(&headers(&[(TRACESTATE, &value)])).expect("cut, not dropped");
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.starts_with("first=1,k00="), "{cut}");
        assert!(!cut.contains("long="), "{cut}");
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            tracestate(&headers(&[(TRACESTATE, &too_many.join(","))])),
            None
        );
    }
}
