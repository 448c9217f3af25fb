//! The L7 pool's process machinery with real processes and real descriptors: the test drives
//! `L7Pool` through the library, the workers are the real `mesh-agent l7` binary (or, to
//! misbehave on purpose, a script standing in for it). A worker names itself (its pid, header
//! `x-weft-l7-worker`) on every response it makes itself, which is what these tests read.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsFd as _, unix::net::UnixStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use mesh_agent::{
    l7::{
        handoff::{Handoff, Protocol, Side},
        outbox::Outbox,
        snapshot::{self, Content, PushedCert},
        wire::{self, ToAgent, ToWorker},
        L7Pool, PoolConfig, PoolStatus, Refusal,
    },
    metrics::http::RequestRecord,
    state::{PodKey, State},
};
use nix::{sys::signal::Signal, unistd::Pid};
use weft_tests::{agent::agent_bin, eventually, fixture::TwoNodeMesh, OneNode};

const WAIT: Duration = Duration::from_secs(20);

/// A pool and the runtime it runs on (the pool drops first: it kills its workers).
struct Pool {
    pool: L7Pool,
    rt: tokio::runtime::Runtime,
}

impl Pool {
    fn start(workers: usize, tune: impl FnOnce(&mut PoolConfig)) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut cfg = PoolConfig::new("n1", "cluster.local");
        cfg.workers = workers;
        cfg.exe = agent_bin();
        cfg.log = "warn".into();
        tune(&mut cfg);
        let pool = {
            let _in_rt = rt.enter();
            L7Pool::start(cfg)
        };
        Self { pool, rt }
    }

    fn status(&self) -> PoolStatus {
        self.pool.status()
    }

    fn update(&self) -> u64 {
        self.pool
            .update(Arc::new(State::default()), Vec::new(), String::new())
    }

    /// Waits until every worker is up and has applied `version`; returns their pids.
    fn wait_ready(&self, version: u64) -> Vec<u32> {
        eventually("every L7 worker ready", WAIT, || {
            let s = self.status();
            s.workers
                .iter()
                .all(|w| w.ready && w.applied_version == version)
                .then(|| s.workers.iter().filter_map(|w| w.pid).collect())
        })
    }

    /// Hands a fresh connection to the pool; returns the client's end (or the refusal).
    fn hand(&self) -> (TcpStream, Result<(), Refusal>) {
        let (client, accepted) = connection();
        let netns = File::open("/proc/self/ns/net").expect("own netns");
        let r = self.pool.hand(accepted, netns.as_fd(), handoff());
        (client, r)
    }

    /// Hands a connection, sends a request on it and returns the pid the worker named.
    fn served_by(&self) -> u32 {
        let (client, handed) = self.hand();
        handed.expect("handed to a worker");
        let answer = request(client);
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        worker_pid(&answer).unwrap_or_else(|| panic!("no worker pid in the answer:\n{answer}"))
    }
}

/// The worker that answered: every response a worker makes itself names it.
fn worker_pid(answer: &str) -> Option<u32> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-l7-worker: "))
        .and_then(|p| p.trim().parse().ok())
}

fn connection() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (client, accepted)
}

fn handoff() -> Handoff {
    Handoff {
        id: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        side: Side::Outbound,
        pod: PodKey {
            namespace: "mesh".into(),
            name: "client".into(),
        },
        source_identity: Some("spiffe://cluster.local/ns/mesh/sa/default".into()),
        source_ip: Ipv4Addr::new(10, 0, 0, 1).into(),
        dst: SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80)),
        service: None,
        protocol: Protocol::Http,
    }
}

/// Sends a request on a connection that must be closed without an answer (a reset or an end
/// of stream: which depends on whether the request was read).
fn closed_unanswered(mut client: TcpStream) -> bool {
    let _ = client.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n");
    let mut answer = Vec::new();
    match client.read_to_end(&mut answer) {
        Ok(_) => answer.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && answer.is_empty(),
    }
}

/// One HTTP/1.1 request; the whole answer (the connection closes after it).
fn request(mut client: TcpStream) -> String {
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    client.read_to_string(&mut answer).expect("answer");
    answer
}

fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).expect("signal the worker");
}

#[test]
fn a_connection_is_handed_only_after_a_snapshot_and_served_by_a_worker() {
    let pool = Pool::start(2, |_| {});
    let (client, refused) = pool.hand();
    assert_eq!(refused, Err(Refusal::NoSnapshot));
    assert!(
        closed_unanswered(client),
        "a refused connection is closed, never carried"
    );
    let version = pool.update();
    assert_eq!(version, 1);
    assert_eq!(pool.update(), 1, "an unchanged snapshot is not sent again");
    let pids = pool.wait_ready(version);
    assert_eq!(pids.len(), 2, "{:?}", pool.status());
    let a = pool.served_by();
    let b = pool.served_by();
    assert!(pids.contains(&a) && pids.contains(&b), "{pids:?}: {a} {b}");
    assert_ne!(a, b, "consecutive connections go to both workers");
    let s = pool.status();
    assert_eq!((s.handed, s.refused), (2, 1), "{s:?}");
    assert_eq!(s.refused_by_reason.get("no_snapshot"), Some(&1));

    // A new snapshot reaches every worker, and is acknowledged by its version.
    let v2 = pool.pool.update(
        Arc::new(State::default()),
        Vec::new(),
        "# no roots\n".into(),
    );
    assert_eq!(v2, 2);
    pool.wait_ready(2);
}

#[test]
fn a_killed_worker_is_restarted_and_the_next_connection_served() {
    let pool = Pool::start(1, |_| {});
    let version = pool.update();
    let first = pool.wait_ready(version)[0];
    assert_eq!(pool.served_by(), first);
    signal(first, Signal::SIGKILL);
    let second = eventually("the worker restarted", WAIT, || {
        let w = pool.status().workers[0].clone();
        (w.ready && w.pid != Some(first)).then_some(w)
    });
    assert_eq!(second.restarts, 1, "{second:?}");
    assert_eq!(
        second.applied_version, version,
        "the restart got the snapshot"
    );
    let exit = second.last_exit.unwrap_or_default();
    assert!(exit.contains("signal: 9"), "exit status logged: {exit}");
    assert_eq!(pool.served_by(), second.pid.unwrap());
}

#[test]
fn a_hung_worker_is_replaced_within_the_deadline() {
    let deadline = Duration::from_secs(1);
    let pool = Pool::start(1, |c| {
        c.ping_interval = Duration::from_millis(100);
        c.hang_deadline = deadline;
    });
    let version = pool.update();
    let hung = pool.wait_ready(version)[0];
    signal(hung, Signal::SIGSTOP);
    let stopped = Instant::now();
    let replaced = eventually("the hung worker replaced", WAIT, || {
        let w = pool.status().workers[0].clone();
        (w.ready && w.pid != Some(hung)).then_some(w)
    });
    let took = stopped.elapsed();
    assert!(
        took < deadline + Duration::from_secs(3),
        "replaced after {took:?}"
    );
    let exit = replaced.last_exit.unwrap_or_default();
    assert!(
        exit.contains("hung") && exit.contains("signal: 9"),
        "{exit}"
    );
    assert!(
        !PathBuf::from(format!("/proc/{hung}")).exists(),
        "the hung worker was killed and reaped"
    );
    assert_eq!(pool.served_by(), replaced.pid.unwrap());
}

#[test]
fn without_a_worker_able_to_take_it_a_connection_is_refused_and_counted() {
    let pool = Pool::start(2, |c| c.exe = "/nonexistent/mesh-agent".into());
    pool.update();
    let errors = eventually("the start failures reported", WAIT, || {
        let s = pool.status();
        s.workers
            .iter()
            .all(|w| w.last_error.is_some())
            .then(|| s.workers[0].last_error.clone().unwrap())
    });
    assert!(errors.contains("/nonexistent/mesh-agent"), "{errors}");
    let (client, refused) = pool.hand();
    assert_eq!(refused, Err(Refusal::NoWorker(2)));
    assert_eq!(
        refused.unwrap_err().to_string(),
        "no L7 worker is ready (of 2)"
    );
    assert!(
        closed_unanswered(client),
        "the refused connection is closed"
    );
    let s = pool.status();
    assert_eq!((s.refused, s.handed), (1, 0), "{s:?}");
    assert_eq!(s.refused_by_reason.get("no_worker"), Some(&1));
    assert_eq!(
        s.last_refusal.as_deref(),
        Some("no L7 worker is ready (of 2)")
    );
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weft-l7-pool-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in for the worker that writes `frames` to its socket, then sleeps.
fn fake_worker(dir: &Scratch, frames: &[Vec<u8>]) -> PathBuf {
    let bin = dir.0.join("frames.bin");
    std::fs::write(&bin, frames.concat()).unwrap();
    let script = dir.0.join("worker.sh");
    // $1 $2 $3: l7 --fd N (bash: dash redirects only descriptors 0 to 9).
    let text = format!(
        "#!/bin/bash\ncat {} >&\"$3\"\nexec sleep 60\n",
        bin.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.push(0);
    f.extend_from_slice(body);
    f
}

fn msg(m: &ToAgent) -> Vec<u8> {
    frame(&wire::encode(m).unwrap())
}

#[test]
fn a_workers_request_batches_reach_the_agent() {
    let dir = Scratch::new();
    let record = RequestRecord {
        method: "GET".into(),
        path: "/reported".into(),
        response_code: 503,
        ..Default::default()
    };
    let outbox = Outbox::new(true);
    outbox.add(&record);
    let batch = outbox.take().expect("a batch");
    assert_eq!((batch.requests(), batch.lines), (1, 1));
    let applied = ToAgent::Applied {
        version: 1,
        errors: vec![],
    };
    let script = fake_worker(
        &dir,
        &[
            msg(&applied),
            msg(&ToAgent::Requests(Box::new(batch.clone()))),
        ],
    );
    let pool = Pool::start(1, |c| c.exe = script);
    let mut reports = pool.pool.reports().expect("the receiver");
    assert!(pool.pool.reports().is_none(), "taken once");
    pool.update();
    let got = pool
        .rt
        .block_on(async { tokio::time::timeout(WAIT, reports.recv()).await })
        .expect("a report in time")
        .expect("a report");
    assert_eq!(got, batch);
}

#[test]
fn a_worker_that_has_not_applied_a_snapshot_gets_no_connection() {
    let dir = Scratch::new();
    // Up, but never acknowledging the snapshot it is sent.
    let script = fake_worker(&dir, &[]);
    let pool = Pool::start(1, |c| c.exe = script);
    pool.update();
    let pid = eventually("the worker started", WAIT, || pool.status().workers[0].pid);
    let (client, refused) = pool.hand();
    assert_eq!(refused, Err(Refusal::NoWorker(1)));
    assert!(closed_unanswered(client));
    let w = pool.status().workers[0].clone();
    assert_eq!((w.pid, w.ready, w.handed), (Some(pid), false, 0), "{w:?}");
}

#[test]
fn garbage_from_a_worker_is_logged_and_the_worker_replaced() {
    for (garbage, expect) in [
        (frame(b"not json"), "bad message from the worker"),
        (
            vec![0xff, 0xff, 0xff, 0xff, 0],
            "bad frame from the worker: frame of 4294967295 bytes is over the limit",
        ),
    ] {
        let dir = Scratch::new();
        let applied = ToAgent::Applied {
            version: 1,
            errors: vec![],
        };
        let script = fake_worker(&dir, &[msg(&applied), garbage]);
        let pool = Pool::start(1, |c| c.exe = script);
        pool.update();
        let w = eventually("the worker dropped", WAIT, || {
            let w = pool.status().workers[0].clone();
            (w.restarts >= 1).then_some(w)
        });
        let exit = w.last_exit.unwrap_or_default();
        assert!(exit.contains(expect), "{exit}");
    }
}

/// A worker started by hand on a socketpair: the test is its agent.
#[test]
fn a_worker_skips_an_undecodable_message_fails_closed_before_its_snapshot_and_quits_on_a_broken_stream(
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    nix::fcntl::fcntl(fd, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let mut worker = Command::new(agent_bin())
        .args([
            "l7",
            "--fd",
            &fd.to_string(),
            "--node",
            "n1",
            "--worker",
            "7",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-agent l7");
    drop(theirs);
    let _in_rt = rt.enter();
    // A second handle on our end, to write what no FrameWriter would.
    let raw = ours.try_clone().unwrap();
    let (mut reader, writer) = wire::split(ours).unwrap();
    let next = |reader: &mut wire::FrameReader| -> ToAgent {
        let f = rt
            .block_on(tokio::time::timeout(WAIT, reader.next()))
            .expect("an answer in time")
            .expect("a frame")
            .expect("not closed");
        serde_json::from_slice(&f.body).expect("a message")
    };
    let send = |body: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| {
        rt.block_on(writer.send(body, fds)).expect("send")
    };

    send(b"{\"Nonsense\":1}", &[]);
    let ToAgent::Rejected { error } = next(&mut reader) else {
        panic!("no rejection")
    };
    assert!(error.contains("undecodable message"), "{error}");

    // Still in step: a ping is answered.
    send(&wire::encode(&ToWorker::Ping { seq: 5 }).unwrap(), &[]);
    assert!(matches!(next(&mut reader), ToAgent::Pong { seq: 5, .. }));

    // A connection before any snapshot is closed, not served unconfigured.
    let (client, accepted) = connection();
    let netns = File::open("/proc/self/ns/net").unwrap();
    let body = wire::encode(&ToWorker::Handoff(handoff())).unwrap();
    send(&body, &[accepted.as_fd(), netns.as_fd()]);
    drop(accepted);
    assert!(closed_unanswered(client), "closed without an answer");

    // A snapshot: applied, with the part that failed named.
    let content = Content {
        state: Arc::new(State::default()),
        roots_pem: String::new(),
        certs: vec![PushedCert {
            identity: "spiffe://cluster.local/ns/mesh/sa/default".into(),
            chain_pem: "garbage".into(),
            key_pem: "garbage".into(),
        }],
    };
    let json = serde_json::to_vec(&content).unwrap();
    send(&snapshot::frame_body(3, &json), &[]);
    let ToAgent::Applied { version, errors } = next(&mut reader) else {
        panic!("not applied")
    };
    assert_eq!(version, 3);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spiffe://cluster.local/ns/mesh/sa/default"),
        "{errors:?}"
    );

    // Now connections are served.
    let (client, accepted) = connection();
    send(&body, &[accepted.as_fd(), netns.as_fd()]);
    drop(accepted);
    let answer = request(client);
    assert_eq!(worker_pid(&answer), Some(worker.id()), "{answer}");

    // A header that cannot be a frame: the stream is out of step, the worker quits.
    (&raw).write_all(&[0xff, 0xff, 0xff, 0xff, 0]).unwrap();
    let status = eventually("the worker to quit", WAIT, || worker.try_wait().unwrap());
    assert!(!status.success(), "{status}");
    let mut log = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("bad frame from the agent"), "{log}");
    assert!(log.contains("worker=7"), "logs name the worker: {log}");
}

#[test]
fn the_agent_pushes_its_state_and_certificates_to_its_pool_and_shows_it() {
    let mesh = TwoNodeMesh::start(8, &[]);
    let ready = |dump: &serde_json::Value, after: u64| {
        let p = &dump["l7_pool"];
        let v = p["snapshot_version"].as_u64().filter(|v| *v > after)?;
        let ws = p["workers"].as_array().filter(|ws| !ws.is_empty())?;
        ws.iter()
            .all(|w| {
                w["ready"] == true
                    && w["applied_version"].as_u64() == Some(v)
                    && w["last_error"].is_null()
                    && w["pid"].as_u64().is_some()
            })
            .then_some(v)
    };
    // Applied without errors: the workers verified the agent's certificates against its roots.
    let v = eventually("the pool configured", WAIT, || {
        ready(&mesh.a1.config_dump(), 0)
    });
    let issued = |dump: &serde_json::Value| -> u64 {
        let certs = dump["certificates"].as_array().cloned().unwrap_or_default();
        certs.iter().filter_map(|c| c["issued"].as_u64()).sum()
    };
    let dump = mesh.a1.config_dump();
    assert_eq!(dump["l7_pool"]["refused"], 0);
    let before = issued(&dump);
    // Certificates live 8 s and are renewed at about half-life: each renewal is pushed (the
    // configuration does not change meanwhile).
    eventually("a renewed certificate pushed", WAIT, || {
        let dump = mesh.a1.config_dump();
        (issued(&dump) > before).then_some(())?;
        ready(&dump, v)
    });
    let log = mesh.a1.log();
    assert!(
        log.contains("l7_worker") && log.contains("snapshot applied"),
        "workers log with the agent, naming themselves:\n{log}"
    );

    // Workers never outlive their agent, even one killed without a chance to clean up.
    let pids: Vec<u64> = mesh.a1.config_dump()["l7_pool"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    let mut mesh = mesh;
    mesh.a1.kill();
    eventually("the workers gone with their agent", WAIT, || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

/// Running (or stopped), as opposed to gone or a zombie awaiting its new parent.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_owned()))
        .is_some_and(|state| !state.starts_with('Z') && !state.starts_with('X'))
}

#[test]
fn no_pool_runs_with_zero_workers() {
    let one = OneNode::with_agent_args(&[8080], &["--l7-workers", "0"]);
    assert!(one.agent.config_dump()["l7_pool"].is_null());
    assert!(one.agent.log().contains("L7 pool disabled"));
}
