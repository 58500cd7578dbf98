//! Certificate signing request validation.
//!
//! A node agent sends one CSR per workload identity. The CA accepts exactly
//! one shape: a correctly self-signed PKCS#10 request for a P-256, P-384,
//! Ed25519 or RSA (2048–8192 bit) key, naming exactly one URI SAN that is a
//! workload identity in the CA's trust domain, and nothing else that would
//! end up in a certificate (no DNS/IP/e-mail SANs, no CA:TRUE, no unknown
//! critical extension). Everything is rejected with a precise reason; the CA
//! then writes its own certificate from the *authorised* identity, so nothing
//! from the request is copied into the certificate except the public key.

use serde::Serialize;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::spiffe::{SpiffeId, TrustDomain};

/// Largest CSR accepted, PEM or DER. A P-256 CSR is ~500 bytes PEM; RSA 8192
/// ~3.5 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Key types the CA signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with the given modulus size in bits.
    Rsa(u32),
}

/// Why a CSR was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Empty input.
    #[error("empty certificate signing request")]
    Empty,
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("certificate signing request of {0} bytes exceeds the {MAX_CSR_BYTES}-byte limit")]
    TooLarge(usize),
    /// PEM framing is wrong.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// Not a DER PKCS#10 structure.
    #[error("not a PKCS#10 certificate signing request: {0}")]
    Der(String),
    /// Bytes after the request.
    #[error("{0} trailing bytes after the certificate signing request")]
    Trailing(usize),
    /// The request's self-signature does not verify.
    #[error("signature does not verify against the request's own public key")]
    BadSignature,
    /// A key type the CA does not sign for.
    #[error("unsupported key type {0}: allowed are ECDSA P-256, ECDSA P-384, Ed25519 and RSA 2048–8192")]
    KeyType(String),
    /// RSA key too small or too large.
    #[error("RSA key of {0} bits: allowed sizes are 2048 to 8192 bits")]
    RsaSize(usize),
    /// No URI SAN.
    #[error("no identity requested: the request needs exactly one URI SAN spiffe://<trust-domain>/ns/<ns>/sa/<sa>")]
    NoIdentity,
    /// More than one URI SAN.
    #[error("{0} URI SANs requested: exactly one identity is allowed")]
    ManyIdentities(usize),
    /// A SAN other than a URI.
    #[error("SAN {0} not allowed: workload certificates carry only their SPIFFE ID")]
    OtherSan(String),
    /// The URI is not a workload identity.
    #[error("requested identity is invalid: {0}")]
    Identity(String),
    /// The identity is in another trust domain.
    #[error("requested identity {id} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// The identity asked for.
        id: String,
        /// This CA's trust domain.
        expected: String,
    },
    /// The request asks for a CA certificate.
    #[error("the request asks for a CA certificate (basicConstraints CA:TRUE)")]
    CaRequested,
    /// The request carries an unknown critical extension.
    #[error("unsupported critical extension {0} in the request")]
    CriticalExtension(String),
    /// More than one extensionRequest attribute or duplicate SAN extensions.
    #[error("duplicate {0} in the request")]
    Duplicate(&'static str),
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    /// The requested identity (still to be authorised).
    pub identity: SpiffeId,
    /// The key type.
    pub key: KeyKind,
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub spki_der: Vec<u8>,
}

/// Decodes PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or takes
/// the input as DER.
fn decode(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(trimmed).map_err(|e| CsrError::Pem(e.to_string()))?;
    if !matches!(pem.label.as_str(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
        return Err(CsrError::Pem(format!("PEM block is {:?}, expected CERTIFICATE REQUEST", pem.label)));
    }
    if !rest.trim_ascii().is_empty() {
        return Err(CsrError::Pem("more than one PEM block".into()));
    }
    Ok(pem.contents)
}

/// Validates a CSR for `trust_domain`.
pub fn validate_csr(input: &[u8], trust_domain: &TrustDomain) -> Result<ValidatedCsr, CsrError> {
    if input.trim_ascii().is_empty() {
        return Err(CsrError::Empty);
    }
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(input.len()));
    }
    let der = decode(input)?;
    let (rest, req) = X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Trailing(rest.len()));
    }
    let info = &req.certification_request_info;
    let spki = &info.subject_pki;
    let key = key_kind(spki)?;
    req.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut ext_requests = 0;
    let mut uris: Vec<String> = Vec::new();
    let mut saw_san = false;
    for attr in info.iter_attributes() {
        let x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(er) = attr.parsed_attribute() else {
            continue;
        };
        ext_requests += 1;
        if ext_requests > 1 {
            return Err(CsrError::Duplicate("extensionRequest attribute"));
        }
        for ext in &er.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    if saw_san {
                        return Err(CsrError::Duplicate("subjectAltName extension"));
                    }
                    saw_san = true;
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push((*u).to_string()),
                            other => return Err(CsrError::OtherSan(other.to_string())),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::CaRequested),
                // Key usage, EKU and CA:FALSE are harmless requests: the CA
                // sets its own.
                ParsedExtension::BasicConstraints(_)
                | ParsedExtension::KeyUsage(_)
                | ParsedExtension::ExtendedKeyUsage(_)
                | ParsedExtension::SubjectKeyIdentifier(_) => {}
                _ if ext.critical => return Err(CsrError::CriticalExtension(ext.oid.to_id_string())),
                _ => {}
            }
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(CsrError::NoIdentity),
        [one] => one,
        many => return Err(CsrError::ManyIdentities(many.len())),
    };
    let identity = SpiffeId::parse(uri).map_err(|e| CsrError::Identity(e.to_string()))?;
    if identity.trust_domain() != trust_domain {
        return Err(CsrError::ForeignTrustDomain { id: identity.to_string(), expected: trust_domain.to_string() });
    }
    Ok(ValidatedCsr { identity, key, spki_der: spki.raw.to_vec() })
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            Some(c) => Err(CsrError::KeyType(format!("ECDSA on curve {}", c.to_id_string()))),
            None => Err(CsrError::KeyType("ECDSA without a named curve".into())),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => k.key_size(),
            _ => return Err(CsrError::KeyType("malformed RSA key".into())),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(CsrError::RsaSize(bits));
        }
        return Ok(KeyKind::Rsa(bits as u32));
    }
    Err(CsrError::KeyType(alg.to_id_string()))
}
