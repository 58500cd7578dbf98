//! Ingress certificates: validating a `kubernetes.io/tls` Secret into a
//! serving certificate, and choosing one per handshake by SNI.
//!
//! A Secret is accepted only if its chain parses, its key parses and is the
//! key of the leaf, and the leaf is valid now. A rejected update leaves the
//! previous good certificate in the secret cache, so a bad `kubectl apply`
//! never takes a site down.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use super::model::TlsSecret;
use super::routes::normalize_host;
use super::server::Shared;
use crate::identity::cache::ServingCert;

/// Why a Secret's key pair cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// `tls.crt` has no PEM certificate.
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    /// `tls.crt` is not a valid certificate.
    #[error("tls.crt: {0}")]
    BadCertificate(String),
    /// `tls.key` has no usable PEM private key.
    #[error("tls.key: {0}")]
    BadKey(String),
    /// The key is not the certificate's.
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    /// The leaf has expired.
    #[error("the certificate expired at {not_after}")]
    Expired {
        /// Its end of validity.
        not_after: OffsetDateTime,
    },
    /// The leaf is not valid yet.
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid {
        /// Its start of validity.
        not_before: OffsetDateTime,
    },
}

impl SecretError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SecretError::NoCertificate | SecretError::BadCertificate(_) => "bad_certificate",
            SecretError::BadKey(_) => "bad_key",
            SecretError::KeyMismatch => "key_mismatch",
            SecretError::Expired { .. } => "expired",
            SecretError::NotYetValid { .. } => "not_yet_valid",
        }
    }
}

/// Validates a Secret at time `now`.
pub fn load(secret: &TlsSecret, now: OffsetDateTime) -> Result<ServingCert, SecretError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&secret.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| SecretError::BadCertificate(format!("invalid PEM: {e}")))?;
    let leaf = chain.first().ok_or(SecretError::NoCertificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| SecretError::BadCertificate(format!("invalid certificate: {e}")))?;
    let validity = parsed.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if now < not_before {
        return Err(SecretError::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(SecretError::Expired { not_after });
    }
    let dns_names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let serial = parsed.raw_serial_as_string().replace(':', "");
    let key = PrivateKeyDer::from_pem_slice(&secret.key_pem).map_err(|e| SecretError::BadKey(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| SecretError::BadKey(format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(SecretError::KeyMismatch);
        }
        // The key type cannot tell its public key: nothing to compare.
        Err(_) => {}
    }
    Ok(ServingCert { secret: secret.key.to_string(), certified: Arc::new(certified), serial, dns_names, not_after })
}

/// A self-signed certificate for handshakes no Secret covers (no SNI, an
/// unknown host, a TLS host whose Secret is missing), like other ingress
/// controllers' "fake certificate": clients see a name mismatch rather
/// than a handshake failure.
pub fn fallback_certificate() -> Result<ServingCert, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec!["ztunnel-gateway.invalid".to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "ztunnel gateway default certificate");
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let secret = TlsSecret {
        key: policy::ObjectKey::new("-", "default-certificate"),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    };
    load(&secret, OffsetDateTime::now_utc()).map_err(|e| e.to_string())
}

/// Picks the certificate for each handshake from the current route table
/// and secret cache: a Secret update is seen by the next handshake.
#[derive(Debug)]
pub struct SniResolver {
    pub(super) shared: Arc<Shared>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let routes = self.shared.routes();
            let secret = routes.tls_for(&normalize_host(sni))??;
            self.shared.cache.serving(&secret.to_string())
        });
        Some(chosen.map_or_else(|| self.shared.default_cert().certified.clone(), |c| c.certified.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str], days: (i64, i64)) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn secret(cert: &str, key: &str) -> TlsSecret {
        TlsSecret {
            key: policy::ObjectKey::new("n", "s"),
            cert_pem: cert.as_bytes().to_vec(),
            key_pem: key.as_bytes().to_vec(),
        }
    }

    #[test]
    fn good_and_bad_secrets() {
        let now = OffsetDateTime::now_utc();
        let (cert, key) = pair(&["a.example.com"], (-1, 30));
        let ok = load(&secret(&cert, &key), now).unwrap();
        assert_eq!(ok.dns_names, vec!["a.example.com"]);
        assert_eq!(ok.secret, "n/s");

        let (_, other_key) = pair(&["a.example.com"], (-1, 30));
        assert_eq!(load(&secret(&cert, &other_key), now).unwrap_err(), SecretError::KeyMismatch);
        assert_eq!(load(&secret("", &key), now).unwrap_err(), SecretError::NoCertificate);
        assert!(matches!(
            load(&secret("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", &key), now),
            Err(SecretError::BadCertificate(_))
        ));
        let garbage_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(load(&secret(garbage_der, &key), now), Err(SecretError::BadCertificate(_))));
        assert!(matches!(load(&secret(&cert, "garbage"), now), Err(SecretError::BadKey(_))));
        let (old, old_key) = pair(&["a.example.com"], (-30, -1));
        assert!(matches!(load(&secret(&old, &old_key), now), Err(SecretError::Expired { .. })));
        let (future, future_key) = pair(&["a.example.com"], (2, 30));
        assert!(matches!(load(&secret(&future, &future_key), now), Err(SecretError::NotYetValid { .. })));
    }

    #[test]
    fn fallback_is_usable() {
        let c = fallback_certificate().unwrap();
        assert_eq!(c.dns_names, vec!["ztunnel-gateway.invalid"]);
    }
}
