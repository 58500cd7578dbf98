//! The node proxy: HBONE tunnels (HTTP/2 CONNECT over mTLS, port 15008)
//! carrying permitted TCP flows between nodes with the source workload's
//! identity.
//!
//! - [`tls`]: certificates and verifiers reading the secret cache per
//!   handshake.
//! - [`inbound`]: the 15008 listener: verifies the peer, checks that it owns
//!   the claimed source address, re-evaluates ingress policy, connects to
//!   the destination pod and copies bytes.
//! - [`outbound`]: pooled tunnels to peer nodes.
//! - [`capture`]: the transparent listener the datapath steers pod TCP to.

pub mod capture;
pub mod copy;
pub mod inbound;
pub mod io;
pub mod metrics;
pub mod outbound;
pub mod tls;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across awaits.
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;
