//! HTTPRoute and GRPCRoute (Gateway API) bound to Services (GAMMA): what the L7 pool routes by.
//!
//! The model is what `source` made of a valid route object (every field checked, every regex
//! compiled); `l7::route` selects among them and `l7::filters` applies them. Backends are
//! resolved against the Services of the same `State` by [`State::resolve_route_backends`]
//! (called from `reindex`): a backendRef to a Service or port that does not exist, or to
//! another namespace's Service that no ReferenceGrant lets the route refer to
//! (`reference_grants`), stays in the rule, marked, so that its share of the traffic answers
//! 500 as the spec says.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ServiceKey, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339), for the spec's tie-break; None sorts last.
    pub created: Option<String>,
    /// The Service frontends this route binds to.
    pub parents: Vec<Parent>,
    pub rules: Vec<RouteRule>,
}

impl Route {
    /// Its key in `State::routes`: (namespace, name) for an HTTPRoute, (namespace,
    /// `GRPCRoute/name`) for a GRPCRoute, so that the two kinds may share a name as in
    /// Kubernetes (`/` is never in an object name).
    pub fn key(&self) -> (String, String) {
        let name = match self.kind {
            RouteKind::Http => self.name.clone(),
            RouteKind::Grpc => format!("GRPCRoute/{}", self.name),
        };
        (self.namespace.clone(), name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub service: ServiceKey,
    /// Narrows the route to one port of the Service.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    /// Empty: no backend (a redirect rule, or 500).
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// Any one of them selects the rule; never empty (a rule without matches gets the spec's
    /// default, PathPrefix `/` for HTTP, any method for gRPC).
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// In the order written (the spec asks for that order where possible).
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// One backendRef.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub service: ServiceKey,
    /// The Service's port (not the target port).
    pub port: u16,
    pub weight: u32,
    /// Filters that apply only when this backend is chosen (`l7::filters::apply_backend_*`).
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Why this backendRef cannot take traffic (its share answers 500); None: it resolves.
    #[serde(default)]
    pub unresolved: Option<String>,
}

impl Backend {
    pub fn is_resolved(&self) -> bool {
        self.unresolved.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// The whole request, retries included (504 on expiry). None: unset or `0s` (disabled).
    pub request: Option<Duration>,
    /// Each try to a backend. None: unset or `0s` (disabled). Never above `request`.
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Response codes that are retried (connect failures always are).
    pub codes: Vec<u16>,
    /// Retries after the first try (0: none, as the spec says of an explicit zero).
    pub attempts: u32,
    pub backoff: Option<Duration>,
}

/// Retries when `retry.attempts` is not given (Envoy's default).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 1;

/// One entry of `matches`: every condition in it must hold (the default: any request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// HTTPRoute: always set (default PathPrefix `/`). GRPCRoute: None.
    pub path: Option<PathMatch>,
    /// HTTP method, upper case.
    pub method: Option<String>,
    /// Header names lower case; only the first entry per name (as the spec says).
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// GRPCRoute `method` match (service and/or method).
    pub grpc: Option<GrpcMethodMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise: `/v2` matches `/v2`, `/v2/` and `/v2/x`, not `/v2x`.
    Prefix(String),
    RegularExpression(Pattern),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ValueMatch {
    Exact(String),
    RegularExpression(Pattern),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::RegularExpression(p) => p.is_match(value),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Lower case (names match case-insensitively).
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryMatch {
    /// Exact, case-sensitive.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcMethodMatch {
    /// None: any service.
    pub service: Option<ValueMatch>,
    /// None: any method.
    pub method: Option<ValueMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    UrlRewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    RequestRedirect(Redirect),
    RequestMirror(Mirror),
}

/// Header names are valid `http::HeaderName`s and values valid `HeaderValue`s (checked at parse).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the rule's PathPrefix match (the rule has exactly one match, a PathPrefix: checked
    /// at parse).
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// `http` or `https`; None: the request's.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: Backend,
    /// The share of requests mirrored, as numerator / denominator (100/100 when unset).
    pub numerator: u32,
    pub denominator: u32,
}

impl Mirror {
    /// Whether the request with `roll` (uniform in `0..=u32::MAX`) is mirrored.
    pub fn applies(&self, roll: u32) -> bool {
        let share = u64::from(roll) * u64::from(self.denominator) / (u64::from(u32::MAX) + 1);
        share < u64::from(self.numerator)
    }
}

/// A regular expression (the `regex` crate's RE2-like dialect), compiled once; it matches the
/// whole value, as Envoy's `safe_regex` does. (De)serialized as its pattern.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

/// Compiled size limit per pattern: a route cannot make the worker build an unbounded
/// automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Pattern {
            source: source.to_owned(),
            compiled,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// A route's standing, as its `status.parents[].conditions` would say (Gateway API reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    /// `Accepted`: every parent Service (and port) exists. Err: reason and message.
    pub accepted: Result<(), (&'static str, String)>,
    /// `ResolvedRefs`: every backendRef and mirror resolves. Err: reason and message.
    pub resolved_refs: Result<(), (&'static str, String)>,
}

impl State {
    /// The conditions of an accepted route (a refused one has its parse error instead).
    pub fn route_status(&self, route: &Route) -> RouteStatus {
        let missing_parent = route.parents.iter().find_map(|p| {
            let Some(s) = self.services.get(&p.service) else {
                return Some(format!("no Service {}", p.service));
            };
            let port = p
                .port
                .filter(|port| !s.ports.iter().any(|sp| sp.port == *port))?;
            Some(format!("Service {} has no port {port}", p.service))
        });
        let backends = route.rules.iter().flat_map(|r| {
            let mirrors = r
                .filters
                .iter()
                .chain(r.backends.iter().flat_map(|b| &b.filters));
            r.backends.iter().chain(mirrors.filter_map(|f| match f {
                Filter::RequestMirror(m) => Some(&m.backend),
                _ => None,
            }))
        });
        let unresolved = backends.filter_map(|b| b.unresolved.as_deref()).next();
        RouteStatus {
            accepted: match missing_parent {
                Some(why) => Err(("NoMatchingParent", why)),
                None => Ok(()),
            },
            resolved_refs: match unresolved {
                Some(why) => {
                    let (reason, message) =
                        why.split_once(": ").unwrap_or(("BackendNotFound", why));
                    let reason = match reason {
                        "InvalidKind" => "InvalidKind",
                        "RefNotPermitted" => "RefNotPermitted",
                        _ => "BackendNotFound",
                    };
                    Err((reason, message.to_owned()))
                }
                None => Ok(()),
            },
        }
    }

    /// Marks every backendRef (and mirror) that another namespace's ReferenceGrants do not
    /// permit, or whose Service or Service port does not exist; clears the mark of those that
    /// resolve now. Idempotent; `reindex` calls it.
    pub fn resolve_route_backends(&mut self) {
        let mut routes = std::mem::take(&mut self.routes);
        for route in routes.values_mut() {
            let parents: Vec<ServiceKey> =
                route.parents.iter().map(|p| p.service.clone()).collect();
            let parents: Vec<&ServiceKey> = parents.iter().collect();
            let (kind, ns) = (route.kind, route.namespace.clone());
            let check = |b: &mut Backend| self.resolve_backend(kind, &ns, &parents, b);
            for rule in &mut route.rules {
                for b in &mut rule.backends {
                    check(b);
                    b.filters.iter_mut().for_each(|f| mirror_backend(f, check));
                }
                rule.filters
                    .iter_mut()
                    .for_each(|f| mirror_backend(f, check));
            }
        }
        self.routes = routes;
    }

    /// One backendRef of a route of `kind` in `ns` bound to `parents`. Permission first: a
    /// route may not learn whether another namespace has a Service it may not refer to.
    fn resolve_backend(&self, kind: RouteKind, ns: &str, parents: &[&ServiceKey], b: &mut Backend) {
        if b.unresolved.as_deref().is_some_and(is_permanent) {
            return;
        }
        if let Err(why) = self.backend_permitted(kind, ns, parents, &b.service) {
            b.unresolved = Some(format!("{NOT_PERMITTED} {why}"));
            return;
        }
        b.unresolved = match self.services.get(&b.service) {
            None => Some(format!("{UNKNOWN_SERVICE} {}", b.service)),
            Some(s) if !s.ports.iter().any(|p| p.port == b.port) => Some(format!(
                "{UNKNOWN_PORT} {} has no port {}",
                b.service, b.port
            )),
            Some(_) => None,
        };
    }
}

/// Reasons that depend on the Services and ReferenceGrants in the state (recomputed on every
/// resolve); any other reason was given at parse (an unsupported kind) and stays.
const UNKNOWN_SERVICE: &str = "BackendNotFound: no Service";
const UNKNOWN_PORT: &str = "BackendNotFound: Service";
const NOT_PERMITTED: &str = "RefNotPermitted:";

fn is_permanent(reason: &str) -> bool {
    !reason.starts_with("BackendNotFound:") && !reason.starts_with(NOT_PERMITTED)
}

fn mirror_backend(f: &mut Filter, check: impl Fn(&mut Backend)) {
    if let Filter::RequestMirror(m) = f {
        check(&mut m.backend);
    }
}
