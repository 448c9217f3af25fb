//! Driving `weft-probe` inside pods: echo servers that greet with what they see, and clients
//! that report what the application sees (getsockname, getpeername, bytes, checksums).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::Value;

use crate::{
    agent::sibling_bin,
    netns,
    topology::{Node, Pod, Topology},
};

fn probe(pod: &Pod) -> Command {
    let mut cmd = Command::new(sibling_bin("weft-probe"));
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    cmd
}

/// What one connection looked like from the client application.
#[derive(Debug, Clone)]
pub struct ConnectResult {
    pub raw: Value,
}

impl ConnectResult {
    pub fn ok(&self) -> bool {
        self.raw["ok"] == true
    }
    pub fn error(&self) -> String {
        self.raw["error"].as_str().unwrap_or("").to_owned()
    }
    /// getsockname of the client socket.
    pub fn local(&self) -> SocketAddr {
        self.addr("local")
    }
    /// getpeername of the client socket.
    pub fn peer(&self) -> SocketAddr {
        self.addr("peer")
    }
    /// The source address the server saw.
    pub fn server_saw_peer(&self) -> SocketAddr {
        self.raw["greeting"]["peer"]
            .as_str()
            .expect("greeting")
            .parse()
            .expect("addr")
    }
    pub fn server(&self) -> String {
        self.raw["greeting"]["server"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    pub fn intact(&self) -> bool {
        self.raw["intact"] == true
    }
    pub fn received(&self) -> u64 {
        self.raw["received"].as_u64().unwrap_or(0)
    }
    fn addr(&self, k: &str) -> SocketAddr {
        self.raw[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {}", self.raw))
            .parse()
            .expect("addr")
    }
}

/// Starts an echo server in `pod` on `ports`; returns once every port is listening.
pub fn serve(topo: &mut Topology, pod: &Pod, ports: &[u16]) {
    serve_with(topo, probe(pod), &pod.name, ports)
}

/// An echo server in a node's own netns (no pod, no cgroup): a destination outside the mesh.
pub fn serve_on_node(topo: &mut Topology, node: &Node, ports: &[u16]) {
    let mut cmd = Command::new(sibling_bin("weft-probe"));
    netns::command_in(&mut cmd, &node.netns, None).expect("node netns");
    serve_with(topo, cmd, &node.name, ports)
}

fn serve_with(topo: &mut Topology, mut cmd: Command, name: &str, ports: &[u16]) {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut child = cmd
        .args(["serve", "--name", name, "--ports", &ports.join(",")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start probe server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server readiness line");
    assert_eq!(line.trim(), "ready", "probe server did not start");
    topo.children.push(child);
}

/// A long-running client process in a pod, driven line by line.
pub struct Client {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    pub fn start(topo: &mut Topology, pod: &Pod) -> Self {
        let mut child = probe(pod)
            .arg("client")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start probe client");
        let c = Self {
            stdin: child.stdin.take().expect("stdin"),
            stdout: BufReader::new(child.stdout.take().expect("stdout")),
        };
        topo.children.push(child);
        c
    }

    fn call(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("write to probe");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("read from probe");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe said {out:?}: {e}"))
    }

    /// One connection: greeting, `bytes` echoed back, checksums compared, closed.
    pub fn connect(&mut self, addr: SocketAddr, bytes: u64) -> ConnectResult {
        ConnectResult {
            raw: self.call(&format!("connect {addr} {bytes}")),
        }
    }

    /// Opens a connection kept under `id`.
    pub fn open(&mut self, id: &str, addr: SocketAddr) -> ConnectResult {
        ConnectResult {
            raw: self.call(&format!("open {id} {addr}")),
        }
    }

    /// Closes the kept connection `id` (this side's end).
    pub fn close(&mut self, id: &str) -> Value {
        self.call(&format!("close {id}"))
    }

    /// Waits for the far end to end the kept connection `id`: `eof` true for a clean end.
    pub fn end(&mut self, id: &str) -> Value {
        self.call(&format!("end {id}"))
    }

    /// Echoes `bytes` over the kept connection `id`.
    pub fn xfer(&mut self, id: &str, bytes: u64) -> ConnectResult {
        ConnectResult {
            raw: self.call(&format!("xfer {id} {bytes}")),
        }
    }
}

/// Runs a one-shot probe command in a pod and returns its JSON report.
pub fn run(pod: &Pod, args: &[&str]) -> Value {
    let out = probe(pod).args(args).output().expect("run probe");
    assert!(
        out.status.success(),
        "probe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}

/// A steady stream of new connections from a pod (one every `period_ms`, 64 B echoed and a
/// clean end checked each), running until `finish`.
pub struct Steady {
    child: std::process::Child,
    stdout: BufReader<ChildStdout>,
}

impl Steady {
    /// Starts the load and returns once its first connection went through.
    pub fn start(pod: &Pod, addr: SocketAddr, period_ms: u64) -> Self {
        let mut child = probe(pod)
            .args(["steady", &addr.to_string(), &period_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start steady load");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("steady readiness");
        assert_eq!(
            line.trim(),
            "ready",
            "steady load did not get a first connection through"
        );
        Self { child, stdout }
    }

    /// Stops the load: `{ok, failed, errors, longest_gap_ms}`.
    pub fn finish(mut self) -> Value {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("steady report");
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("steady said {line:?}: {e}"))
    }
}
