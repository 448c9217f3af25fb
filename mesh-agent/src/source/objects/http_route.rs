//! Gateway API HTTPRoute (gateway.networking.k8s.io/v1). Routes attached to a Service (GAMMA,
//! `parentRefs[].kind: Service`) are the mesh's: checked field by field (what the CRD's schema
//! and CEL rules say, so file mode refuses what the API server would) and compiled into a
//! `state::routes::Route`. Routes attached only to Gateways are not the mesh's and are left
//! alone. The pieces GRPCRoute shares (the route object and its rules' limits, parentRefs,
//! backendRefs, header filters, mirrors) live in `route_parts`.

use serde::{de::IgnoredAny, Deserialize};

#[cfg(test)]
mod tests;

use super::route_parts::{
    at, at_most, check_path, each, foreign_config, header_matches, missing_config, parse_duration,
    pattern, shared_filter, BackendRef as BackendRefOf, HeaderFilterObject, MirrorObject,
    NameValueMatch, Refusal, RouteObject, RuleObject, SharedFilters, MAX_FILTERS, MAX_MATCHES,
};
use crate::state::routes::{
    Backend, Filter, PathMatch, PathModifier, QueryMatch, Redirect, Retry, RouteKind, RouteMatch,
    RouteRule, Timeouts, DEFAULT_RETRY_ATTEMPTS,
};

pub type HttpRouteObject = RouteObject<Rule>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<TimeoutsObject>,
    pub retry: Option<RetryObject>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    pub path: Option<PathObject>,
    #[serde(default)]
    pub headers: Vec<NameValueMatch>,
    #[serde(default)]
    pub query_params: Vec<NameValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathObject {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFilter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderFilterObject>,
    pub response_header_modifier: Option<HeaderFilterObject>,
    pub request_mirror: Option<MirrorObject>,
    pub request_redirect: Option<RedirectObject>,
    pub url_rewrite: Option<RewriteObject>,
    pub cors: Option<IgnoredAny>,
    pub external_auth: Option<IgnoredAny>,
    pub extension_ref: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectObject {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifierObject>,
    pub port: Option<u16>,
    pub status_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteObject {
    pub hostname: Option<String>,
    pub path: Option<PathModifierObject>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifierObject {
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

pub type BackendRef = BackendRefOf<HttpFilter>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsObject {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryObject {
    #[serde(default)]
    pub codes: Vec<u16>,
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn default_match() -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch::Prefix("/".into())),
        ..RouteMatch::default()
    }
}

impl RuleObject for Rule {
    const KIND: RouteKind = RouteKind::Http;
    const MAX_MATCHES: usize = MAX_MATCHES;

    fn match_all() -> RouteMatch {
        default_match()
    }

    fn match_count(&self) -> usize {
        self.matches.len()
    }

    fn backend_count(&self) -> usize {
        self.backend_refs.len()
    }

    fn compile(self, ns: &str, field: &str) -> Result<RouteRule, Refusal> {
        rule(ns, self, field)
    }
}

fn rule(ns: &str, r: Rule, field: &str) -> Result<RouteRule, Refusal> {
    let (matches_at, backends_at) = (format!("{field}.matches"), format!("{field}.backendRefs"));
    let mut matches = each(r.matches, &matches_at, route_match)?;
    if matches.is_empty() {
        matches.push(default_match());
    }
    // ReplacePrefixMatch replaces "the" prefix: the rule must have exactly one, a PathPrefix.
    let one_prefix = matches.len() == 1 && matches!(matches[0].path, Some(PathMatch::Prefix(_)));
    let filters = filters(ns, r.filters, one_prefix, &format!("{field}.filters"))?;
    let has_redirect = filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    if has_redirect && !r.backend_refs.is_empty() {
        return Err(at(
            backends_at,
            "a rule with a RequestRedirect filter answers itself: it has no backendRefs",
        ));
    }
    let backends = each(r.backend_refs, &backends_at, |b, f| {
        backend_ref(ns, b, one_prefix, f)
    })?;
    let timeouts = match r.timeouts {
        Some(t) => timeouts(t, &format!("{field}.timeouts"))?,
        None => Timeouts::default(),
    };
    let retry = r
        .retry
        .map(|t| retry(t, &format!("{field}.retry")))
        .transpose()?;
    Ok(RouteRule {
        backends,
        timeouts,
        retry,
        matches,
        filters,
    })
}

fn route_match(m: Match, field: &str) -> Result<RouteMatch, Refusal> {
    let path = match m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => path_match(p, &format!("{field}.path"))?,
    };
    if let Some(method) = &m.method {
        if !METHODS.contains(&method.as_str()) {
            return Err(at(
                format!("{field}.method"),
                format!("{method:?} is not one of {}", METHODS.join(", ")),
            ));
        }
    }
    let headers = header_matches(m.headers, &format!("{field}.headers"))?;
    let query = query_matches(m.query_params, &format!("{field}.queryParams"))?;
    Ok(RouteMatch {
        path: Some(path),
        method: m.method,
        headers,
        query,
        grpc: None,
    })
}

fn path_match(p: PathObject, field: &str) -> Result<PathMatch, Refusal> {
    let value = p.value.unwrap_or_else(|| "/".into());
    if value.len() > 1024 {
        return Err(at(format!("{field}.value"), "at most 1024 characters"));
    }
    match p.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" => {
            check_path(&value, &format!("{field}.value"))?;
            Ok(PathMatch::Exact(value))
        }
        "PathPrefix" => {
            check_path(&value, &format!("{field}.value"))?;
            Ok(PathMatch::Prefix(value))
        }
        "RegularExpression" => Ok(PathMatch::RegularExpression(pattern(
            &value,
            &format!("{field}.value"),
        )?)),
        other => Err(at(
            format!("{field}.type"),
            format!("{other:?}: the path match type is Exact, PathPrefix or RegularExpression"),
        )),
    }
}

fn query_matches(list: Vec<NameValueMatch>, field: &str) -> Result<Vec<QueryMatch>, Refusal> {
    if list.len() > 16 {
        return Err(at(field, "at most 16 query parameter matches"));
    }
    let mut out: Vec<QueryMatch> = Vec::new();
    for (i, q) in list.into_iter().enumerate() {
        let at_i = format!("{field}[{i}]");
        if q.name.is_empty() {
            return Err(at(
                format!("{at_i}.name"),
                "a query parameter name is required",
            ));
        }
        let value = q.value_match(&at_i)?;
        // Only the first entry of a name counts, as the spec says.
        if !out.iter().any(|o| o.name == q.name) {
            out.push(QueryMatch {
                name: q.name,
                value,
            });
        }
    }
    Ok(out)
}

fn filters(
    ns: &str,
    list: Vec<HttpFilter>,
    one_prefix: bool,
    field: &str,
) -> Result<Vec<Filter>, Refusal> {
    at_most(field, list.len(), MAX_FILTERS, "filters")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, f) in list.into_iter().enumerate() {
        let at_i = format!("{field}[{i}]");
        let kind = f.kind.clone();
        // Each of these at most once per rule (CEL rules of the CRD); mirrors may repeat.
        if kind != "RequestMirror" && out_has(&out, &kind) {
            return Err(at(
                format!("{at_i}.type"),
                format!("{kind} is given twice: at most one per rule"),
            ));
        }
        out.push(filter(ns, f, one_prefix, &at_i)?);
    }
    let redirect = out.iter().any(|f| matches!(f, Filter::RequestRedirect(_)));
    let rewrite = out.iter().any(|f| matches!(f, Filter::UrlRewrite { .. }));
    if redirect && rewrite {
        return Err(at(
            field,
            "RequestRedirect and URLRewrite cannot be combined in one rule",
        ));
    }
    Ok(out)
}

fn out_has(out: &[Filter], kind: &str) -> bool {
    out.iter().any(|f| {
        matches!(
            (f, kind),
            (Filter::RequestHeaderModifier(_), "RequestHeaderModifier")
                | (Filter::ResponseHeaderModifier(_), "ResponseHeaderModifier")
                | (Filter::UrlRewrite { .. }, "URLRewrite")
                | (Filter::RequestRedirect(_), "RequestRedirect")
        )
    })
}

fn filter(ns: &str, f: HttpFilter, one_prefix: bool, field: &str) -> Result<Filter, Refusal> {
    let given = [
        ("RequestHeaderModifier", f.request_header_modifier.is_some()),
        (
            "ResponseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        ("RequestMirror", f.request_mirror.is_some()),
        ("RequestRedirect", f.request_redirect.is_some()),
        ("URLRewrite", f.url_rewrite.is_some()),
        ("CORS", f.cors.is_some()),
        ("ExternalAuth", f.external_auth.is_some()),
        ("ExtensionRef", f.extension_ref.is_some()),
    ];
    if let Some((other, message)) = foreign_config(&f.kind, &given) {
        return Err(at(format!("{field}.{}", lower_first(other)), message));
    }
    let missing = || missing_config(format!("{field}.{}", lower_first(&f.kind)), &f.kind);
    let shared = SharedFilters {
        request_header_modifier: f.request_header_modifier.as_ref(),
        response_header_modifier: f.response_header_modifier.as_ref(),
        request_mirror: f.request_mirror.as_ref(),
    };
    if let Some(filter) = shared_filter(ns, &f.kind, shared, field, missing)? {
        return Ok(filter);
    }
    Ok(match f.kind.as_str() {
        "RequestRedirect" => Filter::RequestRedirect(redirect(
            f.request_redirect.as_ref().ok_or_else(missing)?,
            one_prefix,
            &format!("{field}.requestRedirect"),
        )?),
        "URLRewrite" => {
            let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
            let field = format!("{field}.urlRewrite");
            if let Some(h) = &r.hostname {
                check_hostname(h, &format!("{field}.hostname"))?;
            }
            let path = r
                .path
                .as_ref()
                .map(|p| path_modifier(p, one_prefix, &format!("{field}.path")))
                .transpose()?;
            Filter::UrlRewrite {
                hostname: r.hostname.clone(),
                path,
            }
        }
        kind @ ("CORS" | "ExternalAuth" | "ExtensionRef") => {
            return Err(at(
                format!("{field}.type"),
                format!("{kind} filters are not supported by this agent; refusing the route rather than skipping the filter"),
            ))
        }
        other => {
            return Err(at(
                format!("{field}.type"),
                format!("unknown filter type {other:?}"),
            ))
        }
    })
}

fn lower_first(s: &str) -> String {
    match s {
        "URLRewrite" => "urlRewrite".into(),
        "CORS" => "cors".into(),
        _ => {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    }
}

fn redirect(r: &RedirectObject, one_prefix: bool, field: &str) -> Result<Redirect, Refusal> {
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            return Err(at(
                format!("{field}.scheme"),
                format!("{s:?}: the scheme is http or https"),
            ));
        }
    }
    if let Some(h) = &r.hostname {
        check_hostname(h, &format!("{field}.hostname"))?;
    }
    if r.port == Some(0) {
        return Err(at(format!("{field}.port"), "0 is not a port"));
    }
    let status = r.status_code.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(at(
            format!("{field}.statusCode"),
            format!("{status}: a redirect is 301, 302, 303, 307 or 308"),
        ));
    }
    let path = r
        .path
        .as_ref()
        .map(|p| path_modifier(p, one_prefix, &format!("{field}.path")))
        .transpose()?;
    Ok(Redirect {
        scheme: r.scheme.clone(),
        hostname: r.hostname.clone(),
        path,
        port: r.port,
        status,
    })
}

fn path_modifier(
    p: &PathModifierObject,
    one_prefix: bool,
    field: &str,
) -> Result<PathModifier, Refusal> {
    let check = |v: &str, f: &str| {
        if v.len() > 1024 {
            return Err(at(format!("{field}.{f}"), "at most 1024 characters"));
        }
        if !v.is_empty() && !v.starts_with('/') {
            return Err(at(
                format!("{field}.{f}"),
                format!("{v:?} must start with /"),
            ));
        }
        if v.chars()
            .any(|c| c.is_ascii_control() || c == ' ' || c == '?' || c == '#')
        {
            return Err(at(
                format!("{field}.{f}"),
                format!("{v:?} is not a URL path"),
            ));
        }
        Ok(())
    };
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(v), None) => {
            check(v, "replaceFullPath")?;
            Ok(PathModifier::ReplaceFullPath(v.clone()))
        }
        ("ReplacePrefixMatch", None, Some(v)) => {
            check(v, "replacePrefixMatch")?;
            if !one_prefix {
                return Err(at(
                    format!("{field}.replacePrefixMatch"),
                    "ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix one",
                ));
            }
            Ok(PathModifier::ReplacePrefixMatch(v.clone()))
        }
        ("ReplaceFullPath" | "ReplacePrefixMatch", _, _) => Err(at(
            field,
            format!(
                "type {} takes exactly its own field ({}) and not the other",
                p.kind,
                lower_first(&p.kind)
            ),
        )),
        (other, _, _) => Err(at(
            format!("{field}.type"),
            format!("{other:?}: the path modifier is ReplaceFullPath or ReplacePrefixMatch"),
        )),
    }
}

/// A precise hostname (RFC 1123, no wildcard), as the CRD says of redirect and rewrite targets.
fn check_hostname(h: &str, field: &str) -> Result<(), Refusal> {
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(at(field, format!("{h:?} is not a host name")))
    }
}

fn backend_ref(ns: &str, b: BackendRef, one_prefix: bool, field: &str) -> Result<Backend, Refusal> {
    let (mut out, filter_objects) = b.backend(ns, field)?;
    let filters = filters(ns, filter_objects, one_prefix, &format!("{field}.filters"))?;
    if filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)))
    {
        return Err(at(
            format!("{field}.filters"),
            "RequestRedirect on a backendRef is not supported: put it on the rule, without backendRefs",
        ));
    }
    out.filters = filters;
    Ok(out)
}

fn timeouts(t: TimeoutsObject, field: &str) -> Result<Timeouts, Refusal> {
    let request = t
        .request
        .as_deref()
        .map(|d| parse_duration(d, &format!("{field}.request")))
        .transpose()?;
    let backend_request = t
        .backend_request
        .as_deref()
        .map(|d| parse_duration(d, &format!("{field}.backendRequest")))
        .transpose()?;
    if let (Some(r), Some(b)) = (request, backend_request) {
        if !r.is_zero() && b > r {
            return Err(at(
                format!("{field}.backendRequest"),
                format!(
                    "{} is longer than the request timeout {}: the request timeout covers every backend request",
                    t.backend_request.unwrap_or_default(),
                    t.request.unwrap_or_default()
                ),
            ));
        }
    }
    // Zero disables a timeout (the spec's SHOULD): the same as not setting it.
    let nonzero = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
    Ok(Timeouts {
        request: nonzero(request),
        backend_request: nonzero(backend_request),
    })
}

fn retry(r: RetryObject, field: &str) -> Result<Retry, Refusal> {
    if let Some((i, c)) = r
        .codes
        .iter()
        .enumerate()
        .find(|(_, c)| !(400..=599).contains(*c))
    {
        return Err(at(
            format!("{field}.codes[{i}]"),
            format!("{c}: retried codes are 400 to 599"),
        ));
    }
    let mut codes = r.codes;
    codes.sort_unstable();
    codes.dedup();
    let attempts = r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
    if attempts > 10 {
        return Err(at(
            format!("{field}.attempts"),
            format!("{attempts}: at most 10 retries (each one multiplies the load)"),
        ));
    }
    let backoff = r
        .backoff
        .as_deref()
        .map(|d| parse_duration(d, &format!("{field}.backoff")))
        .transpose()?;
    Ok(Retry {
        codes,
        attempts,
        backoff,
    })
}
