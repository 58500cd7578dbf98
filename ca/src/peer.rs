//! Reading a peer's workload identity from its (already verified)
//! certificate.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::SpiffeId;

/// Why a certificate names no usable workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    /// Not a DER certificate.
    #[error("peer certificate does not parse: {0}")]
    Parse(String),
    /// No URI SAN, or more than one.
    #[error("peer certificate has {0} URI SANs; exactly one SPIFFE ID is required")]
    UriCount(usize),
    /// The URI is not a workload identity.
    #[error("peer identity is not a workload SPIFFE ID: {0}")]
    NotWorkload(String),
}

/// The single SPIFFE workload ID in a certificate's URI SANs.
pub fn identity_of(der: &[u8]) -> Result<SpiffeId, PeerIdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PeerIdentityError::Parse(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(PeerIdentityError::Parse(e.to_string())),
    };
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| PeerIdentityError::NotWorkload(e.to_string())),
        other => Err(PeerIdentityError::UriCount(other.len())),
    }
}

/// A certificate's serial number, lowercase hex (as the CA reports it).
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}
