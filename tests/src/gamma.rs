//! The layout of the Gateway API mesh (GAMMA) conformance suite as a two-node netns topology,
//! with real agents and their L7 pools: the clients on n1 (`client` in namespace `mesh`,
//! `visitor` in namespace `consumer`), the suite's `echo-v1` and `echo-v2` applications
//! (`weft-probe http-serve` on 8080) and a `recorder` pod on n2; Services `echo` (both
//! versions), `echo-v1`, `echo-v2` (ports 80 and 8080 each), `recorder` and `recorder-alt`,
//! plus whatever frontends and routes a test adds.
//!
//! The recorder is an HTTP/1.1 application that answers every request with the request as it
//! arrived (every header field, repeated ones included, in order; the body) and remembers it,
//! so a test sees what a header modifier, a rewrite or a mirror delivered where the probe's
//! JSON report folds repeated fields. A request header `x-echo-set-header: Name: value` makes it
//! answer with that response header (the suite's echo server does the same), for response
//! header modifiers to act on.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    eventually, http, netns,
    topology::{Pod, Topology},
    Agent, Ca,
};

pub const ECHO: &str = "10.96.0.40";
pub const ECHO_V1: &str = "10.96.0.41";
pub const ECHO_V2: &str = "10.96.0.42";

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec:
  clusterIP: 10.96.0.40
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh}
spec:
  clusterIP: 10.96.0.41
  selector: {app: echo, version: v1}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, targetPort: 8080, appProtocol: http}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: mesh}
spec:
  clusterIP: 10.96.0.42
  selector: {app: echo, version: v2}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: http-alt, port: 8080, targetPort: 8080, appProtocol: http}
---
apiVersion: v1
kind: Service
metadata: {name: recorder, namespace: mesh}
spec:
  clusterIP: 10.96.0.43
  selector: {app: recorder}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: recorder-alt, namespace: mesh}
spec:
  clusterIP: 10.96.0.44
  selector: {app: recorder}
  ports: [{name: http, port: 80, targetPort: 8081, appProtocol: http}]
";

/// A Service `name` in `mesh` at `ip`, port 80 (HTTP) onto both echo versions: a frontend a
/// test binds its routes to, so that each conformance case has a Service of its own.
pub fn frontend(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: mesh}}\nspec:\n  \
         clusterIP: {ip}\n  selector: {{app: echo}}\n  \
         ports: [{{name: http, port: 80, targetPort: 8080, appProtocol: http}}]\n---\n"
    )
}

pub struct Gamma {
    pub a1: Agent,
    pub a2: Agent,
    _ca: Ca,
    /// In `mesh`, on n1.
    pub client: Pod,
    /// In `consumer`, on n1.
    pub visitor: Pod,
    pub v1: Pod,
    pub v2: Pod,
    /// `recorder` (8080) and `recorder-alt` (8081), in one pod on n2.
    pub recorder: Recorder,
    pub recorder_alt: Recorder,
    pub topo: Topology,
}

/// The layout, with `config` (name, YAML) applied before the agents start.
pub fn start(config: &[(&str, &str)]) -> Gamma {
    let mut topo = Topology::new();
    let (n1, n2) = topo.two_nodes();
    topo.namespace("mesh", true);
    topo.namespace("consumer", true);
    let client = topo.pod(&n1, "mesh", "client");
    let visitor = topo.pod(&n1, "consumer", "visitor");
    let v1 = topo.pod(&n2, "mesh", "echo-v1");
    let v2 = topo.pod(&n2, "mesh", "echo-v2");
    let rec = topo.pod(&n2, "mesh", "recorder");
    for (p, version) in [(&v1, "v1"), (&v2, "v2")] {
        topo.set_pod_label(&p.name, "app", "echo");
        topo.set_pod_label(&p.name, "version", version);
        http::serve(&mut topo, p, &[8080]);
    }
    topo.set_pod_label(&rec.name, "app", "recorder");
    let recorder = Recorder::start(&rec, 8080, "recorder");
    let recorder_alt = Recorder::start(&rec, 8081, "recorder-alt");
    topo.apply("services", SERVICES);
    for (name, yaml) in config {
        topo.apply(name, yaml);
    }
    let ca = Ca::start(&topo, &n1, 15012, 3600, "cluster.local");
    let a1 = Agent::start_meshed(&topo, &n1, &ca, &[]);
    let a2 = Agent::start_meshed(&topo, &n2, &ca, &[]);
    for p in [&client, &visitor] {
        a1.wait_enrolled(p);
    }
    for p in [&v1, &v2, &rec] {
        a2.wait_enrolled(p);
    }
    a1.wait_certificates();
    a2.wait_certificates();
    Gamma {
        a1,
        a2,
        _ca: ca,
        client,
        visitor,
        v1,
        v2,
        recorder,
        recorder_alt,
        topo,
    }
}

/// What curl saw, every response header field kept in order (names lower case).
#[derive(Debug, Clone)]
pub struct Answer {
    /// 0: no HTTP response (curl's error is in `error`).
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub error: String,
}

impl Answer {
    /// Every value of response header `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The values of `name` joined by `,` (the single field they are equivalent to); None
    /// when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }

    /// Which application answered (its `x-server` header).
    pub fn server(&self) -> String {
        self.header("x-server").unwrap_or_default()
    }

    /// The probe's JSON report.
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not a report ({e}): {self:?}"))
    }

    /// What the recorder received, from its answer.
    pub fn received(&self) -> Received {
        Received::from_json(&self.report())
            .unwrap_or_else(|| panic!("not the recorder's answer: {self:?}"))
    }
}

/// Runs curl as the application in `pod` (captured like any), with `args` (a URL among
/// them); `-s -S -i` are added. Redirects are never followed.
pub fn fetch(pod: &Pod, args: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd
        .args(["-s", "-S", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut answer = Answer {
        status: 0,
        headers: Vec::new(),
        body: String::new(),
        error: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    };
    let mut rest: &str = &text;
    // Interim responses (100 Continue) come first: the last head is the answer.
    while let Some((head, body)) = rest.split_once("\r\n\r\n") {
        let mut lines = head.lines();
        answer.status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        answer.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        rest = body;
        if !(100..200).contains(&answer.status) {
            break;
        }
    }
    answer.body = rest.to_owned();
    answer
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let v = values(headers, name);
    (!v.is_empty()).then(|| v.join(","))
}

/// One request head as the recorder received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub server: String,
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Every field in order, names lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The values of `name` joined by `,`, as the suite's echo server reports them.
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }

    fn to_json(&self) -> Value {
        json!({
            "server": self.server,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let headers = v["headers"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
            .collect();
        Some(Self {
            server: v["server"].as_str()?.to_owned(),
            method: v["method"].as_str()?.to_owned(),
            path: v["path"].as_str()?.to_owned(),
            headers,
            body: v["body"].as_str()?.to_owned(),
        })
    }
}

/// The recording application: see the module doc. Stops accepting when dropped.
pub struct Recorder {
    seen: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    /// Listens on `port` in `pod`'s network namespace; returns once it listens.
    pub fn start(pod: &Pod, port: u16, name: &str) -> Self {
        let listener = netns::run_in(&pod.netns, move || TcpListener::bind(("0.0.0.0", port)))
            .and_then(|r| r)
            .expect("recorder listens in the pod");
        listener.set_nonblocking(true).expect("nonblocking");
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, name) = (seen.clone(), stop.clone(), name.to_owned());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, name) = (s.clone(), name.clone());
                        std::thread::spawn(move || serve(conn, &name, &s));
                    }
                    // Polled, so that dropping the recorder ends the thread.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => break,
                }
            }
        });
        Self { seen, stop }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().expect("recorder").clone()
    }

    /// Waits (10 s at most) for a request whose path is `path`.
    pub fn wait_for(&self, path: &str) -> Received {
        eventually(
            &format!("the recorder to receive {path}"),
            Duration::from_secs(10),
            || self.received().into_iter().find(|r| r.path == path),
        )
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection: request after request (keep-alive) until the peer closes.
fn serve(conn: TcpStream, name: &str, seen: &Mutex<Vec<Received>>) {
    // A peer that stops talking releases the thread.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    while let Some(mut req) = read_head(&mut r, name) {
        let len = req
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok())
            .unwrap_or(0);
        if req.header("transfer-encoding").is_some() {
            // Not needed by these tests; said plainly rather than misread.
            let _ = out.write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        let mut body = Vec::new();
        if !(&mut r)
            .take(len)
            .read_to_end(&mut body)
            .is_ok_and(|n| n as u64 == len)
        {
            return;
        }
        req.body = String::from_utf8_lossy(&body).into_owned();
        let mut extra = String::new();
        for v in req.values("x-echo-set-header") {
            extra.push_str(v);
            extra.push_str("\r\n");
        }
        let body = req.to_json().to_string();
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        seen.lock().expect("recorder").push(req);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-server: {name}\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

fn read_head(r: &mut BufReader<TcpStream>, name: &str) -> Option<Received> {
    let mut line = String::new();
    r.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok().filter(|n| *n > 0)?;
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Some(Received {
        server: name.to_owned(),
        method,
        path,
        headers,
        body: String::new(),
    })
}

/// The request lines of an agent's access log (one per request its pool handled), once
/// `ready` says they are all there (a worker writes a line when the response has ended, so
/// the line may follow the client's answer by a moment).
pub fn request_lines(a: &Agent, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually("the request lines", Duration::from_secs(10), || {
        let lines: Vec<Value> = a
            .access_log()
            .into_iter()
            .filter(|l| l["kind"] == "request")
            .collect();
        ready(&lines).then_some(lines)
    })
}

/// The request line whose path is `path` (waiting for it).
pub fn request_line(a: &Agent, path: &str) -> Value {
    let lines = request_lines(a, |l| l.iter().any(|l| l["path"] == path));
    lines
        .into_iter()
        .find(|l| l["path"] == path)
        .expect("checked")
}
