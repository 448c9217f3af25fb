//! Gateway API GRPCRoute (gateway.networking.k8s.io/v1) bound to a Service (GAMMA): matches on
//! the gRPC service and method (the request path `/<service>/<method>`) and headers; header
//! modifiers and mirrors; weighted backendRefs. Routes of Gateways only are left alone.

use serde::{de::IgnoredAny, Deserialize};

use super::route_parts::{
    at, at_most, each, foreign_config, header_matches, missing_config, pattern, shared_filter,
    BackendRef, HeaderFilterObject, MirrorObject, NameValueMatch, Refusal, RouteObject, RuleObject,
    SharedFilters, MAX_FILTERS,
};
use crate::state::routes::{
    Backend, Filter, GrpcMethodMatch, RouteKind, RouteMatch, RouteRule, Timeouts, ValueMatch,
};

/// The CRD's limit of matches per GRPCRoute rule.
const MAX_GRPC_MATCHES: usize = 8;

pub type GrpcRouteObject = RouteObject<GrpcRule>;

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

pub type GrpcBackendRef = BackendRef<GrpcFilter>;

/// Any method of any service.
fn any_call() -> RouteMatch {
    RouteMatch::default()
}

impl RuleObject for GrpcRule {
    const KIND: RouteKind = RouteKind::Grpc;
    const MAX_MATCHES: usize = MAX_GRPC_MATCHES;

    fn match_all() -> RouteMatch {
        any_call()
    }

    fn match_count(&self) -> usize {
        self.matches.len()
    }

    fn backend_count(&self) -> usize {
        self.backend_refs.len()
    }

    fn compile(self, ns: &str, field: &str) -> Result<RouteRule, Refusal> {
        let mut matches = each(self.matches, &format!("{field}.matches"), |m, at_i| {
            let grpc = m
                .method
                .map(|mm| method_match(mm, &format!("{at_i}.method")))
                .transpose()?;
            let headers = header_matches(m.headers, &format!("{at_i}.headers"))?;
            Ok(RouteMatch {
                grpc,
                headers,
                ..any_call()
            })
        })?;
        if matches.is_empty() {
            matches.push(any_call());
        }
        let filters = filters(ns, self.filters, &format!("{field}.filters"))?;
        let backends = each(
            self.backend_refs,
            &format!("{field}.backendRefs"),
            |b, f| backend_ref(ns, b, f),
        )?;
        Ok(RouteRule {
            backends,
            timeouts: Timeouts::default(),
            retry: None,
            matches,
            filters,
        })
    }
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
    at_most(field, list.len(), MAX_FILTERS, "filters")?;
    let mut out: Vec<Filter> = Vec::new();
    for (i, f) in list.into_iter().enumerate() {
        let at_i = format!("{field}[{i}]");
        let filter = filter(ns, &f, &at_i)?;
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

fn filter(ns: &str, f: &GrpcFilter, field: &str) -> Result<Filter, Refusal> {
    let given = [
        ("RequestHeaderModifier", f.request_header_modifier.is_some()),
        (
            "ResponseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        ("RequestMirror", f.request_mirror.is_some()),
        ("ExtensionRef", f.extension_ref.is_some()),
    ];
    if let Some((_, message)) = foreign_config(&f.kind, &given) {
        return Err(at(field, message));
    }
    let shared = SharedFilters {
        request_header_modifier: f.request_header_modifier.as_ref(),
        response_header_modifier: f.response_header_modifier.as_ref(),
        request_mirror: f.request_mirror.as_ref(),
    };
    if let Some(filter) = shared_filter(ns, &f.kind, shared, field, || {
        missing_config(field, &f.kind)
    })? {
        return Ok(filter);
    }
    Err(match f.kind.as_str() {
        "ExtensionRef" => at(
            format!("{field}.type"),
            "ExtensionRef filters are not supported by this agent; refusing the route rather than skipping the filter",
        ),
        other => at(
            format!("{field}.type"),
            format!("{other:?}: a GRPCRoute filter is RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"),
        ),
    })
}

fn backend_ref(ns: &str, b: GrpcBackendRef, field: &str) -> Result<Backend, Refusal> {
    let (mut out, filter_objects) = b.backend(ns, field)?;
    out.filters = filters(ns, filter_objects, &format!("{field}.filters"))?;
    Ok(out)
}
