//! A topology: nodes (network namespaces with a bridge for their pods), pods (own netns, veth
//! into their node's bridge, own cgroup v2 directory), an optional wire between two nodes, and
//! the Kubernetes-shaped YAML the agents read (file mode).
//!
//! Addressing: node i has pod subnet 10.i.0.0/24 (bridge 10.i.0.1) and wire address 10.255.0.i.
//! Each topology lives in its own namespaces, so topologies of parallel tests never meet.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::{self, ip, sysctl};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub index: u8,
    pub netns: String,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub cgroup: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Kubernetes-style pod: a UID, a kubelet-named cgroup (`kubepods/pod<uid>`) and no
    /// weft.dev/netns|cgroup annotations, so the agent must find both itself.
    pub uid: Option<String>,
    /// A sandbox for the CNI plugins to wire: an empty netns (no interface, no address yet)
    /// and no `status.podIP` in the YAML, as a pod is when its CNI ADD runs.
    pub sandbox: bool,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.into(), port)
    }
}

pub struct Topology {
    pub tag: String,
    pub dir: PathBuf,
    cgroup_dir: PathBuf,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Pods deleted from the YAML: their addresses and interface names stay taken.
    removed: Vec<Pod>,
    namespaces: BTreeMap<String, bool>,
    /// Pods left out of the YAML for now (a watch that has not shown them yet).
    hidden: std::collections::BTreeSet<String>,
    pub(crate) children: Vec<std::process::Child>,
}

/// The cgroup v2 mount point (xtask passes it; otherwise found in mountinfo).
pub fn cgroup2_root() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CGROUP2") {
        return p.into();
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mesh_agent::netns::discover::cgroup2_mount(&info)
        .expect("no cgroup2 mount: mount -t cgroup2 none /sys/fs/cgroup/unified")
}

impl Topology {
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "integration tests need root (network namespaces, cgroups, eBPF): run `cargo xtask test`"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("w{}{}", std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(format!("weft-test-{tag}"));
        std::fs::create_dir_all(dir.join("config")).expect("create config dir");
        let cgroup_dir = cgroup2_root().join("weft-test").join(&tag);
        std::fs::create_dir_all(&cgroup_dir).expect("create test cgroup");
        Self {
            tag,
            dir,
            cgroup_dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            removed: Vec::new(),
            namespaces: BTreeMap::new(),
            hidden: Default::default(),
            children: Vec::new(),
        }
    }

    fn add_netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    pub fn node(&mut self, name: &str) -> Node {
        let index = self.nodes.len() as u8 + 1;
        let ns = self.add_netns(name);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.{index}.0.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        sysctl(&ns, "net.ipv4.ip_forward", "1");
        let node = Node {
            name: name.into(),
            index,
            netns: ns,
        };
        self.nodes.push(node.clone());
        self.write_config();
        node
    }

    /// Two nodes, `n1` and `n2`, joined by a wire: the shape of every cross-node test.
    pub fn two_nodes(&mut self) -> (Node, Node) {
        let n1 = self.node("n1");
        let n2 = self.node("n2");
        self.wire(&n1, &n2);
        (n1, n2)
    }

    /// A veth wire between two nodes, with routes to each other's pod subnet.
    pub fn wire(&mut self, a: &Node, b: &Node) {
        let (ia, ib) = (format!("{}wa", self.tag), format!("{}wb", self.tag));
        ip(&["link", "add", &ia, "type", "veth", "peer", "name", &ib]);
        for (node, iface) in [(a, &ia), (b, &ib)] {
            ip(&["link", "set", iface, "netns", &node.netns]);
            ip(&["-n", &node.netns, "link", "set", iface, "name", "wire0"]);
            let addr = format!("10.255.0.{}/24", node.index);
            ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "wire0"]);
            ip(&["-n", &node.netns, "link", "set", "wire0", "up"]);
        }
        for (from, to) in [(a, b), (b, a)] {
            let subnet = format!("10.{}.0.0/24", to.index);
            let via = format!("10.255.0.{}", to.index);
            ip(&["-n", &from.netns, "route", "add", &subnet, "via", &via]);
        }
    }

    /// A Kubernetes namespace; `enrolled` sets the `weft.dev/mesh: enabled` label.
    pub fn namespace(&mut self, name: &str, enrolled: bool) {
        self.namespaces.insert(name.into(), enrolled);
        self.write_config();
    }

    pub fn pod(&mut self, node: &Node, namespace: &str, name: &str) -> Pod {
        self.add_pod(node, namespace, name, false)
    }

    /// A pod as the kubelet makes it: see `Pod::uid`.
    pub fn kubelet_pod(&mut self, node: &Node, namespace: &str, name: &str) -> Pod {
        self.add_pod(node, namespace, name, true)
    }

    fn add_pod(&mut self, node: &Node, namespace: &str, name: &str, kubelet: bool) -> Pod {
        let all = || self.pods.iter().chain(&self.removed);
        let k = all().filter(|p| p.node == node.name).count() as u8 + 2;
        let host_if = format!("{}p{}", self.tag, all().count());
        let ns = self.add_netns(name);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &host_if, "netns", &node.netns]);
        ip(&[
            "-n",
            &node.netns,
            "link",
            "set",
            &host_if,
            "master",
            "br0",
            "up",
        ]);
        let addr = Ipv4Addr::new(10, node.index, 0, k);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{}.0.1", node.index),
        ]);
        self.register_pod(node, namespace, name, ns, addr, kubelet, false)
    }

    /// A pod whose network the CNI plugins are yet to make (see `Pod::sandbox`); its `ip` is
    /// unspecified until the caller learns it from the ADD result. Annotated with its netns
    /// and cgroup, as file mode's pods are.
    pub fn sandbox_pod(&mut self, node: &Node, namespace: &str, name: &str) -> Pod {
        self.add_sandbox(node, namespace, name, false)
    }

    /// A sandbox as the kubelet makes it before CNI ADD: a UID, the pod-level cgroup named
    /// after it (`kubepods/pod<uid>`, empty), no annotations and no address.
    pub fn kubelet_sandbox_pod(&mut self, node: &Node, namespace: &str, name: &str) -> Pod {
        self.add_sandbox(node, namespace, name, true)
    }

    fn add_sandbox(&mut self, node: &Node, namespace: &str, name: &str, kubelet: bool) -> Pod {
        let ns = self.add_netns(name);
        self.register_pod(
            node,
            namespace,
            name,
            ns,
            Ipv4Addr::UNSPECIFIED,
            kubelet,
            true,
        )
    }

    /// The part of a new pod shared by plain pods and sandboxes: its UID (kubelet-style
    /// pods), its cgroup, and its place in the cluster's YAML.
    #[allow(clippy::too_many_arguments)]
    fn register_pod(
        &mut self,
        node: &Node,
        namespace: &str,
        name: &str,
        netns: String,
        ip: Ipv4Addr,
        kubelet: bool,
        sandbox: bool,
    ) -> Pod {
        if !self.namespaces.contains_key(namespace) {
            self.namespaces.insert(namespace.into(), false);
        }
        let uid = kubelet.then(|| {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let kind = if sandbox { 9 } else { 8 };
            format!("{:08x}-0000-4000-{kind}000-{:012x}", std::process::id(), n)
        });
        let cgroup = match &uid {
            Some(uid) => self.cgroup_dir.join("kubepods").join(format!("pod{uid}")),
            None => self.cgroup_dir.join(name),
        };
        std::fs::create_dir_all(&cgroup).expect("create pod cgroup");
        let pod = Pod {
            name: name.into(),
            namespace: namespace.into(),
            node: node.name.clone(),
            ip,
            netns,
            cgroup,
            labels: BTreeMap::new(),
            uid,
            sandbox,
        };
        self.pods.push(pod.clone());
        self.write_config();
        pod
    }

    /// Deletes pod `name` from the cluster's YAML (its netns and processes stay until the
    /// topology drops, as a pod being torn down would).
    pub fn remove_pod(&mut self, name: &str) {
        let (gone, kept) = std::mem::take(&mut self.pods)
            .into_iter()
            .partition(|p| p.name == name);
        self.pods = kept;
        self.removed.extend::<Vec<Pod>>(gone);
        self.write_config();
    }

    /// Leaves pod `name` out of the YAML (`false`) or puts it back (`true`).
    pub fn set_pod_shown(&mut self, name: &str, shown: bool) {
        if shown {
            self.hidden.remove(name);
        } else {
            self.hidden.insert(name.into());
        }
        self.write_config();
    }

    pub fn set_namespace_enrolled(&mut self, name: &str, enrolled: bool) {
        self.namespace(name, enrolled);
    }

    pub fn set_pod_label(&mut self, pod: &str, key: &str, value: &str) {
        let p = self
            .pods
            .iter_mut()
            .find(|p| p.name == pod)
            .expect("known pod");
        p.labels.insert(key.into(), value.into());
        self.write_config();
    }

    /// Adds (or replaces) a YAML file of extra objects, e.g. a PeerAuthentication.
    pub fn apply(&self, name: &str, yaml: &str) {
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write yaml");
        std::fs::rename(&tmp, self.config_dir().join(format!("{name}.yaml"))).expect("rename yaml");
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node_named(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("known node")
    }

    /// Rewrites the cluster's YAML atomically (write, then rename), as a real apply would.
    fn write_config(&self) {
        let mut y = String::new();
        for n in &self.nodes {
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.255.0.{}}}]}}\n---\n",
                n.name, n.index
            );
        }
        for (ns, enrolled) in &self.namespaces {
            let labels = if *enrolled {
                "{weft.dev/mesh: enabled}"
            } else {
                "{}"
            };
            let _ = write!(y, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {labels}}}\n---\n");
        }
        for p in self.pods.iter().filter(|p| !self.hidden.contains(&p.name)) {
            let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let located = match &p.uid {
                Some(uid) => format!("  uid: {uid}\n"),
                None => format!(
                    "  annotations: {{weft.dev/netns: {}, weft.dev/cgroup: {}}}\n",
                    netns::path(&p.netns).display(),
                    p.cgroup.display()
                ),
            };
            let status = if p.sandbox {
                String::new()
            } else {
                format!("status: {{podIP: {}}}\n", p.ip)
            };
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{{}}}\n{located}spec: {{nodeName: {}, serviceAccountName: {}}}\n{status}---\n",
                p.name,
                p.namespace,
                labels.join(", "),
                p.node,
                p.name,
            );
        }
        let tmp = self.dir.join("cluster.yaml.tmp");
        std::fs::write(&tmp, y).expect("write config");
        std::fs::rename(&tmp, self.config_dir().join("cluster.yaml")).expect("rename config");
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            crate::agent::dump_logs(&self.dir);
        }
        cleanup(&self.tag);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes everything a topology tagged `tag` made, whoever started it: processes in its
/// namespaces and cgroups, the namespaces, the cgroups, the pinned eBPF state. Usable from a
/// signal handler thread (the demo's Ctrl-C) without the `Topology` itself.
pub fn cleanup(tag: &str) {
    let prefix = format!("{tag}-");
    let names: Vec<String> = output(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    for ns in &names {
        kill_all(&output(&["netns", "pids", ns]));
    }
    remove_cgroups(&cgroup2_root().join("weft-test").join(tag));
    for ns in &names {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .status();
    }
    let _ = std::fs::remove_dir_all(PathBuf::from(crate::agent::PIN_ROOT).join(tag));
}

/// Kills the processes of a cgroup tree and removes it, children first.
fn remove_cgroups(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        // Only child cgroups: a cgroup's interface files (cgroup.procs, ...) are not.
        let children = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        for e in children {
            remove_cgroups(&e.path());
        }
    }
    kill_all(&std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default());
    // A cgroup can be removed once its killed processes are reaped; bounded retry.
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn output(ip_args: &[&str]) -> String {
    std::process::Command::new("ip")
        .args(ip_args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn kill_all(pids: &str) {
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
