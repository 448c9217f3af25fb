//! The Gateway API conformance suite's mesh profile (MESH-HTTP: `conformance/tests/mesh/`),
//! with the GATEWAY-HTTP timeout and retry cases, as netns integration tests: real agents and
//! their L7 pools on two nodes, curl as the client application, the suite's echo-v1/echo-v2
//! layout (`weft_tests::gamma`). Each test sets up one topology and runs the cases of a few of
//! the suite's tests as a table, asserting what a user sees: the status and headers at the
//! client, what the application received, the access log. The cases tests/tests/l7.rs already
//! covers (weighted canary, header match, retries of 503, a request timeout, L7 policy,
//! h2c/gRPC, Upgrade) are not repeated. Run as root (`cargo xtask test`).

use std::time::{Duration, Instant};

use weft_tests::{
    features,
    gamma::{self, fetch, frontend, request_line, request_lines, Answer, ECHO, ECHO_V1, ECHO_V2},
    Pod,
};

/// A ResponseHeaderModifier filter list setting `name: value`: how the suite tells a route
/// that applied from one that did not.
fn set_response(name: &str, value: &str) -> String {
    format!(
        "[{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: {name}, value: {value}}}]}}}}]"
    )
}

/// An HTTPRoute `ns/name` with `parents` (a YAML flow list) and `rules` (YAML block lines at
/// two spaces, each rule starting `  - `).
fn route(ns: &str, name: &str, parents: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  parentRefs: {parents}\n  rules:\n{rules}---\n"
    )
}

fn url(ip: &str, path: &str) -> String {
    format!("http://{ip}{path}")
}

// --- MeshBasic, MeshFrontend, MeshFrontendHostname, MeshPorts, MeshConsumerRoute

fn binding_routes() -> String {
    let v1 = set_response("X-Header-Set", "v1");
    let v2 = set_response("X-Header-Set", "v2");
    let consumer = set_response("X-Header-Set", "consumer");
    let elsewhere = set_response("X-Header-Set", "elsewhere");
    [
        // MeshPorts: port 80 of echo-v1 only.
        route(
            "mesh",
            "echo-v1-port-80",
            "[{group: '', kind: Service, name: echo-v1, port: 80}]",
            &format!("  - filters: {v1}\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"),
        ),
        // MeshPorts (no port: every port) and MeshFrontend / MeshFrontendHostname.
        route(
            "mesh",
            "echo-v2-every-port",
            "[{group: '', kind: Service, name: echo-v2}]",
            &format!("  - filters: {v2}\n    backendRefs: [{{name: echo-v2, port: 80}}]\n"),
        ),
        // MeshConsumerRoute: a consumer route for echo-v1, every port, to a backend in the
        // producer's namespace.
        route(
            "consumer",
            "echo-v1-for-consumers",
            "[{group: '', kind: Service, name: echo-v1, namespace: mesh}]",
            &format!(
                "  - filters: {consumer}\n    backendRefs: [{{name: echo-v1, namespace: mesh, port: 80}}]\n"
            ),
        ),
        // A route of a third namespace, which no client of this test is in: never applies.
        route(
            "elsewhere",
            "echo-v1-elsewhere",
            "[{group: '', kind: Service, name: echo-v1, namespace: mesh}]",
            &format!(
                "  - filters: {elsewhere}\n    backendRefs: [{{name: echo-v2, namespace: mesh, port: 80}}]\n"
            ),
        ),
    ]
    .concat()
}

/// (case, from, URL, Host header, answering version, X-Header-Set): see the table.
type BindingCase<'a> = (
    &'a str,
    &'a Pod,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
);

#[test]
fn routes_bind_the_service_frontend_and_port_they_name_and_consumer_routes_their_namespace() {
    if !features::require("gamma binding", features::CAPTURE) {
        return;
    }
    let m = gamma::start(&[("routes", &binding_routes())]);
    let (c, v) = (&m.client, &m.visitor);
    let v2_pod = format!("http://{}/", m.v2.addr(8080));
    let (v1_80, v1_8080) = (url(ECHO_V1, "/"), url(ECHO_V1, ":8080/"));
    let (v2_80, v2_8080) = (url(ECHO_V2, "/"), url(ECHO_V2, ":8080/"));
    // (case, from, URL, a Host header other than the address's, the version that answers
    // ("": either), the route's X-Header-Set (None: no route applied))
    #[rustfmt::skip]
    let cases: &[BindingCase] = &[
        ("MeshBasic: no route", c, &url(ECHO, "/"), Some("echo"), "", None),
        ("MeshFrontend: the Service", c, &v2_80, None, "echo-v2", Some("v2")),
        // A request straight to a pod IP bypasses the Service's routes.
        ("MeshFrontend: the pod IP", c, &v2_pod, None, "echo-v2", None),
        // The Service IP called decides, not the Host header.
        ("MeshFrontendHostname: another Host", c, &v2_80, Some("echo-v1"), "echo-v2", Some("v2")),
        ("MeshFrontendHostname: the other Service", c, &v1_80, Some("echo-v2"), "echo-v1", Some("v1")),
        ("MeshPorts: the port named", c, &v1_80, None, "echo-v1", Some("v1")),
        ("MeshPorts: another port", c, &v1_8080, None, "echo-v1", None),
        ("MeshPorts: no port, 80", c, &v2_80, None, "echo-v2", Some("v2")),
        ("MeshPorts: no port, 8080", c, &v2_8080, None, "echo-v2", Some("v2")),
        // The consumer's route replaces the producer's, for the consumer's clients only.
        ("MeshConsumerRoute: a consumer", v, &v1_80, Some("echo-v1.mesh"), "echo-v1", Some("consumer")),
        ("MeshConsumerRoute: every port", v, &v1_8080, None, "echo-v1", Some("consumer")),
        ("MeshConsumerRoute: no consumer route", v, &v2_80, None, "echo-v2", Some("v2")),
        ("MeshConsumerRoute: the producer", c, &v1_80, Some("echo-v1.mesh"), "echo-v1", Some("v1")),
    ];
    for (case, from, target, host, server, marker) in cases {
        let host_header = host.map(|h| format!("Host: {h}"));
        let mut args = vec![*target];
        if let Some(h) = &host_header {
            args.extend(["-H", h]);
        }
        let a = fetch(from, &args);
        assert_eq!(a.status, 200, "{case}: {a:?}");
        if server.is_empty() {
            assert!(a.server().starts_with("echo-v"), "{case}: {a:?}");
        } else {
            assert_eq!(a.server(), *server, "{case}: {a:?}");
        }
        assert_eq!(
            a.header("x-header-set").as_deref(),
            *marker,
            "{case}: {a:?}"
        );
        if let Some(h) = host {
            assert_eq!(a.report()["host"], *h, "{case}: the Host arrives as sent");
        }
    }
    // The source pool says which route it used for the consumer.
    let lines = request_lines(&m.a1, |l| {
        l.iter()
            .any(|l| l["route"]["name"] == "consumer/echo-v1-for-consumers")
    });
    let consumer = lines
        .iter()
        .find(|l| l["route"]["name"] == "consumer/echo-v1-for-consumers")
        .expect("checked");
    assert_eq!(consumer["src"]["namespace"], "consumer", "{consumer}");
    assert_eq!(consumer["backend"], "mesh/echo-v1:80", "{consumer}");
    assert!(
        !lines
            .iter()
            .any(|l| l["route"]["name"] == "elsewhere/echo-v1-elsewhere"),
        "a third namespace's route was used: {lines:?}"
    );
}

// --- MeshTrafficSplit, MeshHTTPRouteSimpleSameNamespace, MeshHTTPRouteWeight,
// --- MeshHTTPRouteNamedRule

const SPLIT: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - name: named-rule
    matches: [{path: {type: PathPrefix, value: /named}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /unnamed}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 0}, {name: echo-v2, port: 80, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: gone, port: 80}]
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 70}
    - {name: echo-v2, port: 80, weight: 30}
";

#[test]
fn a_service_splits_by_path_and_by_weight_and_named_rules_route_like_any() {
    if !features::require("gamma split", features::CAPTURE) {
        return;
    }
    let m = gamma::start(&[("route", SPLIT)]);
    let cases = [
        ("/v1", "echo-v1", 0),
        ("/v1/orders", "echo-v1", 0),
        ("/v2", "echo-v2", 1),
        ("/named", "echo-v1", 2),
        ("/unnamed", "echo-v2", 3),
    ];
    for (path, server, _) in cases {
        // Several times each: a split by path, not a draw by weight.
        for _ in 0..3 {
            let a = fetch(&m.client, &[&url(ECHO, path)]);
            assert_eq!(
                (a.status, a.server().as_str()),
                (200, server),
                "{path}: {a:?}"
            );
            assert_eq!(a.report()["path"], path, "{path}: the path arrives as sent");
        }
    }
    for (path, _, rule) in cases {
        let line = request_line(&m.a1, path);
        assert_eq!(line["route"]["name"], "mesh/echo-split", "{line}");
        assert_eq!(line["route"]["rule"], rule, "{path}: {line}");
    }
    // HTTPRouteAllBackendsWeightZero, and a backendRef to a Service that does not exist: 500
    // from the pool, the application never asked.
    for path in ["/zero", "/missing"] {
        let a = fetch(&m.client, &[&url(ECHO, path)]);
        assert_eq!((a.status, a.server().as_str()), (500, ""), "{path}: {a:?}");
    }
    // MeshHTTPRouteWeight: 70/30, 300 requests on one keep-alive connection (the pool draws a
    // backend for each request, not each connection).
    const N: usize = 300;
    let a = fetch(
        &m.client,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{x-server}\\n",
            &url(ECHO, &format!("/weight/[1-{N}]")),
        ],
    );
    let answers: Vec<&str> = a.body.lines().collect();
    assert_eq!(answers.len(), N, "{a:?}");
    let v2 = answers.iter().filter(|l| **l == "200 echo-v2").count();
    let v1 = answers.iter().filter(|l| **l == "200 echo-v1").count();
    assert_eq!(
        v1 + v2,
        N,
        "every request answered by one version: {answers:?}"
    );
    // 30% of 300 is 90, sd 7.9: outside 60..=120 is chance below one in 10^4.
    assert!((60..=120).contains(&v2), "echo-v2 got {v2} of {N}");
}

// --- MeshHTTPRouteMatching, MeshHTTPRouteQueryParamMatching, and the precedence the spec
// --- orders (HTTPRouteMethodMatching, HTTPRouteHeaderMatching, HTTPRouteExactPathMatching,
// --- HTTPRouteMatchingAcrossRoutes in the gateway profile)

const QUERY_IP: &str = "10.96.0.51";
const PRECEDENCE_IP: &str = "10.96.0.52";
const TIES_IP: &str = "10.96.0.53";

const MATCHING: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-matching, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-query-param-matching, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: query, port: 80}]
  rules:
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /path2}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
    - path: {type: PathPrefix, value: /path4}
      headers: [{name: version, value: three}]
      queryParams: [{name: animal, value: kraken}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{queryParams: [{name: animal, value: hydra}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{queryParams: [{name: shade, type: RegularExpression, value: '(dark|light)-[a-z]+'}]}]
    backendRefs: [{name: echo-v2, port: 80}]
";

/// The rules of the precedence frontend, each telling itself by an `x-rule` response header.
fn precedence_routes() -> String {
    let rule = |label: &str, matches: &str| {
        format!(
            "  - matches: [{matches}]\n    filters: {}\n    backendRefs: [{{name: echo-v1, port: 80}}]\n",
            set_response("x-rule", label)
        )
    };
    let rules = [
        rule("post", "{method: POST}"),
        rule(
            "exact-get",
            "{path: {type: Exact, value: /exact}, method: GET}",
        ),
        rule("exact", "{path: {type: Exact, value: /exact}}"),
        rule("prefix-exact", "{path: {type: PathPrefix, value: /exact}}"),
        rule("prefix-a", "{path: {value: /a}}"),
        rule("prefix-ab", "{path: {value: /a/b/}}"),
        rule(
            "regex",
            "{path: {type: RegularExpression, value: '/regex/[0-9]+'}}",
        ),
        rule(
            "hdr-version",
            "{path: {value: /hdr}, headers: [{name: Version, value: two}]}",
        ),
        rule(
            "hdr-build",
            "{path: {value: /hdr}, headers: [{name: X-Build, type: RegularExpression, value: '2\\.[0-9]+'}]}",
        ),
        rule(
            "hdr-both",
            "{path: {value: /hdr}, headers: [{name: version, value: two}, {name: x-build, type: RegularExpression, value: '2\\.[0-9]+'}]}",
        ),
        rule(
            "mh-headers",
            "{path: {value: /mh}, headers: [{name: a, value: '1'}, {name: b, value: '2'}]}",
        ),
        rule("mh-method", "{path: {value: /mh}, method: GET}"),
    ]
    .concat();
    let ties = |name: &str, created: Option<&str>, rules: &[(&str, &str)]| {
        let created = created
            .map(|c| format!(", creationTimestamp: '{c}'"))
            .unwrap_or_default();
        let rules: String = rules
            .iter()
            .map(|(label, path)| rule(label, &format!("{{path: {{value: {path}}}}}")))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: mesh{created}}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: ties}}]\n  rules:\n{rules}---\n"
        )
    };
    [
        route(
            "mesh",
            "precedence",
            "[{kind: Service, name: precedence}]",
            &rules,
        ),
        ties(
            "a-newer",
            Some("2024-01-01T00:00:00Z"),
            &[
                ("a-newer", "/tie"),
                ("a-newer", "/tie3"),
                ("only-a", "/only-a"),
                ("first", "/first"),
                ("second", "/first"),
            ],
        ),
        ties(
            "b-older",
            Some("2020-01-01T00:00:00Z"),
            &[("b-older", "/tie"), ("only-b", "/only-b")],
        ),
        ties(
            "c-untimed",
            None,
            &[
                ("c-untimed", "/tie"),
                ("c-untimed", "/tie2"),
                ("c-untimed", "/tie3"),
            ],
        ),
        ties("d-untimed", None, &[("d-untimed", "/tie2")]),
    ]
    .concat()
}

#[test]
fn requests_match_by_path_header_query_and_method_in_the_specs_precedence() {
    if !features::require("gamma matching", features::CAPTURE) {
        return;
    }
    let services = [
        frontend("query", QUERY_IP),
        frontend("precedence", PRECEDENCE_IP),
        frontend("ties", TIES_IP),
    ]
    .concat();
    let m = gamma::start(&[
        ("frontends", &services),
        ("matching", MATCHING),
        ("precedence", &precedence_routes()),
    ]);
    // (frontend, request path, request headers, the version that answers; "" for 404)
    let q = QUERY_IP;
    #[rustfmt::skip]
    let by_backend: &[(&str, &str, &[&str], &str)] = &[
        // MeshHTTPRouteMatching.
        (ECHO, "/", &[], "echo-v1"),
        (ECHO, "/example", &[], "echo-v1"),
        (ECHO, "/", &["Version: one"], "echo-v1"),
        (ECHO, "/v2", &[], "echo-v2"),
        (ECHO, "/v2/example", &[], "echo-v2"),
        (ECHO, "/", &["Version: two"], "echo-v2"),
        (ECHO, "/v2/", &[], "echo-v2"),
        // Not a path segment prefix, so not /v2.
        (ECHO, "/v2example", &[], "echo-v1"),
        (ECHO, "/foo/v2/example", &[], "echo-v1"),
        // MeshHTTPRouteQueryParamMatching.
        (q, "/?animal=whale", &[], "echo-v1"),
        (q, "/?animal=dolphin", &[], "echo-v2"),
        (q, "/?animal=whale&otherparam=irrelevant", &[], "echo-v1"),
        (q, "/?animal=dolphin&color=yellow", &[], "echo-v2"),
        (q, "/?color=blue", &[], ""),
        (q, "/?animal=dog", &[], ""),
        (q, "/?animal=whaledolphin", &[], ""),
        (q, "/", &[], ""),
        // Names are case-sensitive; the value is decoded before it is compared.
        (q, "/?Animal=whale", &[], ""),
        (q, "/?animal=%77hale", &[], "echo-v1"),
        (q, "/path1?animal=whale", &[], "echo-v1"),
        (q, "/path2?animal=whale", &[], "echo-v2"),
        (q, "/?animal=whale", &["version: one"], "echo-v2"),
        (q, "/path3?animal=shark", &[], "echo-v1"),
        (q, "/path4?animal=kraken", &["version: three"], "echo-v1"),
        (q, "/?animal=shark", &[], ""),
        (q, "/path4?animal=kraken", &[], ""),
        (q, "/path5?animal=hydra", &[], "echo-v1"),
        (q, "/?shade=dark-green", &[], "echo-v2"),
        // A regular expression matches the whole value.
        (q, "/?shade=dark-green-2", &[], ""),
    ];
    for (ip, path, headers, server) in by_backend {
        let a = get(&m.client, "GET", ip, path, headers);
        if server.is_empty() {
            assert_eq!(a.status, 404, "{ip}{path} {headers:?}: {a:?}");
        } else {
            assert_eq!(
                (a.status, a.server().as_str()),
                (200, *server),
                "{ip}{path} {headers:?}: {a:?}"
            );
            assert_eq!(a.report()["path"], *path, "{ip}{path}: arrives as sent");
        }
    }
    // (method, frontend, path, headers, the rule that wins; "" for 404)
    let (p, t) = (PRECEDENCE_IP, TIES_IP);
    #[rustfmt::skip]
    let by_rule: &[(&str, &str, &str, &[&str], &str)] = &[
        ("POST", p, "/", &[], "post"),
        ("GET", p, "/", &[], ""),
        // An Exact path first; a method on top of it next.
        ("GET", p, "/exact", &[], "exact-get"),
        ("DELETE", p, "/exact", &[], "exact"),
        ("POST", p, "/exact", &[], "exact"),
        ("GET", p, "/exact/more", &[], "prefix-exact"),
        ("GET", p, "/exactly", &[], ""),
        // The longest PathPrefix (a trailing `/` in the prefix changes nothing).
        ("GET", p, "/a/b", &[], "prefix-ab"),
        ("GET", p, "/a/b/c", &[], "prefix-ab"),
        ("GET", p, "/a/bc", &[], "prefix-a"),
        ("GET", p, "/regex/123", &[], "regex"),
        ("GET", p, "/regex/12a", &[], ""),
        // Header names case-insensitive, values not; regular expressions whole.
        ("GET", p, "/hdr", &["version: two"], "hdr-version"),
        ("GET", p, "/hdr", &["VERSION: two"], "hdr-version"),
        ("GET", p, "/hdr", &["version: Two"], ""),
        ("GET", p, "/hdr", &["x-build: 2.7"], "hdr-build"),
        ("GET", p, "/hdr", &["x-build: 2.7-rc"], ""),
        // The most header matches.
        ("GET", p, "/hdr", &["Version: two", "X-Build: 2.11"], "hdr-both"),
        // A method match before the number of header matches.
        ("GET", p, "/mh", &["a: 1", "b: 2"], "mh-method"),
        ("POST", p, "/mh", &["a: 1", "b: 2"], "mh-headers"),
        // Across routes: the oldest, then (no creationTimestamp sorts last) by name; in one
        // route, the first rule.
        ("GET", t, "/tie", &[], "b-older"),
        ("GET", t, "/tie2", &[], "c-untimed"),
        ("GET", t, "/tie3", &[], "a-newer"),
        ("GET", t, "/only-a", &[], "only-a"),
        ("GET", t, "/only-b", &[], "only-b"),
        ("GET", t, "/first", &[], "first"),
    ];
    for (method, ip, path, headers, rule) in by_rule {
        let a = get(&m.client, method, ip, path, headers);
        if rule.is_empty() {
            assert_eq!(a.status, 404, "{method} {ip}{path} {headers:?}: {a:?}");
        } else {
            assert_eq!(
                (a.status, a.header("x-rule").unwrap_or_default().as_str()),
                (200, *rule),
                "{method} {ip}{path} {headers:?}: {a:?}"
            );
            assert_eq!(a.report()["method"], *method, "{path}: the method arrives");
        }
    }
    // No rule matched: 404 from the source pool, flagged NR.
    let line = request_line(&m.a1, "/?animal=dog");
    assert_eq!(line["response_code"], 404, "{line}");
    assert_eq!(line["response_flags"], "NR", "{line}");
}

/// A request from `pod` with `method` to `ip` and `path`, with extra header lines.
fn get(pod: &Pod, method: &str, ip: &str, path: &str, headers: &[&str]) -> Answer {
    let target = url(ip, path);
    let mut args = vec!["-X", method, target.as_str()];
    for h in headers {
        args.extend(["-H", h]);
    }
    fetch(pod, &args)
}

// --- MeshHTTPRouteRequestHeaderModifier, MeshHTTPRouteBackendRequestHeaderModifier,
// --- HTTPRouteResponseHeaderModifier

const HEADERS_IP: &str = "10.96.0.60";
const BACKEND_HEADERS_IP: &str = "10.96.0.61";
const RESPONSE_HEADERS_IP: &str = "10.96.0.62";

/// The suite's five header modifiers, by path, as (path, modifier YAML).
const MODIFIERS: [(&str, &str); 5] = [
    (
        "/set",
        "{set: [{name: X-Header-Set, value: set-overwrites-values}]}",
    ),
    (
        "/add",
        "{add: [{name: X-Header-Add, value: add-appends-values}]}",
    ),
    ("/remove", "{remove: [X-Header-Remove]}"),
    (
        "/multiple",
        "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], \
         add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, \
         {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
    ),
    (
        "/case-insensitivity",
        "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], \
         remove: [X-Header-Remove]}",
    ),
];

fn modifier_routes() -> String {
    let rules = |filter: &str, on_backend: bool| -> String {
        MODIFIERS
            .iter()
            .map(|(path, m)| {
                let f = format!("[{{type: {filter}, {}: {m}}}]", lower_first(filter));
                if on_backend {
                    format!(
                        "  - matches: [{{path: {{value: {path}}}}}]\n    backendRefs: [{{name: recorder, port: 80, filters: {f}}}]\n"
                    )
                } else {
                    format!(
                        "  - matches: [{{path: {{value: {path}}}}}]\n    filters: {f}\n    backendRefs: [{{name: recorder, port: 80}}]\n"
                    )
                }
            })
            .collect()
    };
    [
        route(
            "mesh",
            "request-header-modifier",
            "[{kind: Service, name: headers}]",
            &rules("RequestHeaderModifier", false),
        ),
        route(
            "mesh",
            "backend-request-header-modifier",
            "[{kind: Service, name: backend-headers}]",
            &rules("RequestHeaderModifier", true),
        ),
        route(
            "mesh",
            "response-header-modifier",
            "[{kind: Service, name: response-headers}]",
            &rules("ResponseHeaderModifier", false),
        ),
    ]
    .concat()
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// (path, headers sent, headers expected (joined by `,`), headers expected absent): the
/// suite's cases, the same for the request (at the application) and the response (at the
/// client, the application sending the "sent" headers).
type HeaderCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[rustfmt::skip]
const HEADER_CASES: [HeaderCase; 7] = [
    ("/set",
        &[("Some-Other-Header", "val")],
        &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")],
        &[]),
    ("/set",
        &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")],
        &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")],
        &[]),
    ("/add",
        &[("Some-Other-Header", "val")],
        &[("some-other-header", "val"), ("x-header-add", "add-appends-values")],
        &[]),
    ("/add",
        &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")],
        &[("some-other-header", "val"), ("x-header-add", "some-other-value,add-appends-values")],
        &[]),
    ("/remove", &[("X-Header-Remove", "val")], &[], &["x-header-remove"]),
    ("/multiple",
        &[("X-Header-Set-2", "set-val-2"), ("X-Header-Add-2", "add-val-2"),
          ("X-Header-Remove-2", "remove-val-2"), ("Another-Header", "another-header-val")],
        &[("x-header-set-1", "header-set-1"), ("x-header-set-2", "header-set-2"),
          ("x-header-add-1", "header-add-1"), ("x-header-add-2", "add-val-2,header-add-2"),
          ("x-header-add-3", "header-add-3"), ("another-header", "another-header-val")],
        &["x-header-remove-1", "x-header-remove-2"]),
    // The filter names headers canonically, the request in lower case.
    ("/case-insensitivity",
        &[("x-header-set", "original-val-set"), ("x-header-add", "original-val-add"),
          ("x-header-remove", "original-val-remove"), ("Another-Header", "another-header-val")],
        &[("x-header-set", "header-set"), ("x-header-add", "original-val-add,header-add"),
          ("another-header", "another-header-val")],
        &["x-header-remove"]),
];

#[test]
fn header_modifiers_change_what_the_application_and_the_client_see() {
    if !features::require("gamma header modifiers", features::CAPTURE) {
        return;
    }
    let services = [
        frontend("headers", HEADERS_IP),
        frontend("backend-headers", BACKEND_HEADERS_IP),
        frontend("response-headers", RESPONSE_HEADERS_IP),
    ]
    .concat();
    let m = gamma::start(&[("frontends", &services), ("routes", &modifier_routes())]);
    for (level, ip) in [("rule", HEADERS_IP), ("backend", BACKEND_HEADERS_IP)] {
        for (path, sent, want, absent) in HEADER_CASES {
            let lines: Vec<String> = sent.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let a = get(&m.client, "GET", ip, path, &lines);
            assert_eq!((a.status, a.server().as_str()), (200, "recorder"), "{a:?}");
            let got = a.received();
            assert_eq!(got.path, path);
            for (name, value) in want {
                assert_eq!(
                    got.header(name).as_deref(),
                    Some(*value),
                    "{level} {path} {sent:?}: {name} at the application: {got:?}"
                );
            }
            for name in absent {
                assert_eq!(got.header(name), None, "{level} {path}: {name}: {got:?}");
            }
        }
    }
    // Response modifiers: the application sends the case's headers on its response.
    for (path, sent, want, absent) in HEADER_CASES {
        let lines: Vec<String> = sent
            .iter()
            .map(|(n, v)| format!("x-echo-set-header: {n}: {v}"))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let a = get(&m.client, "GET", RESPONSE_HEADERS_IP, path, &lines);
        assert_eq!((a.status, a.server().as_str()), (200, "recorder"), "{a:?}");
        for (name, value) in want {
            assert_eq!(
                a.header(name).as_deref(),
                Some(*value),
                "response {path} {sent:?}: {name} at the client: {a:?}"
            );
        }
        for name in absent {
            assert_eq!(a.header(name), None, "response {path}: {name}: {a:?}");
        }
        // Response filters leave the request alone.
        assert_eq!(a.received().header("x-header-set"), None, "{a:?}");
    }
}

// --- MeshHTTPRouteRewritePath (+ HTTPRouteRewriteHost), HTTPRouteRequestMirror (rule and
// --- backend level, several mirrors); the redirects (MeshHTTPRouteRedirectHostAndStatus,
// --- ...RedirectPath, ...RedirectPort, ...SchemeRedirect, ...303/307/308Redirect)

const REWRITE_IP: &str = "10.96.0.70";
const REDIRECT_IP: &str = "10.96.0.71";
const MIRROR_IP: &str = "10.96.0.72";

const REWRITES: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-rewrite-path, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: rewrite, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /rewrite-host}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]
    backendRefs: [{name: recorder, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /rewrite-host-and-path}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: two.example.org, path: {type: ReplaceFullPath, replaceFullPath: /two}}}]
    backendRefs: [{name: recorder, port: 80}]
";

/// The suite's redirect manifests, as routes on the `redirect` frontend.
fn redirect_route() -> String {
    let rules: Vec<String> = [
        ("/hostname-redirect", "{hostname: example.org}"),
        ("/host-and-status", "{statusCode: 301, hostname: example.org}"),
        ("/host-and-temporary", "{statusCode: 307, hostname: example.org}"),
        ("/host-and-permanent", "{statusCode: 308, hostname: example.org}"),
        ("/host-and-see-other", "{statusCode: 303, hostname: example.org}"),
        ("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        ("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
        ("/path-and-host", "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        ("/path-and-status", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}"),
        ("/full-path-and-host", "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}"),
        ("/full-path-and-status", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}"),
        ("/port", "{port: 8083}"),
        ("/port-and-host", "{hostname: example.org, port: 8083}"),
        ("/port-and-status", "{port: 8083, statusCode: 301}"),
        ("/port-and-host-and-status", "{port: 8083, hostname: example.org, statusCode: 302}"),
        ("/scheme", "{scheme: https}"),
        ("/scheme-and-host", "{hostname: example.org, scheme: https}"),
        ("/scheme-and-status", "{scheme: https, statusCode: 301}"),
        ("/scheme-and-host-and-status", "{scheme: https, statusCode: 302, hostname: example.org}"),
        ("/redirect-303", "{statusCode: 303}"),
        ("/redirect-307", "{statusCode: 307}"),
        ("/redirect-308", "{statusCode: 308}"),
    ]
    .iter()
    .map(|(prefix, r)| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {r}}}]\n"
        )
    })
    .collect();
    // A route has at most 16 rules: two routes, as the suite has several.
    rules
        .chunks(12)
        .enumerate()
        .map(|(i, r)| {
            route(
                "mesh",
                &format!("mesh-redirects-{i}"),
                "[{group: '', kind: Service, name: redirect}]",
                &r.concat(),
            )
        })
        .collect()
}

const MIRRORS: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: request-mirror, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: mirror}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: recorder, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror-and-modify-headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    - {type: RequestMirror, requestMirror: {backendRef: {name: recorder, port: 80}}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /multiple-mirrors}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: recorder, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: recorder-alt, port: 80}}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backend-mirror}}]
    backendRefs:
    - name: echo-v1
      port: 80
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: recorder-alt, port: 80}}}]
";

/// The redirect frontend also listens on 8080: a redirect without a port keeps the port
/// the client called.
const REDIRECT_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: redirect, namespace: mesh}
spec:
  clusterIP: 10.96.0.71
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, targetPort: 8080, appProtocol: http}
";

/// Request headers the suite's combined cases send, and what the application must get.
const MODIFY_SENT: [(&str, &str); 3] = [
    ("X-Header-Remove", "remove-val"),
    ("X-Header-Add-Append", "append-val-1"),
    ("X-Header-Set", "set-val"),
];
const MODIFIED: [(&str, &str); 3] = [
    ("x-header-add", "header-val-1"),
    ("x-header-add-append", "append-val-1,header-val-2"),
    ("x-header-set", "set-overwrites-values"),
];

fn modify_lines() -> Vec<String> {
    MODIFY_SENT
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect()
}

fn assert_modified(got: &gamma::Received, what: &str) {
    for (name, value) in MODIFIED {
        assert_eq!(got.header(name).as_deref(), Some(value), "{what}: {got:?}");
    }
    assert_eq!(got.header("x-header-remove"), None, "{what}: {got:?}");
}

#[test]
fn rewrites_reach_the_application_and_mirrors_get_a_whole_copy() {
    if !features::require("gamma rewrites mirrors", features::CAPTURE) {
        return;
    }
    let services = [
        frontend("rewrite", REWRITE_IP),
        frontend("mirror", MIRROR_IP),
    ]
    .concat();
    let m = gamma::start(&[
        ("frontends", &services),
        ("rewrites", REWRITES),
        ("mirrors", MIRRORS),
    ]);
    // URLRewrite: (path sent, path and Host the application receives, headers modified too).
    #[rustfmt::skip]
    let rewrites: &[(&str, &str, &str, bool)] = &[
        ("/prefix/one/two", "/one/two", "rewrite", false),
        ("/prefix/one/two?a=b", "/one/two?a=b", "rewrite", false),
        ("/strip-prefix/three", "/three", "rewrite", false),
        ("/strip-prefix", "/", "rewrite", false),
        ("/full/one/two", "/one", "rewrite", false),
        ("/full/rewrite-path-and-modify-headers/test", "/test", "rewrite", true),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one", "rewrite", true),
        // HTTPRouteRewriteHost.
        ("/rewrite-host/x", "/rewrite-host/x", "one.example.org", false),
        ("/rewrite-host-and-path/x", "/two", "two.example.org", false),
    ];
    for (sent, path, host, headers) in rewrites {
        let mut lines = vec!["Host: rewrite".to_owned()];
        if *headers {
            lines.extend(modify_lines());
        }
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let a = get(&m.client, "GET", REWRITE_IP, sent, &lines);
        assert_eq!((a.status, a.server().as_str()), (200, "recorder"), "{a:?}");
        let got = a.received();
        assert_eq!(
            (got.path.as_str(), got.header("host").as_deref()),
            (*path, Some(*host)),
            "{sent}: what the application received: {got:?}"
        );
        if *headers {
            assert_modified(&got, sent);
        }
    }
    // The access log has the path the client sent.
    let line = request_line(&m.a1, "/strip-prefix/three");
    assert_eq!(line["route"]["name"], "mesh/mesh-rewrite-path", "{line}");

    // RequestMirror: the client gets the primary's answer, each mirror a copy.
    let (rec, alt) = (&m.recorder, &m.recorder_alt);
    #[rustfmt::skip]
    let mirrored: &[(&str, bool, &[&gamma::Recorder])] = &[
        ("/mirror", false, &[rec]),
        ("/mirror-and-modify-headers", true, &[rec]),
        // HTTPRouteRequestMultipleMirrors, HTTPRouteBackendRequestMirror.
        ("/multiple-mirrors", false, &[rec, alt]),
        ("/backend-mirror", false, &[alt]),
    ];
    for (path, headers, mirrors) in mirrored {
        let lines = if *headers { modify_lines() } else { vec![] };
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let a = get(&m.client, "GET", MIRROR_IP, path, &lines);
        assert_eq!(
            (a.status, a.server().as_str()),
            (200, "echo-v1"),
            "{path}: {a:?}"
        );
        let report = a.report();
        assert_eq!(report["path"], *path, "{a:?}");
        for mirror in *mirrors {
            let copy = mirror.wait_for(path);
            assert_eq!(copy.method, "GET", "{copy:?}");
            if *headers {
                // The copy is the request as filtered, as the primary got it.
                assert_modified(&copy, path);
                assert_eq!(report["headers"]["x-header-set"], "set-overwrites-values");
                assert!(
                    report["headers"].get("x-header-remove").is_none(),
                    "{report}"
                );
            }
        }
    }
    // A request with a body: the copy has it too.
    let a = fetch(
        &m.client,
        &["--data-binary", "the-body", &url(MIRROR_IP, "/mirror/post")],
    );
    assert_eq!((a.status, a.server().as_str()), (200, "echo-v1"), "{a:?}");
    let copy = rec.wait_for("/mirror/post");
    assert_eq!(
        (copy.method.as_str(), copy.body.as_str()),
        ("POST", "the-body"),
        "{copy:?}"
    );
    // Copies go only where a filter says: recorder-alt never got the rule-level ones.
    let paths: Vec<String> = alt.received().into_iter().map(|r| r.path).collect();
    assert!(
        !paths
            .iter()
            .any(|p| p == "/mirror" || p == "/mirror-and-modify-headers"),
        "{paths:?}"
    );
}

#[test]
fn redirects_answer_the_client_with_the_location_and_status_the_filter_says() {
    if !features::require("gamma redirects", features::CAPTURE) {
        return;
    }
    let m = gamma::start(&[
        ("frontend", REDIRECT_SERVICE),
        ("redirects", &redirect_route()),
    ]);
    // (port called, path sent, status, Location)
    #[rustfmt::skip]
    let redirects: &[(u16, &str, u16, &str)] = &[
        // MeshHTTPRouteRedirectHostAndStatus, ...AdditionalRedirectHostAndStatus.
        (80, "/hostname-redirect", 302, "http://example.org/hostname-redirect"),
        (80, "/host-and-status", 301, "http://example.org/host-and-status"),
        (80, "/host-and-temporary", 307, "http://example.org/host-and-temporary"),
        (80, "/host-and-permanent", 308, "http://example.org/host-and-permanent"),
        (80, "/host-and-see-other", 303, "http://example.org/host-and-see-other"),
        // MeshHTTPRouteRedirectPath (the query is kept).
        (80, "/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
        (80, "/original-prefix/lemon?x=1", 302, "http://echo/replacement-prefix/lemon?x=1"),
        (80, "/full/path/original", 302, "http://echo/full-path-replacement"),
        (80, "/path-and-host", 302, "http://example.org/replacement-prefix"),
        (80, "/path-and-status", 301, "http://echo/replacement-prefix"),
        (80, "/full-path-and-host", 302, "http://example.org/replacement-full"),
        (80, "/full-path-and-status", 301, "http://echo/replacement-full"),
        // MeshHTTPRouteRedirectPort.
        (80, "/port", 302, "http://echo:8083/port"),
        (80, "/port-and-host", 302, "http://example.org:8083/port-and-host"),
        (80, "/port-and-status", 301, "http://echo:8083/port-and-status"),
        (80, "/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        // MeshHTTPRouteSchemeRedirect.
        (80, "/scheme", 302, "https://echo/scheme"),
        (80, "/scheme-and-host", 302, "https://example.org/scheme-and-host"),
        (80, "/scheme-and-status", 301, "https://echo/scheme-and-status"),
        (80, "/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
        // MeshHTTPRoute303Redirect, ...307Redirect, ...308Redirect.
        (80, "/redirect-303", 303, "http://echo/redirect-303"),
        (80, "/redirect-307", 307, "http://echo/redirect-307"),
        (80, "/redirect-308", 308, "http://echo/redirect-308"),
        // No port in the filter: the Service port the client called...
        (8080, "/hostname-redirect", 302, "http://example.org:8080/hostname-redirect"),
        // ...unless the scheme changes: then that scheme's well-known port.
        (8080, "/scheme", 302, "https://echo/scheme"),
    ];
    for (port, path, status, location) in redirects {
        let target = format!("http://{REDIRECT_IP}:{port}{path}");
        let host = match port {
            80 => "Host: echo".to_owned(),
            p => format!("Host: echo:{p}"),
        };
        let a = fetch(&m.client, &[&target, "-H", &host]);
        assert_eq!(
            (a.status, a.header("location").as_deref()),
            (*status, Some(*location)),
            ":{port}{path}: {a:?}"
        );
        assert_eq!(
            a.server(),
            "",
            "the pool's answer, not the application's: {a:?}"
        );
    }
    let line = request_line(&m.a1, "/port-and-status");
    assert_eq!(line["response_code"], 301, "{line}");
    assert_eq!(line["route"]["name"], "mesh/mesh-redirects-1", "{line}");
}

// --- HTTPRouteTimeoutRequest, HTTPRouteTimeoutBackendRequest, HTTPRouteRetry (gateway
// --- profile, through a Service frontend)

const TIMEOUTS_IP: &str = "10.96.0.80";
const RETRIES_IP: &str = "10.96.0.81";

const TIMEOUTS_AND_RETRIES: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: timeouts, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: timeouts}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /request-timeout}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backend-timeout}}]
    timeouts: {backendRequest: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /both}}]
    timeouts: {request: 10s, backendRequest: 300ms}
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retries, namespace: mesh}
spec:
  parentRefs: [{kind: Service, name: retries}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /retry/code-500-attempts-3}}]
    retry: {codes: [500], attempts: 3}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-2}}]
    retry: {codes: [500, 502, 503, 504], attempts: 2}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-0}}]
    retry: {codes: [500, 502, 503, 504], attempts: 0}
    backendRefs: [{name: echo-v1, port: 80}]
";

#[test]
fn timeouts_cut_slow_requests_with_504_and_retries_follow_codes_and_attempts() {
    if !features::require("gamma timeouts retries", features::CAPTURE) {
        return;
    }
    let services = [
        frontend("timeouts", TIMEOUTS_IP),
        frontend("retries", RETRIES_IP),
    ]
    .concat();
    let m = gamma::start(&[("frontends", &services), ("routes", TIMEOUTS_AND_RETRIES)]);
    // (path, status; for a 504, the backend's delay it did not wait for)
    let timeouts: &[(&str, u16)] = &[
        ("/request-timeout", 200),
        ("/request-timeout/delay/3000", 504),
        ("/backend-timeout", 200),
        ("/backend-timeout/delay/3000", 504),
        // backendRequest cuts each try long before the request's own 10 s.
        ("/both/delay/3000", 504),
        ("/both/delay/50", 200),
    ];
    for (path, status) in timeouts {
        let started = Instant::now();
        let a = fetch(&m.client, &[&url(TIMEOUTS_IP, path)]);
        assert_eq!(a.status, *status, "{path}: {a:?}");
        if *status == 504 {
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "{path}: the timeout did not cut the request ({:?})",
                started.elapsed()
            );
            let line = request_line(&m.a1, path);
            assert_eq!(line["response_flags"], "UT", "{line}");
        } else {
            assert_eq!(a.server(), "echo-v1", "{a:?}");
        }
    }
    // HTTPRouteRetry: (path, status the backend fails with, how many times, what the client
    // gets, retries made). `attempts` counts retries after the first try. At most 9 retries
    // in all, below the worker's retry budget's floor of 10 a second.
    let retries: &[(&str, u16, u32, u16, u64)] = &[
        ("/retry/code-500-attempts-3/a", 500, 3, 200, 3),
        ("/retry/code-500-attempts-3/b", 500, 4, 500, 3),
        ("/retry/code-500-attempts-3/c", 503, 2, 503, 0),
        ("/retry/code-all-attempts-2/a", 502, 1, 200, 1),
        ("/retry/code-all-attempts-2/b", 504, 3, 504, 2),
        ("/retry/code-all-attempts-0/a", 500, 1, 500, 0),
    ];
    for (path, fail, times, status, _) in retries {
        let a = fetch(
            &m.client,
            &[
                &url(RETRIES_IP, path),
                "-H",
                &format!("x-fail-key: {path}"),
                "-H",
                &format!("x-fail-times: {times}"),
                "-H",
                &format!("x-fail-status: {fail}"),
            ],
        );
        assert_eq!(a.status, *status, "{path}: {a:?}");
        assert_eq!(a.server(), "echo-v1", "the backend's own answer: {a:?}");
    }
    for (path, _, _, status, retried) in retries {
        let line = request_line(&m.a1, path);
        assert_eq!(line["retries"], *retried, "{path}: {line}");
        let flags = line["response_flags"].as_str().unwrap_or_default();
        let exhausted = *status != 200 && *retried > 0;
        assert_eq!(flags.contains("URX"), exhausted, "{path}: {line}");
    }
}
