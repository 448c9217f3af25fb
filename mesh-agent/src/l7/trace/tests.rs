use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SHORT: &str = "a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const PARENT: &str = "05e3ac9a4f6e3b90";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("header value"));
    }
    h
}

fn onward(span: &Span) -> HeaderMap {
    let mut out = HeaderMap::new();
    span.inject(&mut out);
    out
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().expect("ascii"))
}

/// One propagation case: the request's trace headers, the sampling rate, and what goes onward
/// (`{trace}`, `{span}` stand for the span's ids, `{trace16}` for a 64-bit trace id).
struct Case {
    what: &'static str,
    incoming: Vec<(&'static str, String)>,
    percent: f64,
    /// The caller's span the new one continues; None: a new trace.
    parent: Option<&'static str>,
    trace: Option<&'static str>,
    sampled: bool,
    out: Vec<(&'static str, &'static str)>,
}

fn check(c: &Case) {
    let pairs: Vec<(&'static str, &str)> =
        c.incoming.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let span = Span::start(
        &headers(&pairs),
        SpanKind::Client,
        c.percent,
        SystemTime::now(),
    );
    let what = c.what;
    assert_eq!(
        span.parent.map(|p| p.to_string()).as_deref(),
        c.parent,
        "{what}: parent"
    );
    if let Some(t) = c.trace {
        assert_eq!(span.trace_id_hex(), format!("{t:0>32}"), "{what}: trace id");
    }
    assert_ne!(
        Some(span.span_id_hex().as_str()),
        c.parent,
        "{what}: a new span id"
    );
    assert_eq!(span.sampled, c.sampled, "{what}: sampled");
    let out = onward(&span);
    let expand = |v: &str| {
        v.replace("{trace}", &span.trace_id_hex())
            .replace("{trace16}", &span.trace_id_hex()[16..])
            .replace("{span}", &span.span_id_hex())
    };
    for (name, want) in &c.out {
        assert_eq!(
            get(&out, name),
            Some(expand(want).as_str()),
            "{what}: {name}"
        );
    }
    assert_eq!(
        out.len(),
        c.out.len(),
        "{what}: exactly these headers onward: {out:?}"
    );
}

fn case(what: &'static str, incoming: &[(&'static str, String)]) -> Case {
    Case {
        what,
        incoming: incoming.to_vec(),
        percent: 100.0,
        parent: None,
        trace: None,
        sampled: true,
        out: vec![("traceparent", "00-{trace}-{span}-01")],
    }
}

#[test]
fn w3c_continues_the_trace_with_a_new_span() {
    let tp = |flags: &str| ("traceparent", format!("00-{TRACE}-{SPAN}-{flags}"));
    for c in [
        Case {
            parent: Some(SPAN),
            trace: Some(TRACE),
            ..case("sampled", &[tp("01")])
        },
        Case {
            parent: Some(SPAN),
            trace: Some(TRACE),
            sampled: false,
            out: vec![("traceparent", "00-{trace}-{span}-00")],
            ..case("not sampled stays not sampled at 100%", &[tp("00")])
        },
        Case {
            parent: Some(SPAN),
            percent: 0.0,
            ..case("sampled stays sampled at 0%", &[tp("01")])
        },
        Case {
            parent: Some(SPAN),
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ],
            ..case(
                "tracestate passes through",
                &[
                    tp("01"),
                    (
                        "tracestate",
                        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
                    ),
                ],
            )
        },
        Case {
            percent: 0.0,
            sampled: false,
            out: vec![("traceparent", "00-{trace}-{span}-00")],
            ..case(
                "tracestate without a valid traceparent is dropped",
                &[
                    ("traceparent", "garbage".into()),
                    ("tracestate", "rojo=1".into()),
                ],
            )
        },
    ] {
        check(&c);
    }
}

#[test]
fn b3_comes_back_in_the_form_it_came() {
    for c in [
        Case {
            parent: Some(SPAN),
            trace: Some(TRACE),
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("b3", "{trace}-{span}-1-00f067aa0ba902b7"),
            ],
            ..case(
                "single, 128-bit",
                &[("b3", format!("{TRACE}-{SPAN}-1-{PARENT}"))],
            )
        },
        Case {
            parent: Some(SPAN),
            trace: Some(SHORT),
            out: vec![
                ("traceparent", "00-0000000000000000{trace16}-{span}-01"),
                ("b3", "{trace16}-{span}-1-00f067aa0ba902b7"),
            ],
            ..case(
                "single, 64-bit: B3 keeps 16 digits",
                &[("b3", format!("{SHORT}-{SPAN}-1"))],
            )
        },
        Case {
            parent: Some(SPAN),
            percent: 0.0,
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("b3", "{trace}-{span}-d-00f067aa0ba902b7"),
            ],
            ..case(
                "single, debug: sampled at 0%, still debug",
                &[("b3", format!("{TRACE}-{SPAN}-d"))],
            )
        },
        Case {
            parent: Some(SPAN),
            percent: 0.0,
            sampled: false,
            out: vec![
                ("traceparent", "00-{trace}-{span}-00"),
                ("b3", "{trace}-{span}-0-00f067aa0ba902b7"),
            ],
            ..case(
                "single, deferred: ours to decide (0%)",
                &[("b3", format!("{TRACE}-{SPAN}"))],
            )
        },
        Case {
            sampled: false,
            out: vec![
                ("traceparent", "00-{trace}-{span}-00"),
                ("b3", "{trace}-{span}-0"),
            ],
            ..case(
                "single, decision only: a new trace, not sampled",
                &[("b3", "0".into())],
            )
        },
        Case {
            parent: Some(SPAN),
            trace: Some(TRACE),
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("x-b3-traceid", "{trace}"),
                ("x-b3-spanid", "{span}"),
                ("x-b3-parentspanid", SPAN),
                ("x-b3-sampled", "1"),
            ],
            ..case(
                "multi",
                &[
                    ("x-b3-traceid", TRACE.into()),
                    ("x-b3-spanid", SPAN.into()),
                    ("x-b3-parentspanid", PARENT.into()),
                    ("x-b3-sampled", "1".into()),
                ],
            )
        },
        Case {
            parent: Some(SPAN),
            trace: Some(SHORT),
            percent: 0.0,
            out: vec![
                ("traceparent", "00-0000000000000000{trace16}-{span}-01"),
                ("x-b3-traceid", "{trace16}"),
                ("x-b3-spanid", "{span}"),
                ("x-b3-parentspanid", SPAN),
                ("x-b3-flags", "1"),
            ],
            ..case(
                "multi, 64-bit, debug flag",
                &[
                    ("x-b3-traceid", SHORT.into()),
                    ("x-b3-spanid", SPAN.into()),
                    ("x-b3-flags", "1".into()),
                ],
            )
        },
        Case {
            parent: Some(SPAN),
            sampled: true,
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("x-b3-traceid", "{trace}"),
                ("x-b3-spanid", "{span}"),
                ("x-b3-parentspanid", SPAN),
                ("x-b3-sampled", "1"),
            ],
            ..case(
                "multi, no decision: ours (100%)",
                &[("x-b3-traceid", TRACE.into()), ("x-b3-spanid", SPAN.into())],
            )
        },
        Case {
            parent: Some(PARENT),
            trace: Some(TRACE),
            out: vec![
                ("traceparent", "00-{trace}-{span}-01"),
                ("b3", "{trace}-{span}-1-05e3ac9a4f6e3b90"),
            ],
            ..case(
                "W3C and B3: W3C's ids, B3 written with them",
                &[
                    ("traceparent", format!("00-{TRACE}-{PARENT}-01")),
                    ("b3", format!("{SHORT}-{SPAN}-0")),
                ],
            )
        },
    ] {
        check(&c);
    }
}

#[test]
fn malformed_context_starts_a_new_trace() {
    let long = "a".repeat(100);
    for (what, incoming) in [
        (
            "traceparent garbage",
            vec![("traceparent", "00-xyz".to_string())],
        ),
        (
            "traceparent upper case",
            vec![(
                "traceparent",
                format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            )],
        ),
        (
            "traceparent zero trace",
            vec![("traceparent", format!("00-{:032}-{SPAN}-01", 0))],
        ),
        ("b3 garbage", vec![("b3", "not-b3".to_string())]),
        ("b3 zero span", vec![("b3", format!("{TRACE}-{:016}-1", 0))]),
        (
            "b3 bad sampling state",
            vec![("b3", format!("{TRACE}-{SPAN}-yes"))],
        ),
        (
            "b3 too many fields",
            vec![("b3", format!("{TRACE}-{SPAN}-1-{PARENT}-{PARENT}"))],
        ),
        (
            "b3 too long",
            vec![("b3", format!("{TRACE}-{SPAN}-1-{long}"))],
        ),
        (
            "b3 24-digit trace",
            vec![("b3", format!("{}-{SPAN}-1", &TRACE[..24]))],
        ),
        (
            "x-b3 trace without span",
            vec![("x-b3-traceid", TRACE.to_string())],
        ),
        (
            "x-b3 bad parent",
            vec![
                ("x-b3-traceid", TRACE.to_string()),
                ("x-b3-spanid", SPAN.to_string()),
                ("x-b3-parentspanid", "nope".to_string()),
            ],
        ),
    ] {
        let pairs: Vec<(&'static str, &str)> =
            incoming.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let h = headers(&pairs);
        let a = Span::start(&h, SpanKind::Server, 100.0, SystemTime::now());
        let b = Span::start(&h, SpanKind::Server, 100.0, SystemTime::now());
        assert_eq!(a.parent, None, "{what}");
        assert_ne!(
            a.trace_id, b.trace_id,
            "{what}: a fresh random trace each time"
        );
        assert_ne!(a.trace_id_hex(), format!("{TRACE}"), "{what}");
        assert!(a.sampled, "{what}: 100%");
        // The bad headers do not travel on; valid ones in the same family replace them.
        let out = onward(&a);
        assert_eq!(
            get(&out, "traceparent"),
            Some(format!("00-{}-{}-01", a.trace_id, a.span_id).as_str()),
            "{what}"
        );
        for (name, value) in &incoming {
            assert_ne!(
                get(&out, name),
                Some(value.as_str()),
                "{what}: {name} passed on"
            );
        }
    }
}

#[test]
fn new_traces_are_sampled_by_the_percentage() {
    let none = HeaderMap::new();
    let sampled = |percent: f64| {
        (0..2000)
            .filter(|_| Span::start(&none, SpanKind::Client, percent, SystemTime::now()).sampled)
            .count()
    };
    assert_eq!(sampled(0.0), 0);
    assert_eq!(sampled(100.0), 2000);
    let some = sampled(25.0);
    assert!((350..650).contains(&some), "25% of 2000 sampled {some}");
    let s = Span::start(&none, SpanKind::Client, 0.0, SystemTime::now());
    assert_eq!(
        get(&onward(&s), "traceparent").map(|v| v.ends_with("-00")),
        Some(true)
    );
    assert_eq!(
        s.finish(SpanAttrs::default(), SystemTime::now()),
        None,
        "unsampled: nothing to export"
    );
}

#[test]
fn inject_replaces_what_the_request_carried() {
    let incoming = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let span = Span::start(&incoming, SpanKind::Client, 0.0, SystemTime::now());
    // The worker forwards the request's own headers, then injects.
    let mut out = incoming.clone();
    out.append(
        "traceparent",
        HeaderValue::from_static("00-11111111111111111111111111111111-2222222222222222-00"),
    );
    out.insert("x-other", HeaderValue::from_static("kept"));
    span.inject(&mut out);
    assert_eq!(out.get_all("traceparent").iter().count(), 1);
    assert_eq!(get(&out, "x-b3-spanid"), Some(span.span_id_hex().as_str()));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(SPAN));
    assert_eq!(get(&out, "x-other"), Some("kept"));
}

#[test]
fn a_two_hop_chain_shares_the_trace_and_links_parents() {
    // app → client span (source node) → server span (destination node) → app
    let app = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    let client = Span::start(&app, SpanKind::Client, 0.0, SystemTime::now());
    let server = Span::start(&onward(&client), SpanKind::Server, 0.0, SystemTime::now());
    let to_app = onward(&server);
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(server.parent, Some(client.span_id));
    assert_eq!(client.parent.map(|p| p.to_string()).as_deref(), Some(SPAN));
    assert_eq!(
        get(&to_app, "traceparent"),
        Some(format!("00-{TRACE}-{}-01", server.span_id).as_str())
    );
}

fn attrs() -> SpanAttrs {
    SpanAttrs {
        resource: Resource {
            service_name: "web".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            node: "node-a".into(),
        },
        method: "GET".into(),
        authority: "orders.shop.svc.cluster.local:8080".into(),
        path: "/v1/orders".into(),
        protocol_version: "1.1".into(),
        status_code: Some(200),
        peer: Some("10.2.0.7:8080".parse().unwrap()),
        peer_service: Some("orders.shop.svc.cluster.local".into()),
        response_flags: "-".into(),
        route: Some("shop/orders".into()),
        route_rule: Some(1),
        retries: 2,
        request_bytes: 10,
        response_bytes: 20,
        ..Default::default()
    }
}

fn attr<'a>(r: &'a SpanRecord, key: &str) -> Option<&'a AttrValue> {
    r.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[test]
fn a_finished_span_carries_the_http_semantic_conventions() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let incoming = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    let span = Span::start(&incoming, SpanKind::Client, 0.0, start);
    let id = span.span_id;
    let r = span
        .finish(attrs(), start + Duration::from_millis(15))
        .expect("sampled");
    assert_eq!(
        (
            r.trace_id.to_string().as_str(),
            r.span_id,
            r.parent.map(|p| p.to_string())
        ),
        (TRACE, id, Some(SPAN.to_string()))
    );
    assert_eq!(r.name, "GET orders.shop.svc.cluster.local");
    assert_eq!(r.end_unix_nanos - r.start_unix_nanos, 15_000_000);
    assert_eq!(r.resource.service_name, "web");
    let s = |v: &str| Some(AttrValue::Str(v.into()));
    assert_eq!(attr(&r, "http.request.method").cloned(), s("GET"));
    assert_eq!(attr(&r, "url.path").cloned(), s("/v1/orders"));
    assert_eq!(
        attr(&r, "server.address").cloned(),
        s("orders.shop.svc.cluster.local")
    );
    assert_eq!(attr(&r, "server.port"), Some(&AttrValue::Int(8080)));
    assert_eq!(
        attr(&r, "http.response.status_code"),
        Some(&AttrValue::Int(200))
    );
    assert_eq!(attr(&r, "network.peer.address").cloned(), s("10.2.0.7"));
    assert_eq!(
        attr(&r, "http.request.resend_count"),
        Some(&AttrValue::Int(2))
    );
    assert_eq!(attr(&r, "weft.route").cloned(), s("shop/orders"));
    assert_eq!(r.status, SpanStatus::Unset);
}

#[test]
fn failed_requests_are_errors_by_the_conventions_of_their_side() {
    let now = SystemTime::now();
    let finish = |kind, status: Option<u16>, grpc: Option<u32>, flags: &str| {
        let a = SpanAttrs {
            status_code: status,
            grpc_status: grpc,
            response_flags: flags.into(),
            ..attrs()
        };
        Span::start(&HeaderMap::new(), kind, 100.0, now)
            .finish(a, now)
            .expect("sampled")
            .status
    };
    let err = |s: &str| SpanStatus::Error(s.into());
    assert_eq!(finish(SpanKind::Server, Some(503), None, "-"), err("503"));
    assert_eq!(
        finish(SpanKind::Server, Some(404), None, "-"),
        SpanStatus::Unset
    );
    assert_eq!(finish(SpanKind::Client, Some(404), None, "-"), err("404"));
    assert_eq!(finish(SpanKind::Client, None, None, "UT"), err("UT"));
    assert_eq!(
        finish(SpanKind::Server, None, None, "-"),
        err("no_response")
    );
    assert_eq!(
        finish(SpanKind::Server, Some(200), Some(5), "-"),
        SpanStatus::Unset
    );
    assert_eq!(
        finish(SpanKind::Server, Some(200), Some(14), "-"),
        err("grpc 14")
    );
    assert_eq!(
        finish(SpanKind::Client, Some(200), Some(5), "-"),
        err("grpc 5")
    );
}

#[test]
fn attribute_values_are_bounded() {
    let now = SystemTime::now();
    let a = SpanAttrs {
        path: "/é".repeat(2000),
        ..attrs()
    };
    let r = Span::start(&HeaderMap::new(), SpanKind::Server, 100.0, now)
        .finish(a, now)
        .unwrap();
    let Some(AttrValue::Str(path)) = attr(&r, "url.path") else {
        panic!("url.path")
    };
    assert!(
        path.len() <= record::MAX_ATTR_LEN && path.len() > 1000,
        "{}",
        path.len()
    );
}

#[test]
fn span_attributes_come_from_the_request_record() {
    use crate::metrics::http::RequestRecord;
    let r = RequestRecord {
        source_canonical_service: "web".into(),
        source_workload_namespace: "shop".into(),
        source_principal: "cluster.local/ns/shop/sa/web".into(),
        destination_canonical_service: "orders".into(),
        destination_workload_namespace: "shop".into(),
        destination_principal: "unknown".into(),
        destination_service: "orders.shop.svc.cluster.local".into(),
        method: "PUT".into(),
        authority: "orders.shop.svc.cluster.local".into(),
        path: "/v1/orders?id=7".into(),
        response_code: 0,
        response_flags: "UF".into(),
        endpoint: Some("10.2.0.7:8080".into()),
        retries: 1,
        ..Default::default()
    };
    let client = SpanAttrs::from_record(&r, SpanKind::Client, "n1", "web-0");
    assert_eq!(
        (
            client.resource.service_name.as_str(),
            client.resource.pod.as_str(),
            client.resource.node.as_str()
        ),
        ("web", "web-0", "n1")
    );
    assert_eq!(client.path, "/v1/orders", "no query");
    assert_eq!(client.status_code, None, "0: no response");
    assert_eq!(client.peer, Some("10.2.0.7:8080".parse().unwrap()));
    assert_eq!(
        client.peer_service.as_deref(),
        Some("orders.shop.svc.cluster.local")
    );
    assert_eq!(client.destination_principal, None, "unknown is left out");
    let server = SpanAttrs::from_record(&r, SpanKind::Server, "n2", "orders-0");
    assert_eq!(server.resource.service_name, "orders");
    assert_eq!(server.peer_service.as_deref(), Some("web"));
    assert_eq!(server.peer, None);
    let now = SystemTime::now();
    let done = Span::start(&HeaderMap::new(), SpanKind::Client, 100.0, now)
        .finish(client, now)
        .unwrap();
    assert_eq!(done.status, SpanStatus::Error("UF".into()));
    assert!(
        attr(&done, "network.protocol.version").is_none(),
        "unknown: left out"
    );
    assert_eq!(attr(&done, "server.port"), None, "no port in the authority");
}
