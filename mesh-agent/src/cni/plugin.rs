//! `weft-cni` as the runtime runs it: decide from the environment and the network config what
//! to ask the agent, and turn its answer into the spec's result or error.
//!
//! When the agent cannot be asked, ADD fails for every pod outside the excluded namespaces,
//! even one whose namespace may well not be enrolled. The plugin cannot tell: whether a
//! namespace is enrolled is the agent's knowledge (it watches Namespaces; the plugin has no API
//! credentials), and guessing "not enrolled" would let a pod of an enrolled namespace start
//! and send its first bytes outside the mesh, the one thing weft-cni exists to prevent. The
//! cost is that while a node's agent is down no new pod starts there except in the excluded
//! namespaces (kube-system, weft-system by default), as with any CNI whose node daemon is
//! down; the kubelet retries, and the pod starts once the agent answers.
//! DEL never fails because the agent is away: a failed DEL stops the runtime from running the
//! earlier plugins' DEL (the primary CNI would leak the pod's address), and an agent that comes
//! back releases pods whose netns is gone by itself.

use std::time::Duration;

use serde_json::Value;

use super::{
    client::{self, AskError},
    protocol::{Answer, Command, Outcome, Request},
    spec::{code, version_result, CniError, Env, NetConf, Verb},
};

/// DEL asks the agent for at most this long (or the configured timeout, if shorter).
const DEL_BOUND: Duration = Duration::from_secs(5);

/// What the plugin prints on success (nothing for DEL and CHECK).
pub type Output = Option<Value>;

/// One invocation: `log` takes the lines meant for the runtime's log (stderr).
pub fn run(env: &Env, stdin: &[u8], log: &mut dyn FnMut(String)) -> Result<Output, CniError> {
    if env.verb == Verb::Version {
        let asked: Option<Value> = serde_json::from_slice(stdin).ok();
        let asked = asked.as_ref().and_then(|v| v.get("cniVersion")?.as_str());
        return Ok(Some(version_result(asked)));
    }
    let conf = NetConf::parse(stdin)?;
    conf.check_version()?;
    let with_version = |mut e: CniError| {
        e.cni_version = conf.cni_version.clone();
        e
    };
    run_conf(env, &conf, log).map_err(with_version)
}

fn run_conf(env: &Env, conf: &NetConf, log: &mut dyn FnMut(String)) -> Result<Output, CniError> {
    if env.verb == Verb::Check && conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let pass = |verb| (verb == Verb::Add).then(|| conf.add_result());
    let Some(pod) = &env.pod else {
        log(
            "not a Kubernetes pod (no K8S_POD_NAMESPACE / K8S_POD_NAME in CNI_ARGS): \
             passed through"
                .into(),
        );
        return Ok(pass(env.verb));
    };
    if conf.excluded_namespaces.contains(&pod.namespace) {
        return Ok(pass(env.verb));
    }
    if env.verb == Verb::Add && conf.prev_result.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "weft-cni is a chained plugin and got no prevResult: list it after the cluster's \
             CNI in the conflist's plugins",
        ));
    }
    let command = match env.verb {
        Verb::Add => Command::Add,
        Verb::Del => Command::Del,
        Verb::Check => Command::Check,
        Verb::Version => unreachable!("answered above"),
    };
    let req = Request {
        command,
        pod: pod.clone(),
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ips: conf.prev_ips(),
        wait_ms: 0,
    };
    let who = format!("{}/{}", pod.namespace, pod.name);
    let bound = match command {
        Command::Del => conf.timeout.min(DEL_BOUND),
        _ => conf.timeout,
    };
    let answer = client::ask(&conf.agent_socket, req, bound);
    judge(command, &who, answer, log).map(|()| pass(env.verb))
}

/// The agent's answer (or its absence) as the CNI call's verdict.
fn judge(
    command: Command,
    who: &str,
    answer: Result<Answer, AskError>,
    log: &mut dyn FnMut(String),
) -> Result<(), CniError> {
    let what = match command {
        Command::Add => "enrolling",
        Command::Del => "releasing",
        Command::Check => "checking",
    };
    match (command, answer) {
        (_, Ok(a)) if a.outcome != Outcome::Failed => {
            log(format!("{who}: {:?}: {}", a.outcome, a.detail));
            Ok(())
        }
        (Command::Del, Ok(a)) => {
            log(format!(
                "{who}: releasing failed, left to the agent: {}",
                a.detail
            ));
            Ok(())
        }
        (Command::Del, Err(e)) => {
            log(format!("{who}: not released by the agent, left to it: {e}"));
            Ok(())
        }
        (_, Ok(a)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "weft-cni: {what} pod {who} in the mesh failed: {}",
                a.detail
            ),
        )),
        (_, Err(e @ AskError::BadAnswer(..))) => Err(CniError::new(
            code::IO_FAILURE,
            format!("weft-cni: {what} pod {who} in the mesh failed: {e}"),
        )),
        (_, Err(e)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("weft-cni: {what} pod {who} in the mesh failed: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::protocol::PodRef;

    fn env(verb: Verb, ns: &str) -> Env {
        Env {
            verb,
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            pod: Some(PodRef {
                namespace: ns.into(),
                name: "web".into(),
                uid: None,
            }),
        }
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"pods","type":"weft-cni",
        "agent_socket":"/nonexistent/weft/cni.sock","timeout_seconds":0.3,
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.7/24"}],"dns":{}}}"#;

    fn run_quiet(env: &Env, stdin: &[u8]) -> Result<Output, CniError> {
        run(env, stdin, &mut |_| {})
    }

    #[test]
    fn agent_away_fails_add_and_check_with_the_reason_but_never_del() {
        let e = run_quiet(&env(Verb::Add, "shop"), CONF).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(
            e.msg.contains("pod shop/web")
                && e.msg.contains("unreachable at /nonexistent/weft/cni.sock")
                && e.msg.contains("is mesh-agent running"),
            "{}",
            e.msg
        );
        assert!(run_quiet(&env(Verb::Check, "shop"), CONF).is_err());
        assert_eq!(run_quiet(&env(Verb::Del, "shop"), CONF).unwrap(), None);
    }

    #[test]
    fn excluded_and_non_kubernetes_sandboxes_pass_through_unchanged() {
        let prev: Value = serde_json::from_slice::<Value>(CONF).unwrap()["prevResult"].clone();
        let out = run_quiet(&env(Verb::Add, "kube-system"), CONF).unwrap();
        assert_eq!(out, Some(prev.clone()));
        let mut plain = env(Verb::Add, "shop");
        plain.pod = None;
        assert_eq!(run_quiet(&plain, CONF).unwrap(), Some(prev));
    }

    #[test]
    fn configuration_errors_come_first_in_the_spec_shape() {
        let e = run_quiet(&env(Verb::Add, "shop"), br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("no prevResult"), "{}", e.msg);
        let e = run_quiet(&env(Verb::Add, "shop"), br#"{"cniVersion":"0.2.0"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = run_quiet(&env(Verb::Check, "shop"), br#"{"cniVersion":"0.3.1"}"#).unwrap_err();
        assert!(e.msg.contains("CHECK needs"), "{}", e.msg);
        assert_eq!(e.cni_version, "0.3.1", "errors carry the config's version");
    }
}
