//! A worker's HTTP connections to endpoints, pooled and reused: HTTP/1.1 connections go back
//! to an idle list once their exchange is over (keep-alive), an HTTP/2 connection is shared by
//! every request to its endpoint (multiplexing).
//!
//! A connection is keyed by the pod it leaves from (its netns), how it leaves (an HBONE tunnel
//! presenting the SOURCE workload's identity and requiring the destination's, or plain TCP),
//! the endpoint and the HTTP version: two source workloads never share a connection, so the
//! destination's L4 policy by principal still sees who called.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::context::Context;
use crate::{
    config::CONNECT_TIMEOUT,
    identity::Identity,
    metrics::flags,
    netns::{socket::connect_from_pod, Netns},
    state::PodKey,
    tunnel::{quic::client::Failure, traceparent::ConnectionId, TunnelRefused},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response a worker sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per key; more are closed when their exchange ends.
const IDLE_PER_KEY: usize = 32;
/// Keys (pod, endpoint, way, version) kept; past this the oldest-inserted idle lists go.
const MAX_KEYS: usize = 4096;

/// How a connection reaches its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// HBONE to `hbone` presenting `source`, requiring `destination`; QUIC first when asked
    /// (falling back to h2 where UDP does not get through).
    Tunnel {
        source: Identity,
        destination: Identity,
        hbone: SocketAddr,
        quic: bool,
    },
    /// Plain TCP from the pod's netns, from `bind` when given (inbound delivery: 127.0.0.6).
    Direct { bind: Option<SocketAddr> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub pod: PodKey,
    pub endpoint: SocketAddr,
    pub via: Via,
    pub version: Version,
}

/// Why a request got no response from upstream, with Envoy's response flag.
#[derive(Debug)]
pub struct Failed {
    pub error: String,
    /// UF (connect failure), RBAC (the destination's policy refused the tunnel), UC (the
    /// connection ended before a response).
    pub flags: &'static str,
    /// Whether the request surely never reached the application (safe to retry any method).
    pub before_request: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<Key, Vec<Sender>>>,
}

impl Upstreams {
    /// Sends `req` on a pooled connection for `key` (a new one when none is idle).
    pub async fn send(
        self: &Arc<Self>,
        ctx: &Context,
        netns: &Netns,
        key: &Key,
        req: hyper::Request<Body>,
        id: ConnectionId,
    ) -> Result<hyper::Response<Incoming>, Failed> {
        let sender = match self.take(key) {
            Some(s) => s,
            None => self.connect(ctx, netns, key, id, false).await?,
        };
        let failed = |e| request_failed(key, e);
        match sender {
            Sender::H2(mut s) => {
                let resp = s.send_request(req).await.map_err(failed);
                self.put(key.clone(), Sender::H2(s));
                resp
            }
            Sender::H1(mut s) => {
                let resp = s.send_request(req).await.map_err(failed)?;
                // The connection is ready again once this exchange's body is done.
                let pool = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    if s.ready().await.is_ok() {
                        pool.put(key, Sender::H1(s));
                    }
                });
                Ok(resp)
            }
        }
    }

    /// Sends an `Upgrade` request (WebSocket) on a connection of its own, which the upgrade
    /// then takes over.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        ctx: &Context,
        netns: &Netns,
        key: &Key,
        req: hyper::Request<Body>,
        id: ConnectionId,
    ) -> Result<hyper::Response<Incoming>, Failed> {
        let Sender::H1(mut s) = self.connect(ctx, netns, key, id, true).await? else {
            return Err(Failed {
                error: "upgrades need HTTP/1.1 upstream".into(),
                flags: flags::UPSTREAM_FAILURE,
                before_request: true,
            });
        };
        s.send_request(req)
            .await
            .map_err(|e| request_failed(key, e))
    }

    fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("upstream pool lock");
        let list = idle.get_mut(key)?;
        match key.version {
            Version::Http2 => {
                let live = list
                    .iter()
                    .position(|s| matches!(s, Sender::H2(h) if !h.is_closed()))?;
                match &list[live] {
                    Sender::H2(h) => Some(Sender::H2(h.clone())),
                    Sender::H1(_) => None,
                }
            }
            Version::Http1 => {
                while let Some(s) = list.pop() {
                    if let Sender::H1(h) = &s {
                        if h.is_ready() {
                            return Some(s);
                        }
                    }
                }
                None
            }
        }
    }

    fn put(&self, key: Key, sender: Sender) {
        let mut idle = self.idle.lock().expect("upstream pool lock");
        if !idle.contains_key(&key) && idle.len() >= MAX_KEYS {
            // Forget lists whose connections are all gone first; then any.
            idle.retain(|_, l| {
                l.retain(|s| match s {
                    Sender::H1(h) => !h.is_closed(),
                    Sender::H2(h) => !h.is_closed(),
                });
                !l.is_empty()
            });
            if idle.len() >= MAX_KEYS {
                if let Some(k) = idle.keys().next().cloned() {
                    idle.remove(&k);
                }
            }
        }
        let list = idle.entry(key).or_default();
        match &sender {
            // One shared HTTP/2 connection per key: replace a closed one.
            Sender::H2(_) => {
                list.retain(|s| matches!(s, Sender::H2(h) if !h.is_closed()));
                if list.is_empty() {
                    list.push(sender);
                }
            }
            Sender::H1(_) if list.len() < IDLE_PER_KEY => list.push(sender),
            Sender::H1(_) => {}
        }
    }

    async fn connect(
        &self,
        ctx: &Context,
        netns: &Netns,
        key: &Key,
        id: ConnectionId,
        upgrades: bool,
    ) -> Result<Sender, Failed> {
        let io = tokio::time::timeout(CONNECT_TIMEOUT, stream(ctx, netns, key, id))
            .await
            .map_err(|_| Failed {
                error: format!("connect to {} timed out", key.endpoint),
                flags: flags::UPSTREAM_FAILURE,
                before_request: true,
            })??;
        let io = TokioIo::new(io);
        let handshake_failed = |e: hyper::Error| Failed {
            error: format!("HTTP handshake with {}: {e}", key.endpoint),
            flags: flags::UPSTREAM_FAILURE,
            before_request: true,
        };
        let endpoint = key.endpoint;
        match key.version {
            Version::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    let r = if upgrades {
                        conn.with_upgrades().await
                    } else {
                        conn.await
                    };
                    if let Err(e) = r {
                        debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended");
                    }
                });
                Ok(Sender::H1(sender))
            }
            Version::Http2 => {
                let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(std::time::Duration::from_secs(30))
                    .keep_alive_timeout(std::time::Duration::from_secs(10))
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                Ok(Sender::H2(sender))
            }
        }
    }
}

/// A request that got no response: canceled before it was sent (safe to retry) or cut.
fn request_failed(key: &Key, e: hyper::Error) -> Failed {
    Failed {
        before_request: e.is_canceled(),
        error: format!("upstream {}: {e}", key.endpoint),
        flags: flags::UPSTREAM_RESET,
    }
}

/// The byte stream to the endpoint, as `key.via` says.
async fn stream(
    ctx: &Context,
    netns: &Netns,
    key: &Key,
    id: ConnectionId,
) -> Result<Box<dyn Io>, Failed> {
    let failed = |e: io::Error| Failed {
        flags: if TunnelRefused::is_denial(&e) {
            flags::DENIED
        } else {
            flags::UPSTREAM_FAILURE
        },
        error: format!("connect to {}: {e}", key.endpoint),
        before_request: true,
    };
    match &key.via {
        Via::Tunnel {
            source,
            destination,
            hbone,
            quic,
        } => {
            if *quic {
                match ctx
                    .quic
                    .connect(netns, source, destination, *hbone, key.endpoint, id)
                    .await
                {
                    Ok(s) => return Ok(Box::new(s)),
                    Err(Failure::Refused(e)) => return Err(failed(e)),
                    Err(Failure::Unavailable(e)) => {
                        debug!(error = %e, "QUIC unavailable; tunneling over h2")
                    }
                }
            }
            let s = ctx
                .pool
                .connect(netns, source, destination, *hbone, key.endpoint, id, None)
                .await
                .map_err(failed)?;
            Ok(Box::new(s))
        }
        Via::Direct { bind } => {
            let s = connect_from_pod(netns, key.endpoint, *bind)
                .await
                .map_err(failed)?;
            Ok(Box::new(s))
        }
    }
}
