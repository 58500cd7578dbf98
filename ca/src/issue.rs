//! Workload certificate issuance.

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SubjectPublicKeyInfo,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::authority::{Authority, CertInfo, random_serial};
use crate::csr::{KeyKind, ValidatedCsr};
use crate::error::CaError;
use crate::spiffe::SpiffeId;

/// Lifetimes of issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuePolicy {
    /// TTL when the request names none (default 24 h).
    #[serde(with = "crate::serde_secs")]
    pub default_ttl: Duration,
    /// Longest TTL granted (default 24 h); longer requests are clamped.
    #[serde(with = "crate::serde_secs")]
    pub max_ttl: Duration,
    /// Shortest TTL granted (default 1 min); shorter requests are raised.
    #[serde(with = "crate::serde_secs")]
    pub min_ttl: Duration,
    /// How far `notBefore` is set in the past, for clock skew between nodes
    /// (default 5 min).
    #[serde(with = "crate::serde_secs")]
    pub backdate: Duration,
}

impl Default for IssuePolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::hours(24),
            max_ttl: Duration::hours(24),
            min_ttl: Duration::minutes(1),
            backdate: Duration::minutes(5),
        }
    }
}

impl IssuePolicy {
    /// The TTL granted for a request of `requested`.
    pub fn ttl(&self, requested: Option<Duration>) -> Duration {
        requested.unwrap_or(self.default_ttl).clamp(self.min_ttl, self.longest())
    }

    /// The longest TTL ever granted (`max_ttl`, or `min_ttl` if larger).
    pub fn longest(&self) -> Duration {
        self.max_ttl.max(self.min_ttl)
    }
}

/// An issued workload certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The identity written into the certificate.
    pub identity: SpiffeId,
    /// PEM certificates: the leaf, then the intermediates up to (excluding)
    /// the root.
    pub chain: Vec<String>,
    /// Leaf serial, lowercase hex.
    pub serial: String,
    /// Start of validity (backdated).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The authority whose root this chains to.
    pub authority: String,
}

/// A ready-to-sign authority: the intermediate's key and certificate parsed
/// once, so issuance costs one signature verification and one signature.
pub struct Signer {
    authority: String,
    issuer: Issuer<'static, KeyPair>,
    intermediate: CertInfo,
    /// Intermediate PEM followed by any further chain certificates.
    chain_tail: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("authority", &self.authority).field("intermediate", &self.intermediate).finish()
    }
}

impl Signer {
    /// Prepares `authority` for signing.
    pub fn new(authority: &Authority) -> Result<Self, CaError> {
        let mut chain_tail = vec![authority.intermediate_pem.clone()];
        chain_tail.extend(authority.chain_pem.iter().cloned());
        Ok(Self {
            authority: authority.id.clone(),
            issuer: authority.issuer()?,
            intermediate: authority.intermediate_info()?,
            chain_tail,
        })
    }

    /// The authority this signer belongs to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The signing intermediate's details.
    pub fn intermediate(&self) -> &CertInfo {
        &self.intermediate
    }

    /// Signs a certificate for `authorised` with the key of `csr`.
    ///
    /// `authorised` is the identity the caller was authorised for; it must
    /// equal the one the request names (so a request can never be
    /// reinterpreted), and it — not the request — is what the certificate
    /// says. The certificate has only that URI SAN (critical, the subject is
    /// empty), digitalSignature (+keyEncipherment for RSA),
    /// serverAuth+clientAuth, CA:FALSE, a random 128-bit serial, and a
    /// validity of the clamped TTL backdated by `policy.backdate`, never
    /// beyond the intermediate's own expiry.
    pub fn issue(
        &self,
        csr: &ValidatedCsr,
        authorised: &SpiffeId,
        requested_ttl: Option<Duration>,
        policy: &IssuePolicy,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        if &csr.identity != authorised {
            return Err(CaError::IdentityMismatch {
                requested: csr.identity.to_string(),
                authorised: authorised.to_string(),
            });
        }
        let ttl = policy.ttl(requested_ttl);
        let not_after = (now + ttl).min(self.intermediate.not_after);
        if not_after <= now {
            return Err(CaError::Material(format!("intermediate of {} has expired", self.authority)));
        }
        let not_before = (now - policy.backdate).max(self.intermediate.not_before);

        let uri = authorised.to_string();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|e| CaError::Material(format!("identity {uri}: {e}")))?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = match csr.key {
            KeyKind::Rsa(_) => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let serial = random_serial::<16>()?;
        let serial_hex = serial.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        p.serial_number = Some(serial);
        p.not_before = not_before;
        p.not_after = not_after;
        p.use_authority_key_identifier_extension = true;

        let public = SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|e| CaError::Crypto(format!("public key of the request: {e}")))?;
        let leaf = p.signed_by(&public, &self.issuer).map_err(|e| CaError::Crypto(format!("signing: {e}")))?;
        let mut chain = Vec::with_capacity(1 + self.chain_tail.len());
        chain.push(leaf.pem());
        chain.extend(self.chain_tail.iter().cloned());
        Ok(Issued {
            identity: authorised.clone(),
            chain,
            serial: serial_hex,
            not_before,
            not_after,
            authority: self.authority.clone(),
        })
    }
}

impl Signer {
    /// A TLS server certificate for the CA's own API endpoint: DNS and IP
    /// SANs only, serverAuth only, so it can never pass as a workload.
    /// Returns the chain (leaf first) in PEM.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        public: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, dns_names.first().map_or("ztunnel-ca", String::as_str));
        p.distinguished_name = dn;
        for n in dns_names {
            p.subject_alt_names.push(SanType::DnsName(
                n.clone().try_into().map_err(|e| CaError::Material(format!("server name {n:?}: {e}")))?,
            ));
        }
        p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.serial_number = Some(random_serial::<16>()?);
        p.not_before = (now - Duration::minutes(5)).max(self.intermediate.not_before);
        p.not_after = (now + ttl).min(self.intermediate.not_after);
        p.use_authority_key_identifier_extension = true;
        let leaf = p.signed_by(public, &self.issuer).map_err(|e| CaError::Crypto(format!("signing: {e}")))?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.chain_tail.iter().cloned());
        Ok(chain)
    }
}
