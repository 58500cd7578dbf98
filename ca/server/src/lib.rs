//! The ztunnel CA server and its client.
//!
//! - [`server`]: HTTPS JSON API (`/v1/sign`, `/v1/bundle` with long-poll,
//!   `/v1/status`) over rustls with HTTP/1.1 and HTTP/2, reloading the CA
//!   state written by the operator CLI; plain-HTTP `/metrics`.
//! - [`store`]: the local-mode CA directory (state and node tokens, 0600).
//! - [`auth`]: node authentication (bootstrap tokens in local mode).
//! - [`client`]: the API client used by node agents, the CLI and tests.
//!
//! The CA logic itself (validation, issuance, rotation) is in the pure
//! `ca` crate; this crate only moves bytes and files.

#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;

pub use client::{CaClient, ClientError};
pub use server::{Clock, Config, FakeClock, Server, Source, SystemClock};
pub use store::DirStore;
