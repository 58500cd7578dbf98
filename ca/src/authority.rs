//! CA material: a root and the intermediate that signs workload certificates.
//!
//! An [`Authority`] is one root/intermediate pair. The CA holds one that signs
//! and, during a rotation, a second one whose root is already trusted. Roots
//! and intermediates are ECDSA P-256 when generated here; an operator may
//! import their own (any key type rcgen can sign with), with or without the
//! root's private key (an offline root is the usual case).

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::CaError;
use crate::spiffe::TrustDomain;

/// PEM text of a private key. Never printed: `Debug` and `Display` redact it,
/// so keys cannot reach logs, metrics or config dumps by accident. It is
/// serialised only into the CA's own state (a 0600 file or a Secret).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps key PEM.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM, for the code that must sign with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// Validity periods of generated CA certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorityParams {
    /// Root validity (default 10 years).
    pub root_validity: Duration,
    /// Intermediate validity (default 1 year).
    pub intermediate_validity: Duration,
}

impl Default for AuthorityParams {
    fn default() -> Self {
        Self { root_validity: Duration::days(3650), intermediate_validity: Duration::days(365) }
    }
}

/// One root and its signing intermediate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// Stable name of this authority (`ca-<utc>-<random>`), used by the CLI
    /// and in the trust bundle.
    pub id: String,
    /// The root certificate (self-signed).
    pub root_pem: String,
    /// The root key, if the CA holds it (not for an imported offline root).
    pub root_key: Option<SecretPem>,
    /// The signing intermediate's certificate.
    pub intermediate_pem: String,
    /// The signing intermediate's key.
    pub intermediate_key: SecretPem,
    /// Certificates between the intermediate and the root, leaf-most first
    /// (imported chains only; empty when generated).
    #[serde(default)]
    pub chain_pem: Vec<String>,
}

/// What a certificate says about itself, for status output and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject, RFC 4514 string.
    pub subject: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Decodes one PEM certificate to DER.
pub(crate) fn pem_to_der(pem: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::Material(format!("{what}: not a PEM certificate ({e})")))?;
    if p.label != "CERTIFICATE" {
        return Err(CaError::Material(format!("{what}: PEM block is {:?}, expected CERTIFICATE", p.label)));
    }
    Ok(p.contents)
}

/// Splits concatenated PEM certificates.
pub fn split_pem_certs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end_rel) = rest[start..].find("-----END CERTIFICATE-----") else { break };
        let end = start + end_rel + "-----END CERTIFICATE-----".len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// Reads subject, serial and validity of a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, CaError> {
    let der = pem_to_der(pem, "certificate")?;
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| CaError::Material(format!("certificate: {e}")))?;
    Ok(CertInfo {
        subject: c.subject().to_string(),
        serial: c.raw_serial_as_string().replace(':', ""),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
    })
}

/// Random bytes from the crypto library's generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], CaError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Crypto("random number generator failed".into()))?;
    Ok(b)
}

/// A positive, non-zero random serial of `N` bytes (RFC 5280 allows 20).
pub(crate) fn random_serial<const N: usize>() -> Result<SerialNumber, CaError> {
    let mut b = random::<N>()?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ca_params(
    common_name: String,
    td: &TrustDomain,
    now: OffsetDateTime,
    validity: Duration,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td.as_str());
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + validity;
    p.serial_number = Some(random_serial::<16>()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Crypto(format!("key generation: {e}")))
}

fn load_key(pem: &str, what: &'static str) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(pem).map_err(|e| CaError::Material(format!("{what}: not a usable private key ({e})")))
}

impl Authority {
    /// Generates a new self-signed root and an intermediate under it.
    pub fn generate(td: &TrustDomain, now: OffsetDateTime, params: AuthorityParams) -> Result<Self, CaError> {
        let id = format!("ca-{}-{}", now.unix_timestamp(), hex(&random::<3>()?));
        let root_key = new_key()?;
        let root_params = ca_params(format!("ztunnel root CA {id}"), td, now, params.root_validity, Some(1))?;
        let root = root_params.self_signed(&root_key).map_err(|e| CaError::Crypto(format!("root: {e}")))?;
        let root_pem = root.pem();
        let intermediate_validity = params.intermediate_validity.min(params.root_validity);
        let (intermediate_pem, intermediate_key) =
            Self::sign_intermediate(&id, td, &root_pem, &root_key, now, intermediate_validity)?;
        Ok(Self {
            id,
            root_pem,
            root_key: Some(SecretPem(root_key.serialize_pem())),
            intermediate_pem,
            intermediate_key,
            chain_pem: Vec::new(),
        })
    }

    fn sign_intermediate(
        id: &str,
        td: &TrustDomain,
        root_pem: &str,
        root_key: &KeyPair,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(String, SecretPem), CaError> {
        let root_info = cert_info(root_pem)?;
        let key = new_key()?;
        let mut p = ca_params(format!("ztunnel intermediate CA {id}"), td, now, validity, Some(0))?;
        // An intermediate never outlives its root.
        p.not_after = p.not_after.min(root_info.not_after);
        let issuer = Issuer::from_ca_cert_pem(root_pem, root_key)
            .map_err(|e| CaError::Material(format!("root certificate: {e}")))?;
        let cert = p.signed_by(&key, &issuer).map_err(|e| CaError::Crypto(format!("intermediate: {e}")))?;
        Ok((cert.pem(), SecretPem(key.serialize_pem())))
    }

    /// Replaces the intermediate with a new one under the same root (needs
    /// the root key). The trust bundle does not change.
    pub fn renew_intermediate(
        &self,
        td: &TrustDomain,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Self, CaError> {
        let Some(root_key) = &self.root_key else {
            return Err(CaError::Material(format!(
                "authority {} has no root key (imported offline root): import a new intermediate instead",
                self.id
            )));
        };
        let root_key = load_key(root_key.expose(), "root key")?;
        let (intermediate_pem, intermediate_key) =
            Self::sign_intermediate(&self.id, td, &self.root_pem, &root_key, now, validity)?;
        Ok(Self { intermediate_pem, intermediate_key, chain_pem: Vec::new(), ..self.clone() })
    }

    /// Imports operator-supplied material.
    ///
    /// - `root_pem`: the root certificate (self-signed CA).
    /// - `cert_chain_pem`: the signing certificate, optionally followed by
    ///   further intermediates up to (not necessarily including) the root. If
    ///   it *is* the root (self-signed) and `key_pem` is the root key, a new
    ///   intermediate is generated under it.
    /// - `key_pem`: the key of the first certificate of `cert_chain_pem`.
    ///
    /// Checks: every certificate parses and is a CA, the key matches, each
    /// link is signed by the next, the chain ends at the root, and all are
    /// valid at `now`.
    pub fn import(
        td: &TrustDomain,
        root_pem: &str,
        cert_chain_pem: &str,
        key_pem: &str,
        now: OffsetDateTime,
        params: AuthorityParams,
    ) -> Result<Self, CaError> {
        let roots = split_pem_certs(root_pem);
        let [root_pem] = roots.as_slice() else {
            return Err(CaError::Material(format!(
                "root: expected exactly one PEM certificate, found {}",
                roots.len()
            )));
        };
        let mut chain = split_pem_certs(cert_chain_pem);
        if chain.is_empty() {
            return Err(CaError::Material("certificate chain: no PEM certificate found".into()));
        }
        // A chain file that ends with the root is common; the root is kept
        // separately.
        if chain.len() > 1 && chain.last().is_some_and(|c| same_cert(c, root_pem)) {
            chain.pop();
        }
        let key = load_key(key_pem, "key")?;
        let root_der = pem_to_der(root_pem, "root")?;
        let (_, root) = X509Certificate::from_der(&root_der).map_err(|e| CaError::Material(format!("root: {e}")))?;
        check_ca(&root, "root", now)?;
        if root.subject() != root.issuer() || root.verify_signature(None).is_err() {
            return Err(CaError::Material("root: not self-signed".into()));
        }
        let id = format!("ca-{}-{}", now.unix_timestamp(), hex(&random::<3>()?));
        if chain.len() == 1 && same_cert(&chain[0], root_pem) {
            // Root plus root key: generate our own intermediate under it.
            if key.public_key_raw() != root.public_key().subject_public_key.data.as_ref() {
                return Err(CaError::Material("key: does not match the root certificate".into()));
            }
            let (intermediate_pem, intermediate_key) =
                Self::sign_intermediate(&id, td, root_pem, &key, now, params.intermediate_validity)?;
            return Ok(Self {
                id,
                root_pem: root_pem.clone(),
                root_key: Some(SecretPem(key.serialize_pem())),
                intermediate_pem,
                intermediate_key,
                chain_pem: Vec::new(),
            });
        }
        let ders: Vec<Vec<u8>> = chain.iter().map(|c| pem_to_der(c, "certificate chain")).collect::<Result<_, _>>()?;
        let mut certs = Vec::new();
        for (i, der) in ders.iter().enumerate() {
            let (_, c) = X509Certificate::from_der(der)
                .map_err(|e| CaError::Material(format!("certificate chain[{i}]: {e}")))?;
            certs.push(c);
        }
        for (i, c) in certs.iter().enumerate() {
            check_ca(c, "certificate chain", now)?;
            let parent = certs.get(i + 1).unwrap_or(&root);
            if c.verify_signature(Some(parent.public_key())).is_err() {
                return Err(CaError::Material(format!(
                    "certificate chain[{i}] ({}) is not signed by {}",
                    c.subject(),
                    parent.subject()
                )));
            }
        }
        if key.public_key_raw() != certs[0].public_key().subject_public_key.data.as_ref() {
            return Err(CaError::Material("key: does not match the first certificate of the chain".into()));
        }
        Ok(Self {
            id,
            root_pem: root_pem.clone(),
            root_key: None,
            intermediate_pem: chain[0].clone(),
            intermediate_key: SecretPem(key.serialize_pem()),
            chain_pem: chain[1..].to_vec(),
        })
    }

    /// Root certificate details.
    pub fn root_info(&self) -> Result<CertInfo, CaError> {
        cert_info(&self.root_pem)
    }

    /// Intermediate certificate details.
    pub fn intermediate_info(&self) -> Result<CertInfo, CaError> {
        cert_info(&self.intermediate_pem)
    }

    /// The signer for leaf certificates.
    pub(crate) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key = load_key(self.intermediate_key.expose(), "intermediate key")?;
        Issuer::from_ca_cert_pem(&self.intermediate_pem, key)
            .map_err(|e| CaError::Material(format!("intermediate certificate: {e}")))
    }
}

fn same_cert(a: &str, b: &str) -> bool {
    matches!((pem_to_der(a, "a"), pem_to_der(b, "b")), (Ok(x), Ok(y)) if x == y)
}

fn check_ca(c: &X509Certificate<'_>, what: &str, now: OffsetDateTime) -> Result<(), CaError> {
    let is_ca = c.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
    if !is_ca {
        return Err(CaError::Material(format!(
            "{what} ({}): not a CA certificate (basicConstraints CA:TRUE missing)",
            c.subject()
        )));
    }
    let v = c.validity();
    if now < v.not_before.to_datetime() || now > v.not_after.to_datetime() {
        return Err(CaError::Material(format!(
            "{what} ({}): not valid now (valid {} to {})",
            c.subject(),
            v.not_before,
            v.not_after
        )));
    }
    Ok(())
}
