//! # ztunnel-policy
//!
//! The pure core that decides who may talk to whom: Kubernetes
//! NetworkPolicy (`networking.k8s.io/v1`) with full upstream semantics.
//!
//! - [`model`] and [`convert`]: validated, defaulted objects (from
//!   `k8s-openapi` types), [`manifest`]: the same from multi-document YAML;
//! - [`cluster`]: the in-memory index of namespaces, pods, nodes and policies;
//! - [`eval`]: the reference evaluator, the oracle for everything else;
//! - [`compile`]: the incremental compiler to dataplane tables (identities,
//!   ipcache LPM entries, per-endpoint policy entries) with diffs;
//! - [`matrix`]: reachability matrices for operators.
//!
//! No IO, no async runtime, no Kubernetes client, no BPF: everything here is
//! a function of its inputs, tested without privileges.

#![forbid(unsafe_code)]

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
pub mod cluster;
pub mod compile;
pub mod convert;
pub mod error;
pub mod eval;
pub mod labels;
pub mod manifest;
pub mod matrix;
pub mod model;

#[cfg(test)]
mod testutil;

pub use cluster::{Cluster, ObjectRef};
pub use compile::{Compiler, Scope, TableDiff, Tables};
pub use error::{FieldError, ManifestError, ObjectError};
pub use eval::{Endpoint, Verdict, evaluate, evaluate_packet};
pub use manifest::{Object, parse_str};
pub use model::{Direction, ObjectKey, Protocol};
