//! Whether a connection (or a request) matches a policy's rules (Istio's matching): a policy
//! matches if any rule does; a rule matches if any of its `from`, any of its `to` and every
//! `when` condition match (an absent list matches everything); within a source or operation
//! every field present must match. A policy without rules matches nothing (an ALLOW without
//! rules allows nothing; a DENY without rules denies nothing).
//!
//! HTTP fields (methods, paths, hosts, `request.headers[...]` conditions) are evaluated only on
//! a request (`Traffic::Http`). On a connection decided at L4 (`Traffic::Tcp`) they cannot be,
//! and Weft does what ztunnel does (istiod's ambient translation): a rule of an ALLOW policy
//! with HTTP fields matches nothing; a rule of a DENY policy is enforced without its HTTP fields
//! (they are taken as matching), which denies more than asked, never less.

use std::net::IpAddr;

use http::HeaderMap;

use super::{l7::Request, Connection};
use crate::crd::authorization_policy::{
    Action, AuthorizationPolicySpec, Condition, Operation, Rule, Source,
};

/// What a rule is evaluated on.
#[derive(Debug, Clone, Copy)]
pub enum Traffic<'a> {
    /// A connection decided as a whole: HTTP fields cannot be evaluated.
    Tcp,
    /// One HTTP request on the connection.
    Http(&'a Request<'a>),
}

/// A rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// Its index in `spec.rules`.
    pub rule: usize,
    /// It has HTTP fields that were taken as matching because the traffic is not HTTP (a DENY
    /// rule decided at L4).
    pub l7_unevaluated: bool,
}

/// The index of the first rule of `spec` that `conn` matches at L4.
pub fn matching_rule(spec: &AuthorizationPolicySpec, conn: &Connection) -> Option<usize> {
    first_match(spec, conn, Traffic::Tcp).map(|m| m.rule)
}

/// The first rule of `spec` that `conn` (and the request, for `Traffic::Http`) matches.
pub fn first_match(
    spec: &AuthorizationPolicySpec,
    conn: &Connection,
    traffic: Traffic<'_>,
) -> Option<Matched> {
    spec.rules.iter().enumerate().find_map(|(i, r)| {
        let l7 = rule_has_l7(r);
        let req = match traffic {
            Traffic::Http(req) => Some(req),
            // An ALLOW rule that needs HTTP allows nothing at L4.
            Traffic::Tcp if l7 && spec.action == Action::Allow => return None,
            Traffic::Tcp => None,
        };
        rule_matches(r, conn, req).then_some(Matched {
            rule: i,
            l7_unevaluated: l7 && req.is_none(),
        })
    })
}

/// Whether the rule has a field only HTTP carries.
pub fn rule_has_l7(rule: &Rule) -> bool {
    rule.to.iter().any(|t| t.operation.has_l7()) || rule.when.iter().any(|c| is_l7_key(&c.key))
}

/// A `when` key evaluated on the request rather than the connection.
pub fn is_l7_key(key: &str) -> bool {
    header_key(key).is_some()
}

/// `request.headers[NAME]` → NAME.
pub fn header_key(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?.strip_suffix(']')
}

/// The `when` keys evaluated on the connection.
pub const L4_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
];

/// `req` None: the traffic is not HTTP, and HTTP fields are taken as matching (only DENY rules
/// get here with HTTP fields, see `first_match`).
fn rule_matches(r: &Rule, conn: &Connection, req: Option<&Request<'_>>) -> bool {
    (r.from.is_empty() || r.from.iter().any(|f| source_matches(&f.source, conn)))
        && (r.to.is_empty()
            || r.to
                .iter()
                .any(|t| operation_matches(&t.operation, conn, req)))
        && r.when.iter().all(|c| condition_matches(c, conn, req))
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

fn operation_matches(o: &Operation, c: &Connection, req: Option<&Request<'_>>) -> bool {
    let port = c.port.to_string();
    let l4 = (o.ports.is_empty() || o.ports.contains(&port)) && !o.not_ports.contains(&port);
    let Some(req) = req else {
        return l4;
    };
    let path = normalize_path(path_without_query(req.path));
    let path = path.as_str();
    let host = req.host.to_ascii_lowercase();
    let hosts = |patterns: &[String]| -> Vec<String> {
        patterns.iter().map(|p| p.to_ascii_lowercase()).collect()
    };
    l4 && listed(&o.methods, Some(req.method))
        && not_listed(&o.not_methods, Some(req.method))
        && listed(&o.paths, Some(path))
        && not_listed(&o.not_paths, Some(path))
        && listed(&hosts(&o.hosts), Some(&host))
        && not_listed(&hosts(&o.not_hosts), Some(&host))
}

/// Istio matches paths without the query string (Envoy's `url_path`).
fn path_without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The path as Istio's default normalization (`BASE`, RFC 3986) has it before policy sees it:
/// percent-encoded unreserved characters decoded, then `.` and `..` segments removed. So
/// `/public/../admin` and `/%61dmin` are `/admin` to a DENY on `/admin/*`, whatever the
/// application later makes of the raw path.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    // Decoding only ever produced ASCII from ASCII: still UTF-8.
    let decoded = String::from_utf8(decoded).unwrap_or_else(|_| path.to_owned());
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." && out.len() > 1 {
                    out.pop();
                }
                // A trailing dot segment leaves the directory: `/a/b/..` is `/a/`.
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') || !path.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

fn condition_matches(c: &Condition, conn: &Connection, req: Option<&Request<'_>>) -> bool {
    let strings = |value: Option<&str>| {
        (c.values.is_empty() || listed(&c.values, value)) && not_listed(&c.not_values, value)
    };
    if let Some(name) = header_key(&c.key) {
        return match req {
            Some(req) => strings(header_value(req.headers, name).as_deref()),
            // Not HTTP: only a DENY rule gets here; its HTTP condition is taken as matching.
            None => true,
        };
    }
    match c.key.as_str() {
        "source.ip" => {
            (c.values.is_empty() || c.values.iter().any(|b| in_block(b, conn.source_ip)))
                && !c.not_values.iter().any(|b| in_block(b, conn.source_ip))
        }
        "source.namespace" => strings(conn.namespace()),
        "source.principal" => strings(conn.principal.as_deref()),
        "destination.port" => {
            let port = conn.port.to_string();
            (c.values.is_empty() || c.values.contains(&port)) && !c.not_values.contains(&port)
        }
        // Refused at load time (`source::objects::check_authorization_policy`); a condition
        // that cannot be evaluated never holds.
        _ => false,
    }
}

/// A header's value as Envoy's header matcher sees it: several fields of one name joined with
/// `,`; None when absent (or not text).
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let parts: Option<Vec<&str>> = values.map(|v| v.to_str().ok()).collect();
    parts.map(|p| p.join(","))
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

    #[test]
    fn paths_are_normalized_as_istio_base() {
        for (raw, normal) in [
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/public/../admin/x", "/admin/x"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/%61dmin/%2e%2e/admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%zz", "/a%zz"),
            ("/a%6", "/a%6"),
            ("//a", "//a"),
            ("/", "/"),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw}");
        }
    }
}
