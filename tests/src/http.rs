//! HTTP in test pods: the `weft-probe http-serve` application, and curl run as the client
//! application (in the pod's netns and cgroup, so its connections are captured like any
//! application's).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{
    agent::sibling_bin,
    netns,
    topology::{Pod, Topology},
};

/// Starts the HTTP application in `pod` on `ports`; returns once it listens.
pub fn serve(topo: &mut Topology, pod: &Pod, ports: &[u16]) {
    let mut cmd = Command::new(sibling_bin("weft-probe"));
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut child = cmd
        .args([
            "http-serve",
            "--name",
            &pod.name,
            "--ports",
            &ports.join(","),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the HTTP application");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("readiness line");
    assert_eq!(line.trim(), "ready", "HTTP application did not start");
    topo.children.push(child);
}

/// What curl saw.
#[derive(Debug, Clone)]
pub struct Response {
    /// 0: no HTTP response (curl's error is in `error`).
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub error: String,
}

impl Response {
    /// The application's JSON report (`weft-probe http-serve`).
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not a report ({e}): {self:?}"))
    }

    /// Which pod answered.
    pub fn server(&self) -> String {
        self.headers.get("x-server").cloned().unwrap_or_default()
    }
}

/// Runs curl in `pod` with `args` (a URL among them); `-s -i` are added.
pub fn curl(pod: &Pod, args: &[&str]) -> Response {
    let mut cmd = Command::new("curl");
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd
        .args(["-s", "-S", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    parse(
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

fn parse(out: &str, err: &str) -> Response {
    let mut status = 0;
    let mut headers = BTreeMap::new();
    let mut rest = out;
    // Skip interim responses (100 Continue): the last head is the answer.
    while let Some((head, body)) = rest.split_once("\r\n\r\n") {
        let mut lines = head.lines();
        let code = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        status = code;
        headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        rest = body;
        if !(100..200).contains(&code) || code == 101 {
            break;
        }
    }
    Response {
        status,
        headers,
        body: rest.to_string(),
        error: err.trim().to_string(),
    }
}

/// Sends `printf`-escaped `bytes` from `pod` (captured like an application's connection) to
/// `addr` and returns what came back before the peer closed (at most 5 s).
pub fn send_raw(pod: &Pod, addr: std::net::SocketAddr, bytes: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && printf '{bytes}' >&3 && timeout 5 cat <&3",
        addr.ip(),
        addr.port()
    );
    let mut cmd = Command::new("bash");
    netns::command_in(&mut cmd, &pod.netns, Some(pod.cgroup.clone())).expect("pod netns");
    let out = cmd.args(["-c", &script]).output().expect("run bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
