//! Route selection, one test per Gateway API mesh conformance case that is pure (the suite's
//! manifests restated in our words; names after the behaviour).

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::source::objects::route_parts::state_of;

const NS: &str = "mesh";

/// Services echo, echo-v1, echo-v2, echo-v3 in `mesh`, ports 80 and 8080.
fn services() -> String {
    ["echo", "echo-v1", "echo-v2", "echo-v3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                 spec: {{clusterIP: 10.96.0.{}, ports: [{{port: 80, targetPort: 8080}}, {{port: 8080, targetPort: 8080, name: alt}}]}}\n---\n",
                i + 10
            )
        })
        .collect()
}

fn route_doc(name: &str, ns: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  parentRefs: [{parent}]\n  rules:\n{rules}---\n"
    )
}

fn svc(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: NS.into(),
        name: name.into(),
    }
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("test request").into_parts().0
}

/// The first backend of the rule a GET with these headers to `echo:80` from `mesh` selects.
fn backend_of(state: &State, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    let routes = routes_for(state, NS, &svc("echo"), 80);
    let routed = select(&routes, &req("GET", uri, headers))?;
    Some(routed.rule.backends.first()?.service.name.clone())
}

/// (request URI, headers, expected backend).
type Case<'a, B> = (&'a str, &'a [(&'a str, &'a str)], B);

const PARENT: &str = "{group: \"\", kind: Service, name: echo, port: 80}";

#[test]
fn path_prefix_is_segment_wise_and_a_header_match_picks_its_rule() {
    // MeshHTTPRouteMatching: rule 1 `/` or `version: one` → v1; rule 2 `/v2` or `version: two`.
    let rules = "  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n";
    let state = state_of(&(services() + &route_doc("matching", NS, PARENT, rules)));
    let cases: &[Case<&str>] = &[
        ("/", &[], "echo-v1"),
        ("/example", &[], "echo-v1"),
        ("/", &[("Version", "one")], "echo-v1"),
        ("/v2", &[], "echo-v2"),
        ("/v2/example", &[], "echo-v2"),
        ("/", &[("Version", "two")], "echo-v2"),
        ("/v2/", &[], "echo-v2"),
        ("/v2example", &[], "echo-v1"),
        ("/foo/v2/example", &[], "echo-v1"),
    ];
    for (uri, headers, want) in cases {
        assert_eq!(
            backend_of(&state, uri, headers).as_deref(),
            Some(*want),
            "{uri} {headers:?}"
        );
    }
}

#[test]
fn exact_paths_split_one_frontend_between_versions() {
    // MeshTrafficSplit: /v1 → echo-v1, /v2 → echo-v2, anything else no rule (404).
    let rules = "  - matches: [{path: {type: Exact, value: /v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n";
    let parent = "{group: \"\", kind: Service, name: echo}";
    let state = state_of(&(services() + &route_doc("split", NS, parent, rules)));
    assert_eq!(backend_of(&state, "/v1", &[]).as_deref(), Some("echo-v1"));
    assert_eq!(backend_of(&state, "/v2", &[]).as_deref(), Some("echo-v2"));
    assert_eq!(backend_of(&state, "/v1/", &[]), None, "Exact is exact");
    assert_eq!(backend_of(&state, "/v3", &[]), None);
}

#[test]
fn query_params_match_and_combine_with_paths_and_headers_by_precedence() {
    // MeshHTTPRouteQueryParamMatching.
    let rules = "  - matches: [{queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path5}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{queryParams: [{name: animal, value: hydra}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n";
    let state = state_of(&(services() + &route_doc("query", NS, PARENT, rules)));
    let cases: &[Case<Option<&str>>] = &[
        ("/?animal=whale", &[], Some("echo-v1")),
        ("/?animal=dolphin", &[], Some("echo-v2")),
        ("/?animal=whale&otherparam=irrelevant", &[], Some("echo-v1")),
        ("/?animal=dolphin&color=yellow", &[], Some("echo-v2")),
        ("/?color=blue", &[], None),
        ("/?animal=dog", &[], None),
        ("/?animal=whaledolphin", &[], None),
        ("/", &[], None),
        ("/path1?animal=whale", &[], Some("echo-v1")),
        ("/?animal=whale", &[("version", "one")], Some("echo-v2")),
        ("/path3?animal=shark", &[], Some("echo-v1")),
        (
            "/path4?animal=kraken",
            &[("version", "three")],
            Some("echo-v1"),
        ),
        ("/?animal=shark", &[], None),
        ("/path4?animal=kraken", &[], None),
        // A longer PathPrefix beats a query match.
        ("/path5?animal=hydra", &[], Some("echo-v1")),
    ];
    for (uri, headers, want) in cases {
        assert_eq!(
            backend_of(&state, uri, headers).as_deref(),
            *want,
            "{uri} {headers:?}"
        );
    }
}

#[test]
fn weights_split_traffic_within_tolerance_and_weight_zero_gets_none() {
    // MeshHTTPRouteWeight: 70 / 30 / 0.
    let rules = "  - backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}, {name: echo-v3, port: 80, weight: 0}]\n";
    let state = state_of(&(services() + &route_doc("weight", NS, PARENT, rules)));
    let routes = routes_for(&state, NS, &svc("echo"), 80);
    let rule = select(&routes, &req("GET", "/", &[])).expect("a rule").rule;
    let mut rng = StdRng::seed_from_u64(11);
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    let rolls = 10_000;
    for _ in 0..rolls {
        let b = pick_backend(rule, rng.gen()).expect("a backend");
        *counts.entry(b.service.name.clone()).or_default() += 1;
    }
    let share = |n: &str| f64::from(counts.get(n).copied().unwrap_or(0)) / f64::from(rolls);
    assert!((share("echo-v1") - 0.7).abs() < 0.05, "{counts:?}");
    assert!((share("echo-v2") - 0.3).abs() < 0.05, "{counts:?}");
    assert_eq!(share("echo-v3"), 0.0, "{counts:?}");
    // The extremes of the roll land on the first and the last weighted backend.
    assert_eq!(pick_backend(rule, 0).unwrap().service.name, "echo-v1");
    assert_eq!(
        pick_backend(rule, u32::MAX).unwrap().service.name,
        "echo-v2"
    );
}

#[test]
fn every_backend_at_weight_zero_or_none_at_all_leaves_nothing_to_pick() {
    // HTTPRouteAllBackendsWeightZero: the route is accepted and every request gets 500.
    let rules = "  - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: echo-v1, port: 80, weight: 0}, {name: echo-v2, port: 80, weight: 0}]\n  - matches: [{path: {value: /none}}]\n";
    let state = state_of(&(services() + &route_doc("zero", NS, PARENT, rules)));
    let routes = routes_for(&state, NS, &svc("echo"), 80);
    for path in ["/zero", "/none"] {
        let rule = select(&routes, &req("GET", path, &[]))
            .expect("a rule")
            .rule;
        assert!(pick_backend(rule, 12345).is_none(), "{path}");
    }
}

#[test]
fn a_parent_port_narrows_the_route_to_that_port() {
    // MeshPorts: the route for echo-v1 names port 80; the one for echo-v2 no port.
    let v1 = route_doc(
        "v1",
        NS,
        "{group: \"\", kind: Service, name: echo-v1, port: 80}",
        "  - backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let v2 = route_doc(
        "v2",
        NS,
        "{group: \"\", kind: Service, name: echo-v2}",
        "  - backendRefs: [{name: echo-v2, port: 80}]\n",
    );
    let state = state_of(&(services() + &v1 + &v2));
    assert_eq!(routes_for(&state, NS, &svc("echo-v1"), 80).len(), 1);
    assert!(routes_for(&state, NS, &svc("echo-v1"), 8080).is_empty());
    assert!(!has_routes(&state, &svc("echo-v1"), 8080));
    assert!(has_routes(&state, &svc("echo-v1"), 80));
    for port in [80, 8080] {
        assert_eq!(
            routes_for(&state, NS, &svc("echo-v2"), port).len(),
            1,
            "{port}"
        );
        assert!(has_routes(&state, &svc("echo-v2"), port));
    }
}

#[test]
fn routes_bind_only_the_frontend_they_name() {
    // MeshFrontend: a route for echo-v2 does nothing to echo-v1 (and a pod IP is not a
    // frontend: it resolves to no Service, so no route is looked up).
    let v2 = route_doc(
        "frontend",
        NS,
        "{group: \"\", kind: Service, name: echo-v2}",
        "  - backendRefs: [{name: echo-v2, port: 80}]\n",
    );
    let state = state_of(&(services() + &v2));
    assert_eq!(routes_for(&state, NS, &svc("echo-v2"), 80).len(), 1);
    assert!(routes_for(&state, NS, &svc("echo-v1"), 80).is_empty());
    assert!(!has_routes(&state, &svc("echo"), 80));
    assert!(state
        .resolve_service("10.1.2.3:8080".parse().unwrap())
        .is_none());
}

#[test]
fn a_consumer_route_applies_only_to_clients_of_its_namespace_and_wins_there() {
    // MeshConsumerRoute, plus a producer route and an unrelated namespace's route.
    let parent = "{group: \"\", kind: Service, name: echo-v1, namespace: mesh}";
    let consumer = route_doc(
        "consumer",
        "mesh-consumer",
        parent,
        "  - backendRefs: [{name: echo-v2, namespace: mesh, port: 80}]\n",
    );
    let producer = route_doc(
        "producer",
        NS,
        "{group: \"\", kind: Service, name: echo-v1}",
        "  - backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let stranger = route_doc(
        "stranger",
        "elsewhere",
        parent,
        "  - backendRefs: [{name: echo-v3, namespace: mesh, port: 80}]\n",
    );
    let state = state_of(&(services() + &consumer + &producer + &stranger));
    let names = |client: &str| -> Vec<String> {
        routes_for(&state, client, &svc("echo-v1"), 80)
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect()
    };
    assert_eq!(names("mesh-consumer"), ["mesh-consumer/consumer"]);
    assert_eq!(names("mesh"), ["mesh/producer"]);
    assert_eq!(names("third"), ["mesh/producer"]);
    assert_eq!(names("elsewhere"), ["elsewhere/stranger"]);
    // Without the producer route, a client of another namespace gets no route at all.
    let state = state_of(&(services() + &consumer));
    assert!(routes_for(&state, "third", &svc("echo-v1"), 80).is_empty());
    assert!(!has_routes_for(&state, "third", &svc("echo-v1"), 80));
    assert!(has_routes_for(&state, "mesh-consumer", &svc("echo-v1"), 80));
    assert!(has_routes(&state, &svc("echo-v1"), 80));
}

#[test]
fn precedence_is_exact_then_longest_prefix_then_regex_then_method_headers_query() {
    let rules = "  - matches: [{path: {type: RegularExpression, value: \"/api/.*\"}}]\n    backendRefs: [{name: echo-v3, port: 80}]\n  - matches: [{path: {value: /api}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - matches: [{path: {value: /api/v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /api/v1/exact}}]\n    backendRefs: [{name: echo, port: 80}]\n";
    let state = state_of(&(services() + &route_doc("paths", NS, PARENT, rules)));
    assert_eq!(
        backend_of(&state, "/api/v1/exact", &[]).as_deref(),
        Some("echo")
    );
    assert_eq!(
        backend_of(&state, "/api/v1/x", &[]).as_deref(),
        Some("echo-v1")
    );
    assert_eq!(
        backend_of(&state, "/api/v2", &[]).as_deref(),
        Some("echo-v2")
    );
    assert_eq!(backend_of(&state, "/apix", &[]), None, "not a segment");

    // Same path: a method match beats headers, which beat query parameters; more headers win.
    let rules = "  - matches: [{queryParams: [{name: a, value: \"1\"}], headers: [{name: x, value: \"1\"}]}]\n    backendRefs: [{name: echo-v3, port: 80}]\n  - matches: [{headers: [{name: x, value: \"1\"}, {name: y, value: \"1\"}]}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - matches: [{method: POST}]\n    backendRefs: [{name: echo-v1, port: 80}]\n";
    let state = state_of(&(services() + &route_doc("ties", NS, PARENT, rules)));
    let pick = |method: &str, uri: &str, h: &[(&str, &str)]| {
        let routes = routes_for(&state, NS, &svc("echo"), 80);
        select(&routes, &req(method, uri, h)).map(|r| r.rule.backends[0].service.name.clone())
    };
    let both = [("x", "1"), ("y", "1")];
    assert_eq!(pick("POST", "/?a=1", &both).as_deref(), Some("echo-v1"));
    assert_eq!(pick("GET", "/?a=1", &both).as_deref(), Some("echo-v2"));
    assert_eq!(
        pick("GET", "/?a=1", &[("x", "1")]).as_deref(),
        Some("echo-v3")
    );
    assert_eq!(pick("GET", "/", &[("x", "1")]), None);
}

#[test]
fn ties_go_to_the_oldest_route_then_by_name_then_to_the_first_rule() {
    let doc = |name: &str, created: Option<&str>, backend: &str| {
        let meta = match created {
            Some(t) => format!("{{name: {name}, namespace: {NS}, creationTimestamp: \"{t}\"}}"),
            None => format!("{{name: {name}, namespace: {NS}}}"),
        };
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {meta}\n\
             spec: {{parentRefs: [{PARENT}], rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}, {{backendRefs: [{{name: echo, port: 80}}]}}]}}\n---\n"
        )
    };
    let older = doc("b-older", Some("2024-01-01T00:00:00Z"), "echo-v1");
    let newer = doc("a-newer", Some("2025-01-01T00:00:00Z"), "echo-v2");
    let undated = doc("0-undated", None, "echo-v3");
    let state = state_of(&(services() + &older + &newer + &undated));
    assert_eq!(backend_of(&state, "/", &[]).as_deref(), Some("echo-v1"));
    let order: Vec<&str> = routes_for(&state, NS, &svc("echo"), 80)
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(order, ["b-older", "a-newer", "0-undated"]);
    // Same age: alphabetical by namespace/name; within the route, the first rule.
    let a = doc("a", Some("2024-01-01T00:00:00Z"), "echo-v2");
    let b = doc("b", Some("2024-01-01T00:00:00Z"), "echo-v1");
    let state = state_of(&(services() + &b + &a));
    let routes = routes_for(&state, NS, &svc("echo"), 80);
    let routed = select(&routes, &req("GET", "/", &[])).unwrap();
    assert_eq!((routed.route.name.as_str(), routed.rule_index), ("a", 0));
}

#[test]
fn header_names_match_in_any_case_and_regexes_match_the_whole_value() {
    let rules = "  - matches: [{headers: [{name: X-Client, value: iphone}]}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - matches: [{headers: [{type: RegularExpression, name: x-version, value: \"v[0-9]+\"}]}]\n    backendRefs: [{name: echo-v3, port: 80}]\n  - matches: [{path: {type: RegularExpression, value: \"/items/[0-9]+\"}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n";
    let state = state_of(&(services() + &route_doc("headers", NS, PARENT, rules)));
    assert_eq!(
        backend_of(&state, "/", &[("x-client", "iphone")]).as_deref(),
        Some("echo-v2")
    );
    assert_eq!(
        backend_of(&state, "/", &[("X-CLIENT", "iphone")]).as_deref(),
        Some("echo-v2")
    );
    assert_eq!(
        backend_of(&state, "/", &[("x-client", "IPHONE")]),
        None,
        "values are exact"
    );
    assert_eq!(
        backend_of(&state, "/", &[("x-version", "v12")]).as_deref(),
        Some("echo-v3")
    );
    assert_eq!(
        backend_of(&state, "/", &[("x-version", "v12-beta")]),
        None,
        "whole value"
    );
    assert_eq!(
        backend_of(&state, "/items/42", &[]).as_deref(),
        Some("echo-v1")
    );
    assert_eq!(backend_of(&state, "/items/42/x", &[]), None, "whole path");
}

#[test]
fn grpc_routes_match_service_and_method_and_take_the_frontend_from_http_routes() {
    let http = route_doc(
        "http",
        NS,
        PARENT,
        "  - backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let grpc = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: grpc, namespace: {NS}}}\n\
         spec:\n  parentRefs: [{PARENT}]\n  rules:\n\
         \x20 - matches: [{{method: {{service: shop.Orders, method: Get}}}}]\n    backendRefs: [{{name: echo-v2, port: 80}}]\n\
         \x20 - matches: [{{method: {{service: shop.Orders}}}}]\n    backendRefs: [{{name: echo-v3, port: 80}}]\n\
         \x20 - matches: [{{method: {{type: RegularExpression, service: \"shop\\\\..*\"}}, headers: [{{name: x-beta, value: \"1\"}}]}}]\n    backendRefs: [{{name: echo, port: 80}}]\n---\n"
    );
    let state = state_of(&(services() + &http + &grpc));
    let routes = routes_for(&state, NS, &svc("echo"), 80);
    assert_eq!(routes.len(), 1, "the GRPCRoute wins the frontend");
    let pick = |path: &str, h: &[(&str, &str)]| {
        select(&routes, &req("POST", path, h)).map(|r| r.rule.backends[0].service.name.clone())
    };
    assert_eq!(pick("/shop.Orders/Get", &[]).as_deref(), Some("echo-v2"));
    assert_eq!(pick("/shop.Orders/List", &[]).as_deref(), Some("echo-v3"));
    assert_eq!(
        pick("/shop.Carts/List", &[("x-beta", "1")]).as_deref(),
        Some("echo")
    );
    assert_eq!(pick("/shop.Carts/List", &[]), None);
    assert_eq!(pick("/other.Orders/Get/extra", &[]), None);
}

#[test]
fn a_backend_without_its_service_or_port_keeps_its_share_marked_unresolved() {
    let rules = "  - backendRefs: [{name: echo-v1, port: 80, weight: 50}, {name: missing, port: 80, weight: 50}, {name: echo-v2, port: 9999, weight: 0}]\n";
    let doc = route_doc("partial", NS, PARENT, rules);
    let state = state_of(&(services() + &doc));
    let routes = routes_for(&state, NS, &svc("echo"), 80);
    let rule = select(&routes, &req("GET", "/", &[])).unwrap().rule;
    assert!(rule.backends[0].is_resolved());
    let why = rule.backends[1].unresolved.as_deref().expect("marked");
    assert!(why.contains("mesh/missing"), "{why}");
    let why = rule.backends[2].unresolved.as_deref().expect("marked");
    assert!(why.contains("no port 9999"), "{why}");
    // Half the rolls land on the missing backend: its share (500), not a re-spread.
    let missing = (0..1000u32)
        .map(|i| pick_backend(rule, i.wrapping_mul(4_294_967)))
        .filter(|b| b.is_some_and(|b| !b.is_resolved()))
        .count();
    assert!((400..600).contains(&missing), "{missing}");
    // The Service appears: the same route resolves.
    let missing_svc = "apiVersion: v1\nkind: Service\nmetadata: {name: missing, namespace: mesh}\nspec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}\n---\n";
    let state = state_of(&(services() + missing_svc + &doc));
    let route = &state.routes[&(NS.to_string(), "partial".to_string())];
    assert!(route.rules[0].backends[1].is_resolved());
}

#[test]
fn routes_survive_the_json_snapshot_to_workers_with_their_regexes() {
    let rules = "  - matches: [{path: {type: RegularExpression, value: \"/a+\"}, headers: [{type: RegularExpression, name: x, value: \"b+\"}]}]\n    backendRefs: [{name: echo-v1, port: 80}]\n";
    let state = state_of(&(services() + &route_doc("re", NS, PARENT, rules)));
    let json = serde_json::to_string(&state).expect("serialize");
    let mut back: State = serde_json::from_str(&json).expect("deserialize");
    back.reindex();
    assert_eq!(back.routes, state.routes);
    assert_eq!(
        backend_of(&back, "/aaa", &[("x", "bbb")]).as_deref(),
        Some("echo-v1")
    );
    assert_eq!(backend_of(&back, "/aab", &[("x", "bbb")]), None);
}

#[test]
fn the_shipped_routing_example_sends_iphones_to_v2_and_splits_the_rest_90_10() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/routing");
    let loaded = crate::source::load_dir(&dir);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let state = loaded.state;
    let orders = ServiceKey {
        namespace: "shop".into(),
        name: "orders".into(),
    };
    let routes = routes_for(&state, "web", &orders, 80);
    assert_eq!(
        routes.len(),
        1,
        "a producer route applies to clients of any namespace"
    );
    let iphone = select(&routes, &req("GET", "/cart", &[("x-client", "iphone")])).unwrap();
    let b = pick_backend(iphone.rule, 7).unwrap();
    assert_eq!(
        (b.service.name.as_str(), b.is_resolved()),
        ("orders-v2", true)
    );
    let other = select(&routes, &req("GET", "/cart", &[("x-client", "android")])).unwrap();
    assert_eq!(other.rule_index, 1);
    let v2 = (0..10_000u32)
        .filter(|i| {
            pick_backend(other.rule, i.wrapping_mul(429_497))
                .unwrap()
                .service
                .name
                == "orders-v2"
        })
        .count();
    assert!((800..1200).contains(&v2), "{v2} of 10000 to orders-v2");
    let t = other.rule.timeouts;
    assert_eq!(t.request, Some(std::time::Duration::from_secs(10)));
    assert_eq!(other.rule.retry.as_ref().unwrap().codes, [502, 503]);
}

#[test]
fn an_http_route_and_a_grpc_route_may_share_a_name() {
    let http = route_doc(
        "same",
        NS,
        PARENT,
        "  - backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let grpc = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: same, namespace: {NS}}}\n\
         spec: {{parentRefs: [{{kind: Service, name: echo-v2}}], rules: [{{backendRefs: [{{name: echo-v2, port: 80}}]}}]}}\n"
    );
    let state = state_of(&(services() + &http + &grpc));
    assert_eq!(state.routes.len(), 2);
    let json = serde_json::to_string(&state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back.routes.len(), 2, "both survive the worker snapshot");
    assert_eq!(
        routes_for(&back, NS, &svc("echo-v2"), 80)[0].kind,
        RouteKind::Grpc
    );
    assert_eq!(
        routes_for(&back, NS, &svc("echo"), 80)[0].kind,
        RouteKind::Http
    );
}

#[test]
fn route_status_says_accepted_and_resolved_refs_with_the_specs_reasons() {
    let good = route_doc(
        "good",
        NS,
        PARENT,
        "  - backendRefs: [{name: echo-v1, port: 80}]\n",
    );
    let bad = route_doc(
        "bad",
        NS,
        "{kind: Service, name: nowhere}",
        "  - backendRefs: [{name: echo-v1, port: 80}, {name: ghost, port: 80}]\n",
    );
    let kind = route_doc(
        "kind",
        NS,
        "{kind: Service, name: echo, port: 9}",
        "  - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n",
    );
    let state = state_of(&(services() + &good + &bad + &kind));
    let status =
        |name: &str| state.route_status(&state.routes[&(NS.to_string(), name.to_string())]);
    let s = status("good");
    assert!(s.accepted.is_ok() && s.resolved_refs.is_ok(), "{s:?}");
    let s = status("bad");
    assert_eq!(s.accepted.unwrap_err().0, "NoMatchingParent");
    let (reason, message) = s.resolved_refs.unwrap_err();
    assert_eq!(reason, "BackendNotFound");
    assert!(message.contains("mesh/ghost"), "{message}");
    let s = status("kind");
    assert!(s.accepted.unwrap_err().1.contains("no port 9"));
    assert_eq!(s.resolved_refs.unwrap_err().0, "InvalidKind");
}

#[test]
fn a_backend_in_another_namespace_takes_its_share_only_while_a_grant_permits_it() {
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: billing, namespace: payments}\nspec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}\n---\n";
    let rules = "  - backendRefs: [{name: echo-v1, port: 80}, {name: billing, namespace: payments, port: 80}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: billing, namespace: payments, port: 80}}}]\n";
    let doc = route_doc("cross", NS, PARENT, rules);
    let grant = |kind: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
             metadata: {{name: g, namespace: payments}}\n\
             spec: {{from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: {NS}}}], to: [{{group: '', kind: Service}}]}}\n---\n"
        )
    };
    let billing = |state: &State| {
        let rule = &state.routes[&(NS.to_string(), "cross".to_string())].rules[0];
        let crate::state::routes::Filter::RequestMirror(m) = &rule.filters[0] else {
            panic!("a mirror")
        };
        (rule.backends[1].unresolved.clone(), m.backend.is_resolved())
    };
    let state = state_of(&(services() + other + &doc));
    let (why, mirrored) = billing(&state);
    let why = why.expect("not permitted without a grant");
    assert!(
        why.starts_with("RefNotPermitted:") && why.contains("payments/billing"),
        "{why}"
    );
    assert!(!mirrored, "a mirror to it is not permitted either");
    let route = &state.routes[&(NS.to_string(), "cross".to_string())];
    assert_eq!(
        state.route_status(route).resolved_refs.unwrap_err().0,
        "RefNotPermitted"
    );
    // Its share answers 500 (the caller sees `unresolved`); the rest goes to echo-v1.
    let rule = &route.rules[0];
    let refused = (0..1000u32)
        .map(|i| pick_backend(rule, i.wrapping_mul(4_294_967)))
        .filter(|b| b.is_some_and(|b| !b.is_resolved()))
        .count();
    assert!((400..600).contains(&refused), "{refused}");
    // A grant for GRPCRoutes does not cover an HTTPRoute; one for HTTPRoutes does.
    let state = state_of(&(services() + other + &grant("GRPCRoute") + &doc));
    assert!(billing(&state).0.is_some());
    let state = state_of(&(services() + other + &grant("HTTPRoute") + &doc));
    assert_eq!(billing(&state), (None, true));
    // A backend the grant permits but that does not exist is not found, as any other.
    let state = state_of(&(services() + &grant("HTTPRoute") + &doc));
    assert!(billing(&state)
        .0
        .is_some_and(|w| w.starts_with("BackendNotFound")));
}
