//! The request and response that open a QUIC tunnel stream (the CONNECT of HBONE, in bytes):
//!
//! - request: version `2`, one byte of length, the authority `IP:port` (the original
//!   destination) in UTF-8, then the connection id in 16 bytes (big-endian; all zeros: none).
//!   Version `1` is the same without the id: what agents of the previous version send and
//!   read (ALPN `weft-hbone-quic/1`); a connection from such a peer gets a fresh id here;
//! - response: the HTTP status as two bytes, big-endian (200 to go on; 400, 403, 503 refused,
//!   the same codes as over h2).
//!
//! Anything else is an error that names what was wrong; nothing here panics on garbage.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tunnel::traceparent::ConnectionId;

pub const VERSION: u8 = 2;
/// The version before the connection id, still accepted.
const VERSION_WITHOUT_ID: u8 = 1;

/// What a tunnel stream asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub authority: String,
    /// The source agent's id of the connection; None from a peer that sent none.
    pub id: Option<ConnectionId>,
}

pub async fn write_request(
    w: &mut (impl AsyncWrite + Unpin),
    authority: &str,
    id: Option<ConnectionId>,
) -> io::Result<()> {
    let len = u8::try_from(authority.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "authority too long"))?;
    let mut buf = Vec::with_capacity(2 + authority.len() + 16);
    let version = if id.is_some() {
        VERSION
    } else {
        VERSION_WITHOUT_ID
    };
    buf.extend_from_slice(&[version, len]);
    buf.extend_from_slice(authority.as_bytes());
    if let Some(id) = id {
        buf.extend_from_slice(&id.to_bytes());
    }
    w.write_all(&buf).await
}

/// Reads a request; the error is the reason to log.
pub async fn read_request(r: &mut (impl AsyncRead + Unpin)) -> Result<Request, String> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)
        .await
        .map_err(|e| format!("no tunnel header: {e}"))?;
    if head[0] != VERSION && head[0] != VERSION_WITHOUT_ID {
        return Err(format!(
            "unknown tunnel header version {} (expected {VERSION})",
            head[0]
        ));
    }
    let mut authority = vec![0u8; usize::from(head[1])];
    r.read_exact(&mut authority)
        .await
        .map_err(|e| format!("truncated tunnel header: {e}"))?;
    let authority =
        String::from_utf8(authority).map_err(|_| "tunnel authority is not UTF-8".to_string())?;
    let mut id = None;
    if head[0] == VERSION {
        let mut b = [0u8; 16];
        r.read_exact(&mut b)
            .await
            .map_err(|e| format!("truncated tunnel header (connection id): {e}"))?;
        id = ConnectionId::from_bytes(b);
    }
    Ok(Request { authority, id })
}

pub async fn write_status(w: &mut (impl AsyncWrite + Unpin), status: u16) -> io::Result<()> {
    w.write_all(&status.to_be_bytes()).await
}

pub async fn read_status(r: &mut (impl AsyncRead + Unpin)) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).await?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_round_trips() {
        let id = ConnectionId::new();
        let mut buf = Vec::new();
        write_request(&mut buf, "10.0.0.7:8080", Some(id))
            .await
            .unwrap();
        assert_eq!(&buf[..2], &[2, 13]);
        assert_eq!(buf.len(), 2 + 13 + 16);
        let req = read_request(&mut &buf[..]).await.unwrap();
        assert_eq!(req.authority, "10.0.0.7:8080");
        assert_eq!(req.id, Some(id), "the connection id crosses");
        // An older peer's version 1: no id, still served; and written for one.
        let v1 = [&[1u8, 13][..], b"10.0.0.7:8080"].concat();
        let mut written = Vec::new();
        write_request(&mut written, "10.0.0.7:8080", None)
            .await
            .unwrap();
        assert_eq!(written, v1);
        let req = read_request(&mut &v1[..]).await.unwrap();
        assert_eq!((req.authority.as_str(), req.id), ("10.0.0.7:8080", None));
        let mut status = Vec::new();
        write_status(&mut status, 403).await.unwrap();
        assert_eq!(read_status(&mut &status[..]).await.unwrap(), 403);
    }

    #[tokio::test]
    async fn garbage_is_named_not_panicked_on() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "no tunnel header"),
            (b"GET / HTTP/1.1\r\n", "unknown tunnel header version 71"),
            (&[1, 20, b'1', b'0'], "truncated tunnel header"),
            (&[1, 2, 0xff, 0xfe], "not UTF-8"),
            (
                &[2, 1, b'1', 7, 7],
                "truncated tunnel header (connection id)",
            ),
        ];
        for (bytes, expected) in cases {
            let err = read_request(&mut &bytes[..]).await.unwrap_err();
            assert!(err.contains(expected), "{bytes:?}: {err}");
        }
        let long = "1".repeat(300);
        assert!(write_request(&mut Vec::new(), &long, None).await.is_err());
    }
}
