//! Gateway API GRPCRoute (gateway.networking.k8s.io/v1) bound to a Service (GAMMA): matches on
//! the gRPC service and method (the request path `/<service>/<method>`) and headers; header
//! modifiers and mirrors; weighted backendRefs. Routes of Gateways only are left alone.

use serde::{de::IgnoredAny, Deserialize};

use super::{
    route_parts::{
        at, backend, header_matches, header_modifier, mesh_parents, mirror, pattern,
        BackendObjectRef, HeaderFilterObject, MirrorObject, NameValueMatch, ParentRef, Refusal,
        MAX_BACKENDS, MAX_FILTERS, MAX_RULES, MAX_TOTAL_MATCHES,
    },
    Meta,
};
use crate::state::routes::{
    Backend, Filter, GrpcMethodMatch, Route, RouteKind, RouteMatch, RouteRule, Timeouts, ValueMatch,
};

/// The CRD's limit of matches per GRPCRoute rule.
const MAX_GRPC_MATCHES: usize = 8;

#[derive(Debug, Deserialize)]
pub struct GrpcRouteObject {
    pub metadata: Meta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// GAMMA: not used for matching; accepted.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<GrpcFilter>,
    #[serde(default)]
    pub backend_refs: Vec<GrpcBackendRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    pub method: Option<MethodObject>,
    #[serde(default)]
    pub headers: Vec<NameValueMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodObject {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcFilter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderFilterObject>,
    pub response_header_modifier: Option<HeaderFilterObject>,
    pub request_mirror: Option<MirrorObject>,
    pub extension_ref: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<GrpcFilter>,
}

impl GrpcRouteObject {
    /// The route the mesh routes by; None for a route that is only a Gateway's.
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
        if self.spec.rules.len() > MAX_RULES {
            return Err(at("spec.rules", format!("at most {MAX_RULES} rules")));
        }
        let total: usize = self.spec.rules.iter().map(|r| r.matches.len().max(1)).sum();
        if total > MAX_TOTAL_MATCHES {
            return Err(at(
                "spec.rules",
                format!("at most {MAX_TOTAL_MATCHES} matches across all rules, not {total}"),
            ));
        }
        let mut rules = self
            .spec
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(&namespace, r, &format!("spec.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            rules.push(RouteRule {
                backends: Vec::new(),
                timeouts: Timeouts::default(),
                retry: None,
                matches: vec![any_call()],
                filters: Vec::new(),
            });
        }
        Ok(Some(Route {
            kind: RouteKind::Grpc,
            namespace,
            name: self.metadata.name,
            created: self.metadata.creation_timestamp,
            parents,
            rules,
        }))
    }
}

fn any_call() -> RouteMatch {
    RouteMatch {
        path: None,
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
        grpc: None,
    }
}

fn rule(ns: &str, r: GrpcRule, field: &str) -> Result<RouteRule, Refusal> {
    if r.matches.len() > MAX_GRPC_MATCHES {
        return Err(at(
            format!("{field}.matches"),
            format!("at most {MAX_GRPC_MATCHES} matches"),
        ));
    }
    if r.backend_refs.len() > MAX_BACKENDS {
        return Err(at(
            format!("{field}.backendRefs"),
            format!("at most {MAX_BACKENDS} backendRefs"),
        ));
    }
    let mut matches = Vec::new();
    for (i, m) in r.matches.into_iter().enumerate() {
        let at_i = format!("{field}.matches[{i}]");
        let grpc = m
            .method
            .map(|mm| method_match(mm, &format!("{at_i}.method")))
            .transpose()?;
        let headers = header_matches(m.headers, &format!("{at_i}.headers"))?;
        matches.push(RouteMatch {
            grpc,
            headers,
            ..any_call()
        });
    }
    if matches.is_empty() {
        matches.push(any_call());
    }
    let filters = filters(ns, r.filters, &format!("{field}.filters"))?;
    let backends = r
        .backend_refs
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend_ref(ns, b, &format!("{field}.backendRefs[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteRule {
        backends,
        timeouts: Timeouts::default(),
        retry: None,
        matches,
        filters,
    })
}

fn method_match(m: MethodObject, field: &str) -> Result<GrpcMethodMatch, Refusal> {
    let service = m.service.filter(|s| !s.is_empty());
    let method = m.method.filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err(at(field, "one or both of service and method must be given"));
    }
    let exact = match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => true,
        "RegularExpression" => false,
        other => {
            return Err(at(
                format!("{field}.type"),
                format!("{other:?}: the method match type is Exact or RegularExpression"),
            ))
        }
    };
    let value = |v: Option<String>, what: &str, valid: fn(&str) -> bool| {
        let f = format!("{field}.{what}");
        v.map(|v| {
            if v.len() > 1024 {
                return Err(at(&f, "at most 1024 characters"));
            }
            if exact {
                if !valid(&v) {
                    return Err(at(&f, format!("{v:?} is not a gRPC {what} name")));
                }
                Ok(ValueMatch::Exact(v))
            } else {
                Ok(ValueMatch::RegularExpression(pattern(&v, &f)?))
            }
        })
        .transpose()
    };
    Ok(GrpcMethodMatch {
        service: value(service, "service", valid_service)?,
        method: value(method, "method", valid_method)?,
    })
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`, the CRD's rule for an Exact service.
fn valid_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(valid_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`.
fn valid_method(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn filters(ns: &str, list: Vec<GrpcFilter>, field: &str) -> Result<Vec<Filter>, Refusal> {
    if list.len() > MAX_FILTERS {
        return Err(at(field, format!("at most {MAX_FILTERS} filters")));
    }
    let mut out: Vec<Filter> = Vec::new();
    for (i, f) in list.into_iter().enumerate() {
        let at_i = format!("{field}[{i}]");
        let given = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
        ];
        if let Some((other, _)) = given.iter().find(|(k, set)| *set && *k != f.kind) {
            return Err(at(
                &at_i,
                format!("a {other} configuration in a filter of type {}", f.kind),
            ));
        }
        let missing = || {
            at(
                &at_i,
                format!("a filter of type {} needs its configuration", f.kind),
            )
        };
        let filter = match f.kind.as_str() {
            "RequestHeaderModifier" => Filter::RequestHeaderModifier(header_modifier(
                f.request_header_modifier.as_ref().ok_or_else(missing)?,
                &format!("{at_i}.requestHeaderModifier"),
            )?),
            "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(header_modifier(
                f.response_header_modifier.as_ref().ok_or_else(missing)?,
                &format!("{at_i}.responseHeaderModifier"),
            )?),
            "RequestMirror" => Filter::RequestMirror(mirror(
                ns,
                f.request_mirror.as_ref().ok_or_else(missing)?,
                &format!("{at_i}.requestMirror"),
            )?),
            "ExtensionRef" => {
                return Err(at(
                    format!("{at_i}.type"),
                    "ExtensionRef filters are not supported by this agent; refusing the route rather than skipping the filter",
                ))
            }
            other => {
                return Err(at(
                    format!("{at_i}.type"),
                    format!("{other:?}: a GRPCRoute filter is RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"),
                ))
            }
        };
        let repeated = out.iter().any(|o| {
            std::mem::discriminant(o) == std::mem::discriminant(&filter)
                && !matches!(o, Filter::RequestMirror(_))
        });
        if repeated {
            return Err(at(
                format!("{at_i}.type"),
                format!("{} is given twice: at most one per rule", f.kind),
            ));
        }
        out.push(filter);
    }
    Ok(out)
}

fn backend_ref(ns: &str, b: GrpcBackendRef, field: &str) -> Result<Backend, Refusal> {
    let target = BackendObjectRef {
        group: b.group,
        kind: b.kind,
        name: b.name,
        namespace: b.namespace,
        port: b.port,
    };
    let mut out = backend(ns, &target, b.weight, field)?;
    out.filters = filters(ns, b.filters, &format!("{field}.filters"))?;
    Ok(out)
}
