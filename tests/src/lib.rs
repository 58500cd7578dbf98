//! # testbed
//!
//! A cluster in a box for end-to-end tests: nodes and pods as network
//! namespaces joined by veth pairs, the way a CNI leaves them (each pod's
//! `eth0` holds a /32 and reaches its node through a link-local gateway on
//! the host-side veth, and the node routes the pod's /32 to that veth).
//! Everything is named with a per-testbed prefix and removed on drop, also
//! when a test fails; what a run killed by a signal left behind (its
//! namespaces and the agents inside them) is removed by the next
//! [`Testbed::new`] ([`netns::reap_stale`]).
//!
//! Tests that need root call [`require_root`], which skips loudly when not
//! root and fails under `CI=true`.

pub mod cluster;
pub mod fakeapi;
pub mod gateway;
pub mod kubetest;
pub mod netns;
pub mod perf;
pub mod probe;

pub use netns::{Netns, Testbed};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Returns whether a privileged test may run. When not root, prints a
/// `SKIPPED` line and returns false, or panics when `CI=true` (a skipped
/// privileged test is a failure in CI).
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs root (network namespaces, BPF)");
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{msg} (CI=true turns this skip into a failure)");
    eprintln!("{msg}");
    false
}
