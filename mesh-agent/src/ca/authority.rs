//! The root and intermediate, on disk, and signing: the CA builds each workload certificate
//! from its own parameters (never the request's), with exactly the SPIFFE ID it authorised.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::Identity;

const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Tolerated clock skew between CA and agents.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("CA material in {path} is unusable: {error}")]
    Material { path: PathBuf, error: rcgen::Error },
    #[error("generating CA material: {0}")]
    Generate(rcgen::Error),
}

/// Why a signing request was refused; said to the caller and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

pub struct Authority {
    pub trust_domain: String,
    pub lifetime: Duration,
    root_pem: String,
    intermediate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a signed request yields.
#[derive(Debug)]
pub struct Signed {
    pub identity: Identity,
    pub chain: Vec<String>,
    pub root: String,
}

impl Authority {
    /// Loads the root and intermediate from `<dir>/ca/`, creating them on first start.
    pub fn load_or_create(
        state_dir: &Path,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<Self, Error> {
        let dir = state_dir.join("ca");
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let files = [
            "root.pem",
            "root.key.pem",
            "intermediate.pem",
            "intermediate.key.pem",
        ]
        .map(|f| dir.join(f));
        if !files.iter().all(|f| f.exists()) {
            create(&dir, trust_domain)?;
        }
        let read = |p: &PathBuf| fs::read_to_string(p).map_err(io("reading", p));
        let root_pem = read(&files[0])?;
        let intermediate_pem = read(&files[2])?;
        let key = KeyPair::from_pem(&read(&files[3])?).map_err(|error| Error::Material {
            path: files[3].clone(),
            error,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&intermediate_pem, key).map_err(|error| Error::Material {
                path: files[2].clone(),
                error,
            })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            lifetime,
            root_pem,
            intermediate_pem,
            issuer,
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs a CSR whose one SAN is a SPIFFE ID of this trust domain that `authorise` accepts.
    pub fn sign(
        &self,
        csr_pem: &str,
        authorise: impl FnOnce(&Identity) -> Result<(), Refusal>,
    ) -> Result<Signed, Refusal> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Refusal(format!("malformed certificate signing request: {e}")))?;
        let identity = requested_identity(&csr.params.subject_alt_names)?;
        if identity.trust_domain != self.trust_domain {
            return Err(Refusal(format!(
                "{identity} is outside this CA's trust domain {}",
                self.trust_domain
            )));
        }
        authorise(&identity)?;
        let params = leaf_params(&identity, self.lifetime)
            .map_err(|e| Refusal(format!("cannot build certificate: {e}")))?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| Refusal(format!("signing failed: {e}")))?;
        Ok(Signed {
            identity,
            chain: vec![cert.pem(), self.intermediate_pem.clone()],
            root: self.root_pem.clone(),
        })
    }

    /// A serving certificate for the CA's own TLS endpoint (name [`super::SERVER_NAME`]).
    pub fn serving_cert(&self) -> Result<(Vec<String>, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![super::SERVER_NAME.to_owned()])?;
        params.not_before = now() - BACKDATE;
        params.not_after = now() + INTERMEDIATE_LIFETIME;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.pem(), self.intermediate_pem.clone()],
            key.serialize_pem(),
        ))
    }
}

fn requested_identity(sans: &[SanType]) -> Result<Identity, Refusal> {
    match sans {
        [SanType::URI(uri)] => uri
            .as_str()
            .parse::<Identity>()
            .map_err(|e| Refusal(e.to_string())),
        _ => Err(Refusal(
            "the request must carry exactly one SAN, a SPIFFE URI".to_owned(),
        )),
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn leaf_params(id: &Identity, lifetime: Duration) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    p.not_before = now() - BACKDATE;
    p.not_after = now() + lifetime;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn ca_params(cn: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "weft");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now() - BACKDATE;
    p.not_after = now() + lifetime;
    p
}

fn create(dir: &Path, trust_domain: &str) -> Result<(), Error> {
    let root_key = KeyPair::generate().map_err(Error::Generate)?;
    let root_params = ca_params(&format!("weft root ({trust_domain})"), ROOT_LIFETIME, None);
    let root = root_params
        .self_signed(&root_key)
        .map_err(Error::Generate)?;
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().map_err(Error::Generate)?;
    let mut int_params = ca_params(
        &format!("weft intermediate ({trust_domain})"),
        INTERMEDIATE_LIFETIME,
        Some(0),
    );
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params
        .signed_by(&int_key, &root_issuer)
        .map_err(Error::Generate)?;
    write_secret(
        &dir.join("root.key.pem"),
        &root_issuer.key().serialize_pem(),
    )?;
    write_secret(&dir.join("intermediate.key.pem"), &int_key.serialize_pem())?;
    fs::write(dir.join("intermediate.pem"), int.pem()).map_err(io("writing", dir))?;
    // The root goes last: its presence is what marks the material complete.
    fs::write(dir.join("root.pem"), root.pem()).map_err(io("writing", dir))?;
    Ok(())
}

/// Writes a private key readable by its owner only.
pub fn write_secret(path: &Path, pem: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, pem).map_err(io("writing", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", path))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |error| Error::Io { what, path, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(uri: &str) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        (key, csr)
    }

    #[test]
    fn signs_only_authorised_identities_of_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "cluster.local", Duration::from_secs(3600))
            .unwrap();
        let (_, csr) = csr_for("spiffe://cluster.local/ns/shop/sa/web");
        let signed = ca.sign(&csr, |_| Ok(())).unwrap();
        assert_eq!(
            signed.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let der = pem_to_der(&signed.chain[0]);
        assert_eq!(Identity::from_cert(&der).unwrap(), signed.identity);

        let refused = ca.sign(&csr, |id| Err(Refusal(format!("{id} is not on this node"))));
        assert!(refused.unwrap_err().0.contains("not on this node"));
        let (_, foreign) = csr_for("spiffe://other.domain/ns/shop/sa/web");
        assert!(ca
            .sign(&foreign, |_| Ok(()))
            .unwrap_err()
            .0
            .contains("trust domain"));
        assert!(ca
            .sign("-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", |_| Ok(()))
            .is_err());
    }

    #[test]
    fn material_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::load_or_create(dir.path(), "cluster.local", Duration::from_secs(60))
            .unwrap();
        let b = Authority::load_or_create(dir.path(), "cluster.local", Duration::from_secs(60))
            .unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
