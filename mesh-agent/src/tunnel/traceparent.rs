//! The id of one connection, shared by both agents on its path so that its story can be followed
//! across their logs: the source agent makes it when it accepts the connection and sends it in
//! the tunnel request, the destination agent reads it back.
//!
//! Over HBONE (h2) it travels as a W3C `traceparent` header whose trace id is the connection id,
//! as ztunnel sends and reads on its CONNECTs, so ids cross between Weft and ztunnel both ways;
//! over QUIC as a field of the CONNECT header (`quic::header`).

use std::fmt;

/// The request header that carries the id on an HTTP/2 CONNECT (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// Random 128 bits, written as 32 lowercase hex digits (a W3C trace id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u128);

impl ConnectionId {
    /// A fresh id. Never zero: an all-zero trace id is invalid in W3C Trace Context.
    #[allow(clippy::new_without_default)] // a default id would not be random
    pub fn new() -> Self {
        Self(rand::random::<u128>().max(1))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id in its 16 bytes; None for all zeros (no id).
    pub fn from_bytes(b: [u8; 16]) -> Option<Self> {
        Some(u128::from_be_bytes(b)).filter(|v| *v != 0).map(Self)
    }

    /// `00-<trace id = this id>-<random span id>-01` (sampled, as ztunnel sends it).
    pub fn traceparent(self) -> String {
        let span = rand::random::<u64>().max(1);
        format!("00-{:032x}-{span:016x}-01", self.0)
    }

    /// The trace id of a `traceparent` value; None when the value is not a valid one (the
    /// caller then makes a fresh id). Versions after 00 may append fields, as the spec allows.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.splitn(5, '-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && hex(span, 16)
            && span != "0000000000000000"
            && hex(flags, 2)
            && (version != "00" || parts.next().is_none());
        if !valid {
            return None;
        }
        u128::from_str_radix(trace, 16)
            .ok()
            .filter(|v| *v != 0)
            .map(Self)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl serde::Serialize for ConnectionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_travels_as_the_trace_id_of_a_traceparent() {
        let id = ConnectionId::new();
        let tp = id.traceparent();
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(
            tp.starts_with(&format!("00-{id}-")) && tp.ends_with("-01"),
            "{tp}"
        );
        assert_eq!(ConnectionId::from_traceparent(&tp), Some(id));
        assert_eq!(id.to_string().len(), 32);
        assert_ne!(ConnectionId::new(), id, "random");
        assert_eq!(ConnectionId::from_bytes(id.to_bytes()), Some(id));
        assert_eq!(ConnectionId::from_bytes([0; 16]), None);
        // The W3C example, and a later version with an extra field.
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let id = ConnectionId::from_traceparent(w3c).expect("valid");
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ConnectionId::from_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        )
        .is_some());
    }

    #[test]
    fn an_invalid_traceparent_gives_no_id() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47+6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(ConnectionId::from_traceparent(bad), None, "{bad:?}");
        }
    }
}
