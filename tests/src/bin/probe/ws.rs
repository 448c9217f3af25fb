//! `weft-probe ws-serve` and `ws-call`: a WebSocket echo server and client on
//! tokio-tungstenite (the HTTP/1.1 Upgrade handshake, framing, masking and the close
//! handshake all done by the crate), so L7 tests see what a browser's WebSocket would.
//!   ws-serve --name NAME --ports P   echoes every text and binary message; the handshake's
//!                                    response carries `x-server: NAME`
//!   ws-call URL                      sends text and binary messages of several sizes, each
//!                                    after the previous came back, then closes; one JSON line:
//!       {"status", "server", "sent", "echoed", "mismatched", "close_code", "close_reason",
//!        "closed_cleanly", "error"}

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};
use weft_tests::pattern;

const TIMEOUT: Duration = Duration::from_secs(20);
/// Payload sizes around the frame-length encodings (7-bit, 16-bit, 64-bit lengths) and past
/// a TCP window.
const SIZES: [usize; 7] = [0, 1, 125, 126, 65_535, 65_536, 300_000];
const CLOSE_REASON: &str = "weft-probe done";

pub fn serve(name: &str, ports: &str) {
    let rt = runtime();
    let name: Arc<str> = name.into();
    rt.block_on(async move {
        for p in ports.split(',') {
            let addr: SocketAddr = ([0, 0, 0, 0], p.parse::<u16>().expect("port")).into();
            let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let name = name.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(echo(name.clone(), s));
                }
            });
        }
        println!("ready");
        std::future::pending::<()>().await
    })
}

async fn echo(name: Arc<str>, s: tokio::net::TcpStream) {
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let tag = |_: &Request, mut resp: Response| {
        if let Ok(v) = http::HeaderValue::from_str(&name) {
            resp.headers_mut().insert("x-server", v);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, tag).await else {
        return;
    };
    // A Close from the client is answered by the crate; the stream then ends.
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            break;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Message `i`: text (printable) for even `i`, binary for odd, of `size` bytes.
fn message(i: usize, size: usize) -> Message {
    let bytes = (0..size as u64).map(|k| pattern(((i as u64) << 32) | k));
    if i.is_multiple_of(2) {
        Message::text(bytes.map(|b| char::from(b'a' + b % 26)).collect::<String>())
    } else {
        Message::binary(bytes.collect::<Bytes>())
    }
}

pub fn call(url: &str) {
    let out = runtime().block_on(async {
        match tokio::time::timeout(TIMEOUT, exchange(url)).await {
            Ok(v) => v,
            Err(_) => json!({"error": "timed out"}),
        }
    });
    println!("{out}");
}

async fn exchange(url: &str) -> Value {
    let (mut ws, resp) = match tokio_tungstenite::connect_async(url).await {
        Ok(c) => c,
        Err(e) => return json!({"error": format!("handshake: {e}")}),
    };
    let server = resp
        .headers()
        .get("x-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut report = json!({"status": resp.status().as_u16(), "server": server});
    let (mut sent, mut echoed, mut mismatched) = (0, 0, 0);
    // Each size as text and as binary.
    for (i, size) in SIZES.iter().flat_map(|s| [*s, *s]).enumerate() {
        let m = message(i, size);
        if let Err(e) = ws.send(m.clone()).await {
            report["error"] = json!(format!("send {i}: {e}"));
            break;
        }
        sent += 1;
        match ws.next().await {
            Some(Ok(back)) => {
                echoed += 1;
                if back != m {
                    mismatched += 1;
                }
            }
            other => {
                report["error"] = json!(format!("message {i}: {other:?}"));
                break;
            }
        }
    }
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: CLOSE_REASON.into(),
    };
    // The close handshake: ours, then the server's answer, then the end of the stream.
    let closing = ws.close(Some(frame)).await;
    let mut answer = None;
    let mut after = 0;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(f)) => answer = Some(f),
            Ok(_) => after += 1,
            Err(e) => {
                report["close_error"] = json!(e.to_string());
                break;
            }
        }
    }
    let (code, reason) = match answer.flatten() {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (0, String::new()),
    };
    report["sent"] = json!(sent);
    report["echoed"] = json!(echoed);
    report["mismatched"] = json!(mismatched);
    report["close_code"] = json!(code);
    report["close_reason"] = json!(reason);
    report["closed_cleanly"] =
        json!(closing.is_ok() && code != 0 && after == 0 && report.get("close_error").is_none());
    report
}
