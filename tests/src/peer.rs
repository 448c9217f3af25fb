//! A test-controlled HBONE peer: certificates minted directly from a CA's root files (so a test
//! can present any identity, an expired certificate, or another trust domain's), and an mTLS +
//! HTTP/2 CONNECT client dialing from inside a pod's netns.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use mesh_agent::{
    ca::Authority,
    identity::Identity,
    tls::{verify::ServerIdentityVerifier, TrustBundle},
};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};

use crate::netns;

/// A certificate and key for `id`, signed by the CA whose state is in `ca_state_dir`.
pub struct Minted {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

pub fn mint(ca_state_dir: &Path, trust_domain: &str, lifetime: Duration, id: &Identity) -> Minted {
    let authority =
        Authority::load_or_create(ca_state_dir, trust_domain, lifetime).expect("CA material");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().expect("uri"))];
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let signed = authority.sign(&csr, |_| Ok(())).expect("signed");
    let pems = |p: &str| {
        CertificateDer::pem_slice_iter(p.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem")
    };
    Minted {
        chain: pems(&signed.chain.concat()),
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key pem"),
        roots: pems(&signed.root),
    }
}

/// What happened to one CONNECT attempt.
#[derive(Debug)]
pub enum Outcome {
    /// The tunnel answered with this HTTP status.
    Status(u16),
    /// TLS or HTTP/2 failed before an answer: the message says why.
    Refused(String),
}

/// Dials `hbone` from inside netns `from_ns`, presents `me`, requires the server to be
/// `expect` (verified against `trust` roots), and sends CONNECT `target`. On 200, writes
/// `payload` and returns what came back.
pub fn connect(
    from_ns: &str,
    me: &Minted,
    trust: &[CertificateDer<'static>],
    hbone: SocketAddr,
    expect: &Identity,
    target: SocketAddr,
    payload: &[u8],
) -> (Outcome, Vec<u8>) {
    connect_with_headers(from_ns, me, trust, hbone, expect, target, &[], payload)
}

/// As `connect`, with extra request headers on the CONNECT (what ztunnel sends, e.g.
/// `traceparent`).
#[allow(clippy::too_many_arguments)]
pub fn connect_with_headers(
    from_ns: &str,
    me: &Minted,
    trust: &[CertificateDer<'static>],
    hbone: SocketAddr,
    expect: &Identity,
    target: SocketAddr,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> (Outcome, Vec<u8>) {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tcp = netns::run_in(from_ns, move || {
        std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(5))
    })
    .expect("netns")
    .expect("tcp connect to hbone");
    tcp.set_nonblocking(true).expect("nonblocking");
    let cfg = client_tls(me, trust, expect, b"h2");
    let payload = payload.to_vec();
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp).expect("tokio tcp");
        let name = ServerName::IpAddress(hbone.ip().into());
        let tls = match tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
        {
            Ok(t) => t,
            Err(e) => return (Outcome::Refused(e.to_string()), vec![]),
        };
        let (mut sender, conn) = match h2::client::handshake(tls).await {
            Ok(x) => x,
            Err(e) => return (Outcome::Refused(format!("http/2: {e}")), vec![]),
        };
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string());
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let req = req.body(()).expect("req");
        let (resp, mut send) = match sender.send_request(req, false) {
            Ok(x) => x,
            Err(e) => return (Outcome::Refused(format!("send: {e}")), vec![]),
        };
        let resp = match resp.await {
            Ok(r) => r,
            Err(e) => return (Outcome::Refused(format!("response: {e}")), vec![]),
        };
        let status = resp.status().as_u16();
        let mut got = Vec::new();
        if status == 200 {
            let _ = send.send_data(Bytes::from(payload.clone()), false);
            let mut body = resp.into_body();
            while got.len() < payload.len() + 200 {
                match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
                    Ok(Some(Ok(d))) => {
                        let _ = body.flow_control().release_capacity(d.len());
                        got.extend_from_slice(&d);
                        if got.ends_with(&payload) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        (Outcome::Status(status), got)
    })
}

/// As `connect`, over the QUIC transport (UDP `addr`, one stream with the CONNECT header), as an
/// agent of the previous version speaks it: ALPN `weft-hbone-quic/1`, no connection id.
pub fn connect_quic(
    from_ns: &str,
    me: &Minted,
    trust: &[CertificateDer<'static>],
    addr: SocketAddr,
    expect: &Identity,
    target: SocketAddr,
    payload: &[u8],
) -> (Outcome, Vec<u8>) {
    use mesh_agent::tunnel::quic::{header, ALPN_QUIC};
    let udp = netns::run_in(from_ns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("udp socket");
    udp.set_nonblocking(true).expect("nonblocking");
    let cfg = client_tls(me, trust, expect, ALPN_QUIC);
    let payload = payload.to_vec();
    runtime().block_on(async move {
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            udp,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic tls");
        let connecting = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                addr,
                &addr.ip().to_string(),
            )
            .expect("connect");
        let refused = |e: &dyn std::fmt::Display| (Outcome::Refused(e.to_string()), vec![]);
        let conn = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return refused(&e),
            Err(_) => return refused(&"QUIC handshake timed out"),
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return refused(&e),
        };
        if let Err(e) = header::write_request(&mut send, &target.to_string(), None).await {
            return refused(&e);
        }
        let status = match tokio::time::timeout(
            Duration::from_secs(5),
            header::read_status(&mut recv),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return refused(&format!("{e} ({:?})", conn.close_reason())),
            Err(_) => return refused(&"no answer"),
        };
        let mut got = Vec::new();
        if status == 200 {
            let _ = send.write_all(&payload).await;
            let mut buf = vec![0u8; 64 * 1024];
            while !got.ends_with(&payload) {
                match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await {
                    Ok(Ok(Some(n))) => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        }
        // Close as an agent would, so the server ends the stream now, not at its idle timeout.
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        (Outcome::Status(status), got)
    })
}

/// A client TLS config presenting `me` and requiring the server to be `expect`.
pub fn client_tls(
    me: &Minted,
    trust: &[CertificateDer<'static>],
    expect: &Identity,
    alpn: &[u8],
) -> rustls::ClientConfig {
    let bundle = Arc::new(TrustBundle::default());
    bundle.set(trust).expect("trust");
    let verifier = ServerIdentityVerifier {
        bundle,
        expected: expect.clone(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(mesh_agent::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(me.chain.clone(), me.key.clone_key())
        .expect("client cert");
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends `datagrams` to UDP `addr` from inside `from_ns`: garbage for the QUIC endpoint.
pub fn udp_garbage(from_ns: &str, addr: SocketAddr, datagrams: &[&[u8]]) {
    let datagrams: Vec<Vec<u8>> = datagrams.iter().map(|d| d.to_vec()).collect();
    netns::run_in(from_ns, move || -> std::io::Result<()> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for d in &datagrams {
            s.send_to(d, addr)?;
        }
        Ok(())
    })
    .expect("netns")
    .expect("send garbage");
}

/// Writes `bytes` to `addr` from inside `from_ns` and reads until the server closes (or 5 s):
/// what a client speaking the wrong protocol gets back.
pub fn raw(from_ns: &str, addr: SocketAddr, bytes: &'static [u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    netns::run_in(from_ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(bytes)?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(out)
    })?
}

/// A fake HBONE endpoint on `addr` inside `ns`, presenting `me`: it completes mTLS and the
/// HTTP/2 handshake, accepts CONNECT streams and never answers them (a destination whose agent
/// hangs). Returns how many CONNECTs it has received; it serves until the test process ends.
pub fn silent_hbone(
    ns: &str,
    me: &Minted,
    addr: SocketAddr,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let listener = netns::run_in(ns, move || std::net::TcpListener::bind(addr))
        .expect("netns")
        .expect("bind the fake :15008");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut cfg = rustls::ServerConfig::builder_with_provider(mesh_agent::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(me.chain.clone(), me.key.clone_key())
        .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    let mut held = Vec::new(); // unanswered, not dropped
                    while let Some(Ok(stream)) = conn.accept().await {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        held.push(stream);
                    }
                });
            }
        })
    });
    seen
}
