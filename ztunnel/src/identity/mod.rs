//! Workload identities on this node: the SDS-style secret cache that TLS
//! reads on every handshake, and the manager that fills it from the CA.

pub mod cache;
pub mod manager;

pub use cache::SecretCache;
#[cfg(test)]
pub use cache::{Bundle, WorkloadCert};
pub use manager::IdentityManager;
