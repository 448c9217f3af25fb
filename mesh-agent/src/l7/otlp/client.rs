//! One OTLP/HTTP export: POST the protobuf body to the collector over HTTP/1.1 (hyper),
//! keeping the connection for the next batch while the collector keeps it open.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;

use crate::state::OtlpTarget;

pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// A collector's answer is a few bytes; more is not read.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("resolve {0}: no address")]
    NoAddress(String),
    #[error("connect {0}: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("collector answered {0}: {1}")]
    Status(u16, String),
    #[error("reading the collector's answer: {0}")]
    Body(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub struct Client {
    target: OtlpTarget,
    timeout: Duration,
    conn: Option<Conn>,
}

/// A connection and the task driving it; dropping it ends the task, so a collector that stops
/// answering mid-response costs no lingering task.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    pub fn new(target: OtlpTarget, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            conn: None,
        }
    }

    /// Sends one `ExportTraceServiceRequest` body; Ok gives the spans the collector says it
    /// rejected (OTLP partial success). Resolving, connecting and the answer share one timeout.
    pub async fn export(&mut self, body: Bytes) -> Result<u64, ExportError> {
        match tokio::time::timeout(self.timeout, self.post(body)).await {
            Ok(r) => r,
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        }
    }

    async fn post(&mut self, body: Bytes) -> Result<u64, ExportError> {
        // Taken out: put back only when the exchange completed, so a connection left in an
        // unknown state (an error, a timeout mid-request) is never reused.
        if let Some(kept) = self.conn.take().filter(|c| !c.sender.is_closed()) {
            match self.exchange(kept, body.clone()).await {
                // The collector closed the idle connection as we sent: once more, on a new one.
                Err(ExportError::Http(e)) => {
                    tracing::debug!(collector = %self.target, error = %e, "kept connection failed")
                }
                other => return other,
            }
        }
        let fresh = self.connect().await?;
        self.exchange(fresh, body).await
    }

    async fn exchange(&mut self, mut conn: Conn, body: Bytes) -> Result<u64, ExportError> {
        conn.sender.ready().await?;
        let req = http::Request::post(self.target.path.as_str())
            .header(http::header::HOST, self.target.authority())
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(body))
            .map_err(|e| ExportError::Body(e.to_string()))?;
        let resp = conn.sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ExportError::Body(e.to_string()))?
            .to_bytes();
        self.conn = Some(conn);
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(ExportError::Status(status.as_u16(), text));
        }
        // An empty or undecodable answer is a full success: the collector took the batch.
        Ok(ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)))
    }

    async fn connect(&self) -> Result<Conn, ExportError> {
        let name = self.target.authority();
        let addr = tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| ExportError::Resolve(name.clone(), e))?
            .next()
            .ok_or(ExportError::NoAddress(name))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ExportError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(collector = %addr, error = %e, "otlp connection ended");
            }
        });
        Ok(Conn { sender, task })
    }
}
