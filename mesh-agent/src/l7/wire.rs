//! The socket between the agent and one L7 worker: length-prefixed frames over a SOCK_STREAM
//! socketpair, file descriptors passed with SCM_RIGHTS, JSON messages inside.
//!
//! A stream rather than SOCK_SEQPACKET: a snapshot is the whole `State` and can be megabytes,
//! while a seqpacket message must fit the socket's send buffer (about 200 KiB by default), so
//! snapshots would need fragmenting and reassembly anyway. On a stream the kernel attaches
//! passed descriptors to the first byte of the `sendmsg` that carried them, so by the time a
//! frame's last byte has been read its descriptors have arrived: the reader queues what
//! arrives and each frame claims as many as its header names.
//!
//! A frame: body length (u32, big endian), number of descriptors (u8), body.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    sync::Arc,
};

use bytes::{Buf as _, Bytes, BytesMut};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::{handoff::Handoff, snapshot::Snapshot};

const HEADER: usize = 5;
/// The largest frame body either side accepts (a snapshot of a large cluster fits).
pub const MAX_FRAME: usize = 64 << 20;
/// Descriptors one frame may carry (a hand-off carries two: the connection, the pod's netns).
pub const MAX_FDS: usize = 2;
/// Descriptors that may wait for their frame; more means the peer is not following the
/// protocol (the kernel hands over the descriptors of one `sendmsg` per `recvmsg`).
const MAX_PENDING_FDS: usize = 8;
const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME}")]
    Oversize { len: usize },
    #[error("frame names {0} descriptors, over the limit of {MAX_FDS}")]
    TooManyFds(usize),
    #[error("frame names {want} descriptors but {have} arrived")]
    MissingFds { want: usize, have: usize },
    #[error("{0} passed descriptors wait for no frame")]
    StrayFds(usize),
    #[error("passed descriptors were truncated")]
    Truncated,
    #[error("socket closed in the middle of a frame ({0} bytes unread)")]
    Eof(usize),
    #[error("message: {0}")]
    Json(#[from] serde_json::Error),
}

/// One frame as read: its body and the descriptors that came with it (owned: closed on drop).
#[derive(Debug)]
pub struct Frame {
    pub body: Bytes,
    pub fds: Vec<OwnedFd>,
}

/// What the agent sends a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Snapshot(Snapshot),
    /// Carries two descriptors: the connection, then the pod's netns.
    Handoff(Handoff),
    Ping {
        seq: u64,
    },
    /// The log filter (tracing EnvFilter syntax) the agent's `/logging` set: the worker
    /// applies it to its own logging.
    Log {
        filter: String,
    },
    /// The agent drains (it is being replaced): finish the in-flight requests (HTTP/1.1
    /// answers with `Connection: close`, HTTP/2 sends GOAWAY), then exit once no connection is
    /// left. New connections go to the new agent's workers.
    Drain,
}

/// What a worker sends its agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToAgent {
    /// The snapshot of `version` is in force; `errors` are the parts of it that were not
    /// (a certificate that did not verify keeps the previous one).
    Applied { version: u64, errors: Vec<String> },
    /// A snapshot that could not be read at all: the previous one stays in force.
    Rejected { error: String },
    Pong {
        seq: u64,
        /// Connections the worker is serving.
        connections: u64,
        /// Requests whose batch the worker dropped because its queue to the agent was full.
        reports_dropped: u64,
        /// Spans the worker's exporter got accepted by the collector, and dropped; like
        /// `reports_dropped`, totals since the worker started (the agent counts the deltas).
        #[serde(default)]
        spans_exported: u64,
        #[serde(default)]
        spans_dropped: u64,
    },
    /// The requests finished since the last batch: metric deltas and access-log lines.
    Requests(Box<super::outbox::RequestBatch>),
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, WireError> {
    Ok(serde_json::to_vec(msg)?.into())
}

/// Makes one end of a socketpair usable from tokio and splits it into its two directions.
#[allow(unsafe_code)]
pub fn split(sock: UnixStream) -> io::Result<(FrameReader, FrameWriter)> {
    sock.set_nonblocking(true)?;
    // Safety: the AsyncFd owns the UnixStream, whose descriptor stays open and the same until
    // the AsyncFd drops it.
    let sock = unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)?;
    let sock = Arc::new(sock);
    let reader = FrameReader {
        sock: sock.clone(),
        buf: BytesMut::new(),
        scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        fds: VecDeque::new(),
    };
    Ok((reader, FrameWriter { sock }))
}

pub struct FrameReader {
    sock: Arc<AsyncFd<UnixStream>>,
    buf: BytesMut,
    scratch: Box<[u8]>,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    /// The next frame; None when the peer closed the socket between frames. An error means
    /// the stream can no longer be trusted to be in step: the caller drops the socket.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n => Err(WireError::Eof(n)),
                };
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        let nfds = usize::from(self.buf[4]);
        if len > MAX_FRAME {
            return Err(WireError::Oversize { len });
        }
        if nfds > MAX_FDS {
            return Err(WireError::TooManyFds(nfds));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        if self.fds.len() < nfds {
            return Err(WireError::MissingFds {
                want: nfds,
                have: self.fds.len(),
            });
        }
        self.buf.advance(HEADER);
        let body = self.buf.split_to(len).freeze();
        let fds = self.fds.drain(..nfds).collect();
        Ok(Some(Frame { body, fds }))
    }

    /// Reads what is there (at least one byte, or 0 at end of stream).
    async fn fill(&mut self) -> Result<usize, WireError> {
        loop {
            let mut ready = self.sock.readable().await?;
            let fds = &mut self.fds;
            let scratch = &mut self.scratch;
            match ready.try_io(|s| recv(s.get_ref().as_raw_fd(), scratch, fds)) {
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&self.scratch[..n]);
                    if self.fds.len() > MAX_PENDING_FDS {
                        return Err(WireError::StrayFds(self.fds.len()));
                    }
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(WireError::Truncated)
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// One `recvmsg`: bytes into `buf`, passed descriptors onto `fds` (close-on-exec, owned).
#[allow(unsafe_code)]
fn recv(fd: RawFd, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_PENDING_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let truncated = msg.cmsgs().is_err();
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // Safety: the kernel just installed these descriptors in this process for us;
            // nothing else refers to them, so each is owned exactly once.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if truncated {
        // MSG_CTRUNC: the kernel closed what did not fit; the frames can no longer be matched.
        return Err(io::Error::new(io::ErrorKind::InvalidData, "MSG_CTRUNC"));
    }
    Ok(msg.bytes)
}

#[derive(Clone)]
pub struct FrameWriter {
    sock: Arc<AsyncFd<UnixStream>>,
}

impl FrameWriter {
    /// Writes one frame; the descriptors travel with its first bytes. One writer per socket
    /// (frames of two writers would interleave).
    pub async fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        if body.len() > MAX_FRAME {
            return Err(WireError::Oversize { len: body.len() });
        }
        if fds.len() > MAX_FDS {
            return Err(WireError::TooManyFds(fds.len()));
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        header[4] = fds.len() as u8;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.write_all(&header, body, &raw).await
    }

    /// Writes several descriptor-less frames with as few `sendmsg` calls as the socket allows
    /// (a worker's request records, which come many to a wake-up under load).
    pub async fn send_all(&self, bodies: &[Bytes]) -> Result<(), WireError> {
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| HEADER + b.len()).sum());
        for body in bodies {
            if body.len() > MAX_FRAME {
                return Err(WireError::Oversize { len: body.len() });
            }
            buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
            buf.push(0);
            buf.extend_from_slice(body);
        }
        self.write_all(&buf, &[], &[]).await
    }

    /// Writes `head` then `tail`, whatever number of `sendmsg` calls it takes; `fds` go with
    /// the first.
    async fn write_all(&self, head: &[u8], tail: &[u8], fds: &[RawFd]) -> Result<(), WireError> {
        let total = head.len() + tail.len();
        let mut sent = 0;
        while sent < total {
            let mut ready = self.sock.writable().await?;
            let (h, t) = if sent < head.len() {
                (&head[sent..], tail)
            } else {
                (&head[..0], &tail[sent - head.len()..])
            };
            let iov = [IoSlice::new(h), IoSlice::new(t)];
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            match ready.try_io(|s| {
                sendmsg::<()>(
                    s.get_ref().as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Seek as _, Write as _},
        os::fd::AsFd as _,
    };

    use super::*;

    fn pair() -> ((FrameReader, FrameWriter), (FrameReader, FrameWriter)) {
        let (a, b) = UnixStream::pair().unwrap();
        (split(a).unwrap(), split(b).unwrap())
    }

    #[tokio::test]
    async fn a_batch_arrives_as_its_frames_in_order_after_a_frame_with_descriptors() {
        let ((ra, wa), (mut rb, _wb)) = pair();
        let file = tempfile::tempfile().unwrap();
        wa.send(b"with-fd", &[file.as_fd()]).await.unwrap();
        // Larger than a socket buffer, so the batch takes several writes.
        let big = Bytes::from(vec![9u8; 600_000]);
        let batch = [Bytes::from_static(b"one"), Bytes::new(), big.clone()];
        let sender = tokio::spawn(async move { wa.send_all(&batch).await.map(|()| wa) });
        let first = rb.next().await.unwrap().unwrap();
        assert_eq!((&first.body[..], first.fds.len()), (&b"with-fd"[..], 1));
        let mut got = Vec::new();
        for _ in 0..3 {
            let f = rb.next().await.unwrap().unwrap();
            assert!(f.fds.is_empty(), "a batch carries no descriptors");
            got.push(f.body);
        }
        assert_eq!(got, [Bytes::from_static(b"one"), Bytes::new(), big]);
        // The socket closes when both halves of its end are gone.
        drop((ra, sender.await.unwrap().unwrap()));
        assert!(rb.next().await.unwrap().is_none(), "clean end of stream");
    }

    #[tokio::test]
    async fn frames_arrive_whole_in_order_across_partial_reads() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, _w) = split(b).unwrap();
        // The raw bytes of three frames, written a few bytes at a time from another thread.
        let mut raw = Vec::new();
        for body in [&b"first"[..], &b""[..], &vec![7u8; 200_000][..]] {
            raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
            raw.push(0);
            raw.extend_from_slice(body);
        }
        let writer = std::thread::spawn(move || {
            let mut a = a;
            for chunk in raw.chunks(3).take(5).chain(raw[15..].chunks(65_537)) {
                a.write_all(chunk).unwrap();
            }
        });
        let f1 = reader.next().await.unwrap().unwrap();
        let f2 = reader.next().await.unwrap().unwrap();
        let f3 = reader.next().await.unwrap().unwrap();
        writer.join().unwrap();
        assert_eq!(&f1.body[..], b"first");
        assert!(f2.body.is_empty());
        assert_eq!(f3.body.len(), 200_000);
        assert!(f3.body.iter().all(|&b| b == 7));
        assert!(
            reader.next().await.unwrap().is_none(),
            "clean end of stream"
        );
    }

    #[tokio::test]
    async fn an_oversize_frame_is_refused_before_its_body_is_read() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, _w) = split(b).unwrap();
        let mut a = a;
        a.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
            .unwrap();
        a.write_all(&[0]).unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, WireError::Oversize { .. }), "{err}");
        // And the writer will not produce one.
        let (_, w) = split(a).unwrap();
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(
            w.send(&big, &[]).await.unwrap_err(),
            WireError::Oversize { .. }
        ));
    }

    #[tokio::test]
    async fn a_frame_cut_short_or_claiming_absent_descriptors_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, _w) = split(b).unwrap();
        let mut a = a;
        a.write_all(&[0, 0, 0, 3, 1, b'a', b'b', b'c']).unwrap();
        let err = reader.next().await.unwrap_err();
        assert!(
            matches!(err, WireError::MissingFds { want: 1, have: 0 }),
            "{err}"
        );
        let (c, d) = UnixStream::pair().unwrap();
        let (mut reader, _w) = split(d).unwrap();
        let mut c = c;
        c.write_all(&[0, 0, 0, 9, 0, b'x']).unwrap();
        drop(c);
        assert!(matches!(
            reader.next().await.unwrap_err(),
            WireError::Eof(6)
        ));
    }

    #[tokio::test]
    async fn descriptors_pass_with_their_frame_and_stay_usable() {
        let ((_ra, wa), (mut rb, _wb)) = pair();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"passed through").unwrap();
        let (x, mut y) = UnixStream::pair().unwrap();
        wa.send(b"no fds", &[]).await.unwrap();
        wa.send(b"two fds", &[file.as_fd(), x.as_fd()])
            .await
            .unwrap();
        wa.send(b"after", &[]).await.unwrap();
        drop((file, x));

        let plain = rb.next().await.unwrap().unwrap();
        assert_eq!((&plain.body[..], plain.fds.len()), (&b"no fds"[..], 0));
        let with = rb.next().await.unwrap().unwrap();
        assert_eq!((&with.body[..], with.fds.len()), (&b"two fds"[..], 2));
        let mut fds = with.fds.into_iter();
        let mut file = std::fs::File::from(fds.next().unwrap());
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "passed through");
        let mut x = UnixStream::from(fds.next().unwrap());
        x.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        y.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(&rb.next().await.unwrap().unwrap().body[..], b"after");
    }

    #[tokio::test]
    async fn messages_round_trip() {
        let ((_ra, wa), (mut rb, _wb)) = pair();
        wa.send(&encode(&ToWorker::Ping { seq: 7 }).unwrap(), &[])
            .await
            .unwrap();
        let f = rb.next().await.unwrap().unwrap();
        let msg: ToWorker = serde_json::from_slice(&f.body).unwrap();
        assert!(matches!(msg, ToWorker::Ping { seq: 7 }), "{msg:?}");
        let log = ToWorker::Log {
            filter: "info,mesh_agent::l7=debug".into(),
        };
        wa.send(&encode(&log).unwrap(), &[]).await.unwrap();
        let f = rb.next().await.unwrap().unwrap();
        let msg: ToWorker = serde_json::from_slice(&f.body).unwrap();
        assert!(
            matches!(&msg, ToWorker::Log { filter } if filter == "info,mesh_agent::l7=debug"),
            "{msg:?}"
        );
    }
}
