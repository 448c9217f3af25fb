//! Whether one `matches` entry holds for a request, and how specific it is.

use std::borrow::Cow;

use crate::state::routes::{GrpcMethodMatch, PathMatch, RouteMatch, ValueMatch};

/// The parts of a request that routes match on, read once per request.
pub struct Request<'a> {
    parts: &'a http::request::Parts,
    /// Decoded query parameters, in order (the first of a name is the one matched).
    query: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// How specific a matching entry is; greater wins. Field order is precedence order. (HTTP and
/// gRPC ranks never meet: one frontend's routes are of one kind.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    grpc_service: usize,
    grpc_method: usize,
    /// Exact 3, PathPrefix 2, RegularExpression 1.
    path_kind: u8,
    /// Characters of the prefix (or exact path).
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

pub fn rank(m: &RouteMatch) -> Rank {
    let (path_kind, path_len) = match &m.path {
        Some(PathMatch::Exact(p)) => (3, p.len()),
        Some(PathMatch::Prefix(p)) => (2, p.len()),
        Some(PathMatch::RegularExpression(_)) => (1, 0),
        None => (0, 0),
    };
    let chars = |v: &Option<ValueMatch>| match v {
        Some(ValueMatch::Exact(s)) => s.len(),
        Some(ValueMatch::RegularExpression(p)) => p.as_str().len(),
        None => 0,
    };
    let (grpc_service, grpc_method) = m
        .grpc
        .as_ref()
        .map_or((0, 0), |g| (chars(&g.service), chars(&g.method)));
    Rank {
        grpc_service,
        grpc_method,
        path_kind,
        path_len,
        method: m.method.is_some(),
        headers: m.headers.len(),
        query: m.query.len(),
    }
}

impl<'a> Request<'a> {
    pub fn new(parts: &'a http::request::Parts) -> Self {
        let query = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).collect())
            .unwrap_or_default();
        Request { parts, query }
    }

    pub fn matches(&self, m: &RouteMatch) -> bool {
        let path = self.parts.uri.path();
        m.path.as_ref().is_none_or(|p| path_matches(p, path))
            && m.method
                .as_deref()
                .is_none_or(|want| self.parts.method.as_str() == want)
            && m.grpc.as_ref().is_none_or(|g| grpc_matches(g, path))
            && m.headers
                .iter()
                .all(|h| self.header(&h.name).is_some_and(|v| h.value.matches(&v)))
            && m.query.iter().all(|q| {
                self.query
                    .iter()
                    .find(|(name, _)| *name == q.name)
                    .is_some_and(|(_, v)| q.value.matches(v))
            })
    }

    /// All values of a header, joined by `,` (RFC 9110's equivalent single field). None when
    /// absent or not text.
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self.parts.headers.get_all(name).iter();
        let first = values.next()?.to_str().ok()?.to_owned();
        values.try_fold(first, |mut acc, v| {
            acc.push(',');
            acc.push_str(v.to_str().ok()?);
            Some(acc)
        })
    }
}

/// PathPrefix is segment-wise and ignores a trailing `/`: `/v2` and `/v2/` both match `/v2`,
/// `/v2/` and `/v2/x`, never `/v2x`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::RegularExpression(re) => re.is_match(path),
    }
}

/// A gRPC call's path is `/<package.Service>/<Method>`.
fn grpc_matches(g: &GrpcMethodMatch, path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    if method.contains('/') {
        return false;
    }
    g.service.as_ref().is_none_or(|s| s.matches(service))
        && g.method.as_ref().is_none_or(|m| m.matches(method))
}
