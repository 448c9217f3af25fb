//! L7 authorization: AuthorizationPolicy `to.operation` methods / paths / hosts (and `not*`) and
//! `when` conditions on request headers, decided per request on the destination side (the
//! destination node's L7 pool), with Istio's semantics: DENY before ALLOW; no ALLOW policy
//! allows; with ALLOW policies only a matching rule allows. Every field of a rule is evaluated
//! here, its L4 parts (principals, namespaces, ipBlocks, ports) included, so this one verdict is
//! the whole decision for the request.
//!
//! Matching (`matching.rs`): paths are matched without the query string, normalized as Istio's
//! default (`BASE`: RFC 3986 dot segments removed, encoded unreserved characters decoded): exact, `/api/*`
//! (prefix `/api/`), `*.js` (suffix) or `*` (any); methods are case-sensitive, in the same
//! forms; hosts are compared case-insensitively with the `Host` / `:authority` as sent (a port
//! included: Istio's `example.com:*` idiom works); a header condition sees the header's fields
//! joined with `,`, never matches `values` when absent and is never excluded by `notValues`
//! when absent.
//!
//! A denied request is answered 403 with Envoy's body [`DENIED_BODY`], so clients and tests
//! written against Istio see the same bytes.

pub mod check;

use http::HeaderMap;

use super::{matching, Connection, Verdict};
use crate::state::{Pod, State};

/// The body of a request denied by policy: Envoy's RBAC filter's, byte for byte.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What a request is decided on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target's path (`/a/b?q=1`: the query is ignored).
    pub path: &'a str,
    /// `:authority`, else `Host`, as the client sent it.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    /// The request as hyper/http hold it.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        Request {
            method: parts.method.as_str(),
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            host,
            headers: &parts.headers,
        }
    }
}

/// The verdict for `req` on `conn` to `pod`: PeerAuthentication STRICT first (a plaintext
/// connection to a STRICT pod is refused whatever it asks), then every policy that applies.
pub fn authorize(state: &State, pod: &Pod, conn: &Connection, req: &Request<'_>) -> Verdict {
    super::plaintext_refusal(state, pod, conn)
        .unwrap_or_else(|| super::decide(state, pod, conn, matching::Traffic::Http(req)))
}

/// Whether some policy that applies to `pod` has a rule with HTTP fields: connections to the
/// pod then go through the L7 pool, where those rules can be evaluated.
pub fn has_l7_rules(state: &State, pod: &Pod) -> bool {
    super::applicable(state, pod).any(|p| p.spec.rules.iter().any(matching::rule_has_l7))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::{
        crd::authorization_policy::{Action, Condition, Operation, Rule, To},
        policy::tests::{conn, pod, policy, state, WEB},
    };

    fn op(o: Operation) -> Rule {
        Rule {
            to: vec![To { operation: o }],
            ..Default::default()
        }
    }

    fn when(key: &str, values: &[&str], not_values: &[&str]) -> Rule {
        Rule {
            when: vec![Condition {
                key: key.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
                not_values: not_values.iter().map(|v| v.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Whether `rule` in an ALLOW policy lets (method, path, host, headers) through.
    fn allows(rule: Rule, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> bool {
        let st = state(vec![policy("shop", "p", Action::Allow, true, vec![rule])]);
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = Request {
            method,
            path,
            host,
            headers: &map,
        };
        authorize(&st, &pod(), &conn(Some(WEB), "10.1.0.2", 8080), &req).allowed
    }

    fn get(rule: Rule, path: &str) -> bool {
        allows(rule, "GET", path, "db.shop", &[])
    }

    #[test]
    fn paths_exact_prefix_suffix_any_and_not() {
        let exact = op(Operation {
            paths: strings(&["/healthz"]),
            ..Default::default()
        });
        assert!(get(exact.clone(), "/healthz"));
        assert!(
            get(exact.clone(), "/healthz?verbose=1"),
            "the query is not part of the path"
        );
        assert!(!get(exact.clone(), "/healthz/"));
        assert!(!get(exact, "/HEALTHZ"), "paths are case-sensitive");

        let prefix = op(Operation {
            paths: strings(&["/api/*"]),
            ..Default::default()
        });
        assert!(get(prefix.clone(), "/api/v1/orders"));
        assert!(get(prefix.clone(), "/api/"));
        assert!(
            !get(prefix.clone(), "/api"),
            "`/api/*` is the prefix `/api/`"
        );
        assert!(!get(prefix, "/apiv2"));

        let suffix = op(Operation {
            paths: strings(&["*.js"]),
            ..Default::default()
        });
        assert!(get(suffix.clone(), "/static/app.js"));
        assert!(!get(suffix, "/static/app.css"));

        let any = op(Operation {
            paths: strings(&["*"]),
            ..Default::default()
        });
        assert!(get(any, "/anything"));

        // Dot segments and encoded unreserved characters do not get around a path rule.
        let admin = op(Operation {
            not_paths: strings(&["/admin/*"]),
            ..Default::default()
        });
        assert!(!get(admin.clone(), "/public/../admin/users"));
        assert!(!get(admin.clone(), "/%61dmin/users"));
        assert!(get(admin, "/public/admin/users"));

        let not = op(Operation {
            not_paths: strings(&["/admin/*", "/debug"]),
            ..Default::default()
        });
        assert!(get(not.clone(), "/orders"));
        assert!(!get(not.clone(), "/admin/users"));
        assert!(!get(not, "/debug"));
    }

    #[test]
    fn methods_and_not_methods() {
        let read = op(Operation {
            methods: strings(&["GET", "HEAD"]),
            ..Default::default()
        });
        assert!(allows(read.clone(), "GET", "/", "h", &[]));
        assert!(allows(read.clone(), "HEAD", "/", "h", &[]));
        assert!(!allows(read.clone(), "DELETE", "/", "h", &[]));
        assert!(
            !allows(read, "get", "/", "h", &[]),
            "methods are case-sensitive"
        );
        let not_delete = op(Operation {
            not_methods: strings(&["DELETE"]),
            ..Default::default()
        });
        assert!(allows(not_delete.clone(), "POST", "/", "h", &[]));
        assert!(!allows(not_delete, "DELETE", "/", "h", &[]));
    }

    #[test]
    fn hosts_are_case_insensitive_with_prefix_and_suffix_forms() {
        let host = |hosts: &[&str], not: &[&str], h: &str| {
            let rule = op(Operation {
                hosts: strings(hosts),
                not_hosts: strings(not),
                ..Default::default()
            });
            allows(rule, "GET", "/", h, &[])
        };
        assert!(host(&["Orders.Shop.svc"], &[], "orders.shop.SVC"));
        assert!(
            !host(&["orders.shop.svc"], &[], "orders.shop.svc:8080"),
            "exact means exact"
        );
        assert!(host(&["orders.shop.svc:*"], &[], "orders.shop.svc:8080"));
        assert!(host(
            &["*.shop.svc.cluster.local"],
            &[],
            "ORDERS.shop.svc.cluster.local"
        ));
        assert!(host(&["orders.*"], &[], "orders.shop"));
        assert!(!host(&["orders.*"], &[], "payments.shop"));
        assert!(host(&[], &["*.internal"], "orders.shop"));
        assert!(!host(&[], &["*.internal"], "db.INTERNAL"));
    }

    #[test]
    fn header_conditions() {
        let iphone = || when("request.headers[x-client]", &["iphone", "ipad*"], &[]);
        assert!(allows(iphone(), "GET", "/", "h", &[("x-client", "iphone")]));
        assert!(
            allows(iphone(), "GET", "/", "h", &[("X-Client", "ipad-pro")]),
            "header names are case-insensitive"
        );
        assert!(!allows(
            iphone(),
            "GET",
            "/",
            "h",
            &[("x-client", "android")]
        ));
        assert!(
            !allows(iphone(), "GET", "/", "h", &[]),
            "an absent header matches no value"
        );

        let present = when("request.headers[authorization]", &["*"], &[]);
        assert!(allows(
            present.clone(),
            "GET",
            "/",
            "h",
            &[("authorization", "Bearer x")]
        ));
        assert!(!allows(present, "GET", "/", "h", &[]));

        let not_bot = when("request.headers[user-agent]", &[], &["*bot*", "curl/*"]);
        assert!(allows(
            not_bot.clone(),
            "GET",
            "/",
            "h",
            &[("user-agent", "Mozilla/5.0")]
        ));
        assert!(!allows(
            not_bot.clone(),
            "GET",
            "/",
            "h",
            &[("user-agent", "curl/8.5")]
        ));
        assert!(
            allows(not_bot, "GET", "/", "h", &[]),
            "absent: not excluded"
        );

        // Several fields of one name are seen joined, as Envoy's header matcher sees them.
        let joined = when("request.headers[x-tag]", &["a,b"], &[]);
        assert!(allows(
            joined,
            "GET",
            "/",
            "h",
            &[("x-tag", "a"), ("x-tag", "b")]
        ));
    }

    #[test]
    fn l4_condition_keys_and_l4_parts_of_l7_rules() {
        assert!(get(when("source.namespace", &["shop"], &[]), "/"));
        assert!(!get(when("source.namespace", &["ops"], &[]), "/"));
        assert!(get(when("source.principal", &["*/sa/web"], &[]), "/"));
        assert!(get(when("source.ip", &["10.1.0.0/24"], &[]), "/"));
        assert!(!get(when("source.ip", &[], &["10.1.0.2"]), "/"));
        assert!(get(when("destination.port", &["8080"], &[]), "/"));
        assert!(!get(when("destination.port", &["9090"], &[]), "/"));
        // Every field of an operation must match: the port as well as the method.
        let get_on_9090 = op(Operation {
            ports: strings(&["9090"]),
            methods: strings(&["GET"]),
            ..Default::default()
        });
        assert!(!get(get_on_9090, "/"));
    }

    #[test]
    fn deny_before_allow_and_default_allow() {
        let allow_reads = policy(
            "shop",
            "reads",
            Action::Allow,
            true,
            vec![op(Operation {
                methods: strings(&["GET", "DELETE"]),
                ..Default::default()
            })],
        );
        let deny_delete = policy(
            "shop",
            "no-delete",
            Action::Deny,
            true,
            vec![op(Operation {
                methods: strings(&["DELETE"]),
                paths: strings(&["/orders/*"]),
                ..Default::default()
            })],
        );
        let st = state(vec![allow_reads.clone(), deny_delete.clone()]);
        let headers = HeaderMap::new();
        let req = |method, path| Request {
            method,
            path,
            host: "db",
            headers: &headers,
        };
        let c = conn(Some(WEB), "10.1.0.2", 8080);
        let v = authorize(&st, &pod(), &c, &req("DELETE", "/orders/7"));
        assert_eq!(
            (v.allowed, v.policy.as_deref()),
            (false, Some("shop/no-delete")),
            "DENY wins over a matching ALLOW: {v:?}"
        );
        let v = authorize(&st, &pod(), &c, &req("DELETE", "/carts/7"));
        assert_eq!((v.allowed, v.policy.as_deref()), (true, Some("shop/reads")));
        let v = authorize(&st, &pod(), &c, &req("POST", "/orders"));
        assert!(!v.allowed && v.reason.contains("shop/reads"), "{v:?}");
        // Only a DENY policy: whatever it does not deny is allowed.
        let st = state(vec![deny_delete]);
        assert!(authorize(&st, &pod(), &c, &req("POST", "/orders/1")).allowed);
        // STRICT refuses plaintext before any policy.
        let mut st = state(vec![allow_reads]);
        st.set_namespace_mtls("shop", "strict", crate::state::MtlsMode::Strict);
        let plain = conn(None, "10.1.0.2", 8080);
        let v = authorize(&st, &pod(), &plain, &req("GET", "/"));
        assert!(!v.allowed && v.reason.contains("STRICT"), "{v:?}");
    }

    #[test]
    fn request_from_http_parts() {
        let (parts, ()) = http::Request::builder()
            .method("PUT")
            .uri("/a/b?x=1")
            .header("host", "orders.shop:8080")
            .body(())
            .unwrap()
            .into_parts();
        let r = Request::from_parts(&parts);
        assert_eq!(
            (r.method, r.path, r.host),
            ("PUT", "/a/b?x=1", "orders.shop:8080")
        );
        let (parts, ()) = http::Request::builder()
            .uri("http://orders.shop/x")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(Request::from_parts(&parts).host, "orders.shop");
    }

    #[test]
    fn l7_rules_send_the_pod_to_the_pool_and_are_not_evaluable_at_l4() {
        let methods = op(Operation {
            methods: strings(&["GET"]),
            ..Default::default()
        });
        let header = when("request.headers[x-user]", &["admin"], &[]);
        let header_rule = header.clone();
        let l4_only = when("source.namespace", &["shop"], &[]);
        for (rule, l7) in [(methods.clone(), true), (header, true), (l4_only, false)] {
            let st = state(vec![policy("shop", "p", Action::Allow, true, vec![rule])]);
            assert_eq!(has_l7_rules(&st, &pod()), l7);
        }
        let elsewhere = state(vec![policy(
            "ops",
            "p",
            Action::Deny,
            false,
            vec![methods.clone()],
        )]);
        assert!(
            !has_l7_rules(&elsewhere, &pod()),
            "a policy that does not apply"
        );

        // At L4, an ALLOW rule that needs HTTP allows nothing, and says why.
        let c = conn(Some(WEB), "10.1.0.2", 8080);
        let st = state(vec![policy(
            "shop",
            "gets",
            Action::Allow,
            true,
            vec![methods.clone()],
        )]);
        let v = crate::policy::evaluate(&st, &pod(), &c);
        assert!(!v.allowed, "{v:?}");
        assert!(v.reason.contains(crate::policy::L7_UNEVALUATED), "{v:?}");
        assert!(v.reason.contains("rule 0 of shop/gets"), "{v:?}");

        // A DENY rule is enforced without its HTTP fields: it denies, and says why...
        let deny = |rule: Rule| {
            state(vec![policy(
                "shop",
                "no-get",
                Action::Deny,
                true,
                vec![rule],
            )])
        };
        let v = crate::policy::evaluate(&deny(methods), &pod(), &c);
        assert_eq!(
            (v.allowed, v.policy.as_deref()),
            (false, Some("shop/no-get"))
        );
        assert!(v.reason.contains(crate::policy::L7_UNEVALUATED), "{v:?}");
        let v = crate::policy::evaluate(&deny(header_rule.clone()), &pod(), &c);
        assert!(
            !v.allowed && v.reason.contains(crate::policy::L7_UNEVALUATED),
            "{v:?}"
        );
        // ...but its L4 parts still hold: a DENY on another port leaves this one alone.
        let other_port = op(Operation {
            ports: strings(&["9090"]),
            paths: strings(&["/admin/*"]),
            ..Default::default()
        });
        assert!(crate::policy::evaluate(&deny(other_port.clone()), &pod(), &c).allowed);
        let on_9090 = conn(Some(WEB), "10.1.0.2", 9090);
        assert!(!crate::policy::evaluate(&deny(other_port), &pod(), &on_9090).allowed);
        // An L4-only DENY rule's verdict does not blame L7.
        let v =
            crate::policy::evaluate(&deny(when("source.namespace", &["shop"], &[])), &pod(), &c);
        assert!(!v.allowed && !v.reason.contains("L7"), "{v:?}");
    }
}
