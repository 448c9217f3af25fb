//! Every resource a tunnel peer controls is bounded: a destination that never answers a
//! CONNECT, a peer whose wire is cut, a peer that opens too many streams, sends too large a
//! header list, stalls its handshake or asks for one of the agent's own ports; and the client
//! pools follow the state under pod churn. Run as root (`cargo xtask test`).

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use mesh_agent::identity::Identity;
use weft_tests::{
    eventually, features,
    fixture::{set_tunnel, TRUST_DOMAIN as TD},
    netns, peer, probe, Agent, Ca, Client, Pod, Topology, TwoNodeMesh,
};

/// `tunnel::RESPONSE_TIMEOUT`: how long a source agent waits for a CONNECT answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// `tunnel::KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`: a dead peer is noticed within this.
const DEAD_PEER: Duration = Duration::from_secs(10);
/// `tunnel::HANDSHAKE_TIMEOUT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// `tunnel::MAX_STREAMS`: streams per tunnel connection.
const MAX_STREAMS: usize = 200;
/// Scheduling slack on a loaded test machine.
const SLACK: Duration = Duration::from_secs(3);

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

/// The agent's pooled tunnel connections, from /config_dump.
fn pools(a: &Agent) -> (u64, u64) {
    let p = &a.config_dump()["tunnel_pools"];
    (
        p["h2"].as_u64().unwrap_or(0),
        p["quic"].as_u64().unwrap_or(0),
    )
}

/// Runs `connect` on a probe client in another thread: (result, how long it took), or None if
/// it took longer than `limit` (the probe itself gives up after 20 s).
fn timed_connect(
    mut c: Client,
    addr: SocketAddr,
    limit: Duration,
) -> Option<(weft_tests::ConnectResult, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let r = c.connect(addr, 64);
        let _ = tx.send((r, start.elapsed()));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn a_connect_nobody_answers_is_reset_within_the_bound() {
    if !features::require(
        "a_connect_nobody_answers_is_reset_within_the_bound",
        features::CAPTURE,
    ) {
        return;
    }
    // n2 has no agent: its pod's :15008 is a fake that completes mTLS and HTTP/2, then holds
    // every CONNECT unanswered (a destination agent that hangs).
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let client = topo.pod(&n1, "mesh", "client");
    let server = topo.pod(&n2, "mesh", "server");
    let ca = Ca::start(&topo, &n1, 15012, 3600, TD);
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    a1.wait_enrolled(&client);
    a1.wait_certificates();
    let me = peer::mint(
        &ca.state_dir,
        TD,
        Duration::from_secs(3600),
        &id("mesh", "server"),
    );
    let seen = peer::silent_hbone(&server.netns, &me, server.addr(15008));

    let c = Client::start(&mut topo, &client);
    let bound = RESPONSE_TIMEOUT + SLACK;
    let (r, took) =
        timed_connect(c, server.addr(8080), Duration::from_secs(30)).expect("the probe answers");
    assert!(!r.ok(), "nothing answered, yet: {:?}", r.raw);
    assert!(
        seen.load(Ordering::SeqCst) >= 1,
        "the CONNECT reached the fake peer"
    );
    assert!(
        took <= bound,
        "the client's connection must end within {bound:?}, took {took:?}"
    );
    let line = eventually("the failed tunnel in the access log", SLACK, || {
        a1.access_log().into_iter().find(|l| {
            l["dst"]["pod"]["name"] == "server"
                && l["verdict"] == "error"
                && l["response_flags"] == "UF"
        })
    });
    assert!(
        line.to_string().contains("no answer to CONNECT"),
        "the access log says why: {line}"
    );
    let metrics = a1.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("response_flags=\"UF\"")
                && l.contains("destination_workload=\"server\"")),
        "the UF connection is counted:\n{metrics}"
    );
}

/// Drops the tunnel port (TCP and UDP) both ways on `node`'s forward path: the wire to the
/// peer is cut.
fn cut(node_ns: &str) {
    netns::nft(
        node_ns,
        "table inet weft_cut {\n\
           chain forward {\n\
             type filter hook forward priority -10; policy accept;\n\
             tcp dport 15008 drop\n\
             tcp sport 15008 drop\n\
             udp dport 15008 drop\n\
             udp sport 15008 drop\n\
           }\n\
         }\n",
    );
}

fn mend(node_ns: &str) {
    netns::nft(node_ns, "delete table inet weft_cut\n");
}

#[test]
fn a_pooled_connection_to_a_dead_peer_is_dropped_by_ping() {
    if !features::require(
        "a_pooled_connection_to_a_dead_peer_is_dropped_by_ping",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let n1 = m.topo.node_named("n1").clone();
    let mut c = Client::start(&mut m.topo, &m.client);
    // h2 (PING) and QUIC (keep-alive and idle timeout): the same bound.
    for (tunnel, pooled) in [("h2", 0usize), ("quic", 1)] {
        set_tunnel(&m.topo, &[&m.a1, &m.a2], tunnel);
        let count = |a: &Agent| [pools(a).0, pools(a).1][pooled];
        assert!(c.connect(m.server.addr(8080), 1024).intact());
        assert_eq!(
            count(&m.a1),
            1,
            "one pooled {tunnel} connection to the server"
        );

        cut(&n1.netns);
        let start = Instant::now();
        eventually(
            &format!("the dead pooled {tunnel} connection to be dropped"),
            DEAD_PEER + SLACK * 2,
            || (count(&m.a1) == 0).then_some(()),
        );
        let noticed = start.elapsed();
        assert!(
            noticed <= DEAD_PEER + SLACK,
            "{tunnel}: noticed after {noticed:?}"
        );

        // With the wire back, the next connection opens a fresh tunnel at once instead of
        // queueing on the dead one.
        mend(&n1.netns);
        let (r, took) =
            timed_connect(c, m.server.addr(8080), Duration::from_secs(30)).expect("probe answers");
        assert!(r.ok() && r.intact(), "{tunnel}: {:?}", r.raw);
        assert!(took < SLACK, "{tunnel}: the next connection took {took:?}");
        assert_eq!(count(&m.a1), 1);
        c = Client::start(&mut m.topo, &m.client);
    }
}

#[test]
fn more_streams_than_a_server_takes_open_another_pooled_connection() {
    if !features::require(
        "more_streams_than_a_server_takes_open_another_pooled_connection",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let mut c = Client::start(&mut m.topo, &m.client);
    for (tunnel, pooled) in [("h2", 0usize), ("quic", 1)] {
        set_tunnel(&m.topo, &[&m.a1, &m.a2], tunnel);
        // One more open connection between the two pods than a tunnel connection carries.
        for i in 0..=MAX_STREAMS {
            let r = c.open(&format!("{tunnel}{i}"), m.server.addr(8080));
            assert!(r.ok(), "{tunnel}: connection {i}: {:?}", r.raw);
        }
        let (h2, quic) = pools(&m.a1);
        assert_eq!(
            [h2, quic][pooled],
            2,
            "{tunnel}: a second connection carries the 201st"
        );
        for i in [0, MAX_STREAMS] {
            let r = c.xfer(&format!("{tunnel}{i}"), 4096);
            assert!(
                r.ok() && r.intact(),
                "{tunnel}: connection {i}: {:?}",
                r.raw
            );
        }
    }
}

/// Dials the server's HBONE as the test peer (mesh/client): the TLS stream.
async fn tls_to(
    m: &TwoNodeMesh,
    me: &peer::Minted,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let hbone = m.server.addr(15008);
    let tcp = netns::run_in(&m.client.netns, move || {
        std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(5))
    })
    .expect("netns")
    .expect("tcp to :15008");
    tcp.set_nonblocking(true).expect("nonblocking");
    let cfg = peer::client_tls(me, &me.roots, &id("mesh", "server"), b"h2");
    let name = rustls::pki_types::ServerName::IpAddress(hbone.ip().into());
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            name,
            tokio::net::TcpStream::from_std(tcp).expect("tokio tcp"),
        )
        .await
        .expect("mTLS with the server's agent")
}

fn connect_req(target: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .expect("request")
}

/// The first bytes the application sends on an answered stream (the probe's greeting).
async fn greeting(resp: http::Response<h2::RecvStream>) -> String {
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while !got.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
            Ok(Some(Ok(d))) => {
                let _ = body.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            other => return format!("no greeting: {other:?}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// 200 streams at once work; the 201st is refused (REFUSED_STREAM), on one connection whose
/// client sent all of them before it learnt the server's limit.
async fn stream_limit(m: &TwoNodeMesh, me: &peer::Minted) {
    let tls = tls_to(m, me).await;
    // The probe writes its greeting in pieces: 400 small DATA frames at once are legitimate
    // here, so h2's small-frame budget is raised.
    let (mut sender, conn) = h2::client::Builder::new()
        .data_frame_budget(1 << 24)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    // Every request is queued before the connection task reads the server's SETTINGS.
    let mut pending = Vec::new();
    for _ in 0..201 {
        let (resp, send) = sender
            .send_request(connect_req(m.server.addr(8080)), false)
            .expect("queue CONNECT");
        pending.push((resp, send));
    }
    tokio::spawn(conn);
    // Each answer is read as it comes (h2 budgets small DATA frames left unread).
    let answers: Vec<_> = pending
        .into_iter()
        .map(|(resp, send)| {
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(15), resp).await {
                    Ok(Ok(r)) if r.status() == 200 => Ok((greeting(r).await, send)),
                    Ok(Err(e)) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => Err(None),
                    other => Err(Some(format!("{other:?}"))),
                }
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    let mut held = Vec::new();
    for a in answers {
        match a.await.expect("answer task") {
            Ok((g, send)) => {
                assert!(g.contains("\"server\":\"server\""), "{g}");
                ok += 1;
                held.push(send);
            }
            Err(None) => refused += 1,
            Err(Some(other)) => panic!("unexpected answer to a CONNECT: {other}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (200, 1),
        "200 streams served, the 201st refused"
    );
}

/// A header list over 64 KiB gets 431, after a normal CONNECT settled the connection.
async fn header_limit(m: &TwoNodeMesh, me: &peer::Minted) {
    let tls = tls_to(m, me).await;
    let (mut sender, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let (resp, _send) = sender
        .send_request(connect_req(m.server.addr(8080)), false)
        .expect("CONNECT");
    let first = resp.await.expect("answer");
    assert_eq!(first.status(), 200);
    let mut big = connect_req(m.server.addr(8080));
    let value = "x".repeat(70 * 1024);
    big.headers_mut()
        .insert("x-big", value.parse().expect("header value"));
    let mut sender = sender.ready().await.expect("ready");
    let (resp, _send) = sender.send_request(big, false).expect("CONNECT");
    let answer = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer to the oversized CONNECT");
    match answer {
        Ok(r) => assert_eq!(r.status(), 431, "an oversized header list is refused"),
        Err(e) => panic!("expected 431, got {e}"),
    }
}

/// A peer that finishes TLS and then says nothing is dropped within the handshake bound.
async fn stalled_handshake(m: &TwoNodeMesh, me: &peer::Minted) {
    use tokio::io::AsyncReadExt as _;
    let mut tls = tls_to(m, me).await;
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT + SLACK * 2, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // the server's SETTINGS
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a peer that never sends the HTTP/2 preface is dropped"
    );
    assert!(start.elapsed() <= HANDSHAKE_TIMEOUT + SLACK);
}

/// A peer that goes silent after the handshake (answers no PING) is dropped by the server.
async fn silent_peer(m: &TwoNodeMesh, me: &peer::Minted) {
    let tls = tls_to(m, me).await;
    let (_sender, mut conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    // Speak long enough to finish the handshake, then fall silent: the connection is not
    // polled, so no PING is answered. The silence is what is under test, not a wait.
    let _ = tokio::time::timeout(Duration::from_millis(500), &mut conn).await;
    tokio::time::sleep(DEAD_PEER + SLACK).await;
    let ended = tokio::time::timeout(SLACK, &mut conn).await;
    assert!(
        ended.is_ok(),
        "the server must drop a peer that stopped answering PINGs"
    );
}

#[test]
fn the_hbone_server_bounds_what_a_peer_asks_and_keeps_serving() {
    if !features::require(
        "the_hbone_server_bounds_what_a_peer_asks_and_keeps_serving",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let me = m.mint("mesh", "client");
    let rt = peer::runtime();
    rt.block_on(stream_limit(&m, &me));
    rt.block_on(header_limit(&m, &me));
    rt.block_on(stalled_handshake(&m, &me));
    rt.block_on(silent_peer(&m, &me));

    // The agent's own ports are refused, not tunneled into the agent again.
    let roots = me.roots.clone();
    for port in [15001, 15008] {
        let (outcome, _) = peer::connect(
            &m.client.netns,
            &me,
            &roots,
            m.server.addr(15008),
            &id("mesh", "server"),
            m.server.addr(port),
            b"x",
        );
        assert!(
            matches!(outcome, peer::Outcome::Status(403)),
            "CONNECT to the agent's :{port}: {outcome:?}"
        );
    }
    eventually("the refusals in the access log", SLACK, || {
        let lines = m.a2.access_log();
        let own = |port: u16| {
            lines.iter().any(|l| {
                l["response_flags"] == "NR"
                    && l["original_dst"] == m.server.addr(port).to_string()
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("the mesh agent's own"))
            })
        };
        (own(15001) && own(15008)).then_some(())
    });

    // Unharmed: the real client still gets through.
    let mut c = Client::start(&mut m.topo, &m.client);
    let after = c.connect(m.server.addr(8080), 64 * 1024);
    assert!(after.ok() && after.intact(), "{:?}", after.raw);
}

/// Adds pod `name` (mesh, serving echo) on `node`, waits for `agent` to enroll it.
fn add_server(m: &mut TwoNodeMesh, node: &str, name: &str) -> Pod {
    let node = m.topo.node_named(node).clone();
    let p = m.topo.pod(&node, "mesh", name);
    probe::serve(&mut m.topo, &p, &[8080]);
    p
}

/// Waits until `a` has pod `name` in its state (so it tunnels to it).
fn sees(a: &Agent, name: &str) {
    let quoted = format!("\"{name}\"");
    eventually(
        &format!("{name} in the state"),
        Duration::from_secs(10),
        || {
            let dump = a.config_dump();
            let pods = dump["state"]["pods"].as_array()?.clone();
            pods.iter()
                .any(|p| p.to_string().contains(&quoted))
                .then_some(())
        },
    );
}

#[test]
fn tunnel_pools_stay_bounded_under_pod_churn() {
    if !features::require(
        "tunnel_pools_stay_bounded_under_pod_churn",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = TwoNodeMesh::start(3600, &[]);
    let mut c = Client::start(&mut m.topo, &m.client);
    const CYCLES: usize = 8;
    for (round, tunnel) in ["h2", "quic"].into_iter().enumerate() {
        set_tunnel(&m.topo, &[&m.a1, &m.a2], tunnel);
        for i in 0..CYCLES {
            let p = add_server(&mut m, "n2", &format!("churn{round}x{i}"));
            m.a2.wait_enrolled(&p);
            m.a2.wait_certificates();
            sees(&m.a1, &p.name);
            let r = c.connect(p.addr(8080), 1024);
            assert!(r.ok() && r.intact(), "{tunnel} to {}: {:?}", p.name, r.raw);
            let (h2, quic) = pools(&m.a1);
            assert!(
                if tunnel == "h2" { h2 } else { quic } >= 1,
                "tunneled over a pooled {tunnel} connection"
            );
            m.topo.remove_pod(&p.name);
            m.a2.wait_released(&p);
        }
        // Only the pods still in the state (none of the churned ones) keep connections.
        eventually(
            &format!("{tunnel} pools to shrink back"),
            Duration::from_secs(10),
            || (pools(&m.a1) == (0, 0)).then_some(()),
        );
    }
    let dump = m.a1.config_dump();
    assert_eq!(
        dump["tunnel_pools"]["quic_unreachable"], 0,
        "{}",
        dump["tunnel_pools"]
    );
    // The pool still serves the pods that stayed.
    let r = c.connect(m.server.addr(8080), 1024);
    assert!(r.ok() && r.intact(), "{:?}", r.raw);
    assert_eq!(pools(&m.a1), (0, 1), "one QUIC connection to the server");
}
