//! What the agent answers a CNI request, as a pure function of what it knows about the pod
//! (`PodView`, built by enrollment from the state and its enrolled pods). ADD waits while the
//! answer may still come (the pod not in the configuration yet, enrollment being retried);
//! CHECK never waits: what would make ADD wait is, for CHECK, the problem it reports.
//! With mTLS on, ADD also waits for the pod's workload certificate: without it the pod's first
//! connection would be refused (never sent in plaintext), so a pod that started before it
//! would start broken.

use super::{
    protocol::{Answer, Command, Outcome},
    server::Progress,
};
use crate::{
    config::{MESH_DISABLED, MESH_ENABLED, MESH_LABEL, SYSTEM_NAMESPACE},
    state::Enrollment,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Namespace {
    Unknown,
    NotEnrolled,
    Enrolled,
}

/// Where a pod stands, for a CNI request about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// `namespace/name`.
    pub pod: String,
    /// The agent has loaded its configuration.
    pub loaded: bool,
    pub namespace: Namespace,
    /// The enrollment rule's verdict, with the sandbox's address; None: the pod is not in the
    /// configuration.
    pub verdict: Option<Enrollment>,
    /// The configuration's UID for the pod, when it differs from the request's.
    pub other_uid: Option<String>,
    /// Enrolled, in the request's netns (false: enrolled in another one).
    pub hooked: Option<bool>,
    /// With mTLS on: whether the pod's identity has its certificate (its first connection
    /// needs it). None with mTLS off.
    pub certified: Option<bool>,
    /// Why enrollment has not succeeded (the last failure), if it has tried.
    pub failure: Option<String>,
    /// Never enrollable as it stands (hostNetwork): the reason.
    pub refused: Option<String>,
}

pub fn decide(command: Command, v: &PodView) -> Progress {
    let p = &v.pod;
    let ns = p.split('/').next().unwrap_or_default();
    let done = |o, d: String| Progress::Done(Answer::new(o, d));
    let not_meshed = |d: String| done(Outcome::NotMeshed, d);
    let waiting = |why: String| match command {
        Command::Check => done(
            Outcome::Failed,
            format!("pod {p} should be enrolled and is not: {why}"),
        ),
        _ => Progress::Waiting(why),
    };
    if ns == SYSTEM_NAMESPACE {
        return not_meshed(format!("namespace {ns} is Weft's own; never enrolled"));
    }
    if !v.loaded {
        return waiting("the agent has not loaded its configuration yet".into());
    }
    let unlabelled = || {
        not_meshed(format!(
            "namespace {ns} is not labelled {MESH_LABEL}={MESH_ENABLED}"
        ))
    };
    let Some(verdict) = &v.verdict else {
        return match v.namespace {
            Namespace::NotEnrolled => unlabelled(),
            _ => waiting(format!("pod {p} is not in the agent's configuration yet")),
        };
    };
    match verdict {
        Enrollment::NamespaceNotEnrolled => return unlabelled(),
        Enrollment::OptedOut => {
            return not_meshed(format!("pod {p} is labelled {MESH_LABEL}={MESH_DISABLED}"))
        }
        Enrollment::MeshItself => return not_meshed(format!("namespace {ns} is Weft's own")),
        Enrollment::NotOnThisNode => {
            return waiting(format!(
                "the agent's configuration has pod {p} on another node"
            ))
        }
        Enrollment::Incomplete(what) => {
            return waiting(format!(
                "pod {p} has no {what} yet (and CNI gave it no address)"
            ))
        }
        Enrollment::Enrolled => {}
    }
    if let Some(why) = &v.refused {
        return done(Outcome::Failed, why.clone());
    }
    if let Some(uid) = &v.other_uid {
        return waiting(format!(
            "the agent's configuration has pod {p} with UID {uid}, not the sandbox's"
        ));
    }
    match (v.hooked, &v.failure) {
        (Some(true), _) if v.certified == Some(false) => waiting(format!(
            "pod {p} is hooked; its workload certificate has not come from the CA yet"
        )),
        (Some(true), _) => done(
            Outcome::Enrolled,
            format!("pod {p} hooked; its listeners are open"),
        ),
        (Some(false), _) => waiting(format!("pod {p} is hooked in another netns; moving it")),
        (None, Some(why)) => waiting(format!("enrolling pod {p}: {why}")),
        (None, None) => waiting(format!("pod {p} not enrolled yet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> PodView {
        PodView {
            pod: "shop/web".into(),
            loaded: true,
            namespace: Namespace::Enrolled,
            verdict: Some(Enrollment::Enrolled),
            other_uid: None,
            hooked: Some(true),
            certified: Some(true),
            failure: None,
            refused: None,
        }
    }

    fn outcome(p: &Progress) -> (Option<Outcome>, String) {
        match p {
            Progress::Done(a) => (Some(a.outcome), a.detail.clone()),
            Progress::Waiting(w) => (None, w.clone()),
        }
    }

    #[test]
    fn add_waits_for_what_may_still_come_and_check_reports_it() {
        use Outcome::*;
        // (case, view, ADD's outcome (None: waits), CHECK's, what both say)
        type Case = (
            &'static str,
            PodView,
            Option<Outcome>,
            Option<Outcome>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            ("hooked", view(), Some(Enrolled), Some(Enrolled), "hooked"),
            (
                "hooked, no mTLS",
                PodView {
                    certified: None,
                    ..view()
                },
                Some(Enrolled),
                Some(Enrolled),
                "hooked",
            ),
            (
                "hooked, no certificate yet",
                PodView {
                    certified: Some(false),
                    ..view()
                },
                None,
                Some(Failed),
                "certificate",
            ),
            (
                "not loaded",
                PodView {
                    loaded: false,
                    ..view()
                },
                None,
                Some(Failed),
                "not loaded its configuration",
            ),
            (
                "unknown pod, namespace not enrolled",
                PodView {
                    verdict: None,
                    namespace: Namespace::NotEnrolled,
                    ..view()
                },
                Some(NotMeshed),
                Some(NotMeshed),
                "not labelled weft.dev/mesh=enabled",
            ),
            (
                "unknown pod, unknown namespace",
                PodView {
                    verdict: None,
                    namespace: Namespace::Unknown,
                    ..view()
                },
                None,
                Some(Failed),
                "not in the agent's configuration yet",
            ),
            (
                "unknown pod, enrolled namespace",
                PodView {
                    verdict: None,
                    ..view()
                },
                None,
                Some(Failed),
                "not in the agent's configuration yet",
            ),
            (
                "opted out",
                PodView {
                    verdict: Some(Enrollment::OptedOut),
                    hooked: None,
                    ..view()
                },
                Some(NotMeshed),
                Some(NotMeshed),
                "weft.dev/mesh=disabled",
            ),
            (
                "not enrolled namespace",
                PodView {
                    verdict: Some(Enrollment::NamespaceNotEnrolled),
                    hooked: None,
                    ..view()
                },
                Some(NotMeshed),
                Some(NotMeshed),
                "not labelled",
            ),
            (
                "no address",
                PodView {
                    verdict: Some(Enrollment::Incomplete("status.podIP")),
                    hooked: None,
                    ..view()
                },
                None,
                Some(Failed),
                "no status.podIP",
            ),
            (
                "failing",
                PodView {
                    hooked: None,
                    failure: Some("attaching eBPF hooks: EPERM".into()),
                    ..view()
                },
                None,
                Some(Failed),
                "EPERM",
            ),
            (
                "other netns",
                PodView {
                    hooked: Some(false),
                    ..view()
                },
                None,
                Some(Failed),
                "another netns",
            ),
            (
                "other uid",
                PodView {
                    other_uid: Some("u-0".into()),
                    hooked: None,
                    ..view()
                },
                None,
                Some(Failed),
                "UID u-0",
            ),
            (
                "host network",
                PodView {
                    refused: Some("the node's own netns".into()),
                    hooked: None,
                    ..view()
                },
                Some(Failed),
                Some(Failed),
                "node's own",
            ),
            (
                "mesh itself",
                PodView {
                    pod: "weft-system/ca".into(),
                    loaded: false,
                    ..view()
                },
                Some(NotMeshed),
                Some(NotMeshed),
                "Weft's own",
            ),
        ];
        for (what, v, add, check, says) in cases {
            let (a, why) = outcome(&decide(Command::Add, &v));
            assert_eq!(a, add, "{what}: ADD {why}");
            assert!(why.contains(says), "{what}: ADD {why}");
            let (c, why) = outcome(&decide(Command::Check, &v));
            assert_eq!(c, check, "{what}: CHECK {why}");
            assert!(why.contains(says), "{what}: CHECK {why}");
        }
    }
}
