//! `weft-bench http-load ...`: the HTTP load generator the bench runs inside a client pod
//! (hyper 1's client, HTTP/1.1 keep-alive or HTTP/2 prior knowledge). One run does three
//! things on the same connections and prints one JSON line:
//!
//! 1. warm-up: a few hundred requests, closed loop; anything but 2xx stops the run here, so a
//!    case that answers errors is reported as failed, never measured;
//! 2. latency at a fixed rate, open loop: a pacing thread releases request `i` at
//!    `start + i / rate` whatever happened to the previous ones, and a request's latency runs
//!    from that due time to its last response byte, so a stall shows as latency instead of
//!    silently delaying the requests behind it (coordinated omission); HTTP/1.1 draws from a
//!    pool of `concurrency` kept-alive connections, HTTP/2 multiplexes on one;
//! 3. maximum rate: `concurrency` requests always in flight (one per HTTP/1.1 connection, or
//!    as many streams on the one HTTP/2 connection) for a fixed time.
//!
//! Single-threaded (one tokio thread, plus the pacing thread), so the client's cost is the
//! same in every case.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    client::conn::{http1, http2},
    Request, Uri,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::BODY_BYTES;

/// Every await on the system under test has a bound: a hung proxy fails the case, it does
/// not hang the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pacing thread sleeps until this long before a due time, then spins: a sleep alone
/// wakes up to ~100 µs late, which would show as latency.
const SPIN: Duration = Duration::from_micros(200);
/// A request whose dispatch began this late was delayed by the load generator itself (the
/// machine was busy); counted so a reader can tell.
const LATE: Duration = Duration::from_millis(1);

/// What to run: `to_args` and `from_args` are the command line between the bench and itself.
#[derive(Debug, Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub h2: bool,
    /// The Host header (HTTP/1.1) or :authority (HTTP/2).
    pub host: String,
    pub rate: u64,
    pub latency_secs: f64,
    pub concurrency: usize,
    pub rps_secs: f64,
    pub warmup: usize,
}

impl Spec {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.addr.to_string(),
            if self.h2 { "h2" } else { "h1" }.into(),
            self.host.clone(),
            self.rate.to_string(),
            self.latency_secs.to_string(),
            self.concurrency.to_string(),
            self.rps_secs.to_string(),
            self.warmup.to_string(),
        ]
    }

    pub fn from_args(a: &[String]) -> Self {
        let get = |i: usize| -> &str {
            a.get(i)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("http-load: argument {i} missing in {a:?}"))
        };
        let num = |i: usize| -> f64 {
            get(i)
                .parse()
                .unwrap_or_else(|_| panic!("http-load: argument {i} is not a number: {a:?}"))
        };
        Self {
            addr: get(0).parse().expect("http-load: address"),
            h2: get(1) == "h2",
            host: get(2).to_owned(),
            rate: num(3) as u64,
            latency_secs: num(4),
            concurrency: (num(5) as usize).max(1),
            rps_secs: num(6),
            warmup: num(7) as usize,
        }
    }
}

type Body = Full<Bytes>;

enum Conns {
    /// Idle kept-alive connections; a permit per idle connection.
    H1 {
        idle: Mutex<Vec<http1::SendRequest<Body>>>,
        permits: Semaphore,
    },
    H2(http2::SendRequest<Body>),
}

struct Client {
    conns: Conns,
    uri: Uri,
    host: String,
    body: Bytes,
}

/// One request's outcome: the status, or what went wrong.
type Outcome = Result<u16, String>;

impl Client {
    async fn connect(spec: &Spec) -> Result<Self, String> {
        let (conns, uri) = if spec.h2 {
            let io = dial(spec.addr).await?;
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {}: {e}", spec.addr))?;
            tokio::spawn(conn);
            let uri = format!("http://{}/", spec.host);
            (Conns::H2(send), uri.parse().map_err(|e| format!("{e}"))?)
        } else {
            let mut idle = Vec::with_capacity(spec.concurrency);
            for _ in 0..spec.concurrency {
                let (send, conn) = http1::handshake(dial(spec.addr).await?)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", spec.addr))?;
                tokio::spawn(conn);
                idle.push(send);
            }
            let permits = Semaphore::new(idle.len());
            let idle = Mutex::new(idle);
            (Conns::H1 { idle, permits }, Uri::from_static("/"))
        };
        Ok(Self {
            conns,
            uri,
            host: spec.host.clone(),
            body: Bytes::from(vec![b'q'; BODY_BYTES]),
        })
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::post(self.uri.clone());
        // HTTP/2 carries the authority in the URI (:authority); a Host header besides it is
        // what nginx answers 400.
        if matches!(self.conns, Conns::H1 { .. }) {
            req = req.header("host", &self.host);
        }
        req.header("content-type", "application/octet-stream")
            .body(Full::new(self.body.clone()))
            .expect("static request")
    }

    async fn send(&self) -> Outcome {
        match &self.conns {
            Conns::H2(send) => {
                let mut send = send.clone();
                send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
                exchange(send.send_request(self.request())).await
            }
            Conns::H1 { idle, permits } => {
                let permit = permits.acquire().await.map_err(|e| e.to_string())?;
                let popped = idle.lock().expect("pool lock").pop();
                let Some(mut send) = popped else {
                    permit.forget();
                    return Err("HTTP/1.1 connection lost".into());
                };
                let out = match send.ready().await {
                    Ok(()) => exchange(send.send_request(self.request())).await,
                    Err(e) => Err(format!("HTTP/1.1: {e}")),
                };
                if out.is_ok() {
                    idle.lock().expect("pool lock").push(send);
                } else {
                    // The connection is gone; the pool shrinks rather than hiding the failure.
                    permit.forget();
                }
                out
            }
        }
    }

    async fn send_bounded(&self) -> Outcome {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send())
            .await
            .unwrap_or_else(|_| Err(format!("no response within {REQUEST_TIMEOUT:?}")))
    }
}

async fn dial(addr: SocketAddr) -> Result<TokioIo<tokio::net::TcpStream>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr}: timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// Sends, then reads the whole response: a 2xx must carry the server's 1 KiB.
async fn exchange(
    resp: impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
) -> Outcome {
    let resp = resp.await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    if (200..300).contains(&status) && body.len() != BODY_BYTES {
        return Err(format!(
            "status {status} with a {} byte body, not {BODY_BYTES}",
            body.len()
        ));
    }
    Ok(status)
}

/// Statuses and errors seen.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, out: Outcome) {
        match out {
            Ok(s) => *self.statuses.entry(s).or_default() += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }

    /// Why these responses must not be reported as figures, if they must not.
    fn failure(&self) -> Option<String> {
        let bad: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("status {s} ×{n}"))
            .collect();
        let mut why = bad;
        if self.errors > 0 {
            why.push(format!(
                "{} error(s), first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        (!why.is_empty()).then(|| {
            format!(
                "{} of {} requests: {}",
                self.bad(),
                self.total(),
                why.join(", ")
            )
        })
    }

    fn bad(&self) -> u64 {
        self.errors
            + self
                .statuses
                .iter()
                .filter(|(s, _)| !(200..300).contains(*s))
                .map(|(_, n)| n)
                .sum::<u64>()
    }
}

pub fn run(spec: &Spec) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(measure(spec));
    println!("{report}");
}

async fn measure(spec: &Spec) -> Value {
    let client = match Client::connect(spec).await {
        Ok(c) => Arc::new(c),
        Err(e) => return json!({"ok": false, "failure": e, "requests": 0}),
    };
    let mut tally = Tally::default();
    let per_task = spec.warmup.div_ceil(spec.concurrency);
    let (warm, _, _) = closed_loop(&client, spec.concurrency, move |n, _| n < per_task).await;
    tally.merge(warm);
    if let Some(failure) = tally.failure() {
        return json!({"ok": false, "failure": format!("warm-up: {failure}"),
            "statuses": statuses(&tally), "requests": tally.total()});
    }
    let (lat, lat_tally, late) = open_loop(&client, spec.rate, spec.latency_secs).await;
    tally.merge(lat_tally);
    let until = Instant::now() + Duration::from_secs_f64(spec.rps_secs);
    let (max, done, secs) = closed_loop(&client, spec.concurrency, move |_, now| now < until).await;
    tally.merge(max);
    let pct = |p: f64| lat[((lat.len().saturating_sub(1)) as f64 * p).round() as usize];
    json!({
        "ok": tally.failure().is_none(),
        "failure": tally.failure(),
        "statuses": statuses(&tally),
        "requests": tally.total(),
        "latency": {"requests": lat.len(), "p50_us": pct(0.5), "p99_us": pct(0.99),
            "max_us": lat.last(), "late_dispatches": late},
        "max_rate": {"requests": done, "secs": secs, "per_sec": done as f64 / secs},
    })
}

fn statuses(t: &Tally) -> Value {
    t.statuses
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `tasks` tasks, each sending its next request as soon as the previous one is answered, for
/// as long as `go(requests sent by this task, now)` says. Returns the tally, the requests
/// answered and the seconds it took.
async fn closed_loop(
    client: &Arc<Client>,
    tasks: usize,
    go: impl Fn(usize, Instant) -> bool + Clone + Send + 'static,
) -> (Tally, u64, f64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (client, go) = (client.clone(), go.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                let mut n = 0;
                while go(n, Instant::now()) {
                    t.add(client.send_bounded().await);
                    n += 1;
                }
                t
            })
        })
        .collect();
    let mut tally = Tally::default();
    for h in handles {
        tally.merge(h.await.expect("load task"));
    }
    let done = tally.total();
    (tally, done, start.elapsed().as_secs_f64())
}

/// `rate` requests per second for `secs`, each released at its due time by the pacing thread.
/// Returns the sorted latencies (µs, from due time to the response's end), the tally and how
/// many dispatches the load generator itself started late.
async fn open_loop(client: &Arc<Client>, rate: u64, secs: f64) -> (Vec<u64>, Tally, u64) {
    let n = ((rate as f64 * secs) as usize).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    std::thread::spawn(move || pace(start, interval, n, tx));
    let mut tasks = Vec::with_capacity(n);
    while let Some(due) = rx.recv().await {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let lag = Instant::now().saturating_duration_since(due);
            let out = client.send_bounded().await;
            (Instant::now().saturating_duration_since(due), lag, out)
        }));
    }
    let (mut lat, mut tally, mut late) = (Vec::with_capacity(n), Tally::default(), 0);
    for t in tasks {
        let (took, lag, out) = t.await.expect("request task");
        lat.push(took.as_micros() as u64);
        late += u64::from(lag > LATE);
        tally.add(out);
    }
    lat.sort_unstable();
    (lat, tally, late)
}

/// Releases due times on schedule: sleep most of the way, spin the rest.
fn pace(
    start: Instant,
    interval: Duration,
    n: usize,
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
) {
    for i in 0..n {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now + SPIN {
            std::thread::sleep(due - now - SPIN);
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        if tx.send(due).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_answer_but_2xx_fails_the_case_with_what_was_seen() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(Ok(200));
        }
        assert_eq!(t.failure(), None);
        t.add(Ok(503));
        t.add(Err("connection reset".into()));
        let why = t.failure().expect("a 503 and an error fail the case");
        assert!(why.contains("2 of 5 requests"), "{why}");
        assert!(why.contains("status 503 ×1"), "{why}");
        assert!(why.contains("first: connection reset"), "{why}");
    }

    #[test]
    fn the_spec_round_trips_through_the_command_line() {
        let s = Spec {
            addr: "10.96.0.80:80".parse().unwrap(),
            h2: true,
            host: "web.mesh.svc.cluster.local".into(),
            rate: 500,
            latency_secs: 3.0,
            concurrency: 16,
            rps_secs: 2.0,
            warmup: 256,
        };
        let back = Spec::from_args(&s.to_args());
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }
}
