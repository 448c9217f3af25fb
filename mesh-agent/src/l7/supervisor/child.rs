//! Starting and reaping worker processes.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a
//! child forked from a tokio blocking thread would be killed when that thread idles out. So
//! every worker is forked by one thread that lives as long as the agent.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::Duration,
};

use super::PoolConfig;
use crate::cli::LogFormat;

type Job = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("l7-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The pool that asked may have stopped meanwhile: then no worker for it,
                    // and none left running.
                    if reply.is_closed() {
                        continue;
                    }
                    if let Err(Ok(mut orphan)) = reply.send(cmd.spawn()) {
                        let _ = orphan.kill();
                        let _ = orphan.wait();
                    }
                }
            })
            .expect("spawning the L7 worker spawner thread");
        Mutex::new(tx)
    })
}

/// Starts worker `index` with `sock` (its end of the socketpair) as its `--fd`, logging with
/// `log` (the filter in force now, which may differ from `cfg.log` since `/logging`).
pub(super) async fn spawn(
    cfg: &PoolConfig,
    log: &str,
    index: usize,
    sock: UnixStream,
) -> io::Result<Child> {
    let cmd = command(cfg, log, index, sock.as_raw_fd());
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .expect("spawner lock")
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let child = rx
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    // The child has its own copy now (or failed to start); ours closes here, so the agent
    // sees the socket close exactly when the worker's end does.
    drop(sock);
    child.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cfg.exe.display())))
}

#[allow(unsafe_code)]
fn command(cfg: &PoolConfig, log: &str, index: usize, fd: RawFd) -> Command {
    let format = match cfg.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let mut cmd = Command::new(&cfg.exe);
    cmd.arg0("mesh-agent")
        .arg("l7")
        .args(["--fd", &fd.to_string(), "--worker", &index.to_string()])
        .args(["--node", &cfg.node, "--trust-domain", &cfg.trust_domain])
        .args(["--log", log, "--log-format", format])
        .args([
            "--access-log",
            if cfg.access_log { "true" } else { "false" },
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let parent = std::process::id();
    // Safety: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, prctl, getppid); it allocates nothing and takes no
    // lock, so the state other threads left in the child's copy of memory does not matter.
    unsafe {
        cmd.pre_exec(move || in_child(fd, parent));
    }
    cmd
}

/// In the forked child: keep the socket across exec, die with the agent.
#[allow(unsafe_code)]
fn in_child(fd: RawFd, parent: u32) -> io::Result<()> {
    // Safety: plain syscalls on integers; no memory is passed.
    unsafe {
        // The socket was made close-on-exec so that no other child inherits it (a worker
        // holding another's socket would keep it open after that one died); only this
        // child's copy loses the flag.
        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
        // The agent may have died before the prctl: then nobody would kill this worker.
        if libc::getppid() as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// A child being reaped; killed and reaped at once if the reaping is abandoned (the pool
/// stopped), so no worker outlives its pool.
struct Reaping(Option<Child>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How often a worker given a grace period is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Waits for `child` to exit, killing it after `grace` (at once for zero), and says how it
/// ended.
pub(super) async fn reap(child: Child, grace: Duration) -> String {
    let mut reaping = Reaping(Some(child));
    let deadline = tokio::time::Instant::now() + grace;
    while let Some(c) = reaping.0.as_mut() {
        match c.try_wait() {
            Ok(Some(status)) => {
                reaping.0 = None;
                return status.to_string();
            }
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(EXIT_POLL).await
            }
            Ok(None) => break,
            Err(e) => {
                reaping.0 = None;
                return format!("not reaped: {e}");
            }
        }
    }
    let Some(mut child) = reaping.0.take() else {
        return "not reaped".into();
    };
    let _ = child.kill();
    // Short after SIGKILL (also for a stopped process); off the runtime's threads anyway.
    match tokio::task::spawn_blocking(move || child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("not reaped: {e}"),
        Err(e) => format!("not reaped: {e}"),
    }
}
