//! What `weft-cni` and the agent say to each other over `<state_dir>/cni.sock`: one request
//! line of JSON, one answer line of JSON, then the connection closes.
//!
//! ```text
//! → {"command":"add","pod":{"namespace":"shop","name":"web","uid":"…"},"container_id":"…",
//!    "netns":"/var/run/netns/cni-…","ips":["10.1.0.7"],"wait_ms":30000}
//! ← {"outcome":"enrolled","detail":"shop/web hooked, listeners open in its netns"}
//! ```
//!
//! `add` answers once the pod is hooked (`enrolled`), or at once when it is not to be meshed
//! (`not_meshed`, with the reason); `del` answers `released`; `check` answers `enrolled`,
//! `not_meshed`, or `failed` with what is wrong. Anything the agent cannot do within
//! `wait_ms` is `failed`, with the last reason it had.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// A request line longer than this is refused (a pod's names, UID and addresses fit in far
/// less).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// An answer line longer than this is refused by the plugin.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request line.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait a request may ask for; longer asks are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// Requests the agent serves at once; beyond this a new connection is answered `failed` at once
/// (the kubelet retries), so a flood cannot hold the agent's memory.
pub const MAX_CONCURRENT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Add,
    Del,
    Check,
}

/// The pod a CNI call is for, from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub command: Command,
    pub pod: PodRef,
    #[serde(default)]
    pub container_id: String,
    /// CNI_NETNS: the sandbox's network namespace, as the runtime made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The addresses the primary CNI gave the pod (its prevResult), first = the pod's IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// How long the plugin waits for the answer.
    #[serde(default)]
    pub wait_ms: u64,
}

impl Request {
    /// The wait asked for, within the agent's bound.
    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms).min(MAX_WAIT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Hooked and listening (add), or found so (check).
    Enrolled,
    /// Not to be meshed; the plugin lets the pod start untouched.
    NotMeshed,
    /// Hooks and listeners gone (del).
    Released,
    /// What was asked cannot be done (now): the plugin fails the CNI call with the detail.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub outcome: Outcome,
    #[serde(default)]
    pub detail: String,
}

impl Answer {
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
        }
    }

    pub fn failed(detail: impl Into<String>) -> Self {
        Self::new(Outcome::Failed, detail)
    }
}

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_named() {
        let r = Request {
            command: Command::Add,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web".into(),
                uid: Some("u-1".into()),
            },
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ips: vec!["10.1.0.7".parse().unwrap()],
            wait_ms: 500_000,
        };
        let line = serde_json::to_vec(&r).unwrap();
        let back = parse_request(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.wait(), MAX_WAIT, "a longer wait is cut to the bound");
        for garbage in [&b"\x00\xff"[..], b"{}", b"{\"command\":\"rm\"}", b"[1,2]"] {
            let e = parse_request(garbage).unwrap_err();
            assert!(e.starts_with("bad request: "), "{e}");
        }
        let extra = br#"{"command":"del","pod":{"namespace":"a","name":"b"},"x":1}"#;
        assert!(parse_request(extra).unwrap_err().contains("unknown field"));
    }
}
