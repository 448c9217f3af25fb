//! What the schema cannot say of an AuthorizationPolicy's HTTP fields and `when` conditions,
//! checked when the policy is loaded (file and Kubernetes mode alike, and `meshctl validate`),
//! so a policy that would match something other than what it says is refused with its field,
//! never enforced. Errors are (field below the operation or condition, message).

use crate::{
    crd::authorization_policy::{Condition, Operation},
    policy::matching::{header_key, parse_block, L4_KEYS},
};

type Checked = Result<(), (String, String)>;

/// Methods, paths and hosts of one `to.operation`.
pub fn operation(o: &Operation) -> Checked {
    for (field, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
        each(field, values, method)?;
    }
    for (field, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        each(field, values, path)?;
    }
    for (field, values) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
        each(field, values, host)?;
    }
    Ok(())
}

/// One `when` condition; the field is relative to it (`.key`, `.values[0]`).
pub fn condition(c: &Condition) -> Checked {
    let supported = || {
        format!(
            "supported keys: request.headers[NAME], {}",
            L4_KEYS.join(", ")
        )
    };
    if let Some(name) = header_key(&c.key) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err((
                ".key".into(),
                format!("{name:?} is not an HTTP header name"),
            ));
        }
    } else if !L4_KEYS.contains(&c.key.as_str()) {
        let istio = [
            "request.auth.",
            "request.regex.headers[",
            "remote.ip",
            "destination.ip",
            "connection.sni",
            "experimental.envoy.filters.",
        ]
        .iter()
        .any(|k| c.key.starts_with(k));
        let what = if istio {
            format!(
                "{:?} is an Istio condition this agent does not evaluate",
                c.key
            )
        } else {
            format!("unknown condition key {:?}", c.key)
        };
        return Err((".key".into(), format!("{what} ({})", supported())));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err((
            ".values".into(),
            "a condition needs values or notValues".into(),
        ));
    }
    let value: fn(&str) -> Result<(), String> = match c.key.as_str() {
        "source.ip" => |v| {
            parse_block(v)
                .map(drop)
                .ok_or_else(|| format!("{v:?} is not an IP address or CIDR"))
        },
        "destination.port" => |v| match v.parse::<u16>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!("{v:?} is not a port number")),
        },
        _ => |v| wildcard(v, "value"),
    };
    each(".values", &c.values, value)?;
    each(".notValues", &c.not_values, value)
}

fn each(field: &str, values: &[String], check: impl Fn(&str) -> Result<(), String>) -> Checked {
    for (i, v) in values.iter().enumerate() {
        check(v).map_err(|m| (format!("{field}[{i}]"), m))?;
    }
    Ok(())
}

/// Istio's string forms: exact, `prefix*`, `*suffix` or `*`; a `*` anywhere else would be
/// matched literally, which is never what was meant.
fn wildcard(v: &str, what: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("an empty {what} matches nothing"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{v:?}: a {what} has no whitespace"));
    }
    let inner = v
        .strip_prefix('*')
        .or_else(|| v.strip_suffix('*'))
        .unwrap_or(v);
    if v != "*" && inner.contains('*') {
        return Err(format!(
            "{v:?}: `*` may only be the whole {what}, its first character (suffix match) or its \
             last (prefix match)"
        ));
    }
    Ok(())
}

fn method(v: &str) -> Result<(), String> {
    wildcard(v, "method")?;
    let token = v.trim_matches('*');
    if !token.is_empty() && http::Method::from_bytes(token.as_bytes()).is_err() {
        return Err(format!("{v:?} is not an HTTP method"));
    }
    Ok(())
}

fn path(v: &str) -> Result<(), String> {
    if v.contains('{') || v.contains('}') {
        return Err(format!(
            "{v:?}: path templates ({{*}}, {{**}}) are not supported; use `/prefix/*` or `*suffix`"
        ));
    }
    wildcard(v, "path")?;
    if !v.starts_with('/') && !v.starts_with('*') {
        return Err(format!(
            "{v:?}: a path starts with `/` (or `*` for a suffix match)"
        ));
    }
    let normal = crate::policy::matching::normalize_path(v);
    if v.starts_with('/') && normal != v {
        return Err(format!(
            "{v:?} would never match: requests are matched after normalization; write {normal:?}"
        ));
    }
    if v.contains('?') {
        return Err(format!(
            "{v:?}: paths are matched without the query string; remove `?...`"
        ));
    }
    Ok(())
}

fn host(v: &str) -> Result<(), String> {
    wildcard(v, "host")?;
    if v.contains('/') {
        return Err(format!("{v:?} is a URL, not a host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::source::parse::{parse_document, Parsed};

    /// The (field, message) a policy with `rules` (YAML) is refused with, through the agent's
    /// own parser; None when it is accepted.
    fn refused(rules: &str) -> Option<(String, String)> {
        let doc = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p, namespace: shop}}\nspec:\n  rules:\n{rules}"
        );
        match parse_document(yaml_serde::from_str(&doc).unwrap()) {
            Ok(Parsed::Object(_)) => None,
            Ok(_) => panic!("not an object"),
            Err(e) => Some(e),
        }
    }

    #[test]
    fn valid_l7_fields_are_accepted() {
        let ok = "  - to:\n    - operation:\n        methods: [GET, \"*\"]\n        \
                  paths: [/healthz, /api/*, \"*.js\", \"*\"]\n        \
                  notHosts: [\"*.internal\", \"orders:*\"]\n    \
                  when:\n    - {key: \"request.headers[x-client]\", values: [iphone]}\n    \
                  - {key: source.ip, notValues: [10.0.0.0/8]}\n    \
                  - {key: destination.port, values: [\"8080\"]}\n";
        assert_eq!(refused(ok), None);
    }

    #[test]
    fn bad_paths_hosts_and_methods_name_their_field() {
        let op = |field: &str, value: &str| {
            refused(&format!(
                "  - {{}}\n  - to:\n    - operation: {{ports: [\"80\"]}}\n    \
                 - operation: {{{field}: [\"{value}\"]}}\n"
            ))
            .expect("refused")
        };
        let (f, m) = op("paths", "/api/*/items");
        assert_eq!(f, "spec.rules[1].to[1].operation.paths[0]");
        assert!(m.contains("`*` may only be"), "{m}");
        let (f, m) = op("notPaths", "api/v1");
        assert_eq!(f, "spec.rules[1].to[1].operation.notPaths[0]");
        assert!(m.contains("starts with `/`"), "{m}");
        let (_, m) = op("paths", "/users/{*}/profile");
        assert!(m.contains("templates"), "{m}");
        let (_, m) = op("paths", "/static/../admin");
        assert!(m.contains("\"/admin\""), "{m}");
        let (_, m) = op("paths", "/search?q=x");
        assert!(m.contains("query"), "{m}");
        let (f, m) = op("hosts", "*.shop.*");
        assert_eq!(f, "spec.rules[1].to[1].operation.hosts[0]");
        assert!(m.contains("`*`"), "{m}");
        let (f, m) = op("methods", "GE T");
        assert_eq!(f, "spec.rules[1].to[1].operation.methods[0]");
        assert!(m.contains("whitespace"), "{m}");
        let (_, m) = op("notMethods", "");
        assert!(m.contains("empty"), "{m}");
        // A field the schema does not know is refused too, by name.
        let (f, m) = op("verbs", "GET");
        assert_eq!(f, "spec.rules[1].to[1].operation.verbs");
        assert!(m.contains("unknown field"), "{m}");
    }

    #[test]
    fn unknown_or_unsupported_when_keys_and_bad_values_name_their_field() {
        let cond = |c: &str| refused(&format!("  - when:\n    - {c}\n")).expect("refused");
        let (f, m) = cond("{key: \"request.header[x]\", values: [a]}");
        assert_eq!(f, "spec.rules[0].when[0].key");
        assert!(
            m.contains("unknown condition key") && m.contains("request.headers[NAME]"),
            "{m}"
        );
        let (f, m) = cond("{key: \"request.auth.claims[iss]\", values: [a]}");
        assert_eq!(f, "spec.rules[0].when[0].key");
        assert!(m.contains("does not evaluate"), "{m}");
        let (_, m) = cond("{key: \"request.headers[bad name]\", values: [a]}");
        assert!(m.contains("not an HTTP header name"), "{m}");
        let (f, m) = cond("{key: \"request.headers[x]\"}");
        assert_eq!(f, "spec.rules[0].when[0].values");
        assert!(m.contains("values or notValues"), "{m}");
        let (f, m) = cond("{key: source.ip, values: [10.0.0.0/8, nope]}");
        assert_eq!(f, "spec.rules[0].when[0].values[1]");
        assert!(m.contains("CIDR"), "{m}");
        let (f, _) = cond("{key: destination.port, notValues: [http]}");
        assert_eq!(f, "spec.rules[0].when[0].notValues[0]");
    }
}
