//! A container runtime's CNI side, as libcni does it, for the weft-cni tests: a network is a
//! conflist; ADD runs its plugins in order, each given the previous one's result as
//! `prevResult` (with the list's name and cniVersion injected); DEL runs them in reverse, and
//! CHECK in order, each with the cached ADD result. Plugins run in the node's netns (where the
//! bridge lives), are found in one CNI_PATH directory holding the Debian reference plugins and
//! weft-cni.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{netns, topology::Node};

/// Where Debian's containernetworking-plugins installs the plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The weft-cni binary under test: `WEFT_CNI_BIN`, else the one built next to the tests.
pub fn weft_cni_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CNI_BIN") {
        return p.into();
    }
    crate::agent::sibling_bin("weft-cni")
}

/// One plugin's failure, as the runtime saw it.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    /// The spec's error object (Null when the plugin printed none).
    pub error: Value,
    pub stderr: String,
}

impl PluginError {
    pub fn msg(&self) -> String {
        self.error["msg"].as_str().unwrap_or_default().to_owned()
    }
}

/// The pod a sandbox is for, as the kubelet passes it in CNI_ARGS.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A runtime: a CNI_PATH with the reference plugins and weft-cni, run in a node's netns.
pub struct Runtime {
    pub node: Node,
    pub cni_path: PathBuf,
    /// Each invocation's stderr per plugin (what a runtime would log).
    pub log: Vec<(String, String)>,
    /// The last ADD's result of each plugin, in order.
    pub results: Vec<(String, Value)>,
    /// How long each invocation took (plugin, command, time).
    pub timings: Vec<(String, String, Duration)>,
}

impl Runtime {
    /// Links the reference plugins and weft-cni into `dir/cni-bin`.
    pub fn new(node: &Node, dir: &Path) -> Self {
        let rt = Self::with_reference_plugins(node, &dir.join("cni-bin"));
        let _ = std::os::unix::fs::symlink(weft_cni_bin(), rt.cni_path.join("weft-cni"));
        rt
    }

    /// Links only the reference plugins into `cni_path` (weft-cni is for its installer to put
    /// there).
    pub fn with_reference_plugins(node: &Node, cni_path: &Path) -> Self {
        let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
        assert!(
            bridge.exists(),
            "{} missing: apt-get install containernetworking-plugins",
            bridge.display()
        );
        std::fs::create_dir_all(cni_path).expect("cni bin dir");
        for p in ["bridge", "host-local", "loopback"] {
            let _ =
                std::os::unix::fs::symlink(Path::new(REFERENCE_PLUGINS).join(p), cni_path.join(p));
        }
        Self {
            node: node.clone(),
            cni_path: cni_path.to_owned(),
            log: Vec::new(),
            results: Vec::new(),
            timings: Vec::new(),
        }
    }

    /// ADD: every plugin in order; returns the last result.
    pub fn add(&mut self, list: &Value, sb: &Sandbox) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        self.results.clear();
        for plugin in plugins(list) {
            let out = self.exec("ADD", list, &plugin, prev.as_ref(), sb)?;
            let out = out.expect("ADD prints a result");
            self.results.push((
                plugin["type"].as_str().unwrap_or("").to_owned(),
                out.clone(),
            ));
            prev = Some(out);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL: every plugin in reverse, with the cached ADD result (if any).
    pub fn del(
        &mut self,
        list: &Value,
        sb: &Sandbox,
        cached: Option<&Value>,
    ) -> Result<(), PluginError> {
        for plugin in plugins(list).into_iter().rev() {
            self.exec("DEL", list, &plugin, cached, sb)?;
        }
        Ok(())
    }

    /// CHECK: every plugin in order, with the cached ADD result.
    pub fn check(&mut self, list: &Value, sb: &Sandbox, cached: &Value) -> Result<(), PluginError> {
        for plugin in plugins(list) {
            self.exec("CHECK", list, &plugin, Some(cached), sb)?;
        }
        Ok(())
    }

    fn exec(
        &mut self,
        command: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        sb: &Sandbox,
    ) -> Result<Option<Value>, PluginError> {
        let kind = plugin["type"].as_str().expect("plugin type").to_owned();
        // libcni's buildOneConfig: the list's name and version, then prevResult.
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            sb.namespace, sb.name, sb.container_id, sb.uid
        );
        let mut cmd = Command::new(self.cni_path.join(&kind));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sb.container_id)
            // An empty path stands for a netns the runtime no longer has (DEL).
            .env("CNI_NETNS", &sb.netns)
            .env("CNI_IFNAME", &sb.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        netns::command_in(&mut cmd, &self.node.netns, None).expect("node netns");
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run CNI plugin {kind}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write the network config");
        let out = child.wait_with_output().expect("plugin output");
        self.timings
            .push((kind.clone(), command.into(), started.elapsed()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.log.push((kind.clone(), stderr.clone()));
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            return Err(PluginError {
                plugin: kind,
                error: parsed.unwrap_or(Value::Null),
                stderr,
            });
        }
        Ok(parsed)
    }

    /// How long weft-cni's last `command` took.
    pub fn weft_took(&self, command: &str) -> Duration {
        self.timings
            .iter()
            .rev()
            .find(|(k, c, _)| k == "weft-cni" && c == command)
            .map(|(_, _, t)| *t)
            .expect("weft-cni ran")
    }

    /// What weft-cni wrote to stderr on its last runs.
    pub fn weft_log(&self) -> String {
        self.log
            .iter()
            .filter(|(k, _)| k == "weft-cni")
            .map(|(_, l)| l.as_str())
            .collect()
    }
}

/// The same network with only its weft-cni entry: to call the plugin alone.
pub fn only_weft(list: &Value) -> Value {
    let mut l = list.clone();
    l["plugins"] = Value::Array(
        plugins(list)
            .into_iter()
            .filter(|p| p["type"] == "weft-cni")
            .collect(),
    );
    l
}

fn plugins(list: &Value) -> Vec<Value> {
    list["plugins"].as_array().expect("a conflist").clone()
}

/// The pod network of `node` as a cluster would chain it: the bridge plugin (on the node's
/// br0, host-local addresses from .100 up), then weft-cni talking to `agent_socket`.
pub fn pod_network(
    node: &Node,
    dir: &Path,
    version: &str,
    agent_socket: &Path,
    timeout: Duration,
) -> Value {
    let i = node.index;
    json!({
        "cniVersion": version,
        "name": "weft-test-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "br0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": format!("10.{i}.0.0/24"),
                                 "rangeStart": format!("10.{i}.0.100"),
                                 "rangeEnd": format!("10.{i}.0.200"),
                                 "gateway": format!("10.{i}.0.1")}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {
                "type": "weft-cni",
                "agent_socket": agent_socket,
                "timeout_seconds": timeout.as_secs_f64()
            }
        ]
    })
}

/// The loopback network a runtime brings up in every sandbox first (containerd does).
pub fn loopback(version: &str) -> Value {
    json!({"cniVersion": version, "name": "cni-loopback", "plugins": [{"type": "loopback"}]})
}

/// The pod's address in an ADD result (the first of `ips`).
pub fn result_ip(result: &Value) -> std::net::Ipv4Addr {
    let a = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips in {result}"));
    a.split('/')
        .next()
        .unwrap()
        .parse()
        .expect("an IPv4 address")
}

/// Runs `f`, returning its value and how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}
