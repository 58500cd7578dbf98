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
//! - [`local_cc`]: the congestion control of the legs between pods and
//!   the proxy.
//! - [`session`] and [`record`]: the HBONE connections' TLS — rustls'
//!   handshake, then a record layer that encrypts and decrypts where the
//!   bytes already are.

pub mod capture;
pub mod copy;
pub mod inbound;
pub mod local_cc;
pub mod metrics;
pub mod mux;
pub mod outbound;
pub mod record;
pub mod session;
pub mod tls;

/// HTTP/2 settings both sides of a tunnel use: large windows and frames so
/// one bulk stream is not throttled by flow control on a fast node link.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Connection-level receive window.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame either side accepts.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest header block accepted (CONNECT requests and answers are tiny).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Keepalive: a PING this often while an HBONE connection is open...
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// ...answered within this, or the connection is dropped.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP/2 settings of an HBONE connection that accepts `max_streams`
/// streams from its peer.
pub fn mux_config(max_streams: u32) -> hbone::Config {
    hbone::Config {
        max_concurrent_streams: max_streams,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_frame: MAX_FRAME,
        max_header_list: MAX_HEADER_LIST,
    }
}

/// Pings the peer every [`KEEPALIVE_INTERVAL`]; resolves (with the reason)
/// when a ping is not answered within [`KEEPALIVE_TIMEOUT`] or the
/// connection is gone.
pub async fn keepalive(mux: mux::Mux) -> &'static str {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, mux.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return "connection closed",
            Err(_) => return "keepalive timed out",
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across awaits.
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;
