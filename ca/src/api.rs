//! Wire types of the CA's HTTPS JSON API (see ARCHITECTURE.md).
//!
//! - `POST /v1/sign` (bearer token) — [`SignRequest`] → [`SignResponse`]
//! - `GET /v1/bundle` — [`crate::TrustBundle`]; `ETag` is the version, and
//!   `If-None-Match` with `?wait=<seconds>` long-polls until it changes
//! - `GET /v1/status` — [`crate::CaStatus`]
//!
//! Errors are [`ErrorBody`] with a 4xx/5xx status.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::rotation::TrustBundle;
use crate::spiffe::SpiffeId;

/// A certificate request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// PKCS#10 request, PEM.
    pub csr: String,
    /// Requested lifetime; the CA clamps it to its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// An issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The identity in the certificate.
    pub identity: SpiffeId,
    /// Leaf first, then intermediates (PEM).
    pub chain: Vec<String>,
    /// Leaf serial, hex.
    pub serial: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The current trust bundle.
    pub bundle: TrustBundle,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable reason (`bad_csr`, `unauthenticated`, `denied`, ...).
    pub reason: String,
    /// Human-readable message.
    pub error: String,
}
