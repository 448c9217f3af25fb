//! The CNI spec's side of `weft-cni`: the environment a runtime sets, the network configuration
//! on stdin, the versions spoken and the error object (CNI spec 1.0, "Execution Protocol" and
//! "Error").

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::Serialize;
use serde_json::Value;

use super::protocol::PodRef;

/// The spec versions whose ADD/DEL/CHECK this plugin implements (CHECK from 0.4.0). A result
/// is passed through as the previous plugin wrote it, so every one of these works unchanged.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Where the agent listens, unless the network config says otherwise (`agent_socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/lib/weft/cni.sock";
/// How long ADD waits for the agent to hook the pod, unless `timeout_seconds` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Namespaces whose pods start without asking the agent: the mesh's own (never enrolled, and
/// the CA must start for the mesh to) and the cluster's system pods (CoreDNS, the CNI's own
/// daemons), as istio-cni excludes kube-system by default.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system", crate::config::SYSTEM_NAMESPACE];

/// The spec's well-known error codes that this plugin uses.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: "1.0.0".into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
}

/// What the runtime put in the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Env {
    pub verb: Verb,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// The Kubernetes pod (CNI_ARGS); None for a sandbox that is not a Kubernetes pod.
    pub pod: Option<PodRef>,
}

impl Env {
    /// Reads the environment through `get` (std::env::var in the plugin); errors name the
    /// variable.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let verb = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Verb::Add,
            Some("DEL") => Verb::Del,
            Some("CHECK") => Verb::Check,
            Some("VERSION") => Verb::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"),
                ))
            }
            None => return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        };
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{k} is not set")))
        };
        if verb == Verb::Version {
            return Ok(Self {
                verb,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                pod: None,
            });
        }
        let container_id = need("CNI_CONTAINERID")?;
        let ifname = need("CNI_IFNAME")?;
        // DEL may come without a netns (the spec: the runtime may have lost it).
        let netns = match verb {
            Verb::Del => get("CNI_NETNS").filter(|v| !v.is_empty()),
            _ => Some(need("CNI_NETNS")?),
        }
        .map(PathBuf::from);
        Ok(Self {
            verb,
            container_id,
            netns,
            ifname,
            pod: pod_of(&cni_args(&get("CNI_ARGS").unwrap_or_default())),
        })
    }
}

/// `K=V;K=V` (the spec's CNI_ARGS), later keys winning.
pub fn cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn pod_of(args: &BTreeMap<String, String>) -> Option<PodRef> {
    let get = |k: &str| args.get(k).filter(|v| !v.is_empty()).cloned();
    Some(PodRef {
        namespace: get("K8S_POD_NAMESPACE")?,
        name: get("K8S_POD_NAME")?,
        uid: get("K8S_POD_UID"),
    })
}

/// The network configuration on stdin, with weft-cni's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub agent_socket: PathBuf,
    pub timeout: Duration,
    pub excluded_namespaces: Vec<String>,
    /// The previous plugin's result, exactly as given.
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .details(e.to_string())
        })?;
        let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
        let cni_version = match v.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => "0.1.0".into(),
            Some(other) => return Err(invalid(format!("cniVersion {other} is not a string"))),
        };
        let agent_socket = match v.get("agent_socket") {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => return Err(invalid(format!("agent_socket {other} is not a path"))),
        };
        let timeout = match v.get("timeout_seconds") {
            None => DEFAULT_TIMEOUT,
            Some(t) => t
                .as_f64()
                .filter(|t| t.is_finite() && *t > 0.0 && *t <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| invalid(format!("timeout_seconds {t} is not in (0, 3600]")))?,
        };
        let excluded_namespaces = match v.get("exclude_namespaces") {
            None => DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("exclude_namespaces must be a list of names".into()))?,
            Some(other) => {
                return Err(invalid(format!("exclude_namespaces {other} is not a list")))
            }
        };
        Ok(Self {
            cni_version,
            agent_socket,
            timeout,
            excluded_namespaces,
            prev_result: v.get("prevResult").cloned(),
        })
    }

    /// The version is one this plugin speaks.
    pub fn check_version(&self) -> Result<(), CniError> {
        if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Ok(());
        }
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "weft-cni does not support cniVersion {} (supported: {})",
                self.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }

    /// The pod's addresses from prevResult (`ips[].address`, CIDR notation), in order.
    pub fn prev_ips(&self) -> Vec<IpAddr> {
        let Some(ips) = self
            .prev_result
            .as_ref()
            .and_then(|r| r.get("ips"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        ips.iter()
            .filter_map(|ip| ip.get("address")?.as_str())
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect()
    }

    /// What ADD prints: the previous result, unchanged (a result needs its cniVersion; one is
    /// added only if the previous plugin left it out).
    pub fn add_result(&self) -> Value {
        let mut r = self
            .prev_result
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(m) = &mut r {
            m.entry("cniVersion")
                .or_insert_with(|| Value::String(self.cni_version.clone()));
        }
        r
    }
}

/// VERSION's answer.
pub fn version_result(asked: Option<&str>) -> Value {
    let latest = SUPPORTED_VERSIONS.last().expect("versions");
    serde_json::json!({
        "cniVersion": asked.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(latest),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| vars.get(k).cloned())
    }

    #[test]
    fn the_environment_of_a_kubernetes_add() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u-1",
            ),
        ])
        .unwrap();
        assert_eq!(e.verb, Verb::Add);
        assert_eq!(e.netns, Some("/var/run/netns/cni-1".into()));
        let pod = e.pod.unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        assert_eq!(pod.uid.as_deref(), Some("u-1"));
        // Not a Kubernetes pod: no pod, not an error.
        let plain = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(plain.pod, None);
    }

    #[test]
    fn missing_variables_are_named() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_IFNAME is not set"));
        let e = env(&[("CNI_COMMAND", "GC")]).unwrap_err();
        assert!(e.msg.contains("\"GC\""), "{}", e.msg);
        assert!(env(&[]).unwrap_err().msg.contains("CNI_COMMAND"));
        // DEL without a netns is legal.
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(del.netns, None);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().verb,
            Verb::Version
        );
    }

    #[test]
    fn network_config_fields_and_their_errors() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"pods","type":"weft-cni","agent_socket":"/s",
                "timeout_seconds":2.5,"exclude_namespaces":["infra"],
                "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.7/24"},
                {"address":"fd00::7/64"}],"interfaces":[{"name":"eth0"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/s"));
        assert_eq!(conf.timeout, Duration::from_millis(2500));
        assert_eq!(conf.excluded_namespaces, vec!["infra".to_string()]);
        assert_eq!(
            conf.prev_ips(),
            vec![
                "10.1.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert_eq!(&conf.add_result(), conf.prev_result.as_ref().unwrap());
        let defaults = NetConf::parse(br#"{"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(defaults.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(defaults.timeout, DEFAULT_TIMEOUT);
        assert!(defaults
            .excluded_namespaces
            .contains(&"weft-system".to_string()));
        assert_eq!(defaults.add_result()["cniVersion"], "0.4.0");

        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, code::DECODE);
        let e = NetConf::parse(br#"{"timeout_seconds":-1}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("timeout_seconds"));
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap();
        let e = old.check_version().unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(
            e.msg.contains("0.2.0") && e.msg.contains("1.0.0"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn version_answers_what_is_spoken() {
        let v = version_result(Some("0.4.0"));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"][3], "1.0.0");
        assert_eq!(version_result(Some("9.9.9"))["cniVersion"], "1.0.0");
        let e = serde_json::to_value(CniError::new(7, "bad").details("why")).unwrap();
        assert_eq!(
            e,
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"})
        );
    }
}
