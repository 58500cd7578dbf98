//! Workload identities on this node: the SDS-style secret cache that TLS
//! reads on every handshake, and the manager that fills it from the CA.

pub mod cache;
pub mod manager;

pub use cache::{Bundle, SecretCache, WorkloadCert};
pub use manager::{CertSource, IdentityManager};
