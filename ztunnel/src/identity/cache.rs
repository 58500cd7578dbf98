//! The secret cache: per resource (a workload identity's certificate, an
//! Ingress TLS Secret's certificate, the trust bundle) the current value, and a version bumped on every change.
//!
//! rustls resolvers and verifiers look the current value up on every
//! handshake, so a renewed certificate or a new bundle takes effect on the
//! next handshake and never touches an established connection. An identity
//! without a certificate yields no client/server certificate, so its
//! handshakes fail: connections fail closed, never fall back to plaintext.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ca::{SpiffeId, TrustBundle, TrustDomain};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;

/// A workload certificate ready for rustls.
pub struct WorkloadCert {
    /// Its identity.
    pub identity: SpiffeId,
    /// Chain and key.
    pub certified: Arc<CertifiedKey>,
    /// Leaf serial (hex); shared, because the connection pool keys on it
    /// for every new tunnel.
    pub serial: Arc<str>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// The CA authority that signed it.
    pub authority: String,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The trust bundle ready for rustls.
pub struct Bundle {
    /// The CA's bundle as received.
    pub bundle: TrustBundle,
    /// Its roots.
    pub roots: Arc<RootCertStore>,
    /// Client-certificate verifier over those roots (chain, validity,
    /// clientAuth).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").field("version", &self.bundle.version).field("roots", &self.roots.len()).finish()
    }
}

/// Why a bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// No root parsed.
    #[error("trust bundle version {0} has no usable root certificate")]
    NoRoots(u64),
    /// rustls refused the roots.
    #[error("trust bundle: {0}")]
    Verifier(String),
}

impl Bundle {
    /// Prepares a CA bundle for TLS.
    pub fn new(bundle: TrustBundle) -> Result<Self, BundleError> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.pem().as_bytes()).flatten() {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(BundleError::NoRoots(bundle.version));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| BundleError::Verifier(e.to_string()))?;
        Ok(Self { bundle, roots, client_verifier })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.bundle.trust_domain
    }
}

/// What `/config_dump` shows of a certificate (never the key).
#[derive(Debug, Clone, Serialize)]
pub struct CertSummary {
    /// Identity.
    pub identity: String,
    /// Serial.
    pub serial: String,
    /// Validity start.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Validity end.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Signing authority.
    pub authority: String,
}

/// A serving certificate from a `kubernetes.io/tls` Secret (Ingress TLS),
/// validated and ready for rustls.
pub struct ServingCert {
    /// The Secret (`namespace/name`).
    pub secret: String,
    /// Chain and key.
    pub certified: Arc<CertifiedKey>,
    /// Leaf serial (hex).
    pub serial: String,
    /// Leaf DNS names.
    pub dns_names: Vec<String>,
    /// Leaf validity end.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("secret", &self.secret)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// What `/config_dump` shows of a serving certificate (never the key).
#[derive(Debug, Clone, Serialize)]
pub struct ServingSummary {
    /// The Secret.
    pub secret: String,
    /// Serial.
    pub serial: String,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// Validity end.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// The cache.
pub struct SecretCache {
    certs: RwLock<HashMap<SpiffeId, Arc<WorkloadCert>>>,
    serving: RwLock<HashMap<String, Arc<ServingCert>>>,
    bundle: RwLock<Option<Arc<Bundle>>>,
    version: AtomicU64,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache").field("version", &self.version()).finish()
    }
}

impl Default for SecretCache {
    fn default() -> Self {
        Self::new()
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    match l.read() {
        Ok(g) => g.clone(),
        Err(e) => e.into_inner().clone(),
    }
}

impl SecretCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            certs: RwLock::new(HashMap::new()),
            serving: RwLock::new(HashMap::new()),
            bundle: RwLock::new(None),
            version: AtomicU64::new(0),
        }
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Bumped on every change of any resource.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The current certificate of `id`.
    pub fn cert(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        match self.certs.read() {
            Ok(m) => m.get(id).cloned(),
            Err(e) => e.into_inner().get(id).cloned(),
        }
    }

    /// Stores a certificate (replacing the previous one of its identity).
    pub fn put_cert(&self, cert: WorkloadCert) {
        let cert = Arc::new(cert);
        match self.certs.write() {
            Ok(mut m) => m.insert(cert.identity.clone(), cert),
            Err(e) => e.into_inner().insert(cert.identity.clone(), cert),
        };
        self.bump();
    }

    /// Drops the certificate of an identity no longer needed here.
    pub fn remove_cert(&self, id: &SpiffeId) {
        match self.certs.write() {
            Ok(mut m) => m.remove(id),
            Err(e) => e.into_inner().remove(id),
        };
        self.bump();
    }

    /// The current serving certificate of a TLS Secret (`namespace/name`).
    pub fn serving(&self, secret: &str) -> Option<Arc<ServingCert>> {
        match self.serving.read() {
            Ok(m) => m.get(secret).cloned(),
            Err(e) => e.into_inner().get(secret).cloned(),
        }
    }

    /// Stores a validated serving certificate, replacing the Secret's
    /// previous one; the next handshake uses it.
    pub fn put_serving(&self, cert: ServingCert) {
        let cert = Arc::new(cert);
        match self.serving.write() {
            Ok(mut m) => m.insert(cert.secret.clone(), cert),
            Err(e) => e.into_inner().insert(cert.secret.clone(), cert),
        };
        self.bump();
    }

    /// Drops a deleted Secret's certificate.
    pub fn remove_serving(&self, secret: &str) {
        let removed = match self.serving.write() {
            Ok(mut m) => m.remove(secret),
            Err(e) => e.into_inner().remove(secret),
        };
        if removed.is_some() {
            self.bump();
        }
    }

    /// Serving certificates (no keys), by Secret.
    pub fn serving_summary(&self) -> Vec<ServingSummary> {
        let certs = match self.serving.read() {
            Ok(m) => m.values().cloned().collect::<Vec<_>>(),
            Err(e) => e.into_inner().values().cloned().collect(),
        };
        let mut out: Vec<ServingSummary> = certs
            .iter()
            .map(|c| ServingSummary {
                secret: c.secret.clone(),
                serial: c.serial.clone(),
                dns_names: c.dns_names.clone(),
                not_after: c.not_after,
            })
            .collect();
        out.sort_by(|a, b| a.secret.cmp(&b.secret));
        out
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Option<Arc<Bundle>> {
        read(&self.bundle)
    }

    /// Replaces the trust bundle.
    pub fn put_bundle(&self, b: Bundle) {
        let b = Arc::new(b);
        match self.bundle.write() {
            Ok(mut g) => *g = Some(b),
            Err(e) => *e.into_inner() = Some(b),
        }
        self.bump();
    }

    /// Identities with a certificate, and their details (no keys).
    pub fn summary(&self) -> Vec<CertSummary> {
        let certs = match self.certs.read() {
            Ok(m) => m.values().cloned().collect::<Vec<_>>(),
            Err(e) => e.into_inner().values().cloned().collect(),
        };
        let mut out: Vec<CertSummary> = certs
            .iter()
            .map(|c| CertSummary {
                identity: c.identity.to_string(),
                serial: c.serial.to_string(),
                not_before: c.not_before,
                not_after: c.not_after,
                authority: c.authority.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}
