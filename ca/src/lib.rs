//! The ztunnel certificate authority core. Pure: no files, sockets or clocks
//! (time is passed in); the server and the CLI in `ztunnel` do the IO.
//!
//! - [`spiffe`]: the identity format, `spiffe://<td>/ns/<ns>/sa/<sa>`.
//! - [`authority`]: root + intermediate material, generated (P-256) or
//!   imported, with private keys that never print.
//! - [`csr`]: strict validation of certificate signing requests.
//! - [`issue`]: workload certificates from validated requests.
//! - [`authz`]: a node may obtain only identities of pods it runs.
//! - [`rotation`]: the persisted CA state, its trust bundle and the staged
//!   root rotation state machine.
//! - [`peer`]: the workload identity in a peer's certificate.
//! - [`api`]: the JSON wire types of the CA server.

#![forbid(unsafe_code)]

pub mod api;
pub mod authority;
pub mod authz;
pub mod csr;
pub mod error;
pub mod issue;
pub mod peer;
pub mod rotation;
pub mod spiffe;

pub use authority::{Authority, AuthorityParams, CertInfo, SecretPem};
pub use authz::{Denied, WorkloadIndex, authorize};
pub use csr::{CsrError, KeyKind, ValidatedCsr, validate_csr};
pub use error::CaError;
pub use issue::{IssuePolicy, Issued, Signer};
pub use rotation::{CaState, CaStatus, Outcome, RotationError, Stage, TrustBundle};
pub use spiffe::{IdentityError, SpiffeId, TrustDomain};

/// Serde for durations as whole seconds.
pub(crate) mod serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.whole_seconds())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::seconds(i64::deserialize(d)?))
    }
}
