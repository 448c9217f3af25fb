//! Identity and mutual TLS: the CA, workload certificates, HBONE tunnels between nodes, what
//! crosses the wire, and every way a bad peer is refused. Run as root (`cargo xtask test`).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use mesh_agent::identity::{CaClient, Identity};
use weft_tests::{
    eventually, features, netns, pattern, peer, probe, wire, Agent, Ca, Client, Pod, Topology,
    TwoNodeMesh,
};

const TD: &str = weft_tests::fixture::TRUST_DOMAIN;

fn mesh(lifetime_secs: u64) -> TwoNodeMesh {
    TwoNodeMesh::start(lifetime_secs, &[])
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

fn hbone(p: &Pod) -> SocketAddr {
    p.addr(15008)
}

#[test]
fn meshed_traffic_is_only_tls_on_the_wire() {
    if !features::require("meshed_traffic_is_only_tls_on_the_wire", features::CAPTURE) {
        return;
    }
    let mut m = mesh(3600);
    let n1 = m.topo.node_named("n1").clone();
    let tap = wire::WireTap::start(&n1.netns, "wire0");
    let mut c = Client::start(&mut m.topo, &m.client);
    let meshed = c.connect(m.server.addr(8080), 1 << 20);
    assert!(meshed.ok() && meshed.intact(), "{:?}", meshed.raw);
    assert_eq!(
        meshed.server_saw_peer().ip().to_string(),
        m.client.ip.to_string(),
        "delivered by the server's agent from the client's own address"
    );
    // Control: the tap does see payload bytes when traffic is not meshed.
    let control = c.connect(m.plain.addr(8080), 64 * 1024);
    assert!(control.ok() && control.intact(), "{:?}", control.raw);
    let segments = tap.finish();

    let marker: Vec<u8> = (0..64).map(pattern).collect();
    let to_plain: Vec<_> = segments
        .iter()
        .filter(|s| s.dst == m.plain.ip)
        .cloned()
        .collect();
    assert!(
        wire::contains(&wire::all_bytes(&to_plain), &marker),
        "the tap must see plaintext payload (control)"
    );
    let to_server: Vec<_> = segments
        .iter()
        .filter(|s| s.dst == m.server.ip || s.src == m.server.ip)
        .cloned()
        .collect();
    assert!(
        to_server
            .iter()
            .all(|s| s.dst_port == 15008 || s.src_port == 15008),
        "meshed traffic uses only the HBONE port"
    );
    assert!(
        !wire::contains(&wire::all_bytes(&to_server), &marker),
        "plaintext marker crossed the wire"
    );
    assert!(
        to_server
            .iter()
            .any(|s| s.payload.starts_with(&[0x16, 0x03])),
        "no TLS handshake seen"
    );
    assert!(
        to_server
            .iter()
            .any(|s| s.payload.starts_with(&[0x17, 0x03, 0x03])),
        "no TLS application data seen"
    );

    // Each side's access log names the identity the other proved.
    let dst = m.server.addr(8080).to_string();
    eventually(
        "both reporters' access-log lines",
        Duration::from_secs(5),
        || {
            let line = |a: &weft_tests::Agent, reporter: &str| {
                a.access_log()
                    .into_iter()
                    .find(|l| l["reporter"] == reporter && l["original_dst"] == dst.as_str())
            };
            let (src, dst) = (line(&m.a1, "source")?, line(&m.a2, "destination")?);
            assert_eq!(
                src["dst"]["identity"], "spiffe://cluster.local/ns/mesh/sa/server",
                "{src}"
            );
            assert_eq!(src["connection_security_policy"], "mutual_tls", "{src}");
            assert_eq!(
                dst["src"]["identity"], "spiffe://cluster.local/ns/mesh/sa/client",
                "{dst}"
            );
            Some(())
        },
    );
}

/// The destination agent's access-log line for a refused tunnel to `target`.
fn refusal(agent: &weft_tests::Agent, target: SocketAddr) -> serde_json::Value {
    eventually(
        &format!("the access-log line refusing {target}"),
        Duration::from_secs(5),
        || {
            agent.access_log().into_iter().find(|l| {
                l["reporter"] == "destination"
                    && l["original_dst"] == target.to_string().as_str()
                    && l["verdict"] != "allow"
            })
        },
    )
}

#[test]
fn hbone_refuses_bad_peers_and_keeps_serving() {
    if !features::require(
        "hbone_refuses_bad_peers_and_keeps_serving",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(3600);
    let from = m.client.netns.clone();
    let good = m.mint("mesh", "client");
    let roots = good.roots.clone();
    let server_id = id("mesh", "server");
    let connect = |me: &peer::Minted, expect: &Identity, target: SocketAddr, payload: &[u8]| {
        peer::connect(&from, me, &roots, hbone(&m.server), expect, target, payload)
    };

    // The happy path through the test peer: 200 and the greeting of the application.
    let (ok, echoed) = connect(&good, &server_id, m.server.addr(8080), b"hello");
    assert!(matches!(ok, peer::Outcome::Status(200)), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&echoed).contains("\"server\":\"server\""),
        "{}",
        String::from_utf8_lossy(&echoed)
    );

    // Wrong destination identity: the client side refuses the server.
    let (wrong, _) = connect(&good, &id("mesh", "imposter"), m.server.addr(8080), b"x");
    assert!(
        matches!(&wrong, peer::Outcome::Refused(e) if e.contains("expected spiffe://cluster.local/ns/mesh/sa/imposter")),
        "{wrong:?}"
    );

    // A certificate from another trust domain (another root).
    let evil = m.mint_foreign("mesh", "client");
    let (foreign, _) = connect(&evil, &server_id, m.server.addr(8080), b"x");
    assert!(matches!(foreign, peer::Outcome::Refused(_)), "{foreign:?}");

    // An expired certificate from the right CA: zero lifetime, refused once its not-after
    // (whole seconds) has passed.
    let expired = peer::mint(&m.ca.state_dir, TD, Duration::ZERO, &id("mesh", "client"));
    // (TLS 1.3: the client learns of the refusal only after its half of the handshake.)
    eventually(
        "the expired certificate refused",
        Duration::from_secs(5),
        || match connect(&expired, &server_id, m.server.addr(8080), b"x") {
            (peer::Outcome::Refused(e), _) => Some(e),
            _ => None,
        },
    );

    // CONNECT to another pod, and to a port nothing listens on.
    let (other, _) = connect(&good, &server_id, m.plain.addr(8080), b"x");
    assert!(matches!(other, peer::Outcome::Status(403)), "{other:?}");
    let (closed, _) = connect(&good, &server_id, m.server.addr(9999), b"x");
    assert!(matches!(closed, peer::Outcome::Status(503)), "{closed:?}");

    let nr = refusal(&m.a2, m.plain.addr(8080));
    assert_eq!(nr["response_flags"], "NR", "{nr}");
    assert!(
        nr["reason"].as_str().unwrap().contains("is not this pod"),
        "{nr}"
    );
    let uf = refusal(&m.a2, m.server.addr(9999));
    assert_eq!(uf["response_flags"], "UF", "{uf}");
    assert!(
        uf["reason"].as_str().unwrap().starts_with("delivery to"),
        "{uf}"
    );

    // Plaintext and garbage on :15008 get no answer: the agent closes the connection at once
    // (peer::raw waits 5 s for an answer that never comes) with at most a TLS alert.
    for junk in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
        b"\x00\x01\x02garbage\xff\xfe".as_slice(),
    ] {
        let junk: &'static [u8] = junk;
        let started = std::time::Instant::now();
        let answer = peer::raw(&from, hbone(&m.server), junk).expect("connect to :15008");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{junk:?}: the agent must close the connection, not leave it open"
        );
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{junk:?} got more than a TLS alert: {answer:?}"
        );
        // And it still serves mTLS on the same port.
        let (ok, _) = connect(&good, &server_id, m.server.addr(8080), b"again");
        assert!(
            matches!(ok, peer::Outcome::Status(200)),
            "after {junk:?}: {ok:?}"
        );
    }
    // A failed handshake has no connection, so no access-log line or metric: only the log.
    assert!(m.a2.log().contains("mTLS handshake refused"));
    // Unharmed: the real client still gets through.
    let mut c = Client::start(&mut m.topo, &m.client);
    let after = c.connect(m.server.addr(8080), 64 * 1024);
    assert!(after.ok() && after.intact(), "{:?}", after.raw);
}

#[test]
fn strict_peer_authentication_refuses_plaintext() {
    if !features::require(
        "strict_peer_authentication_refuses_plaintext",
        features::CAPTURE,
    ) {
        return;
    }
    let mut m = mesh(3600);
    let n1 = m.topo.node_named("n1").clone();
    let outsider = m.topo.pod(&n1, "plain", "outsider");
    let mut plain_client = Client::start(&mut m.topo, &outsider);
    let permissive = plain_client.connect(m.server.addr(8080), 1024);
    assert!(
        permissive.ok(),
        "PERMISSIVE accepts plaintext: {:?}",
        permissive.raw
    );

    m.topo.apply(
        "strict",
        "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n",
    );
    eventually("STRICT to apply", Duration::from_secs(5), || {
        (!plain_client.connect(m.server.addr(8080), 16).ok()).then_some(())
    });
    // The failure above may have been a connection revoked as STRICT arrived; this one is
    // refused at connect time.
    assert!(!plain_client.connect(m.server.addr(8080), 16).ok());
    let line = eventually(
        "the refusal in the access log",
        Duration::from_secs(5),
        || {
            // A connection open when STRICT arrived is revoked ("policy changed: ..."); the
            // refusal at connect time is the line this test reads.
            m.a2.access_log().into_iter().find(|l| {
                l["verdict"] == "deny"
                    && l["src"]["ip"] == outsider.ip.to_string().as_str()
                    && !l["reason"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("policy changed")
            })
        },
    );
    assert_eq!(line["response_flags"], "RBAC", "{line}");
    assert_eq!(line["connection_security_policy"], "none", "{line}");
    assert_eq!(
        line["reason"], "plaintext refused: PeerAuthentication STRICT",
        "{line}"
    );
    let mut meshed = Client::start(&mut m.topo, &m.client);
    let r = meshed.connect(m.server.addr(8080), 64 * 1024);
    assert!(
        r.ok() && r.intact(),
        "mTLS still accepted under STRICT: {:?}",
        r.raw
    );
}

#[test]
fn ca_signs_only_identities_of_the_callers_node() {
    if !features::require(
        "ca_signs_only_identities_of_the_callers_node",
        features::CAPTURE,
    ) {
        return;
    }
    let m = mesh(3600);
    let n1 = m.topo.node_named("n1").clone();
    let (addr, boot1) = (m.ca.addr, m.ca.bootstrap("n1"));
    let ask = move |ident: Identity, node: &'static str| {
        let boot1 = boot1.clone();
        netns::run_in(&n1.netns, move || {
            let client =
                CaClient::from_bootstrap(&addr.to_string(), node, &boot1).expect("bootstrap");
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![rcgen::SanType::URI(ident.to_string().try_into().unwrap())];
            let csr = p.serialize_request(&key).unwrap().pem().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(client.sign(&csr))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .expect("netns")
    };
    assert_eq!(ask(id("mesh", "client"), "n1"), Ok(()));
    let other_node = ask(id("mesh", "server"), "n1").unwrap_err();
    assert!(
        other_node.contains("403") && other_node.contains("no pod on node n1"),
        "{other_node}"
    );
    let wrong_token = ask(id("mesh", "server"), "n2").unwrap_err();
    assert!(
        wrong_token.contains("401"),
        "n1's token must not authenticate n2: {wrong_token}"
    );
    assert!(m.ca.log().contains("refused"), "the CA logs refusals");
}

#[test]
fn rotation_under_traffic_loses_nothing() {
    if !features::require("rotation_under_traffic_loses_nothing", features::CAPTURE) {
        return;
    }
    // 6 s certificates: each identity is renewed every ~3 s during the soak.
    let m = mesh(6);
    let r = probe::run(&m.client, &["soak", &m.server.addr(8080).to_string(), "10"]);
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 20, "{r}");
    for a in [&m.a1, &m.a2] {
        let certs = a.config_dump()["certificates"].as_array().cloned().unwrap();
        for c in certs {
            assert!(
                c["issued"].as_u64().unwrap() >= 3,
                "renewed during the soak: {c}"
            );
        }
    }
}

#[test]
fn ca_down_agents_keep_serving_with_certificates_on_disk() {
    if !features::require(
        "ca_down_agents_keep_serving_with_certificates_on_disk",
        features::CAPTURE,
    ) {
        return;
    }
    // 20 s certificates: renewal (due at ~9-10 s) happens while the CA is down.
    let mut m = mesh(20);
    m.ca.kill();
    m.a2.restart();
    let entry = m.a2.wait_enrolled(&m.server);
    assert_eq!(
        entry["identity"],
        "spiffe://cluster.local/ns/mesh/sa/server"
    );
    let dump = m.a2.config_dump();
    assert_eq!(
        dump["certificates"][0]["loaded_from_disk"], true,
        "{}",
        dump["certificates"]
    );
    let mut c = Client::start(&mut m.topo, &m.client);
    let r = c.connect(m.server.addr(8080), 256 * 1024);
    assert!(
        r.ok() && r.intact(),
        "restarted agent serves with its certificate from disk: {:?}",
        r.raw
    );

    eventually(
        "the failing renewal to be reported",
        Duration::from_secs(20),
        || {
            let (_, body) = m.a1.get("/healthz/ready").ok()?;
            body.contains("renewal failing, last good kept")
                .then_some(())
        },
    );
    let r = c.connect(m.server.addr(8080), 256 * 1024);
    assert!(
        r.ok() && r.intact(),
        "traffic keeps flowing while the CA is down: {:?}",
        r.raw
    );
}

#[test]
fn new_tunnels_present_the_renewed_certificate() {
    renewed_certificate_on_new_tunnels("new_tunnels_present_the_renewed_certificate", "h2");
}

#[test]
fn new_quic_tunnels_present_the_renewed_certificate() {
    renewed_certificate_on_new_tunnels("new_quic_tunnels_present_the_renewed_certificate", "quic");
}

/// After a renewal, the next tunnel connection presents the renewed certificate: the pooled
/// connection opened with the old one is not reused (it would go on presenting it, expired).
fn renewed_certificate_on_new_tunnels(test: &str, tunnel: &str) {
    if !features::require(test, features::CAPTURE) {
        return;
    }
    // One agent (n1), 6 s certificates. mesh/server on n2 has no agent: a test HBONE endpoint
    // (TCP and UDP :15008) stands in for it and records the client certificate of every mTLS
    // handshake.
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    let client = topo.pod(&n1, "mesh", "client");
    let server = topo.pod(&n2, "mesh", "server");
    probe::serve(&mut topo, &server, &[8080]);
    topo.apply("mesh-config", &weft_tests::fixture::mesh_config(tunnel));
    let ca = Ca::start(&topo, &n1, 15012, 6, TD);
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    a1.wait_enrolled(&client);
    a1.wait_tunnel(tunnel);
    a1.wait_certificates();
    let me = peer::mint(
        &ca.state_dir,
        TD,
        Duration::from_secs(3600),
        &id("mesh", "server"),
    );
    let seen = recording_hbone(&server, me);

    let mut c = Client::start(&mut topo, &client);
    let first = c.connect(server.addr(8080), 4096);
    assert!(first.ok() && first.intact(), "{:?}", first.raw);
    let (before, not_after) = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one tunnel connection so far: {seen:?}");
        assert_eq!(seen[0].0, tunnel, "{seen:?}");
        (seen[0].1, seen[0].2)
    };
    // Until the first certificate has expired and a renewed one is in use.
    eventually(
        "the first certificate to expire",
        Duration::from_secs(20),
        || {
            let renewed = a1.wait_certificates()[0]["issued"].as_u64() >= Some(2);
            (renewed && SystemTime::now() > not_after).then_some(())
        },
    );
    let second = c.connect(server.addr(8080), 4096);
    assert!(second.ok() && second.intact(), "{:?}", second.raw);
    let seen = seen.lock().unwrap().clone();
    let (transport, renewed_from, renewed_until) = *seen.last().expect("handshakes");
    assert!(
        seen.len() >= 2 && renewed_from > before,
        "a new connection after renewal presents the renewed certificate; saw {seen:?}"
    );
    assert_eq!(transport, tunnel, "{seen:?}");
    assert!(
        renewed_until > SystemTime::now(),
        "presented an unexpired certificate"
    );
}

/// Per mTLS handshake: the transport, and the client certificate's not-before and not-after.
type Seen = Arc<Mutex<Vec<(&'static str, SystemTime, SystemTime)>>>;

/// An HBONE endpoint on `pod`'s :15008 presenting `me`: records the validity of each client
/// certificate it is shown and relays each CONNECT to the pod's own port.
fn recording_hbone(pod: &Pod, me: peer::Minted) -> Seen {
    let seen = Seen::default();
    let ns = pod.netns.clone();
    let (tcp, udp) = netns::run_in(&ns, || {
        let tcp = std::net::TcpListener::bind("0.0.0.0:15008").expect("bind TCP :15008");
        let udp = std::net::UdpSocket::bind("0.0.0.0:15008").expect("bind UDP :15008");
        (tcp, udp)
    })
    .expect("netns");
    tcp.set_nonblocking(true).expect("nonblocking");
    udp.set_nonblocking(true).expect("nonblocking");
    let tls = server_tls(me);
    let record = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let quic = mesh_agent::tunnel::quic::server::endpoint(udp, &tls).expect("endpoint");
            tokio::spawn(recording_quic(quic, record.clone(), ns.clone()));
            recording_h2(tcp, tls, record, ns).await
        });
    });
    seen
}

fn leaf_validity(
    chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Option<(SystemTime, SystemTime)> {
    let leaf = chain?.first()?;
    Some(mesh_agent::identity::manager::validity(leaf).expect("x509"))
}

async fn recording_h2(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    record: Seen,
    ns: String,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let tls = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (tls, record, ns) = (tls.clone(), record.clone(), ns.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            if let Some((from, until)) = leaf_validity(stream.get_ref().1.peer_certificates()) {
                record.lock().unwrap().push(("h2", from, until));
            }
            serve_connects(stream, ns).await;
        });
    }
}

/// The QUIC tunnel's side: each bidirectional stream a CONNECT header, answered 200, relayed.
async fn recording_quic(endpoint: quinn::Endpoint, record: Seen, ns: String) {
    use mesh_agent::tunnel::quic::header;
    while let Some(incoming) = endpoint.accept().await {
        let (record, ns) = (record.clone(), ns.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let chain = conn.peer_identity().and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            });
            if let Some((from, until)) = leaf_validity(chain.as_deref().map(Vec::as_slice)) {
                record.lock().unwrap().push(("quic", from, until));
            }
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let ns = ns.clone();
                tokio::spawn(async move {
                    let Ok(req) = header::read_request(&mut recv).await else {
                        return;
                    };
                    let port = req
                        .authority
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                    let up = netns::run_in(&ns, move || {
                        std::net::TcpStream::connect(("127.0.0.1", port.unwrap_or(0)))
                    });
                    let Ok(Ok(up)) = up else { return };
                    up.set_nonblocking(true).expect("nonblocking");
                    let up = tokio::net::TcpStream::from_std(up).expect("tokio stream");
                    if header::write_status(&mut send, 200).await.is_err() {
                        return;
                    }
                    let (mut rd, mut wr) = up.into_split();
                    let _ = tokio::join!(
                        async {
                            let _ = tokio::io::copy(&mut recv, &mut wr).await;
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
                        },
                        async {
                            let _ = tokio::io::copy(&mut rd, &mut send).await;
                            let _ = send.finish();
                        }
                    );
                });
            }
        });
    }
}

fn server_tls(me: peer::Minted) -> Arc<rustls::ServerConfig> {
    let bundle = Arc::new(mesh_agent::tls::TrustBundle::default());
    bundle.set(&me.roots).expect("roots");
    let verifier = mesh_agent::tls::verify::ClientIdentityVerifier {
        bundle,
        trust_domain: TD.into(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(mesh_agent::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(me.chain, me.key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Each CONNECT: 200, then bytes both ways with the target port on the pod's loopback.
async fn serve_connects<S>(stream: S, ns: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let port = req.uri().port_u16().unwrap_or(0);
        let ns = ns.clone();
        tokio::spawn(async move {
            let up = netns::run_in(&ns, move || {
                std::net::TcpStream::connect(("127.0.0.1", port))
            });
            let Ok(Ok(up)) = up else { return };
            up.set_nonblocking(true).expect("nonblocking");
            let up = tokio::net::TcpStream::from_std(up).expect("tokio stream");
            let ok = http::Response::builder()
                .status(200)
                .body(())
                .expect("response");
            let Ok(mut send) = respond.send_response(ok, false) else {
                return;
            };
            let (mut rd, mut wr) = up.into_split();
            let mut body = req.into_body();
            let down = async move {
                while let Some(Ok(d)) = body.data().await {
                    let _ = body.flow_control().release_capacity(d.len());
                    if wr.write_all(&d).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let upward = async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = rd.read(&mut buf).await {
                    send.reserve_capacity(n);
                    if send
                        .send_data(bytes::Bytes::copy_from_slice(&buf[..n]), false)
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = send.send_data(bytes::Bytes::new(), true);
            };
            tokio::join!(down, upward);
        });
    }
}
