//! `mesh-agent l7 --fd N`: one worker of the node's L7 pool. It reads frames from the agent
//! on the inherited socket: snapshots (applied in order, acknowledged by version), hand-offs
//! (a connection and its pod's netns, served by `server::serve`) and pings. It sends back
//! acknowledgements, pongs and batches of finished requests (outbox.rs), and exits when the
//! agent's end of the socket closes (and, through PR_SET_PDEATHSIG, when the agent dies).

use std::{
    os::{
        fd::{FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use super::{
    context::Context,
    handoff::Handoff,
    outbox::Outbox,
    server,
    wire::{self, Frame, FrameWriter, ToAgent, ToWorker},
};
use crate::{admin::LogControl, cli::L7Args, identity::CertManager, netns::Netns};

/// Messages queued for the agent (acks, pongs, request batches); batches beyond it are
/// dropped (counted).
const OUT_QUEUE: usize = 4096;

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
}

/// `logging` changes this process's log filter (the agent sends changes: `ToWorker::Log`).
pub async fn run(args: L7Args, logging: Option<LogControl>) -> anyhow::Result<()> {
    // Also set by the agent before exec; set here too for a worker started any other way.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    crate::netns::init();
    let span = info_span!("l7_worker", worker = args.worker, pid = std::process::id());
    serve_agent(args, logging).instrument(span).await
}

async fn serve_agent(args: L7Args, logging: Option<LogControl>) -> anyhow::Result<()> {
    let sock = inherited_socket(args.fd)?;
    let (mut reader, writer) = wire::split(sock).context("the agent's socket")?;
    let (out, out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    tokio::spawn(write_out(writer, out_rx).in_current_span());
    let certs = CertManager::pushed("")?;
    let outbox = Arc::new(Outbox::new(args.access_log));
    tokio::spawn(outbox.clone().flush_to(out.clone()).in_current_span());
    let ctx = Arc::new(Context::new(args.node, args.trust_domain, certs, outbox));
    let counters = Arc::new(Counters::default());
    info!("L7 worker up; waiting for the agent's snapshot");
    let mut configured = false;
    let mut drain_watch = false;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                info!("the agent closed the socket; exiting");
                return Ok(());
            }
            Err(e) => {
                // The stream is out of step: nothing after this can be trusted to be a frame.
                error!(error = %e, "bad frame from the agent; exiting");
                return Err(e).context("reading from the agent");
            }
        };
        let reply = handle(&ctx, &counters, &mut configured, frame, logging.as_ref());
        if ctx.drain.is_cancelled() && !drain_watch {
            drain_watch = true;
            tokio::spawn(exit_when_idle(counters.clone(), out.clone()).in_current_span());
        }
        if let Some(msg) = reply {
            let body = wire::encode(&msg)?;
            if out.send(body).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Acts on one frame; returns the answer to send, if any.
fn handle(
    ctx: &Arc<Context>,
    counters: &Arc<Counters>,
    configured: &mut bool,
    frame: Frame,
    logging: Option<&LogControl>,
) -> Option<ToAgent> {
    let Frame { body, fds } = frame;
    let msg = match serde_json::from_slice::<ToWorker>(&body) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, bytes = body.len(), "undecodable message from the agent; skipped");
            return Some(ToAgent::Rejected {
                error: format!("undecodable message of {} bytes: {e}", body.len()),
            });
        }
    };
    match msg {
        ToWorker::Snapshot(s) => {
            let version = s.version;
            let errors = s.apply(ctx);
            *configured = true;
            info!(version, errors = errors.len(), "snapshot applied");
            Some(ToAgent::Applied { version, errors })
        }
        ToWorker::Ping { seq } => Some(ToAgent::Pong {
            seq,
            connections: counters.connections.load(Relaxed),
            reports_dropped: ctx.outbox.dropped.load(Relaxed),
            spans_exported: ctx.tracer.exported(),
            spans_dropped: ctx.tracer.dropped(),
        }),
        ToWorker::Log { filter } => {
            match logging.map(|set| set(Some(&filter))) {
                Some(Ok(_)) => {}
                Some(Err(e)) => warn!(filter, error = %e, "log filter from the agent not applied"),
                None => warn!(filter, "this worker's log filter is fixed; not applied"),
            }
            None
        }
        ToWorker::Drain => {
            info!(
                connections = counters.connections.load(Relaxed),
                "draining: finishing in-flight requests, then exiting"
            );
            ctx.drain.cancel();
            None
        }
        ToWorker::Handoff(h) => {
            // A hand-off after the drain began was accepted before it: it is served (its first
            // request, then the connection closes).
            if !*configured {
                warn!(connection = %h.id, "hand-off before any snapshot; connection closed");
            } else if let Err(e) = accept(ctx, counters, h.clone(), fds) {
                warn!(connection = %h.id, error = %e, "unusable hand-off; connection closed");
            }
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HandoffError {
    #[error("{0} descriptors instead of 2 (connection, netns)")]
    Fds(usize),
    #[error("the connection: {0}")]
    Stream(std::io::Error),
    #[error("the pod's netns: {0}")]
    Netns(std::io::Error),
}

/// Turns the passed descriptors into a tokio TcpStream and the pod's Netns, then serves.
fn accept(
    ctx: &Arc<Context>,
    counters: &Arc<Counters>,
    h: Handoff,
    fds: Vec<OwnedFd>,
) -> Result<(), HandoffError> {
    let n = fds.len();
    let [stream, netns]: [OwnedFd; 2] = fds.try_into().map_err(|_| HandoffError::Fds(n))?;
    let stream = downstream(stream).map_err(HandoffError::Stream)?;
    let netns = Netns::from_fd(netns).map_err(HandoffError::Netns)?;
    debug!(connection = %h.id, pod = %h.pod, dst = %h.dst, "connection handed over");
    let span = info_span!("connection", id = %h.id, pod = %h.pod, dst = %h.dst);
    let ctx = ctx.clone();
    let counters = counters.clone();
    counters.connections.fetch_add(1, Relaxed);
    tokio::spawn(
        async move {
            match stream {
                Downstream::Tcp(s) => server::serve(ctx, s, netns, h).await,
                Downstream::Unix(s) => server::serve(ctx, s, netns, h).await,
            }
            counters.connections.fetch_sub(1, Relaxed);
        }
        .instrument(span),
    );
    Ok(())
}

/// A handed-over connection: the client's TCP socket, or (a tunneled connection to a local
/// pod) the worker's end of the socket pair the agent relays the tunnel stream into.
enum Downstream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A passed descriptor as a tokio stream, refusing anything but a stream socket (TCP or Unix).
fn downstream(fd: OwnedFd) -> std::io::Result<Downstream> {
    let sock = socket2::Socket::from(fd);
    if sock.r#type()? != socket2::Type::STREAM {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a stream socket",
        ));
    }
    sock.set_nonblocking(true)?;
    if sock.local_addr()?.as_socket().is_some() {
        let std: std::net::TcpStream = sock.into();
        return tokio::net::TcpStream::from_std(std).map(Downstream::Tcp);
    }
    if sock.local_addr()?.is_unix() {
        let std: std::os::unix::net::UnixStream = sock.into();
        return tokio::net::UnixStream::from_std(std).map(Downstream::Unix);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "neither a TCP nor a Unix stream socket",
    ))
}

/// The agent's socket, inherited as `fd`.
#[allow(unsafe_code)]
fn inherited_socket(fd: RawFd) -> anyhow::Result<UnixStream> {
    let st = nix::sys::stat::fstat(fd).with_context(|| format!("--fd {fd}"))?;
    anyhow::ensure!(
        st.st_mode & libc::S_IFMT == libc::S_IFSOCK,
        "--fd {fd} is not a socket"
    );
    // Safety: the agent opened this descriptor for us and passed it across exec; nothing
    // else in this process uses it, so it is owned here exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Descriptors this worker opens must not leak into anything it might start.
    nix::fcntl::fcntl(fd, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(UnixStream::from(owned))
}

/// A draining worker exits once its last connection has ended and the outbox has sent what
/// those connections' requests counted (its flush runs `FLUSH_DELAY` after a request).
async fn exit_when_idle(counters: Arc<Counters>, out: mpsc::Sender<Bytes>) {
    let mut tick = tokio::time::interval(IDLE_CHECK);
    while counters.connections.load(Relaxed) > 0 {
        tick.tick().await;
    }
    tokio::time::sleep(super::outbox::FLUSH_DELAY * 3).await;
    // The queue to the agent empties before the exit (the writer task takes from it).
    let _ = tokio::time::timeout(IDLE_CHECK * 10, out.reserve_many(OUT_QUEUE)).await;
    info!("drained: no connection left; exiting");
    std::process::exit(0);
}

/// How often a draining worker checks whether it is idle.
const IDLE_CHECK: Duration = Duration::from_millis(20);

/// Frames one write to the agent carries at most.
const WRITE_BATCH: usize = 256;

/// The only writer of the agent's socket: what queued while it was writing goes in one write.
async fn write_out(writer: FrameWriter, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if let Err(e) = writer.send_all(&batch).await {
            warn!(error = %e, "cannot write to the agent");
            return;
        }
        batch.clear();
    }
}
