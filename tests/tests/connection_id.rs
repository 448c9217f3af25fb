//! One connection, one id: the source agent makes it when it accepts on :15001 and sends it in
//! the tunnel request (a W3C `traceparent` on h2, the CONNECT header on QUIC); both agents put
//! it in the connection's span (`id=`) and access-log line (`connection_id`), so one
//! connection's story can be followed across both nodes' logs. A peer that sends a
//! `traceparent` (as ztunnel does) has its id kept; plaintext, or a peer of the previous
//! version, gets a fresh one.
//! Run as root (`cargo xtask test`).

use std::time::Duration;

use serde_json::Value;
use weft_tests::{eventually, features, fixture::set_tunnel, peer, Agent, Client, TwoNodeMesh};

fn is_id(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    (s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| s.to_owned())
}

/// The access-log line of `agent` with this id, once written.
fn line_with(agent: &Agent, id: &str) -> Value {
    eventually(
        &format!("an access-log line with connection_id {id}"),
        Duration::from_secs(10),
        || {
            agent
                .access_log()
                .into_iter()
                .find(|l| l["connection_id"] == id)
        },
    )
}

/// Lines of the agent's own log (not the access log) that carry `id=<id>` in their span.
fn span_lines(agent: &Agent, id: &str) -> usize {
    let needle = format!("id={id}");
    agent
        .log()
        .lines()
        .filter(|l| !l.starts_with('{') && l.contains(&needle))
        .count()
}

#[test]
fn one_connection_shows_one_id_on_both_agents_over_h2_and_quic() {
    if !features::require(
        "one_connection_shows_one_id_on_both_agents_over_h2_and_quic",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let mut c = Client::start(&mut m.topo, &m.client);
    let mut ids = Vec::new();
    for (tunnel, transport) in [("h2", "hbone"), ("quic", "quic")] {
        set_tunnel(&m.topo, &[&m.a1, &m.a2], tunnel);
        let r = c.connect(m.server.addr(8080), 4096);
        assert!(r.intact(), "{tunnel}: {:?}", r.raw);
        let src = eventually(
            &format!("{tunnel}: the source's access-log line"),
            Duration::from_secs(10),
            || {
                m.a1.access_log().into_iter().rev().find(|l| {
                    l["reporter"] == "source"
                        && l["transport"] == transport
                        && l["verdict"] == "allow"
                        && l["original_dst"] == m.server.addr(8080).to_string()
                        && !ids.contains(&l["connection_id"])
                })
            },
        );
        let id = is_id(&src["connection_id"])
            .unwrap_or_else(|| panic!("{tunnel}: connection_id is 32 lowercase hex: {src}"));
        let dst = line_with(&m.a2, &id);
        assert_eq!(dst["reporter"], "destination", "{dst}");
        assert_eq!(dst["transport"], transport, "{dst}");
        assert_eq!(dst["original_dst"], src["original_dst"], "{dst}");
        assert_eq!(dst["bytes_received"], src["bytes_received"], "{dst}");
        for (agent, side) in [(&m.a1, "source"), (&m.a2, "destination")] {
            assert!(
                span_lines(agent, &id) > 0,
                "{tunnel}: the {side} agent's log has no span with id={id}:\n{}",
                agent.log()
            );
        }
        ids.push(src["connection_id"].clone());
    }
    assert_ne!(ids[0], ids[1], "each connection has its own id");
}

#[test]
fn a_peers_traceparent_is_kept_and_others_get_an_id_of_their_own() {
    if !features::require(
        "a_peers_traceparent_is_kept_and_others_get_an_id_of_their_own",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    // A ztunnel-like peer: its traceparent's trace id becomes the connection id.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let me = m.mint("mesh", "client");
    let server_id = mesh_agent::identity::Identity::new("cluster.local", "mesh", "server");
    let (outcome, _) = peer::connect_with_headers(
        &m.client.netns,
        &me,
        &me.roots,
        m.server.addr(15008),
        &server_id,
        m.server.addr(8080),
        &[("traceparent", &tp)],
        b"hello",
    );
    assert!(matches!(outcome, peer::Outcome::Status(200)), "{outcome:?}");
    let line = line_with(&m.a2, trace);
    assert_eq!(line["transport"], "hbone", "{line}");
    assert_eq!(
        line["src"]["identity"],
        "spiffe://cluster.local/ns/mesh/sa/client"
    );

    // A peer that sends none, and plaintext to :15006: fresh, distinct ids.
    let (outcome, _) = peer::connect(
        &m.client.netns,
        &me,
        &me.roots,
        m.server.addr(15008),
        &server_id,
        m.server.addr(8080),
        b"hello",
    );
    assert!(matches!(outcome, peer::Outcome::Status(200)), "{outcome:?}");
    // A QUIC peer of the previous version (ALPN /1, no id in its header): served, fresh id.
    let (outcome, _) = peer::connect_quic(
        &m.client.netns,
        &me,
        &me.roots,
        m.server.addr(15008),
        &server_id,
        m.server.addr(8080),
        b"hello",
    );
    assert!(matches!(outcome, peer::Outcome::Status(200)), "{outcome:?}");
    let mut p = Client::start(&mut m.topo, &m.plain);
    assert!(p.connect(m.server.addr(8080), 64).intact());
    let lines = eventually("four destination lines", Duration::from_secs(10), || {
        let l: Vec<Value> = m.a2.access_log();
        (l.iter().filter(|l| l["verdict"] == "allow").count() >= 4).then_some(l)
    });
    assert!(
        lines.iter().any(|l| l["transport"] == "quic"),
        "the old QUIC peer's line: {lines:#?}"
    );
    let plaintext = lines
        .iter()
        .find(|l| l["transport"] == "tcp" && l["verdict"] == "allow")
        .expect("the plaintext connection's line");
    let mut seen: Vec<String> = lines
        .iter()
        .filter(|l| l["verdict"] == "allow")
        .map(|l| is_id(&l["connection_id"]).unwrap_or_else(|| panic!("an id: {l}")))
        .collect();
    let plain_id = is_id(&plaintext["connection_id"]).expect("plaintext has an id");
    assert!(span_lines(&m.a2, &plain_id) > 0, "plaintext span has id=");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "distinct ids: {lines:#?}");
}
