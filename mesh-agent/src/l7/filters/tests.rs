//! Filters, one test per mesh conformance case that is pure: redirects (path, port, scheme,
//! status), rewrites, header modifiers (rule and backend level), mirrors.

use super::*;
use crate::{
    l7::route::{routes_for, select},
    source::objects::route_parts::{parse_route, state_of},
    state::ServiceKey,
};

const NS: &str = "mesh";

fn state(rules: &str) -> crate::state::State {
    let services: String = ["echo", "echo-v1", "echo-v2"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: {NS}}}\n\
                 spec: {{clusterIP: 10.96.1.{}, ports: [{{port: 80}}, {{port: 8080}}]}}\n---\n",
                i + 1
            )
        })
        .collect();
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {NS}}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n{rules}"
    );
    state_of(&(services + &route))
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri).header("host", "echo");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("request").into_parts().0
}

/// Routes `uri` and applies the chosen rule's (and its first backend's) request filters.
fn run(
    state: &crate::state::State,
    uri: &str,
    headers: &[(&str, &str)],
) -> (RequestAction, http::request::Parts) {
    let svc = ServiceKey {
        namespace: NS.into(),
        name: "echo".into(),
    };
    let routes = routes_for(state, NS, &svc, 80);
    let mut req = parts(uri, headers);
    let routed = select(&routes, &req).unwrap_or_else(|| panic!("no rule for {uri}"));
    let mut action = apply_request_on(routed.rule, &mut req, 80);
    if let (RequestAction::Forward, Some(b)) = (&action, routed.rule.backends.first()) {
        action = apply_backend_request(routed.rule, b, &mut req);
    }
    (action, req)
}

fn redirected(state: &crate::state::State, uri: &str) -> (u16, String) {
    match run(state, uri, &[]).0 {
        RequestAction::Respond(r) => (
            r.status().as_u16(),
            r.headers()[http::header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned(),
        ),
        RequestAction::Forward => panic!("{uri} was not redirected"),
    }
}

fn rule(prefix: &str, redirect: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
    )
}

#[test]
fn redirect_paths_replace_the_prefix_or_the_whole_path() {
    // MeshHTTPRouteRedirectPath.
    let rules = [
        rule("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        rule("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
        rule("/path-and-host", "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        rule("/path-and-status", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}"),
        rule("/full-path-and-host", "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}"),
        rule("/full-path-and-status", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}"),
    ]
    .concat();
    let state = state(&rules);
    let cases = [
        (
            "/original-prefix/lemon",
            302,
            "http://echo/replacement-prefix/lemon",
        ),
        (
            "/full/path/original",
            302,
            "http://echo/full-path-replacement",
        ),
        (
            "/path-and-host",
            302,
            "http://example.org/replacement-prefix",
        ),
        ("/path-and-status", 301, "http://echo/replacement-prefix"),
        (
            "/full-path-and-host",
            302,
            "http://example.org/replacement-full",
        ),
        ("/full-path-and-status", 301, "http://echo/replacement-full"),
        (
            "/original-prefix/lemon?x=1",
            302,
            "http://echo/replacement-prefix/lemon?x=1",
        ),
    ];
    for (uri, status, location) in cases {
        assert_eq!(
            redirected(&state, uri),
            (status, location.to_owned()),
            "{uri}"
        );
    }
}

#[test]
fn redirect_ports_are_written_unless_they_are_the_schemes_default() {
    // MeshHTTPRouteRedirectPort and MeshHTTPRouteSchemeRedirect.
    let rules = [
        rule("/port", "{port: 8083}"),
        rule("/port-and-host", "{hostname: example.org, port: 8083}"),
        rule("/port-and-status", "{port: 8083, statusCode: 301}"),
        rule(
            "/port-and-host-and-status",
            "{port: 8083, hostname: example.org, statusCode: 302}",
        ),
        rule("/scheme", "{scheme: https}"),
        rule("/scheme-and-host", "{hostname: example.org, scheme: https}"),
        rule("/scheme-and-status", "{scheme: https, statusCode: 301}"),
        rule("/https-odd-port", "{scheme: https, port: 8443}"),
        rule("/http-port-80", "{port: 80}"),
        rule("/host-only", "{hostname: example.org}"),
    ]
    .concat();
    let state = state(&rules);
    let cases = [
        ("/port", 302, "http://echo:8083/port"),
        (
            "/port-and-host",
            302,
            "http://example.org:8083/port-and-host",
        ),
        ("/port-and-status", 301, "http://echo:8083/port-and-status"),
        (
            "/port-and-host-and-status",
            302,
            "http://example.org:8083/port-and-host-and-status",
        ),
        ("/scheme", 302, "https://echo/scheme"),
        (
            "/scheme-and-host",
            302,
            "https://example.org/scheme-and-host",
        ),
        ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
        ("/https-odd-port", 302, "https://echo:8443/https-odd-port"),
        ("/http-port-80", 302, "http://echo/http-port-80"),
        ("/host-only", 302, "http://example.org/host-only"),
    ];
    for (uri, status, location) in cases {
        assert_eq!(
            redirected(&state, uri),
            (status, location.to_owned()),
            "{uri}"
        );
    }
}

#[test]
fn redirect_without_a_port_keeps_the_frontend_port_the_client_called() {
    let route = parse_route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: mesh}\n\
         spec: {parentRefs: [{kind: Service, name: echo}], rules: [{filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]}]}\n",
    )
    .unwrap();
    let rule = &route.rules[0];
    let mut req = http::Request::builder()
        .uri("/a")
        .header("host", "echo:8080")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let RequestAction::Respond(r) = apply_request(rule, &mut req) else {
        panic!("a redirect");
    };
    assert_eq!(r.headers()["location"], "http://example.org:8080/a");
    let RequestAction::Respond(r) = apply_request_on(rule, &mut req, 80) else {
        panic!("a redirect");
    };
    assert_eq!(r.headers()["location"], "http://example.org/a");
}

#[test]
fn redirect_status_codes_303_307_308_are_kept() {
    // MeshHTTPRoute303/307/308Redirect.
    let rules = [
        rule("/s303", "{statusCode: 303}"),
        rule("/s307", "{statusCode: 307}"),
        rule("/s308", "{statusCode: 308}"),
    ]
    .concat();
    let state = state(&rules);
    for code in [303, 307, 308] {
        let (status, _) = redirected(&state, &format!("/s{code}"));
        assert_eq!(status, code);
    }
}

#[test]
fn url_rewrite_replaces_the_prefix_or_the_full_path_and_runs_with_header_modifiers() {
    // MeshHTTPRouteRewritePath.
    let headers = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let rewrite = |prefix: &str, path: &str, extra: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {path}}}}}{extra}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"
        )
    };
    let with_headers = format!(", {headers}");
    let rules = [
        rewrite(
            "/prefix/one",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /one}",
            "",
        ),
        rewrite(
            "/strip-prefix",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /}",
            "",
        ),
        rewrite(
            "/full/one",
            "{type: ReplaceFullPath, replaceFullPath: /one}",
            "",
        ),
        rewrite(
            "/full/rewrite-path-and-modify-headers",
            "{type: ReplaceFullPath, replaceFullPath: /test}",
            &with_headers,
        ),
        rewrite(
            "/prefix/rewrite-path-and-modify-headers",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /prefix}",
            &with_headers,
        ),
    ]
    .concat();
    let state = state(&rules);
    for (uri, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/prefix/one/two?q=1", "/one/two?q=1"),
    ] {
        let (action, req) = run(&state, uri, &[]);
        assert!(matches!(action, RequestAction::Forward));
        assert_eq!(req.uri.to_string(), want, "{uri}");
    }
    let sent = [
        ("X-Header-Remove", "remove-val"),
        ("X-Header-Add-Append", "append-val-1"),
        ("X-Header-Set", "set-val"),
    ];
    for (uri, want) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let (_, req) = run(&state, uri, &sent);
        assert_eq!(req.uri.path(), want);
        let h = &req.headers;
        assert_eq!(h["x-header-add"], "header-val-1");
        let appended: Vec<&str> = h
            .get_all("x-header-add-append")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(appended, ["append-val-1", "header-val-2"]);
        assert_eq!(h.get_all("x-header-set").iter().count(), 1);
        assert_eq!(h["x-header-set"], "set-overwrites-values");
        assert!(h.get("x-header-remove").is_none());
    }
}

#[test]
fn url_rewrite_hostname_replaces_the_host_header_and_an_absolute_authority() {
    let state = state(
        "  - filters: [{type: URLRewrite, urlRewrite: {hostname: internal.example}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let (_, req) = run(&state, "/x", &[]);
    assert_eq!(req.headers["host"], "internal.example");
    let route = &state.routes[&(NS.to_string(), "r".to_string())];
    let mut h2 = http::Request::builder()
        .uri("http://echo:80/x?y=1")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    apply_request(&route.rules[0], &mut h2);
    assert_eq!(h2.uri.to_string(), "http://internal.example/x?y=1");
}

#[test]
fn backend_header_modifiers_apply_to_requests_sent_to_that_backend() {
    // MeshHTTPRouteRequestHeaderModifier (backend-level manifest).
    let backend = |prefix: &str, modifier: &str| {
        format!(
            "  - matches: [{{path: {{value: {prefix}}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080, filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]}}]\n"
        )
    };
    let rules = [
        backend("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
        backend("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
        backend("/remove", "{remove: [X-Header-Remove]}"),
        backend("/multiple", "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}], remove: [X-Header-Remove-1, X-Header-Remove-2]}"),
        backend("/case-insensitivity", "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}"),
    ]
    .concat();
    let state = state(&rules);
    let (_, r) = run(
        &state,
        "/set",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
    );
    assert_eq!(r.headers["x-header-set"], "set-overwrites-values");
    assert_eq!(r.headers["some-other-header"], "val");
    let (_, r) = run(&state, "/add", &[("X-Header-Add", "some-other-value")]);
    let all: Vec<_> = r.headers.get_all("x-header-add").iter().collect();
    assert_eq!(all, ["some-other-value", "add-appends-values"]);
    let (_, r) = run(&state, "/remove", &[("X-Header-Remove", "val")]);
    assert!(r.headers.get("x-header-remove").is_none());
    let (_, r) = run(
        &state,
        "/multiple",
        &[
            ("X-Header-Remove-1", "a"),
            ("X-Header-Remove-2", "b"),
            ("X-Header-Set-2", "old"),
        ],
    );
    assert_eq!(r.headers["x-header-set-1"], "header-set-1");
    assert_eq!(r.headers["x-header-set-2"], "header-set-2");
    assert_eq!(r.headers["x-header-add-1"], "header-add-1");
    assert!(
        r.headers.get("x-header-remove-1").is_none()
            && r.headers.get("x-header-remove-2").is_none()
    );
    let (_, r) = run(
        &state,
        "/case-insensitivity",
        &[
            ("x-header-set", "original"),
            ("X-HEADER-REMOVE", "x"),
            ("x-header-add", "a"),
        ],
    );
    assert_eq!(r.headers["x-header-set"], "header-set");
    assert!(r.headers.get("x-header-remove").is_none());
    assert_eq!(r.headers.get_all("x-header-add").iter().count(), 2);
}

#[test]
fn response_header_modifiers_set_add_and_remove_on_the_way_back() {
    // MeshConsumerRoute / MeshPorts / MeshFrontend: X-Header-Set on responses.
    let state = state(
        "  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}], add: [{name: X-Header-Add, value: added}], remove: [Server]}}]\n    backendRefs: [{name: echo-v1, port: 80, filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Backend, value: v1}]}}]}]\n",
    );
    let route = &state.routes[&(NS.to_string(), "r".to_string())];
    let rule = &route.rules[0];
    let (mut resp, ()) = http::Response::builder()
        .header("x-header-set", "from-app")
        .header("x-header-add", "from-app")
        .header("server", "echo")
        .body(())
        .unwrap()
        .into_parts();
    apply_response(rule, &mut resp);
    apply_backend_response(&rule.backends[0], &mut resp);
    assert_eq!(resp.headers["x-header-set"], "set");
    assert_eq!(resp.headers.get_all("x-header-add").iter().count(), 2);
    assert!(resp.headers.get("server").is_none());
    assert_eq!(resp.headers["x-backend"], "v1");
    // Request filters leave a response filter alone, and the reverse.
    let mut req = parts("/", &[]);
    assert!(matches!(
        apply_request(rule, &mut req),
        RequestAction::Forward
    ));
    assert!(req.headers.get("x-header-set").is_none());
}

#[test]
fn replace_prefix_match_follows_the_specs_table() {
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/anything", "/", "/base", "/base/anything"),
    ];
    for (path, prefix, replacement, want) in cases {
        assert_eq!(
            replace_prefix(path, prefix, replacement),
            want,
            "{path} {prefix} {replacement}"
        );
    }
}

#[test]
fn mirrors_list_their_backends_and_honour_their_percentage() {
    let state = state(
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}, {type: RequestMirror, requestMirror: {backendRef: {name: echo, port: 80}, percent: 25}}, {type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let rule = &state.routes[&(NS.to_string(), "r".to_string())].rules[0];
    let names: Vec<&str> = mirrors(rule)
        .iter()
        .map(|b| b.service.name.as_str())
        .collect();
    assert_eq!(names, ["echo-v2", "echo", "gone"]);
    assert!(!mirrors(rule)[2].is_resolved());
    let count = |name: &str| {
        (0..10_000u32)
            .map(|i| i.wrapping_mul(429_497))
            .filter(|roll| {
                mirrors_for(rule, None, *roll)
                    .iter()
                    .any(|b| b.service.name == name)
            })
            .count()
    };
    assert_eq!(count("echo-v2"), 10_000);
    assert!((2_000..3_000).contains(&count("echo")), "{}", count("echo"));
    assert_eq!(count("gone"), 0, "an unresolved mirror is not sent");
}

#[test]
fn grpc_route_header_modifiers_and_weights_apply_to_calls() {
    // MeshGRPCRouteRequestHeaderModifier and MeshGRPCRouteWeight, on the same machinery.
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: grpc, namespace: mesh}\nspec: {clusterIP: 10.96.2.1, ports: [{port: 9000}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: grpc-v1, namespace: mesh}\nspec: {clusterIP: 10.96.2.2, ports: [{port: 9000}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: grpc-v2, namespace: mesh}\nspec: {clusterIP: 10.96.2.3, ports: [{port: 9000}]}\n---\n";
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: mesh}\n\
        spec:\n  parentRefs: [{kind: Service, name: grpc}]\n  rules:\n\
        \x20 - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: s}], add: [{name: x-add, value: a}], remove: [x-remove]}}]\n\
        \x20   backendRefs: [{name: grpc-v1, port: 9000, weight: 70}, {name: grpc-v2, port: 9000, weight: 30}]\n";
    let state = state_of(&format!("{services}{route}"));
    let svc = ServiceKey {
        namespace: NS.into(),
        name: "grpc".into(),
    };
    let routes = routes_for(&state, NS, &svc, 9000);
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/echo.Echo/Say")
        .header("x-set", "old")
        .header("x-remove", "r")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let routed = select(&routes, &req).expect("the rule");
    assert!(matches!(
        apply_request(routed.rule, &mut req),
        RequestAction::Forward
    ));
    assert_eq!(req.headers["x-set"], "s");
    assert_eq!(req.headers["x-add"], "a");
    assert!(req.headers.get("x-remove").is_none());
    let v2 = (0..10_000u32)
        .filter(|i| {
            crate::l7::route::pick_backend(routed.rule, i.wrapping_mul(429_497))
                .is_some_and(|b| b.service.name == "grpc-v2")
        })
        .count();
    assert!((2_500..3_500).contains(&v2), "{v2}");
}
