//! weft-cni's requests, as enrollment takes them: ADD records the sandbox (the next reconcile
//! enrolls the pod with it), DEL forgets it and releases the pod, and every request is
//! answered after each reconcile from what enrollment then knows (`cni::answer::decide`).

use std::path::Path;

use tracing::{info, warn};

use super::Enrollment;
use crate::{
    cni::{
        answer::{self, Namespace, PodView},
        protocol::{Answer, Command, Outcome, Request},
        Call, Progress, Sandbox, Sandboxes,
    },
    config::{MESH_ENABLED, MESH_LABEL},
    netns::NetnsId,
    state::{PodKey, State},
};

impl Enrollment {
    /// The sandboxes an earlier agent on this node was told of.
    pub fn restore_sandboxes(&mut self, state_dir: &Path) {
        self.sandboxes = Sandboxes::load(state_dir);
    }

    /// The configuration completed with the addresses weft-cni reported for this node's pods
    /// whose `status.podIP` it does not carry yet, so that everything that knows pods by
    /// address (plans, access logs, metrics, explain) knows them from their first packet.
    pub fn complete(&self, mut state: State) -> State {
        let mut changed = false;
        for pod in state.pods.values_mut() {
            if pod.ip.is_none() && !self.sandboxes.is_released(pod) {
                if let Some(ip) = self.sandboxes.of(pod).and_then(|s| s.ips.first()) {
                    pod.ip = Some(*ip);
                    changed = true;
                }
            }
        }
        if changed {
            state.reindex();
        }
        state
    }

    /// Takes a request up; it is answered (`answer_calls`) after the next reconcile, which
    /// the caller's loop runs next.
    pub fn cni(&mut self, call: Call) {
        let req = &call.request;
        let key = key_of(req);
        match req.command {
            Command::Add => {
                let Some(netns) = req.netns.clone() else {
                    call.progress
                        .send_replace(Progress::Done(Answer::failed("ADD without a netns")));
                    return;
                };
                let added = self.sandboxes.add(Sandbox {
                    pod: key.clone(),
                    uid: req.pod.uid.clone(),
                    container_id: req.container_id.clone(),
                    netns,
                    ips: req.ips.clone(),
                });
                if !added {
                    warn!(pod = %key, "too many CNI sandboxes on this node; refusing ADD");
                    call.progress.send_replace(Progress::Done(Answer::failed(
                        "the agent holds too many sandboxes on this node",
                    )));
                    return;
                }
                info!(pod = %key, netns = ?req.netns, ips = ?req.ips, "cni add");
            }
            Command::Del => {
                self.sandboxes.release(key.clone(), req.pod.uid.clone());
                info!(pod = %key, "cni del: releasing");
            }
            Command::Check => {}
        }
        if !self.loaded {
            call.progress.send_replace(Progress::Waiting(
                "the agent has not loaded its configuration yet".into(),
            ));
        }
        self.calls.push(call);
    }

    /// Answers every request whose answer is known now; keeps the others waiting, with the
    /// reason (unless their plugin gave up). Called after the status is published, so that
    /// what an answer says is what /config_dump shows.
    pub fn answer_calls(&mut self, state: &State) {
        let calls = std::mem::take(&mut self.calls);
        for call in calls {
            let progress = self.progress(state, &call.request);
            let done = matches!(progress, Progress::Done(_));
            call.progress.send_replace(progress);
            if !done && !call.progress.is_closed() {
                self.calls.push(call);
            }
        }
    }

    fn progress(&self, state: &State, req: &Request) -> Progress {
        let key = key_of(req);
        match req.command {
            Command::Del if self.pods.contains_key(&key) => {
                Progress::Waiting(format!("pod {key} is still hooked"))
            }
            Command::Del => Progress::Done(Answer::new(
                Outcome::Released,
                format!("pod {key} released"),
            )),
            command => answer::decide(command, &self.view(state, req)),
        }
    }

    fn view(&self, state: &State, req: &Request) -> PodView {
        let key = key_of(req);
        let namespace = match state.namespaces.get(&key.namespace) {
            None => Namespace::Unknown,
            Some(ns) if ns.labels.get(MESH_LABEL).is_some_and(|v| v == MESH_ENABLED) => {
                Namespace::Enrolled
            }
            Some(_) => Namespace::NotEnrolled,
        };
        let pod = state.pods.get(&key);
        let other_uid = pod
            .and_then(|p| p.uid.clone())
            .filter(|uid| req.pod.uid.as_ref().is_some_and(|r| r != uid));
        let verdict = pod.map(|p| state.enrollment(&self.sandboxes.patched(p), &self.shared.node));
        let netns = req.netns.as_deref().and_then(|n| NetnsId::of_path(n).ok());
        let enrolled = self.pods.get(&key);
        let hooked = enrolled.map(|e| netns.is_none_or(|n| n == e.target.netns));
        let certified = enrolled.and_then(|e| {
            let mtls = self.shared.mtls.as_ref()?;
            Some(mtls.certs.get(&e.target.identity).is_some())
        });
        PodView {
            pod: key.to_string(),
            loaded: self.loaded,
            namespace,
            verdict,
            other_uid,
            hooked,
            certified,
            failure: self.retries.reason(&key).map(str::to_owned),
            refused: self
                .refused
                .contains(&key)
                .then(|| self.notices.get(&key).cloned().unwrap_or_default()),
        }
    }
}

fn key_of(req: &Request) -> PodKey {
    PodKey {
        namespace: req.pod.namespace.clone(),
        name: req.pod.name.clone(),
    }
}
