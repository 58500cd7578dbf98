//! Errors of the CA core.

use crate::csr::CsrError;
use crate::rotation::RotationError;

/// Any failure of the CA core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// Key or certificate material is unusable (parse error, mismatch,
    /// expired, not a CA).
    #[error("CA material: {0}")]
    Material(String),
    /// The crypto library failed (should not happen).
    #[error("crypto: {0}")]
    Crypto(String),
    /// A certificate signing request was rejected.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The authorised identity differs from the requested one.
    #[error("identity mismatch: the request asks for {requested}, the caller is authorised for {authorised}")]
    IdentityMismatch {
        /// From the CSR.
        requested: String,
        /// From authorisation.
        authorised: String,
    },
    /// A rotation step was refused.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// Persisted CA state could not be read.
    #[error("CA state: {0}")]
    State(String),
}
