//! Pacing of enrollment retries: per pod, exponential backoff from ENROLL_RETRY_MIN to
//! ENROLL_RETRY_MAX, reset when the pod's target changes; a reason is logged when it is new,
//! not on every retry.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    config::{ENROLL_RETRY_MAX, ENROLL_RETRY_MIN},
    state::PodKey,
};

use super::target::Target;

#[derive(Debug)]
struct Failure {
    why: String,
    /// What was tried (None: the pod could not be located).
    target: Option<Target>,
    attempts: u32,
    next: Instant,
}

#[derive(Debug, Default)]
pub struct Retries {
    pods: BTreeMap<PodKey, Failure>,
}

/// Whether a recorded failure is worth a line at warn level.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// First failure, or a different reason than last time.
    New,
    /// The same reason again.
    Repeat,
    /// Not a new attempt (seen again before its retry was due): nothing to log.
    Unchanged,
}

fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (ENROLL_RETRY_MIN * 2u32.pow(doublings)).min(ENROLL_RETRY_MAX)
}

impl Retries {
    /// Whether enrolling `key` into `target` should be tried at `now`.
    pub fn due(&self, key: &PodKey, target: &Target, now: Instant) -> bool {
        self.pods
            .get(key)
            .is_none_or(|f| now >= f.next || f.target.as_ref() != Some(target))
    }

    pub fn record(
        &mut self,
        key: &PodKey,
        why: String,
        target: Option<Target>,
        now: Instant,
    ) -> Report {
        let prev = self.pods.get(key);
        let same_target = prev.is_some_and(|f| f.target == target);
        if same_target && prev.is_some_and(|f| f.why == why && now < f.next) {
            return Report::Unchanged;
        }
        let report = match prev {
            Some(f) if f.why == why => Report::Repeat,
            _ => Report::New,
        };
        let attempts = match prev {
            Some(f) if same_target => f.attempts + 1,
            _ => 1,
        };
        self.pods.insert(
            key.clone(),
            Failure {
                why,
                target,
                attempts,
                next: now + backoff(attempts),
            },
        );
        report
    }

    pub fn succeeded(&mut self, key: &PodKey) {
        self.pods.remove(key);
    }

    /// Why the pod's last attempt failed.
    pub fn reason(&self, key: &PodKey) -> Option<&str> {
        self.pods.get(key).map(|f| f.why.as_str())
    }

    /// Forgets pods that are no longer to be enrolled.
    pub fn retain(&mut self, keep: impl Fn(&PodKey) -> bool) {
        self.pods.retain(|k, _| keep(k));
    }

    #[cfg(test)]
    pub fn attempts(&self, key: &PodKey) -> u32 {
        self.pods.get(key).map_or(0, |f| f.attempts)
    }

    /// When the next retry is due (None: nothing to retry).
    pub fn next_due(&self) -> Option<Instant> {
        self.pods.values().map(|f| f.next).min()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn reasons(&self) -> BTreeMap<String, String> {
        self.pods
            .iter()
            .map(|(k, f)| (k.to_string(), f.why.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PodKey {
        PodKey {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    fn target(ip: &str) -> Target {
        Target {
            ip: ip.parse().unwrap(),
            netns: crate::netns::NetnsId { dev: 4, ino: 4026 },
            netns_path: "/proc/7/ns/net".into(),
            cgroup: "/sys/fs/cgroup/web".into(),
            identity: crate::identity::Identity::new("cluster.local", "shop", "web"),
        }
    }

    #[test]
    fn retries_back_off_and_a_reason_is_reported_once() {
        let (k, t, t0) = (key(), target("10.0.0.2"), Instant::now());
        let busy = || "binding 0.0.0.0:15008: Address already in use".to_string();
        assert!(Retries::default().due(&k, &t, t0));
        let mut r = Retries::default();
        assert_eq!(r.record(&k, busy(), Some(t.clone()), t0), Report::New);
        assert_eq!(r.next_due(), Some(t0 + ENROLL_RETRY_MIN));
        assert!(
            !r.due(&k, &t, t0 + ENROLL_RETRY_MIN / 2),
            "not before it is due"
        );
        // A reconcile for another reason, before the retry is due, is not an attempt.
        assert_eq!(r.record(&k, busy(), Some(t.clone()), t0), Report::Unchanged);
        // Attempts when due: the delay doubles up to the cap, and the reason is not new.
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            now = r.next_due().unwrap();
            assert!(r.due(&k, &t, now));
            assert_eq!(r.record(&k, busy(), Some(t.clone()), now), Report::Repeat);
            delays.push(r.next_due().unwrap() - now);
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
        // In 30 s of failing, a handful of attempts, not one per missed tick.
        assert!(r.attempts(&k) <= 10, "{}", r.attempts(&k));
        // A different reason is reported; a changed pod is retried at once, from the start.
        assert_eq!(
            r.record(
                &k,
                "no such netns".into(),
                Some(t.clone()),
                now + ENROLL_RETRY_MAX
            ),
            Report::New
        );
        let moved = target("10.0.0.3");
        assert!(r.due(&k, &moved, now + ENROLL_RETRY_MAX));
        r.record(&k, busy(), Some(moved), now + ENROLL_RETRY_MAX);
        assert_eq!(r.attempts(&k), 1);
        r.succeeded(&k);
        assert!(r.is_empty() && r.next_due().is_none());
    }
}
