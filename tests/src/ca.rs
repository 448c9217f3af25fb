//! A real `mesh-agent ca` process, serving on node 1's bridge address (10.1.0.1:15012), which
//! every node of a topology can route to.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{agent::agent_bin, eventually, netns, topology::Node, Pod, Topology};

pub struct Ca {
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    node: Node,
    log: PathBuf,
    /// Where the process runs: the node's netns, or a pod's netns and cgroup.
    netns: String,
    cgroup: Option<PathBuf>,
}

impl Ca {
    /// Starts a CA in `node`'s netns on port `port`; waits until it serves and has written the
    /// bootstrap credentials of every node. `lifetime_secs`: workload certificate lifetime.
    pub fn start(
        topo: &Topology,
        node: &Node,
        port: u16,
        lifetime_secs: u64,
        trust_domain: &str,
    ) -> Self {
        let addr: SocketAddr = format!("10.{}.0.1:{port}", node.index)
            .parse()
            .expect("addr");
        Self::start_at(
            topo,
            node,
            (addr, &node.netns, None),
            lifetime_secs,
            trust_domain,
        )
    }

    /// Starts a CA as a pod of the topology (as deploy/ runs it, in its own netns and cgroup),
    /// serving on the pod's address.
    pub fn start_in_pod(
        topo: &Topology,
        pod: &Pod,
        port: u16,
        lifetime_secs: u64,
        trust_domain: &str,
    ) -> Self {
        let node = topo.node_named(&pod.node).clone();
        let place = (pod.addr(port), pod.netns.as_str(), Some(pod.cgroup.clone()));
        Self::start_at(topo, &node, place, lifetime_secs, trust_domain)
    }

    fn start_at(
        topo: &Topology,
        node: &Node,
        (addr, netns, cgroup): (SocketAddr, &str, Option<PathBuf>),
        lifetime_secs: u64,
        trust_domain: &str,
    ) -> Self {
        let port = addr.port();
        let state_dir = topo.dir.join(format!("ca-{port}"));
        let args = vec![
            "ca".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--config-dir".into(),
            topo.config_dir().display().to_string(),
            "--cert-lifetime-secs".into(),
            lifetime_secs.to_string(),
            "--trust-domain".into(),
            trust_domain.into(),
        ];
        let mut ca = Self {
            addr,
            state_dir,
            child: None,
            args,
            node: node.clone(),
            log: topo.dir.join(format!("ca-{port}.log")),
            netns: netns.to_owned(),
            cgroup,
        };
        ca.spawn(topo);
        ca
    }

    /// A second CA process over the same root (same state directory), e.g. one that issues
    /// already-expired certificates.
    pub fn sibling(topo: &Topology, of: &Ca, port: u16, lifetime_secs: u64) -> Self {
        let mut args = of.args.clone();
        let set = |args: &mut Vec<String>, flag: &str, v: String| {
            let i = args.iter().position(|a| a == flag).expect("flag");
            args[i + 1] = v;
        };
        let addr: SocketAddr = format!("10.{}.0.1:{port}", of.node.index)
            .parse()
            .expect("addr");
        set(&mut args, "--listen", addr.to_string());
        set(&mut args, "--cert-lifetime-secs", lifetime_secs.to_string());
        let mut ca = Self {
            addr,
            state_dir: of.state_dir.clone(),
            child: None,
            args,
            node: of.node.clone(),
            log: topo.dir.join(format!("ca-{port}.log")),
            netns: of.node.netns.clone(),
            cgroup: None,
        };
        ca.spawn(topo);
        ca
    }

    fn spawn(&mut self, topo: &Topology) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("ca log");
        let mut cmd = Command::new(agent_bin());
        cmd.args(&self.args)
            .env("WEFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("fd"))
            .stderr(log);
        netns::command_in(&mut cmd, &self.netns, self.cgroup.clone()).expect("netns");
        self.child = Some(cmd.spawn().expect("start mesh-agent ca"));
        let nodes: Vec<String> = topo.nodes().iter().map(|n| n.name.clone()).collect();
        let (ns, addr) = (self.netns.clone(), self.addr);
        eventually("the CA to serve", Duration::from_secs(20), || {
            let written = nodes
                .iter()
                .all(|n| self.bootstrap(n).join("token").exists());
            let serving = netns::run_in(&ns, move || std::net::TcpStream::connect(addr).is_ok())
                .unwrap_or(false);
            (written && serving).then_some(())
        });
    }

    /// The bootstrap credential directory of a node.
    pub fn bootstrap(&self, node: &str) -> PathBuf {
        self.state_dir.join("bootstrap").join(node)
    }

    /// The flags that point an agent of `node` at this CA.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        vec![
            "--ca-addr".into(),
            self.addr.to_string(),
            "--ca-bootstrap".into(),
            self.bootstrap(node).display().to_string(),
        ]
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the CA again after `kill` (same root, same flags).
    pub fn restart(&mut self, topo: &Topology) {
        self.kill();
        self.spawn(topo);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.kill();
    }
}
