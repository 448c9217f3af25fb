//! The small HTTP/1 servers of the agent and the CA: admin (:15000), Prometheus (:15020) and
//! certificate signing (:15012). Their own module, below `admin`, `metrics` and `ca`, because
//! all three need the same protection and none should depend on another: a peer gets a bounded
//! number of connections (`accept::Caps`), must send its request headers within
//! `HEADER_READ_TIMEOUT` (an idle or half-open connection is closed, not kept), and accept
//! errors never end or spin a server (`accept::Acceptor`).

pub mod accept;

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinHandle,
};
use tracing::debug;

pub use accept::{Accepted, Acceptor, Caps};

/// A request's headers must arrive within this of the connection opening (or of the previous
/// response, on a kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's name (for logs) and its limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub server: &'static str,
    pub caps: Caps,
    pub header_read_timeout: Duration,
}

/// 127.0.0.1 only: meshctl, the kubelet's probes, an operator's curl.
pub const ADMIN: Limits = Limits {
    server: "admin",
    caps: Caps {
        total: 64,
        per_peer: 64,
    },
    header_read_timeout: HEADER_READ_TIMEOUT,
};

/// All addresses: Prometheus scrapes hold one connection per target.
pub const METRICS: Limits = Limits {
    server: "metrics",
    caps: Caps {
        total: 256,
        per_peer: 32,
    },
    header_read_timeout: HEADER_READ_TIMEOUT,
};

/// Every agent of the cluster; one connection per signing request, a node's identities may
/// renew together.
pub const CA: Limits = Limits {
    server: "ca",
    caps: Caps {
        total: 4096,
        per_peer: 256,
    },
    header_read_timeout: HEADER_READ_TIMEOUT,
};

/// Serves HTTP/1 on `listener` within `limits`, each request answered by `handler` (small,
/// in-memory answers).
pub fn spawn<F, Fut>(listener: TcpListener, limits: Limits, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let mut acceptor = Acceptor::new(listener, limits.server, limits.caps);
    tokio::spawn(async move {
        loop {
            let Accepted { conn, slot, .. } = acceptor.next().await;
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                serve_connection(conn, &limits, svc).await;
                drop(slot);
            });
        }
    })
}

/// One HTTP/1 connection (plain TCP, or TLS as the CA's) with the header-read timeout.
pub async fn serve_connection<I, S>(io: I, limits: &Limits, svc: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = served {
        debug!(server = limits.server, error = %e, "http connection");
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const TEST: Limits = Limits {
        server: "test",
        caps: Caps {
            total: 8,
            per_peer: 8,
        },
        header_read_timeout: Duration::from_millis(300),
    };

    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(listener, TEST, |_req| async {
            Response::new(Full::new(Bytes::from_static(b"ok")))
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_headers_is_closed_after_the_timeout() {
        let addr = server().await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let started = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("the server closes an idle connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_prompt_request_is_answered() {
        let addr = server().await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.0 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
