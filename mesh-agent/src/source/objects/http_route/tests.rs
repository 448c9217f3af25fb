//! HTTPRoute and GRPCRoute parsing: what is accepted, with which defaults, and every refusal
//! naming its field.

use std::time::Duration;

use crate::{
    source::objects::route_parts::parse_route,
    state::routes::{Filter, PathMatch, RouteKind, ValueMatch},
};

fn http(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: orders, namespace: shop, creationTimestamp: \"2024-05-01T10:00:00Z\"}}\n\
         spec: {spec}\n"
    )
}

const PARENT: &str = "parentRefs: [{group: \"\", kind: Service, name: orders, port: 80}]";

fn rules(rules: &str) -> String {
    http(&format!("{{{PARENT}, rules: [{rules}]}}"))
}

/// The field and message of a refused rule list.
fn refused(rule_list: &str) -> (String, String) {
    parse_route(&rules(rule_list)).expect_err("refused")
}

#[test]
fn a_mesh_route_is_accepted_with_the_specs_defaults() {
    let r = parse_route(&rules("{backendRefs: [{name: orders-v1, port: 8080}]}")).unwrap();
    assert_eq!(r.kind, RouteKind::Http);
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("shop", "orders"));
    assert_eq!(r.created.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert_eq!(r.parents[0].service.to_string(), "shop/orders");
    assert_eq!(r.parents[0].port, Some(80));
    let rule = &r.rules[0];
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].path, Some(PathMatch::Prefix("/".into())));
    assert_eq!(rule.backends[0].weight, 1);
    assert_eq!(rule.backends[0].service.to_string(), "shop/orders-v1");
    assert!(rule.retry.is_none() && rule.timeouts.request.is_none());
    // No rules at all: one rule matching everything, without backends.
    let r = parse_route(&http(&format!("{{{PARENT}}}"))).unwrap();
    assert_eq!(r.rules.len(), 1);
    assert!(r.rules[0].backends.is_empty());
    // A parent in another namespace (a consumer route); a Service's own core group spelled out.
    let r = parse_route(&http(
        "{parentRefs: [{group: core, kind: Service, name: orders, namespace: shop-prod}]}",
    ))
    .unwrap();
    assert_eq!(r.parents[0].service.to_string(), "shop-prod/orders");
    assert_eq!(r.parents[0].port, None);
}

#[test]
fn gateway_routes_are_left_alone_and_mixed_parents_keep_the_services() {
    let gw = parse_route(&http(
        "{parentRefs: [{name: public-gw}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
    ));
    assert_eq!(gw.unwrap_err().0, "(ignored)");
    let mixed = parse_route(&http(
        "{parentRefs: [{name: public-gw}, {kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 80}]}]}",
    ))
    .unwrap();
    assert_eq!(mixed.parents.len(), 1);
}

#[test]
fn matches_parse_paths_headers_query_and_methods() {
    let r = parse_route(&rules(
        "{matches: [{path: {type: Exact, value: /a}, method: GET, headers: [{name: X-Client, value: iphone}, {name: x-client, value: ignored}], queryParams: [{type: RegularExpression, name: v, value: \"[0-9]+\"}]}, {path: {type: RegularExpression, value: \"/b/.*\"}}], backendRefs: [{name: orders, port: 80}]}",
    ))
    .unwrap();
    let m = &r.rules[0].matches;
    assert_eq!(m[0].path, Some(PathMatch::Exact("/a".into())));
    assert_eq!(m[0].method.as_deref(), Some("GET"));
    assert_eq!(
        m[0].headers.len(),
        1,
        "only the first entry of a header name counts"
    );
    assert_eq!(m[0].headers[0].name, "x-client");
    assert!(matches!(&m[0].query[0].value, ValueMatch::RegularExpression(p) if p.is_match("42")));
    assert!(matches!(&m[1].path, Some(PathMatch::RegularExpression(p)) if p.as_str() == "/b/.*"));
}

#[test]
fn bad_matches_are_refused_naming_the_field() {
    let cases = [
        (
            "{matches: [{path: {type: RegularExpression, value: \"/a(\"}}]}",
            "spec.rules[0].matches[0].path.value",
            "regular expression",
        ),
        (
            "{matches: [{path: {type: Prefix, value: /a}}]}",
            "spec.rules[0].matches[0].path.type",
            "Prefix",
        ),
        (
            "{matches: [{path: {value: a}}]}",
            "spec.rules[0].matches[0].path.value",
            "start with /",
        ),
        (
            "{matches: [{path: {value: /a//b}}]}",
            "spec.rules[0].matches[0].path.value",
            "//",
        ),
        (
            "{matches: [{method: FETCH}]}",
            "spec.rules[0].matches[0].method",
            "FETCH",
        ),
        (
            "{matches: [{headers: [{name: \"bad header\", value: x}]}]}",
            "spec.rules[0].matches[0].headers[0].name",
            "header name",
        ),
        (
            "{matches: [{headers: [{type: RegularExpression, name: x, value: \"[\"}]}]}",
            "spec.rules[0].matches[0].headers[0].value",
            "regular expression",
        ),
        (
            "{matches: [{headers: [{type: Prefix, name: x, value: y}]}]}",
            "spec.rules[0].matches[0].headers[0].type",
            "Prefix",
        ),
        (
            "{matches: [{queryParams: [{name: q, value: \"\"}]}]}",
            "spec.rules[0].matches[0].queryParams[0].value",
            "1 to 4096",
        ),
        ("{matchs: []}", "spec.rules[0]", "matchs"),
    ];
    for (rule, field, word) in cases {
        let (f, msg) = refused(rule);
        assert!(f.starts_with(field), "{rule}: {f} (want {field})");
        assert!(msg.contains(word), "{rule}: {msg}");
    }
}

#[test]
fn filters_are_checked_as_the_crd_checks_them() {
    let cases = [
        ("{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}], matches: [{path: {type: Exact, value: /a}}]}",
         "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch", "exactly one match"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}], matches: [{path: {value: /a}}, {path: {value: /b}}]}",
         "spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch", "exactly one match"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}", "spec.rules[0].filters[0].requestRedirect.statusCode", "304"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}", "spec.rules[0].filters[0].requestRedirect.scheme", "ftp"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {hostname: \"*.x\"}}]}", "spec.rules[0].filters[0].requestRedirect.hostname", "host name"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {port: 0}}]}", "spec.rules[0].filters[0].requestRedirect.port", "port"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {}}], backendRefs: [{name: a, port: 80}]}", "spec.rules[0].backendRefs", "no backendRefs"),
        ("{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}", "spec.rules[0].filters", "cannot be combined"),
        ("{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}", "spec.rules[0].filters[1].type", "twice"),
        ("{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: x}], remove: [A]}}]}", "spec.rules[0].filters[0].requestHeaderModifier.remove[0]", "one action per header"),
        ("{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: x}], add: [{name: A, value: y}]}}]}", "spec.rules[0].filters[0].requestHeaderModifier.add[0].name", "one action per header"),
        ("{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: \"x\\ny\"}]}}]}", "spec.rules[0].filters[0].requestHeaderModifier.set[0].value", "header value"),
        ("{filters: [{type: RequestHeaderModifier}]}", "spec.rules[0].filters[0].requestHeaderModifier", "needs its configuration"),
        ("{filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}]}", "spec.rules[0].filters[0].responseHeaderModifier", "type RequestHeaderModifier"),
        ("{filters: [{type: CORS, cors: {}}]}", "spec.rules[0].filters[0].type", "not supported"),
        ("{filters: [{type: Teleport}]}", "spec.rules[0].filters[0].type", "Teleport"),
        ("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 101}}]}", "spec.rules[0].filters[0].requestMirror.percent", "101"),
        ("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}]}", "spec.rules[0].filters[0].requestMirror.backendRef.port", "Service port"),
        ("{backendRefs: [{name: a, port: 80, filters: [{type: RequestRedirect, requestRedirect: {}}]}]}", "spec.rules[0].backendRefs[0].filters", "RequestRedirect"),
    ];
    for (rule, field, word) in cases {
        let (f, msg) = refused(rule);
        assert_eq!(f, field, "{rule}: {msg}");
        assert!(msg.contains(word), "{rule}: {msg}");
    }
    // ReplacePrefixMatch with the one PathPrefix match (the default one too) is fine.
    parse_route(&rules("{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}], backendRefs: [{name: a, port: 80}]}")).unwrap();
    let r = parse_route(&rules("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 1, denominator: 3}}}, {type: RequestMirror, requestMirror: {backendRef: {name: n, port: 80}}}], backendRefs: [{name: a, port: 80}]}")).unwrap();
    assert!(
        matches!(&r.rules[0].filters[0], Filter::RequestMirror(m) if (m.numerator, m.denominator) == (1, 3))
    );
}

#[test]
fn backend_refs_need_a_port_default_to_weight_one_and_other_kinds_stay_unresolved() {
    let (f, msg) = refused("{backendRefs: [{name: a}]}");
    assert_eq!(f, "spec.rules[0].backendRefs[0].port");
    assert!(msg.contains("Service port"), "{msg}");
    let (f, _) = refused("{backendRefs: [{name: a, port: 80, weight: 1000001}]}");
    assert_eq!(f, "spec.rules[0].backendRefs[0].weight");
    let (f, _) = refused("{backendRefs: [{name: a, port: 80, wieght: 1}]}");
    assert_eq!(
        f, "spec.rules[0].backendRefs[0].wieght",
        "a typo is named, not ignored"
    );
    let r = parse_route(&rules("{backendRefs: [{name: a, port: 80, namespace: other, weight: 0}, {group: example.com, kind: Bucket, name: b}]}")).unwrap();
    let b = &r.rules[0].backends;
    assert_eq!(
        (b[0].service.to_string(), b[0].weight),
        ("other/a".into(), 0)
    );
    assert!(b[1].unresolved.as_deref().unwrap().contains("InvalidKind"));
}

#[test]
fn parent_refs_are_checked() {
    let (f, msg) = parse_route(&http(
        "{parentRefs: [{kind: Service, name: web, sectionName: http}]}",
    ))
    .unwrap_err();
    assert_eq!(f, "spec.parentRefs[0].sectionName");
    assert!(msg.contains("port"), "{msg}");
    let (f, _) = parse_route(&http(
        "{parentRefs: [{kind: Service, name: web, port: eighty}]}",
    ))
    .unwrap_err();
    assert_eq!(f, "spec.parentRefs[0].port");
}

#[test]
fn request_timeouts_parse_gateway_api_durations_and_backend_request_fits_in_request() {
    let t = |timeouts: &str| {
        parse_route(&rules(&format!(
            "{{timeouts: {timeouts}, backendRefs: [{{name: a, port: 80}}]}}"
        )))
        .map(|r| r.rules[0].timeouts)
    };
    let ok = t("{request: 10s, backendRequest: 500ms}").unwrap();
    assert_eq!(ok.request, Some(Duration::from_secs(10)));
    assert_eq!(ok.backend_request, Some(Duration::from_millis(500)));
    assert_eq!(
        t("{request: 1h}").unwrap().request,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        t("{request: 1h30m5s250ms}").unwrap().request,
        Some(Duration::from_millis(5_405_250))
    );
    // Zero disables the timeout.
    let zero = t("{request: 0s, backendRequest: 20s}").unwrap();
    assert_eq!(
        (zero.request, zero.backend_request),
        (None, Some(Duration::from_secs(20)))
    );
    for bad in [
        "10",
        "1.5s",
        "10d",
        "-1s",
        "123456s",
        "1h1m1s1ms1h",
        "s",
        "",
    ] {
        let (f, msg) = t(&format!("{{request: \"{bad}\"}}")).unwrap_err();
        assert_eq!(f, "spec.rules[0].timeouts.request", "{bad}");
        assert!(msg.contains("Gateway API duration"), "{bad}: {msg}");
    }
    let (f, msg) = t("{request: 1s, backendRequest: 2s}").unwrap_err();
    assert_eq!(f, "spec.rules[0].timeouts.backendRequest");
    assert!(msg.contains("longer than the request timeout"), "{msg}");
}

#[test]
fn retry_parses_codes_attempts_and_backoff() {
    let retry = |r: &str| {
        parse_route(&rules(&format!(
            "{{retry: {r}, backendRefs: [{{name: a, port: 80}}]}}"
        )))
        .map(|route| route.rules[0].retry.clone().expect("a retry"))
    };
    let r = retry("{codes: [503, 500, 503], attempts: 2, backoff: 100ms}").unwrap();
    assert_eq!(r.codes, [500, 503]);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.backoff, Some(Duration::from_millis(100)));
    assert_eq!(
        retry("{codes: [502]}").unwrap().attempts,
        crate::state::routes::DEFAULT_RETRY_ATTEMPTS
    );
    assert_eq!(
        retry("{attempts: 0}").unwrap().attempts,
        0,
        "an explicit zero disables retries"
    );
    let (f, msg) = retry("{codes: [200]}").unwrap_err();
    assert_eq!(f, "spec.rules[0].retry.codes[0]");
    assert!(msg.contains("400 to 599"), "{msg}");
    assert_eq!(
        retry("{attempts: -1}").unwrap_err().0,
        "spec.rules[0].retry.attempts"
    );
    assert_eq!(
        retry("{attempts: 50}").unwrap_err().0,
        "spec.rules[0].retry.attempts"
    );
    assert_eq!(
        retry("{backoff: soon}").unwrap_err().0,
        "spec.rules[0].retry.backoff"
    );
}

#[test]
fn grpc_routes_parse_method_matches_and_their_filters() {
    let grpc = |rules: &str| {
        parse_route(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: shop}}\n\
             spec: {{parentRefs: [{{kind: Service, name: orders}}], rules: [{rules}]}}\n"
        ))
    };
    let r = grpc("{matches: [{method: {service: shop.v1.Orders, method: Get}, headers: [{name: x-env, value: canary}]}], filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-routed, value: \"yes\"}]}}, {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9000}}}], backendRefs: [{name: orders-v2, port: 9000, weight: 3}]}").unwrap();
    assert_eq!(r.kind, RouteKind::Grpc);
    let m = &r.rules[0].matches[0];
    assert!(m.path.is_none());
    let g = m.grpc.as_ref().unwrap();
    assert_eq!(g.service, Some(ValueMatch::Exact("shop.v1.Orders".into())));
    assert_eq!(g.method, Some(ValueMatch::Exact("Get".into())));
    assert_eq!(r.rules[0].filters.len(), 2);
    assert_eq!(r.rules[0].backends[0].weight, 3);
    let cases = [
        (
            "{matches: [{method: {type: Exact}}]}",
            "spec.rules[0].matches[0].method",
            "service and method",
        ),
        (
            "{matches: [{method: {service: \"shop/Orders\"}}]}",
            "spec.rules[0].matches[0].method.service",
            "gRPC service",
        ),
        (
            "{matches: [{method: {method: \"Get.x\"}}]}",
            "spec.rules[0].matches[0].method.method",
            "gRPC method",
        ),
        (
            "{matches: [{method: {type: RegularExpression, method: \"(\"}}]}",
            "spec.rules[0].matches[0].method.method",
            "regular expression",
        ),
        (
            "{filters: [{type: URLRewrite}]}",
            "spec.rules[0].filters[0].type",
            "GRPCRoute filter",
        ),
        ("{timeouts: {request: 1s}}", "spec.rules[0]", "timeouts"),
    ];
    for (rule, field, word) in cases {
        let (f, msg) = grpc(rule).unwrap_err();
        assert!(f.starts_with(field), "{rule}: {f}");
        assert!(msg.contains(word), "{rule}: {msg}");
    }
    // The checks GRPCRoute shares with HTTPRoute, and the exact fields it names.
    let nine_matches = format!("{{matches: [{}]}}", ["{}"; 9].join(", "));
    let exact = [
        (
            "{filters: [{type: RequestHeaderModifier}]}",
            "spec.rules[0].filters[0]",
            "needs its configuration",
        ),
        (
            "{filters: [{type: RequestMirror, requestHeaderModifier: {}}]}",
            "spec.rules[0].filters[0]",
            "a RequestHeaderModifier configuration",
        ),
        (
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}",
            "spec.rules[0].filters[1].type",
            "given twice",
        ),
        (
            "{filters: [{type: ExtensionRef, extensionRef: {}}]}",
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            "{backendRefs: [{name: a, port: 9000, filters: [{type: ResponseHeaderModifier}]}]}",
            "spec.rules[0].backendRefs[0].filters[0]",
            "needs its configuration",
        ),
        (
            "{backendRefs: [{name: a}]}",
            "spec.rules[0].backendRefs[0].port",
            "Service port",
        ),
        (&nine_matches, "spec.rules[0].matches", "at most 8 matches"),
    ];
    for (rule, field, word) in exact {
        let (f, msg) = grpc(rule).unwrap_err();
        assert_eq!(f, field, "{rule}: {msg}");
        assert!(msg.contains(word), "{rule}: {msg}");
    }
    // No rules: the default rule matches any call and has no backend.
    let r = parse_route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: shop}\n\
         spec: {parentRefs: [{kind: Service, name: orders}]}\n",
    )
    .unwrap();
    assert_eq!(r.rules.len(), 1);
    let (rule, m) = (&r.rules[0], &r.rules[0].matches[0]);
    assert!(
        rule.backends.is_empty() && m.path.is_none() && m.grpc.is_none() && m.headers.is_empty()
    );
}

#[test]
fn an_object_as_the_api_server_returns_it_with_defaults_and_status_is_accepted() {
    // What a watch delivers: defaults filled in by the CRD, server metadata, a status.
    let json = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "orders", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
            "generation": 3, "creationTimestamp": "2024-05-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
        },
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
            "hostnames": [],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                             "headers": [{"type": "Exact", "name": "x-client", "value": "iphone"}]}],
                "filters": [{"type": "RequestRedirect",
                             "requestRedirect": {"statusCode": 302, "scheme": "https"}}]
            }, {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": "orders-v1",
                                 "port": 80, "weight": 1}]
            }]
        },
        "status": {"parents": [{"parentRef": {"name": "orders"}, "controllerName": "x",
                                "conditions": []}]}
    });
    let value: yaml_serde::Value = yaml_serde::to_value(&json).unwrap();
    let text = yaml_serde::to_string(&value).unwrap();
    let r = parse_route(&text).unwrap();
    assert_eq!(r.rules.len(), 2);
    assert_eq!(r.created.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert!(matches!(&r.rules[0].filters[0], Filter::RequestRedirect(x) if x.status == 302));
}

#[test]
fn in_kubernetes_mode_a_broken_route_update_keeps_the_last_good_route() {
    use kube::{api::DynamicObject, runtime::watcher::Event};

    use crate::source::kubernetes::{Kind, Store};
    static KINDS: &[Kind] = &[
        Kind {
            group: "",
            version: "v1",
            kind: "Service",
            plural: "services",
            optional: false,
        },
        Kind {
            group: "gateway.networking.k8s.io",
            version: "v1",
            kind: "HTTPRoute",
            plural: "httproutes",
            optional: true,
        },
    ];
    let object = |v: serde_json::Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
    let route = |header_regex: &str| {
        object(serde_json::json!({
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"kind": "Service", "name": "orders"}],
                "rules": [{
                    "matches": [{"headers": [{"type": "RegularExpression", "name": "x-client", "value": header_regex}]}],
                    "backendRefs": [{"name": "orders", "port": 80}]
                }]
            }
        }))
    };
    let mut store = Store::new(KINDS, Some("n1".into()));
    for (i, init) in [
        object(
            serde_json::json!({"metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}}),
        ),
        route("iphone|ipad"),
    ]
    .into_iter()
    .enumerate()
    {
        store.event(i, Event::Init);
        store.event(i, Event::InitApply(init));
        store.event(i, Event::InitDone);
    }
    let pattern = |state: &crate::state::State| {
        let r = state.routes.values().next().expect("the route");
        match &r.rules[0].matches[0].headers[0].value {
            ValueMatch::RegularExpression(p) => p.as_str().to_owned(),
            other => panic!("{other:?}"),
        }
    };
    let loaded = store.build();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(pattern(&loaded.state), "iphone|ipad");
    assert!(loaded.state.routes.values().next().unwrap().rules[0].backends[0].is_resolved());

    store.event(1, Event::Apply(route("iphone(")));
    let loaded = store.build();
    assert_eq!(
        pattern(&loaded.state),
        "iphone|ipad",
        "the good route stays"
    );
    assert_eq!(
        loaded.errors[0].field,
        "spec.rules[0].matches[0].headers[0].value"
    );
    assert!(loaded.errors[0]
        .message
        .ends_with("the previous version stays in force"));

    store.event(1, Event::Delete(route("iphone(")));
    assert!(store.build().state.routes.is_empty());
}

#[test]
fn a_gateway_route_is_not_held_to_the_mesh_agents_rules() {
    // Fields this agent refuses (sectionName, sessionPersistence, CORS) are the gateway's affair.
    let gw = parse_route(&http(
        "{parentRefs: [{name: public-gw, sectionName: https}], rules: [{sessionPersistence: {type: Cookie}, filters: [{type: CORS, cors: {}}]}]}",
    ));
    assert_eq!(gw.unwrap_err().0, "(ignored)");
    let grpc = parse_route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {parentRefs: [{name: gw}], rules: [{sessionPersistence: {}}]}\n",
    );
    assert_eq!(grpc.unwrap_err().0, "(ignored)");
}
