//! Authorisation: which node may obtain which identity.
//!
//! A node agent may obtain the identity of a service account only while a
//! pod using it is scheduled on that node, according to the same cluster
//! state the agents enforce (manifest directory or API server). A stolen node
//! credential therefore yields only the identities that node already runs.

use crate::spiffe::SpiffeId;

/// The question the CA asks the cluster state.
pub trait WorkloadIndex {
    /// Whether a pod in `namespace` with service account `service_account` is
    /// scheduled on `node`.
    fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool;
}

/// A refused request, with who asked for what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node} may not obtain {identity}: no pod with service account {sa} in namespace {ns} runs on it")]
pub struct Denied {
    /// The authenticated node.
    pub node: String,
    /// The identity asked for.
    pub identity: String,
    /// Namespace.
    pub ns: String,
    /// Service account.
    pub sa: String,
}

/// Decides whether `node` may obtain `id`.
pub fn authorize(index: &(impl WorkloadIndex + ?Sized), node: &str, id: &SpiffeId) -> Result<(), Denied> {
    if index.runs_on(node, id.namespace(), id.service_account()) {
        return Ok(());
    }
    Err(Denied {
        node: node.to_string(),
        identity: id.to_string(),
        ns: id.namespace().to_string(),
        sa: id.service_account().to_string(),
    })
}
