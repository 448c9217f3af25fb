//! The versioned configuration the agent pushes to its L7 workers: the cluster state, the
//! mesh roots and this node's workload certificates (PEM; workers have no CA client).

use std::{collections::HashSet, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use super::context::Context;
use crate::{
    identity::{CertManager, Identity},
    state::State,
    tunnel,
};

/// One workload certificate and its key, as the agent holds them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedCert {
    pub identity: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for PushedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushedCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What a snapshot carries besides its version. Serialized once per change and compared as
/// bytes, so an unchanged configuration is not sent again.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Content {
    pub state: Arc<State>,
    /// PEM; empty without a CA.
    pub roots_pem: String,
    pub certs: Vec<PushedCert>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    pub content: Content,
}

/// The agent's certificates and roots, to push (none without a CA).
pub fn certs_of(certs: Option<&CertManager>) -> (Vec<PushedCert>, String) {
    let Some(certs) = certs else {
        return (Vec::new(), String::new());
    };
    let pushed = certs
        .current()
        .iter()
        .map(|c| PushedCert {
            identity: c.identity.to_string(),
            chain_pem: c.chain_pem.clone(),
            key_pem: c.key_pem.clone(),
        })
        .collect();
    (pushed, certs.roots_pem())
}

/// The body of a `ToWorker::Snapshot` frame around already serialized content: the content is
/// serialized once, whatever the number of workers, and reused to detect "no change".
pub fn frame_body(version: u64, content_json: &[u8]) -> Vec<u8> {
    let head = format!("{{\"Snapshot\":{{\"version\":{version},\"content\":");
    let mut body = Vec::with_capacity(head.len() + content_json.len() + 2);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(content_json);
    body.extend_from_slice(b"}}");
    body
}

impl Snapshot {
    /// Puts the snapshot in force in a worker: state (indexes rebuilt), roots, certificates.
    /// Returns what could not be applied; the rest is in force regardless.
    pub fn apply(self, ctx: &Context) -> Vec<String> {
        let Content {
            mut state,
            roots_pem,
            certs,
        } = self.content;
        Arc::make_mut(&mut state).reindex();
        let mut errors = Vec::new();
        if let Err(e) = ctx.certs.set_roots(&roots_pem) {
            errors.push(format!("{e:#}"));
        }
        let mut wanted = HashSet::new();
        for c in certs {
            let id = match c.identity.parse::<Identity>() {
                Ok(id) => id,
                Err(e) => {
                    errors.push(format!("certificate for {:?}: {e}", c.identity));
                    continue;
                }
            };
            if let Err(e) = ctx.certs.install(&id, &c.chain_pem, &c.key_pem) {
                errors.push(format!("certificate for {id}: {e:#}"));
            }
            wanted.insert(id);
        }
        ctx.certs.retain(|id| wanted.contains(id));
        // The worker's own pools, pruned as the agent prunes its.
        tunnel::prune(&ctx.pool, &ctx.quic, &state, &ctx.node, &ctx.trust_domain);
        ctx.tracer.update(state.mesh.tracing.as_ref());
        ctx.state.store(state);
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_body_is_the_snapshot_message() {
        let content = Content::default();
        let json = serde_json::to_vec(&content).unwrap();
        let body = frame_body(42, &json);
        let msg: super::super::wire::ToWorker = serde_json::from_slice(&body).unwrap();
        let super::super::wire::ToWorker::Snapshot(s) = msg else {
            panic!("not a snapshot: {msg:?}")
        };
        assert_eq!(s.version, 42);
        assert!(s.content.certs.is_empty());
    }
}
