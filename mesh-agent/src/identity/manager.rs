//! One certificate per local workload identity. Keys are generated here and never leave the
//! agent; certificates are requested from the CA, kept on disk (so an agent restarted while the
//! CA is down still serves), and renewed at half-life with jitter. A failed renewal keeps the
//! last good certificate, retries with backoff and is reported; it never affects other
//! identities and never stops the agent.
//!
//! An L7 worker has no CA client: its manager is `pushed`, and the agent installs the PEMs of
//! its own certificates into it (verified exactly as an issued one is).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, UnixTime},
    sign::CertifiedKey,
};
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{CaClient, Identity};
use crate::{ca::authority::write_secret, tls::TrustBundle};

/// Retries after a failed request: the first within about a second, then doubling up to this.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Never renew more often than this, whatever lifetime the CA hands out.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate in use, with its key.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this agent obtained it. Half-life is measured from here: the CA backdates
    /// not_before for clock skew, which would otherwise put half-life in the past.
    pub obtained: SystemTime,
    /// What `certified` was built from: the agent sends these to its L7 workers.
    pub chain_pem: String,
    pub key_pem: String,
}

impl WorkloadCert {
    /// When to renew: at half of the life remaining at receipt, up to a tenth of it earlier
    /// (jitter spreads renewals).
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.obtained)
            .unwrap_or_default();
        let jitter = life.mul_f64(rand::random::<f64>() * 0.1);
        self.obtained + life / 2 - jitter
    }
}

/// What /config_dump and /healthz say about one identity.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CertStatus {
    pub identity: String,
    /// Seconds until the current certificate expires (negative: expired).
    pub expires_in_secs: Option<i64>,
    pub issued: u64,
    pub loaded_from_disk: bool,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CertManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// None in a worker (`pushed`): certificates come from the agent, nothing is renewed here.
    client: Option<CaClient>,
    dir: PathBuf,
    trust: Arc<TrustBundle>,
    /// The PEM text of the roots in `trust` (sent on to workers).
    roots_pem: RwLock<String>,
    /// Bumped whenever a certificate is added, replaced or removed.
    changes: watch::Sender<u64>,
    certs: RwLock<HashMap<Identity, Arc<WorkloadCert>>>,
    status: RwLock<BTreeMap<Identity, CertStatus>>,
    tasks: Mutex<HashMap<Identity, JoinHandle<()>>>,
}

impl CertManager {
    pub fn new(client: CaClient, state_dir: &Path) -> anyhow::Result<Self> {
        let trust = Arc::new(TrustBundle::default());
        trust.set(client.roots())?;
        let roots_pem = client.roots_pem().to_owned();
        Ok(Self::with(
            Some(client),
            state_dir.join("certs"),
            trust,
            roots_pem,
        ))
    }

    /// A manager without a CA (an L7 worker's): it trusts `roots_pem` and holds the
    /// certificates `install` is given. Empty roots are allowed (an agent without a CA).
    pub fn pushed(roots_pem: &str) -> anyhow::Result<Self> {
        let me = Self::with(None, PathBuf::new(), Arc::default(), String::new());
        me.set_roots(roots_pem)?;
        Ok(me)
    }

    fn with(
        client: Option<CaClient>,
        dir: PathBuf,
        trust: Arc<TrustBundle>,
        roots_pem: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                dir,
                trust,
                roots_pem: RwLock::new(roots_pem),
                changes: watch::channel(0).0,
                certs: RwLock::new(HashMap::new()),
                status: RwLock::new(BTreeMap::new()),
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Replaces the trusted roots (a pushed manager's, when the agent's change); unchanged
    /// text is a no-op, a bad bundle keeps the old one.
    pub fn set_roots(&self, roots_pem: &str) -> anyhow::Result<()> {
        if *self.inner.roots_pem.read().expect("roots lock") == roots_pem {
            return Ok(());
        }
        let roots = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("trust roots: {e}"))?;
        self.inner
            .trust
            .set(&roots)
            .map_err(|e| anyhow::anyhow!("trust roots: {e}"))?;
        *self.inner.roots_pem.write().expect("roots lock") = roots_pem.to_owned();
        Ok(())
    }

    /// The trusted roots as PEM.
    pub fn roots_pem(&self) -> String {
        self.inner.roots_pem.read().expect("roots lock").clone()
    }

    /// Installs a certificate the agent pushed, refusing one that does not chain to the
    /// roots, is not for `id`, has expired or does not match its key (the last good one
    /// stays). Installing the chain already in use is a no-op.
    pub fn install(&self, id: &Identity, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        if self
            .get(id)
            .is_some_and(|c| c.chain_pem == chain_pem && c.key_pem == key_pem)
        {
            return Ok(());
        }
        let cert = self.certified(id, chain_pem, key_pem, SystemTime::now())?;
        self.put(id, cert);
        Ok(())
    }

    /// Drops every certificate whose identity `keep` rejects (a pushed manager's, when the
    /// agent no longer sends it).
    pub fn retain(&self, keep: impl Fn(&Identity) -> bool) {
        let gone: Vec<Identity> = self
            .inner
            .certs
            .read()
            .expect("certs lock")
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        for id in gone {
            self.release(&id);
        }
    }

    /// The certificates in use now.
    pub fn current(&self) -> Vec<Arc<WorkloadCert>> {
        let mut all: Vec<_> = self
            .inner
            .certs
            .read()
            .expect("certs lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    /// Changes whenever a certificate is added, renewed or removed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn put(&self, id: &Identity, cert: WorkloadCert) {
        self.inner
            .certs
            .write()
            .expect("certs lock")
            .insert(id.clone(), Arc::new(cert));
        let mut status = self.inner.status.write().expect("status lock");
        let s = status.entry(id.clone()).or_insert_with(|| CertStatus {
            identity: id.to_string(),
            ..Default::default()
        });
        s.issued += 1;
        s.last_error = None;
        drop(status);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    pub fn trust(&self) -> Arc<TrustBundle> {
        self.inner.trust.clone()
    }

    pub fn get(&self, id: &Identity) -> Option<Arc<WorkloadCert>> {
        self.inner
            .certs
            .read()
            .expect("certs lock")
            .get(id)
            .cloned()
    }

    /// Starts keeping a certificate for `id` (idempotent). A pushed manager has nothing to
    /// keep it with: the agent installs it.
    pub fn ensure(&self, id: &Identity) {
        if self.inner.client.is_none() {
            return;
        }
        let mut tasks = self.inner.tasks.lock().expect("tasks lock");
        if tasks.contains_key(id) {
            return;
        }
        let mut status = CertStatus {
            identity: id.to_string(),
            ..Default::default()
        };
        match self.load(id) {
            Ok(Some(cert)) => {
                info!(identity = %id, "certificate loaded from disk");
                status.loaded_from_disk = true;
                self.inner
                    .certs
                    .write()
                    .expect("certs lock")
                    .insert(id.clone(), Arc::new(cert));
                self.inner.changes.send_modify(|n| *n += 1);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(identity = %id, error = %e, "certificate on disk is unusable; requesting a new one")
            }
        }
        self.inner
            .status
            .write()
            .expect("status lock")
            .insert(id.clone(), status);
        let me = self.clone();
        let task_id = id.clone();
        tasks.insert(
            id.clone(),
            tokio::spawn(async move { me.maintain(task_id).await }),
        );
    }

    /// Stops renewing `id` (no enrolled pod runs as it any more).
    pub fn release(&self, id: &Identity) {
        if let Some(t) = self.inner.tasks.lock().expect("tasks lock").remove(id) {
            t.abort();
        }
        let removed = self.inner.certs.write().expect("certs lock").remove(id);
        self.inner.status.write().expect("status lock").remove(id);
        if removed.is_some() {
            self.inner.changes.send_modify(|n| *n += 1);
        }
    }

    pub fn statuses(&self) -> Vec<CertStatus> {
        let now = SystemTime::now();
        let certs = self.inner.certs.read().expect("certs lock");
        self.inner
            .status
            .read()
            .expect("status lock")
            .iter()
            .map(|(id, s)| {
                let mut s = s.clone();
                s.expires_in_secs = certs.get(id).map(|c| secs_between(now, c.not_after));
                s
            })
            .collect()
    }

    /// Every managed identity has an unexpired certificate.
    pub fn healthy(&self) -> bool {
        self.statuses()
            .iter()
            .all(|s| s.expires_in_secs.is_some_and(|t| t > 0))
    }

    async fn maintain(self, id: Identity) {
        let mut failures = 0u32;
        loop {
            if let Some(cert) = self.get(&id) {
                let wait = cert
                    .renew_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(wait.max(MIN_RENEW_INTERVAL)).await;
            }
            match self.issue(&id).await {
                Ok(cert) => {
                    info!(identity = %id, expires_in_secs = secs_between(SystemTime::now(), cert.not_after), "certificate issued");
                    self.put(&id, cert);
                    failures = 0;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, &mut rand::thread_rng());
                    warn!(identity = %id, error = %e, failures, retry_in_ms = delay.as_millis() as u64,
                        "certificate request failed; keeping the last good certificate");
                    if let Some(s) = self.inner.status.write().expect("status lock").get_mut(&id) {
                        s.last_error = Some(e);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A new key, a CSR for `id`, the CA's answer, checked before use, then kept on disk.
    async fn issue(&self, id: &Identity) -> anyhow::Result<WorkloadCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let client =
            self.inner.client.as_ref().ok_or_else(|| {
                anyhow::anyhow!("no CA client: certificates are pushed by the agent")
            })?;
        let signed = client.sign(&csr).await?;
        let chain_pem = signed.chain.join("");
        let key_pem = key.serialize_pem();
        let cert = self.certified(id, &chain_pem, &key_pem, SystemTime::now())?;
        self.store(id, &chain_pem, &key_pem)?;
        Ok(cert)
    }

    /// Builds a usable certificate, refusing one that does not chain to the mesh root, is not
    /// for `id`, or has expired.
    fn certified(
        &self,
        id: &Identity,
        chain_pem: &str,
        key_pem: &str,
        obtained: SystemTime,
    ) -> anyhow::Result<WorkloadCert> {
        let chain =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty certificate chain"))?;
        let presented = self
            .inner
            .trust
            .verify_chain(leaf, intermediates, UnixTime::now())?;
        anyhow::ensure!(&presented == id, "certificate is for {presented}, not {id}");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let signer = crate::tls::provider().key_provider.load_private_key(key)?;
        let (not_before, not_after) = validity(leaf)?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match()?;
        Ok(WorkloadCert {
            identity: id.clone(),
            certified: Arc::new(certified),
            not_before,
            not_after,
            obtained: obtained.min(SystemTime::now()).max(not_before),
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    fn path(&self, id: &Identity) -> PathBuf {
        self.inner.dir.join(format!(
            "{}_{}_{}",
            id.trust_domain, id.namespace, id.service_account
        ))
    }

    fn store(&self, id: &Identity, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let dir = self.path(id);
        std::fs::create_dir_all(&dir)?;
        write_secret(&dir.join("key.pem"), key_pem)?;
        std::fs::write(dir.join("chain.pem"), chain_pem)?;
        Ok(())
    }

    fn load(&self, id: &Identity) -> anyhow::Result<Option<WorkloadCert>> {
        let dir = self.path(id);
        let (Ok(chain), Ok(key)) = (
            std::fs::read_to_string(dir.join("chain.pem")),
            std::fs::read_to_string(dir.join("key.pem")),
        ) else {
            return Ok(None);
        };
        let written = std::fs::metadata(dir.join("chain.pem")).and_then(|m| m.modified())?;
        self.certified(id, &chain, &key, written).map(Some)
    }
}

/// A certificate's (not before, not after).
pub fn validity(der: &CertificateDer<'_>) -> anyhow::Result<(SystemTime, SystemTime)> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)?;
    let t = |ts: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
    Ok((
        t(cert.validity().not_before.timestamp()),
        t(cert.validity().not_after.timestamp()),
    ))
}

/// How long to wait after the `failures`-th failed request in a row: exponential (1 s, 2 s, 4 s,
/// ... up to `MAX_BACKOFF`), with "equal jitter": a random point in the upper half of that step.
/// Agents that lost the CA together would otherwise come back to it together, each retry a
/// synchronised wave against a CA that is just recovering.
fn retry_delay(failures: u32, rng: &mut impl rand::Rng) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let step = FIRST_RETRY.saturating_mul(1 << exp).min(MAX_BACKOFF);
    step / 2 + step.mul_f64(rng.gen::<f64>() / 2.0)
}

fn secs_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng as _};

    use super::*;

    /// A certificate for `uri` signed by a fresh CA: (root PEM, chain PEM, key PEM).
    fn issued(uri: &str) -> (String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::authority::Authority::load_or_create(
            dir.path(),
            "cluster.local",
            Duration::from_secs(3600),
        )
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let signed = ca.sign(&csr, |_| Ok(())).unwrap();
        (signed.root, signed.chain.join(""), key.serialize_pem())
    }

    #[tokio::test]
    async fn a_pushed_manager_installs_only_certificates_that_verify() {
        let web: Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let (root, chain, key) = issued(&web.to_string());
        let certs = CertManager::pushed(&root).unwrap();
        let mut changes = certs.changes();
        certs.install(&web, &chain, &key).unwrap();
        assert!(changes.has_changed().unwrap(), "an install is a change");
        changes.mark_unchanged();
        let got = certs.get(&web).expect("installed");
        assert_eq!(
            (got.chain_pem.as_str(), got.key_pem.as_str()),
            (chain.as_str(), key.as_str())
        );
        certs.install(&web, &chain, &key).unwrap();
        assert!(
            !changes.has_changed().unwrap(),
            "the same chain again is no change"
        );
        certs.ensure(&web); // no CA client: nothing to renew with, and no panic

        // Not for this identity, not from these roots, not matching its key: refused, and
        // the last good one stays.
        let api: Identity = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
        let e = certs.install(&api, &chain, &key).unwrap_err().to_string();
        assert!(
            e.contains("not spiffe://cluster.local/ns/shop/sa/api"),
            "{e}"
        );
        let (_, foreign_chain, foreign_key) = issued(&web.to_string());
        assert!(certs.install(&web, &foreign_chain, &foreign_key).is_err());
        assert!(certs.install(&web, &chain, &foreign_key).is_err());
        assert_eq!(certs.get(&web).unwrap().chain_pem, chain);
        assert!(CertManager::pushed("-----BEGIN CERTIFICATE-----\ngarbage\n").is_err());

        certs.retain(|id| id != &web);
        assert!(certs.get(&web).is_none() && certs.current().is_empty());
        assert!(changes.has_changed().unwrap(), "a removal is a change");
    }

    fn samples(failures: u32) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(u64::from(failures));
        (0..1000).map(|_| retry_delay(failures, &mut rng)).collect()
    }

    fn mean(v: &[Duration]) -> Duration {
        v.iter().sum::<Duration>() / v.len() as u32
    }

    #[test]
    fn retry_delays_are_bounded_spread_and_grow_to_a_cap() {
        for failures in [1, 2, 3, 5, 8, 40, u32::MAX] {
            let v = samples(failures);
            let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
            assert!(hi <= MAX_BACKOFF, "failure {failures}: {hi:?} over the cap");
            assert!(
                lo >= FIRST_RETRY / 2,
                "failure {failures}: {lo:?} hammers the CA"
            );
            // Spread: agents retrying after the same failure do not come back together.
            assert!(
                hi - lo >= hi / 3,
                "failure {failures}: {lo:?}..{hi:?} is not spread"
            );
            let mut distinct: Vec<_> = v.iter().map(|d| d.as_millis()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() > 100,
                "failure {failures}: {} distinct delays",
                distinct.len()
            );
        }
        let means: Vec<Duration> = (1..=8).map(|f| mean(&samples(f))).collect();
        assert!(
            means.windows(2).take(5).all(|w| w[1] > w[0]),
            "grows: {means:?}"
        );
        assert!(means[0] < Duration::from_secs(1), "{means:?}");
        assert!(
            means[7] > MAX_BACKOFF / 2 && mean(&samples(100)) <= MAX_BACKOFF,
            "{means:?}"
        );
    }
}
