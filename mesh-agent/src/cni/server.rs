//! The agent's side of the socket: `<state_dir>/cni.sock`, mode 0600, served by one task.
//!
//! Every request is bounded: at most `MAX_CONCURRENT` at once (over that, answered `failed` at
//! once), a request line of at most `MAX_REQUEST_BYTES` that must arrive within
//! `REQUEST_READ_TIMEOUT`, a wait of at most `MAX_WAIT`; only a peer of the agent's own user
//! (root: the runtime) is served. Garbage is answered with what is wrong with it.
//! What a request asks is decided by the enrollment loop (`Call`); this task only carries
//! it there and the answer back, with the time bound.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, watch, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::protocol::{
    parse_request, Answer, Request, MAX_CONCURRENT, MAX_REQUEST_BYTES, REQUEST_READ_TIMEOUT,
};
use crate::accept::AcceptErrors;

/// The socket's name in the agent's state directory.
pub const SOCKET_NAME: &str = "cni.sock";
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a request stands, as the enrollment loop last said.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not done yet, and why.
    Waiting(String),
    Done(Answer),
}

/// One request, handed to the enrollment loop; it sends `Progress` until `Done`. A call
/// whose `progress` has no receiver any more (the plugin gave up) may be dropped.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub progress: watch::Sender<Progress>,
}

pub struct Server {
    pub path: PathBuf,
    pub task: JoinHandle<()>,
}

/// Binds the socket (replacing a stale one left by an agent that died) and serves it; calls
/// come out of the returned receiver.
pub fn serve(state_dir: &Path) -> io::Result<(Server, mpsc::Receiver<Call>)> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = state_dir.join(SOCKET_NAME);
    // Bound beside the path and renamed over it: during an upgrade the old agent's socket is
    // replaced at once, and weft-cni never finds no socket there (its requests in flight are
    // still answered by the old agent).
    let tmp = state_dir.join(format!("{SOCKET_NAME}.{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)?;
    let (tx, rx) = mpsc::channel(MAX_CONCURRENT);
    info!(socket = %path.display(), "serving weft-cni requests");
    // The agent's own user: /proc/self belongs to the process's effective UID.
    let own_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    let task = tokio::spawn(accept_loop(listener, tx, own_uid));
    Ok((Server { path, task }, rx))
}

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>, own_uid: u32) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut errors = AcceptErrors::new("cni");
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                errors.accepted();
                s
            }
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                refuse(
                    &mut stream,
                    "the agent is serving too many CNI requests at once",
                )
                .await
            });
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            handle(stream, calls, own_uid).await;
            drop(slot);
        });
    }
}

async fn refuse(stream: &mut UnixStream, why: &str) {
    let _ = write_answer(stream, &Answer::failed(why)).await;
}

async fn handle(mut stream: UnixStream, calls: mpsc::Sender<Call>, own_uid: u32) {
    match stream.peer_cred() {
        Ok(c) if c.uid() == own_uid => {}
        Ok(c) => {
            warn!(uid = c.uid(), "refused a CNI request from another user");
            return refuse(&mut stream, "only the agent's own user may ask").await;
        }
        Err(e) => return refuse(&mut stream, &format!("no peer credentials: {e}")).await,
    }
    let request = match read_request(&mut stream).await {
        Ok(r) => r,
        Err(why) => {
            debug!(reason = %why, "bad CNI request");
            return refuse(&mut stream, &why).await;
        }
    };
    let span = info_span!("cni", command = ?request.command, pod = %format!("{}/{}", request.pod.namespace, request.pod.name));
    async move {
        let answer = carry(request, &calls).await;
        info!(outcome = ?answer.outcome, detail = %answer.detail, "cni request answered");
        let _ = write_answer(&mut stream, &answer).await;
    }
    .instrument(span)
    .await
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(&mut *stream).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = reader.read_until(b'\n', &mut line);
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Err(_) => return Err(format!("no request line within {REQUEST_READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    if line.last() != Some(&b'\n') {
        return Err("the request line has no end (newline)".into());
    }
    parse_request(&line)
}

/// Hands the request to the enrollment loop and waits, within its bound, for its answer.
async fn carry(request: Request, calls: &mpsc::Sender<Call>) -> Answer {
    let wait = request.wait();
    let (tx, mut rx) = watch::channel(Progress::Waiting(
        "the agent has not taken the request up yet".into(),
    ));
    let call = Call {
        request,
        progress: tx,
    };
    let done = async {
        if calls.send(call).await.is_err() {
            return Answer::failed("the agent is shutting down");
        }
        loop {
            if let Progress::Done(a) = &*rx.borrow_and_update() {
                return a.clone();
            }
            if rx.changed().await.is_err() {
                return Answer::failed("the agent dropped the request");
            }
        }
    };
    match tokio::time::timeout(wait, done).await {
        Ok(a) => a,
        Err(_) => match &*rx.borrow() {
            Progress::Done(a) => a.clone(),
            Progress::Waiting(why) => Answer::failed(format!("not done within {wait:.1?}: {why}")),
        },
    }
}

async fn write_answer(stream: &mut UnixStream, answer: &Answer) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::protocol::{Command, Outcome, PodRef};

    async fn exchange(path: &Path, bytes: &[u8]) -> Answer {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn request(wait_ms: u64) -> Vec<u8> {
        let r = Request {
            command: Command::Add,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web".into(),
                uid: None,
            },
            container_id: "c".into(),
            netns: None,
            ips: vec![],
            wait_ms,
        };
        let mut v = serde_json::to_vec(&r).unwrap();
        v.push(b'\n');
        v
    }

    #[tokio::test]
    async fn garbage_is_answered_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut calls) = serve(dir.path()).unwrap();
        let a = exchange(&server.path, b"\x00\x01 not json\n").await;
        assert_eq!(a.outcome, Outcome::Failed);
        assert!(a.detail.starts_with("bad request"), "{}", a.detail);
        let mut huge = vec![b'x'; MAX_REQUEST_BYTES + 10];
        huge.push(b'\n');
        let a = exchange(&server.path, &huge).await;
        assert!(a.detail.contains("longer than"), "{}", a.detail);
        // A request that the loop answers.
        let answering = tokio::spawn(async move {
            let call = calls.recv().await.unwrap();
            call.progress
                .send_replace(Progress::Waiting("pod shop/web is not known yet".into()));
            call.progress
                .send_replace(Progress::Done(Answer::new(Outcome::Enrolled, "hooked")));
            // The next one is left waiting: its bound answers it, with the last reason.
            let call = calls.recv().await.unwrap();
            call.progress
                .send_replace(Progress::Waiting("pod shop/web is not known yet".into()));
            call
        });
        assert_eq!(
            exchange(&server.path, &request(5000)).await.outcome,
            Outcome::Enrolled
        );
        let a = exchange(&server.path, &request(100)).await;
        assert_eq!(a.outcome, Outcome::Failed);
        assert!(
            a.detail.contains("not done within") && a.detail.contains("not known yet"),
            "{}",
            a.detail
        );
        drop(answering.await.unwrap());
        server.task.abort();
    }
}
