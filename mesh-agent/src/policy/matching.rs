//! Whether a connection matches a policy's rules (Istio's matching): a policy matches if any
//! rule does; a rule matches if any of its `from` and any of its `to` match (an absent list
//! matches everything); within a source or operation every field present must match. A policy
//! without rules matches nothing (an ALLOW without rules allows nothing; a DENY without rules
//! denies nothing).

use std::net::IpAddr;

use super::Connection;
use crate::crd::authorization_policy::{AuthorizationPolicySpec, Operation, Source};

/// The index of the first rule of `spec` that `conn` matches.
pub fn matching_rule(spec: &AuthorizationPolicySpec, conn: &Connection) -> Option<usize> {
    spec.rules.iter().position(|r| {
        (r.from.is_empty() || r.from.iter().any(|f| source_matches(&f.source, conn)))
            && (r.to.is_empty() || r.to.iter().any(|t| operation_matches(&t.operation, conn)))
    })
}

/// Exact, `*`, prefix `x*` or suffix `*x`, as Istio's string matching.
fn string_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// A present list must match; a missing value (plaintext: no principal) never matches it.
fn listed(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

/// A present negative list excludes what it matches; a missing value is not excluded.
fn not_listed(patterns: &[String], value: Option<&str>) -> bool {
    !value.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

/// An ipBlock: an address (a full-length prefix) or a CIDR. The one parser both the policy
/// checks at load time and matching use, so they agree on what is valid.
pub fn parse_block(block: &str) -> Option<(IpAddr, u32)> {
    let (net, len) = match block.split_once('/') {
        None => {
            let ip: IpAddr = block.parse().ok()?;
            return Some((ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        Some((net, len)) => (net.parse::<IpAddr>().ok()?, len.parse::<u32>().ok()?),
    };
    (len <= if net.is_ipv4() { 32 } else { 128 }).then_some((net, len))
}

/// Whether `ip` is in `block` (an address or CIDR); an invalid block holds nothing.
pub fn in_block(block: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = parse_block(block) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn source_matches(s: &Source, c: &Connection) -> bool {
    let principal = c.principal.as_deref();
    let namespace = c.namespace();
    listed(&s.principals, principal)
        && not_listed(&s.not_principals, principal)
        && listed(&s.namespaces, namespace)
        && not_listed(&s.not_namespaces, namespace)
        && (s.ip_blocks.is_empty() || s.ip_blocks.iter().any(|b| in_block(b, c.source_ip)))
        && !s.not_ip_blocks.iter().any(|b| in_block(b, c.source_ip))
}

fn operation_matches(o: &Operation, c: &Connection) -> bool {
    let port = c.port.to_string();
    (o.ports.is_empty() || o.ports.contains(&port)) && !o.not_ports.contains(&port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_blocks() {
        assert!(string_matches(
            "cluster.local/ns/a/*",
            "cluster.local/ns/a/sa/b"
        ));
        assert!(string_matches("*/sa/b", "cluster.local/ns/a/sa/b"));
        assert!(!string_matches(
            "cluster.local/ns/a/sa/c",
            "cluster.local/ns/a/sa/b"
        ));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_block("10.1.0.0/16", ip("10.1.2.3")));
        assert!(!in_block("10.1.0.0/16", ip("10.2.0.1")));
        assert!(in_block("10.1.2.3", ip("10.1.2.3")));
        assert!(in_block("0.0.0.0/0", ip("192.0.2.1")));
        assert!(in_block("fd00::/8", ip("fd12::1")));
        assert!(!in_block("garbage/99", ip("10.0.0.1")));
    }
}
