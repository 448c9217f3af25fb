//! A real `mesh-agent` process in a node's network namespace, and its admin endpoint.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    eventually, netns,
    topology::{Node, Pod, Topology},
};

/// bpffs directory under which each test agent pins (one directory per topology and node).
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft-test";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// `WEFT_AGENT_BIN_PREVIOUS`: the binary agents start from until they are replaced (an agent
/// built from an earlier commit, to upgrade from it); unset, the agent under test.
pub fn previous_bin() -> Option<PathBuf> {
    std::env::var_os("WEFT_AGENT_BIN_PREVIOUS").map(PathBuf::from)
}

pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_AGENT_BIN") {
        return p.into();
    }
    sibling_bin("mesh-agent")
}

/// A binary built next to the running one (test binaries live one level down, in deps/).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// An agent that was replaced or sent SIGTERM, draining; killed if still there when dropped.
pub struct Retired(pub Child);

impl Retired {
    /// Waits up to `within` for it to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.0, within)
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` to a child process.
pub fn signal(c: &Child, sig: i32) {
    // Safety: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(c.id() as i32, sig) };
}

/// Waits up to `within` for a child to exit; its status, or None if it still runs.
pub fn wait_exit(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return Some(s);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Agent {
    pub node: Node,
    pub pin_dir: PathBuf,
    config_dir: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Extra environment of the agents started from now on.
    env: Vec<(String, String)>,
    /// The binary the next agent runs (`agent_bin()` unless a test starts another).
    bin: PathBuf,
}

impl Agent {
    /// Starts an agent for `node` and waits until it has applied the configuration.
    pub fn start(topo: &Topology, node: &Node) -> Self {
        Self::start_with(topo, node, &[])
    }

    pub fn start_with(topo: &Topology, node: &Node, extra_args: &[&str]) -> Self {
        let mut a = Self {
            node: node.clone(),
            pin_dir: PathBuf::from(PIN_ROOT).join(&topo.tag).join(&node.name),
            config_dir: topo.config_dir(),
            state_dir: topo.dir.join(format!("state-{}", node.name)),
            log: topo.dir.join(format!("agent-{}.log", node.name)),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            bin: previous_bin().unwrap_or_else(agent_bin),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        self.child = Some(self.spawn_child());
        self.wait_ready();
    }

    fn spawn_child(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .args(["--node", &self.node.name])
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpf-pin-dir")
            .arg(&self.pin_dir)
            .args(["--reload-interval-ms", "50"])
            .args(&self.extra_args)
            .env("WEFT_LOG", log_filter())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        netns::command_in(&mut cmd, &self.node.netns, None).expect("node netns");
        cmd.spawn().expect("start mesh-agent")
    }

    /// Starts a new agent beside the running one, as a DaemonSet rollout with maxSurge does,
    /// and waits until it has taken over (it answers the admin endpoint, ready, and names the
    /// old agent as the one it took over from). Returns the old agent's process, draining.
    pub fn replace(&mut self) -> Retired {
        let old = self.child.take().expect("a running agent");
        let old_pid = old.id();
        self.bin = agent_bin();
        self.child = Some(self.spawn_child());
        let new_pid = self.pid().expect("new agent");
        let node = self.node.name.clone();
        eventually(
            &format!("the new agent on {node} to take over from pid {old_pid}"),
            READY_TIMEOUT,
            || {
                self.assert_running("new agent");
                let (_, body) = self.get("/config_dump").ok()?;
                let dump: Value = serde_json::from_str(&body).ok()?;
                (dump["pid"] == new_pid
                    && dump["ready"] == true
                    && dump["took_over_from"] == old_pid)
                    .then_some(())
            },
        );
        Retired(old)
    }

    /// Sets (or, with None, removes) an environment variable of the agents started from now on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    /// Starts an agent that must refuse to start (the running one is killed first); returns
    /// its exit status.
    pub fn start_refused(&mut self) -> std::process::ExitStatus {
        self.kill();
        let mut c = self.spawn_child();
        wait_exit(&mut c, READY_TIMEOUT).unwrap_or_else(|| {
            let _ = c.kill();
            panic!(
                "the agent on {} did not refuse to start\n{}",
                self.node.name,
                tail(&self.log)
            )
        })
    }

    /// SIGTERM: the agent drains and exits.
    pub fn terminate(&mut self) -> Option<Retired> {
        let c = self.child.take()?;
        signal(&c, libc::SIGTERM);
        Some(Retired(c))
    }

    /// The agent's weft-cni socket (in its state directory).
    pub fn cni_socket(&self) -> PathBuf {
        self.state_dir.join(mesh_agent::cni::server::SOCKET_NAME)
    }

    /// Starts an agent that gets its workload certificates from `ca`.
    pub fn start_meshed(topo: &Topology, node: &Node, ca: &crate::Ca, extra: &[&str]) -> Self {
        let mut args = ca.agent_args(&node.name);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(
            topo,
            node,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// Waits until every local identity has an unexpired certificate; returns their entries.
    pub fn wait_certificates(&self) -> Vec<Value> {
        eventually("workload certificates", Duration::from_secs(15), || {
            let certs = self.config_dump()["certificates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let valid = |c: &Value| c["expires_in_secs"].as_i64().is_some_and(|t| t > 0);
            (!certs.is_empty() && certs.iter().all(valid)).then_some(certs)
        })
    }

    /// Panics, with the end of its log, if the agent has exited.
    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            let node = &self.node.name;
            panic!("{what} on {node} exited: {status}\n{}", tail(&self.log));
        }
    }

    pub fn wait_ready(&mut self) {
        let node = self.node.name.clone();
        eventually(
            &format!("agent on {node} to be ready"),
            READY_TIMEOUT,
            || {
                self.assert_running("agent");
                self.get("/healthz/ready")
                    .ok()
                    .filter(|(code, _)| *code == 200)
            },
        );
    }

    /// GET on the admin endpoint (127.0.0.1:15000 in the node's netns): (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let stream = netns::run_in(&self.node.netns, || TcpStream::connect("127.0.0.1:15000"))??;
        http_get(stream, path)
    }

    pub fn config_dump(&self) -> Value {
        let (_, body) = self.get("/config_dump").expect("config_dump");
        serde_json::from_str(&body).expect("config_dump is JSON")
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.config_dump()["bpf"]["counters"][name]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn map_entries(&self, name: &str) -> u64 {
        self.config_dump()["bpf"]["map_entries"][name]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn enrolled(&self, pod: &Pod) -> Option<Value> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let dump = self.config_dump();
        dump["pods"]
            .as_array()?
            .iter()
            .find(|p| p["pod"] == key.as_str())
            .cloned()
    }

    /// Waits until the agent reports the pod enrolled; returns its /config_dump entry.
    pub fn wait_enrolled(&self, pod: &Pod) -> Value {
        eventually(
            &format!("{} to be enrolled", pod.name),
            ENROLL_TIMEOUT,
            || self.enrolled(pod),
        )
    }

    pub fn wait_released(&self, pod: &Pod) {
        eventually(
            &format!("{} to be released", pod.name),
            ENROLL_TIMEOUT,
            || self.enrolled(pod).is_none().then_some(()),
        )
    }

    /// SIGKILL: the agent gets no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The agent's process id, while it runs (the bench reads its /proc/PID/status).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds (user + system) the agent has used so far, and its peak RSS in KiB.
    pub fn usage(&self) -> (f64, u64) {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        // Safety: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (cpu, hwm)
    }

    /// Waits until the MeshConfig tunnel `tunnel` is in force on this agent.
    pub fn wait_tunnel(&self, tunnel: &str) {
        eventually(
            &format!("MeshConfig tunnel {tunnel} in force"),
            Duration::from_secs(10),
            || (self.config_dump()["state"]["mesh"]["tunnel"] == tunnel).then_some(()),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access-log lines written so far (JSON lines on the agent's stdout).
    pub fn access_log(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("reporter").is_some())
            .collect()
    }

    /// The Prometheus text of the node's :15020/metrics.
    pub fn metrics(&self) -> String {
        let stream = netns::run_in(&self.node.netns, || TcpStream::connect("127.0.0.1:15020"))
            .expect("node netns")
            .expect("connect to :15020");
        let (code, body) = http_request(stream, "GET", "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// POST on the admin endpoint: (status, body).
    pub fn post(&self, path: &str) -> std::io::Result<(u16, String)> {
        let stream = netns::run_in(&self.node.netns, || TcpStream::connect("127.0.0.1:15000"))??;
        http_request(stream, "POST", path)
    }

    /// Runs `meshctl ARGS` in this node's netns (where the agent's admin endpoint is):
    /// (exit code, stdout).
    pub fn meshctl(&self, args: &[&str]) -> (i32, String) {
        let mut cmd = Command::new(sibling_bin("meshctl"));
        cmd.args(args);
        netns::command_in(&mut cmd, &self.node.netns, None).expect("node netns");
        let out = cmd.output().expect("run meshctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "meshctl {args:?} failed: {stderr}\n{stdout}"
        );
        (out.status.code().unwrap_or(-1), stdout)
    }
}

/// The value of the one series of `name` whose labels include every `labels` pair (0 when there
/// is none); panics if several match, so a test never sums what it did not mean to.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let matching: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several series:\n{text}"
    );
    matching.first().copied().unwrap_or(0)
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_get(s: TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    http_request(s, "GET", path)
}

fn http_request(mut s: TcpStream, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Prints the end of every agent log of a failed test.
pub fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            eprintln!("----- {} -----\n{}", p.display(), tail(&p));
        }
    }
}

/// The agents' log filter: debug for Weft in tests (their logs are what failures are read
/// from); `WEFT_TEST_LOG` overrides it (the bench runs agents at the production default,
/// `info`, so the figures do not include debug logging).
fn log_filter() -> String {
    std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info,mesh_agent=debug".into())
}
