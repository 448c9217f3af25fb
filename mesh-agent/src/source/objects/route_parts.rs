//! What HTTPRoute and GRPCRoute share: parentRefs, backendRefs, header matches and modifiers,
//! mirrors, regexes and Gateway API durations. Every check returns the field path and a message
//! (the `(field, message)` of `source::parse`). The limits are the CRD's, so a file cannot carry
//! what the API server would refuse, and nothing a route says is unbounded.

use std::time::Duration;

use serde::Deserialize;

use super::Meta;
use crate::state::{
    routes::{
        Backend, Filter, HeaderMatch, HeaderModifier, Mirror, Parent, Pattern, Route, RouteKind,
        RouteMatch, RouteRule, Timeouts, ValueMatch,
    },
    ServiceKey,
};

/// (field path, message).
pub type Refusal = (String, String);

pub const MAX_RULES: usize = 16;
pub const MAX_MATCHES: usize = 64;
pub const MAX_TOTAL_MATCHES: usize = 128;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_FILTERS: usize = 16;
const MAX_HEADERS: usize = 16;
const MAX_WEIGHT: u32 = 1_000_000;
const MAX_PATTERN: usize = 1024;

pub fn at(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    (field.into(), message.into())
}

/// Refuses a list at `field` longer than `max` (`what`: the list's items, as the message says).
pub fn at_most(field: &str, len: usize, max: usize, what: &str) -> Result<(), Refusal> {
    if len > max {
        return Err(at(field, format!("at most {max} {what}")));
    }
    Ok(())
}

/// Each item of the list at `field` compiled, the item's own field path `field[i]`.
pub fn each<T, U>(
    list: Vec<T>,
    field: &str,
    mut compile: impl FnMut(T, &str) -> Result<U, Refusal>,
) -> Result<Vec<U>, Refusal> {
    list.into_iter()
        .enumerate()
        .map(|(i, item)| compile(item, &format!("{field}[{i}]")))
        .collect()
}

/// An HTTPRoute or GRPCRoute document; `R` is its kind's rule object.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "R: Deserialize<'de>"))]
pub struct RouteObject<R> {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: RouteSpec<R>,
}

#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    bound(deserialize = "R: Deserialize<'de>")
)]
pub struct RouteSpec<R> {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// GAMMA: implementations SHOULD NOT infer anything from hostnames; accepted, unused.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<R>,
}

// Not derived: that would ask `R: Default`.
impl<R> Default for RouteSpec<R> {
    fn default() -> Self {
        Self {
            parent_refs: Vec::new(),
            hostnames: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// A rule of an HTTPRoute or GRPCRoute: what differs between the two route kinds.
pub trait RuleObject: Sized {
    const KIND: RouteKind;
    /// The CRD's limit of matches per rule.
    const MAX_MATCHES: usize;
    /// What a route without rules matches (the CRD's default rule).
    fn match_all() -> RouteMatch;
    /// The rule's own matches (an empty list counts as one match).
    fn match_count(&self) -> usize;
    fn backend_count(&self) -> usize;
    /// The rule, its list lengths already checked.
    fn compile(self, ns: &str, field: &str) -> Result<RouteRule, Refusal>;
}

impl<R: RuleObject> RouteObject<R> {
    /// The route the mesh routes by; None for a route that is only a Gateway's. A route without
    /// rules gets the CRD's default: one rule matching everything, with no backend (so 500, as
    /// the spec says of a rule that has none).
    pub fn into_route(self) -> Result<Option<Route>, Refusal> {
        let namespace = self
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let parents = mesh_parents(&namespace, &self.spec.parent_refs)?;
        if parents.is_empty() {
            return Ok(None);
        }
        let rules = self.spec.rules;
        at_most("spec.rules", rules.len(), MAX_RULES, "rules")?;
        let total: usize = rules.iter().map(|r| r.match_count().max(1)).sum();
        if total > MAX_TOTAL_MATCHES {
            return Err(at(
                "spec.rules",
                format!("at most {MAX_TOTAL_MATCHES} matches across all rules, not {total}"),
            ));
        }
        let mut rules = each(rules, "spec.rules", |r, field| {
            let (matches, backends) = (r.match_count(), r.backend_count());
            at_most(
                &format!("{field}.matches"),
                matches,
                R::MAX_MATCHES,
                "matches",
            )?;
            at_most(
                &format!("{field}.backendRefs"),
                backends,
                MAX_BACKENDS,
                "backendRefs",
            )?;
            r.compile(&namespace, field)
        })?;
        if rules.is_empty() {
            rules.push(RouteRule {
                backends: Vec::new(),
                timeouts: Timeouts::default(),
                retry: None,
                matches: vec![R::match_all()],
                filters: Vec::new(),
            });
        }
        Ok(Some(Route {
            kind: R::KIND,
            namespace,
            name: self.metadata.name,
            created: self.metadata.creation_timestamp,
            parents,
            rules,
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    pub group: Option<String>,
    /// Gateway when absent.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<u16>,
    pub section_name: Option<String>,
}

impl ParentRef {
    fn is_service(&self) -> bool {
        self.kind.as_deref() == Some("Service") && core_group(self.group.as_deref())
    }
}

fn core_group(group: Option<&str>) -> bool {
    matches!(group.unwrap_or(""), "" | "core")
}

/// Whether a route document names a Service among its parentRefs, read leniently: a route of
/// Gateways only is the gateway's business and is not checked against the mesh's rules (it may
/// use fields this agent refuses).
pub fn binds_a_service(value: &yaml_serde::Value) -> bool {
    let text =
        |v: &yaml_serde::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    value
        .get("spec")
        .and_then(|s| s.get("parentRefs"))
        .and_then(|p| p.as_sequence())
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                text(r, "kind").as_deref() == Some("Service")
                    && core_group(text(r, "group").as_deref())
            })
        })
}

/// The Service parents (empty: a route of Gateways only, not the mesh's).
pub fn mesh_parents(ns: &str, refs: &[ParentRef]) -> Result<Vec<Parent>, Refusal> {
    let mut out = Vec::new();
    for (i, p) in refs.iter().enumerate().filter(|(_, p)| p.is_service()) {
        let field = format!("spec.parentRefs[{i}]");
        if p.section_name.is_some() {
            return Err(at(
                format!("{field}.sectionName"),
                "sectionName is not supported on a Service parent; use port to narrow the route",
            ));
        }
        if p.port == Some(0) {
            return Err(at(format!("{field}.port"), "0 is not a port"));
        }
        out.push(Parent {
            service: ServiceKey {
                namespace: p.namespace.clone().unwrap_or_else(|| ns.to_owned()),
                name: p.name.clone(),
            },
            port: p.port,
        });
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

/// A rule's backendRef; `F` is the route kind's filter object.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    // Not serde's default bound for a defaulted field, `F: Default`: the list defaults, not F.
    bound(deserialize = "F: Deserialize<'de>")
)]
pub struct BackendRef<F> {
    // Not a flattened BackendObjectRef: serde cannot deny unknown fields through flatten.
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<F>,
}

impl<F> BackendRef<F> {
    /// The backend, its filters left empty, and the filter objects for the route kind to compile.
    pub fn backend(self, ns: &str, field: &str) -> Result<(Backend, Vec<F>), Refusal> {
        let target = BackendObjectRef {
            group: self.group,
            kind: self.kind,
            name: self.name,
            namespace: self.namespace,
            port: self.port,
        };
        Ok((backend(ns, &target, self.weight, field)?, self.filters))
    }
}

/// A backendRef to a Service. Another kind is kept, marked unresolved (its share answers 500,
/// as the spec says of an invalid backendRef), rather than refusing the whole route.
pub fn backend(
    ns: &str,
    b: &BackendObjectRef,
    weight: Option<u32>,
    field: &str,
) -> Result<Backend, Refusal> {
    let weight = weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        return Err(at(
            format!("{field}.weight"),
            format!("{weight}: at most {MAX_WEIGHT}"),
        ));
    }
    let kind = b.kind.as_deref().unwrap_or("Service");
    let is_service = kind == "Service" && core_group(b.group.as_deref());
    let unresolved = (!is_service).then(|| {
        format!(
            "InvalidKind: {}/{kind} is not supported as a backend (only Services)",
            b.group.as_deref().unwrap_or("")
        )
    });
    let port = match (b.port, is_service) {
        (Some(0), _) => return Err(at(format!("{field}.port"), "0 is not a port")),
        (Some(p), _) => p,
        (None, true) => {
            return Err(at(
                format!("{field}.port"),
                "a backendRef to a Service needs the Service port",
            ))
        }
        (None, false) => 0,
    };
    Ok(Backend {
        service: ServiceKey {
            namespace: b.namespace.clone().unwrap_or_else(|| ns.to_owned()),
            name: b.name.clone(),
        },
        port,
        weight,
        filters: Vec::new(),
        unresolved,
    })
}

/// A header, query parameter or gRPC header match: `type` Exact (default) or
/// RegularExpression.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValueMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

impl NameValueMatch {
    pub fn value_match(&self, field: &str) -> Result<ValueMatch, Refusal> {
        if self.value.is_empty() || self.value.len() > 4096 {
            return Err(at(
                format!("{field}.value"),
                "the value is 1 to 4096 characters",
            ));
        }
        match self.kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(ValueMatch::Exact(self.value.clone())),
            "RegularExpression" => Ok(ValueMatch::RegularExpression(pattern(
                &self.value,
                &format!("{field}.value"),
            )?)),
            other => Err(at(
                format!("{field}.type"),
                format!("{other:?}: the match type is Exact or RegularExpression"),
            )),
        }
    }
}

/// Header matches, names lower-cased; of several entries for one name only the first counts.
pub fn header_matches(list: Vec<NameValueMatch>, field: &str) -> Result<Vec<HeaderMatch>, Refusal> {
    if list.len() > MAX_HEADERS {
        return Err(at(field, format!("at most {MAX_HEADERS} header matches")));
    }
    let mut out: Vec<HeaderMatch> = Vec::new();
    for (i, h) in list.into_iter().enumerate() {
        let at_i = format!("{field}[{i}]");
        check_header_name(&h.name, &format!("{at_i}.name"))?;
        let value = h.value_match(&at_i)?;
        let name = h.name.to_ascii_lowercase();
        if !out.iter().any(|o| o.name == name) {
            out.push(HeaderMatch { name, value });
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilterObject {
    #[serde(default)]
    pub set: Vec<NameValue>,
    #[serde(default)]
    pub add: Vec<NameValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One action per header name, as the spec says; names and values valid HTTP.
pub fn header_modifier(f: &HeaderFilterObject, field: &str) -> Result<HeaderModifier, Refusal> {
    let mut seen: Vec<String> = Vec::new();
    let mut claim = |name: &str, at_i: &str| {
        check_header_name(name, &format!("{at_i}.name"))?;
        let lower = name.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(at(
                format!("{at_i}.name"),
                format!("{name:?} has another action in this filter: one action per header"),
            ));
        }
        seen.push(lower);
        Ok(())
    };
    let mut pairs = |list: &[NameValue], what: &str| -> Result<Vec<(String, String)>, Refusal> {
        if list.len() > MAX_HEADERS {
            return Err(at(
                format!("{field}.{what}"),
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        let mut out = Vec::new();
        for (i, h) in list.iter().enumerate() {
            let at_i = format!("{field}.{what}[{i}]");
            claim(&h.name, &at_i)?;
            if http::HeaderValue::from_str(&h.value).is_err() || h.value.len() > 4096 {
                return Err(at(
                    format!("{at_i}.value"),
                    format!("{:?} is not a valid header value", h.value),
                ));
            }
            out.push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
        Ok(out)
    };
    let set = pairs(&f.set, "set")?;
    let add = pairs(&f.add, "add")?;
    if f.remove.len() > MAX_HEADERS {
        return Err(at(
            format!("{field}.remove"),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut remove = Vec::new();
    for (i, name) in f.remove.iter().enumerate() {
        let at_i = format!("{field}.remove[{i}]");
        check_header_name(name, &at_i)?;
        let lower = name.to_ascii_lowercase();
        if set.iter().chain(&add).any(|(n, _)| *n == lower) {
            return Err(at(
                at_i,
                format!("{name:?} has another action in this filter: one action per header"),
            ));
        }
        remove.push(lower);
    }
    Ok(HeaderModifier { set, add, remove })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorObject {
    pub backend_ref: BackendObjectRef,
    pub percent: Option<u32>,
    pub fraction: Option<FractionObject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionObject {
    pub numerator: u32,
    pub denominator: Option<u32>,
}

/// The configurations of the filter kinds both route kinds take.
pub struct SharedFilters<'a> {
    pub request_header_modifier: Option<&'a HeaderFilterObject>,
    pub response_header_modifier: Option<&'a HeaderFilterObject>,
    pub request_mirror: Option<&'a MirrorObject>,
}

/// The first configuration in `given` (type, whether set) that is not for the filter's `kind`,
/// with the refusal's message.
pub fn foreign_config<'a>(kind: &str, given: &[(&'a str, bool)]) -> Option<(&'a str, String)> {
    given
        .iter()
        .find(|(k, set)| *set && *k != kind)
        .map(|(other, _)| {
            (
                *other,
                format!("a {other} configuration in a filter of type {kind}"),
            )
        })
}

pub fn missing_config(field: impl Into<String>, kind: &str) -> Refusal {
    at(
        field,
        format!("a filter of type {kind} needs its configuration"),
    )
}

/// A filter of a kind both route kinds take; None for another kind. `missing` is the refusal
/// of a filter without its configuration.
pub fn shared_filter(
    ns: &str,
    kind: &str,
    given: SharedFilters,
    field: &str,
    missing: impl Fn() -> Refusal,
) -> Result<Option<Filter>, Refusal> {
    Ok(Some(match kind {
        "RequestHeaderModifier" => Filter::RequestHeaderModifier(header_modifier(
            given.request_header_modifier.ok_or_else(missing)?,
            &format!("{field}.requestHeaderModifier"),
        )?),
        "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(header_modifier(
            given.response_header_modifier.ok_or_else(missing)?,
            &format!("{field}.responseHeaderModifier"),
        )?),
        "RequestMirror" => Filter::RequestMirror(mirror(
            ns,
            given.request_mirror.ok_or_else(missing)?,
            &format!("{field}.requestMirror"),
        )?),
        _ => return Ok(None),
    }))
}

pub fn mirror(ns: &str, m: &MirrorObject, field: &str) -> Result<Mirror, Refusal> {
    let backend = backend(ns, &m.backend_ref, None, &format!("{field}.backendRef"))?;
    let (numerator, denominator) = match (&m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            return Err(at(field, "only one of percent or fraction may be given"));
        }
        (Some(p), None) if *p > 100 => {
            return Err(at(
                format!("{field}.percent"),
                format!("{p}: a percentage is 0 to 100"),
            ))
        }
        (Some(p), None) => (*p, 100),
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d == 0 || f.numerator > d {
                return Err(at(
                    format!("{field}.fraction"),
                    format!(
                        "{}/{d}: the numerator is at most the denominator, which is not 0",
                        f.numerator
                    ),
                ));
            }
            (f.numerator, d)
        }
        (None, None) => (100, 100),
    };
    Ok(Mirror {
        backend,
        numerator,
        denominator,
    })
}

pub fn check_header_name(name: &str, field: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.len() > 256 || http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        return Err(at(field, format!("{name:?} is not an HTTP header name")));
    }
    Ok(())
}

/// An Exact or PathPrefix path: absolute, normalised, only URL path characters (the CRD's
/// rules).
pub fn check_path(value: &str, field: &str) -> Result<(), Refusal> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-/._~!$&'()*+,;=:@%".contains(c);
    let why = if !value.starts_with('/') {
        Some("must start with /")
    } else if value.contains("//") {
        Some("must not contain //")
    } else if value.contains("/./") || value.ends_with("/.") {
        Some("must not contain a /. segment")
    } else if value.contains("/../") || value.ends_with("/..") {
        Some("must not contain a /.. segment")
    } else if value.to_ascii_lowercase().contains("%2f") {
        Some("must not contain %2F")
    } else if !value.chars().all(allowed) {
        Some("has characters a URL path cannot have (such as ?, # or spaces)")
    } else {
        None
    };
    match why {
        Some(why) => Err(at(field, format!("{value:?} {why}"))),
        None => Ok(()),
    }
}

pub fn pattern(source: &str, field: &str) -> Result<Pattern, Refusal> {
    if source.len() > MAX_PATTERN {
        return Err(at(
            field,
            format!("a regular expression is at most {MAX_PATTERN} characters"),
        ));
    }
    Pattern::new(source).map_err(|e| at(field, format!("invalid regular expression: {e}")))
}

/// A Gateway API duration (GEP-2257): one to four `<1-5 digits><h|m|s|ms>` parts, e.g. `10s`,
/// `500ms`, `1h30m`.
pub fn parse_duration(text: &str, field: &str) -> Result<Duration, Refusal> {
    let bad = || {
        at(
            field,
            format!("{text:?} is not a Gateway API duration (such as 10s, 500ms, 1h30m)"),
        )
    };
    let bytes = text.as_bytes();
    let (mut i, mut parts, mut total) = (0, 0, Duration::ZERO);
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 5 {
            return Err(bad());
        }
        let n: u64 = text[start..i].parse().map_err(|_| bad())?;
        let unit = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                Duration::from_millis(1)
            }
            (Some(b'h'), _) => {
                i += 1;
                Duration::from_secs(3600)
            }
            (Some(b'm'), _) => {
                i += 1;
                Duration::from_secs(60)
            }
            (Some(b's'), _) => {
                i += 1;
                Duration::from_secs(1)
            }
            _ => return Err(bad()),
        };
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

/// Test helper: one YAML route document through the shared parser, to the mesh route.
#[cfg(test)]
pub fn parse_route(text: &str) -> Result<crate::state::routes::Route, Refusal> {
    use crate::source::{objects::Object, parse::Parsed};
    let value = yaml_serde::from_str(text).expect("test YAML");
    match crate::source::parse::parse_document(value)? {
        Parsed::Object(Object::Route(r)) => Ok(r),
        Parsed::Ignored(why) => Err(("(ignored)".into(), why.into())),
        _ => panic!("not a route document"),
    }
}

/// Test helper: a State from YAML documents (Services, routes, ...), reindexed.
#[cfg(test)]
pub fn state_of(text: &str) -> crate::state::State {
    use crate::source::parse::{parse_document, Parsed};
    let mut state = crate::state::State::default();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let value = yaml_serde::Value::deserialize(doc).expect("test YAML");
        match parse_document(value) {
            Ok(Parsed::Object(o)) => o.apply(&mut state),
            Ok(_) => {}
            Err(e) => panic!("test document refused: {e:?}"),
        }
    }
    state.reindex();
    state
}
