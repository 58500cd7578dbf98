//! The capture side: TCP connections that pods open to other pods, steered
//! here by the from-pod program (`bpf_sk_assign` onto this transparent
//! listener). The accepted socket's local address is the original
//! destination. Each connection becomes a tunnel through the destination
//! node's proxy with the source workload's certificate; if that fails the
//! pod's connection is reset (never forwarded in plaintext).
//!
//! Same-node destinations take the same path through this node's own HBONE
//! listener: identity and policy checks stay in one place, at the cost of a
//! local TLS hop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, info_span, warn};

use super::copy::{self, CopyError};
use super::inbound::Workloads;
use super::metrics::{PairMetrics, ProxyMetrics};
use super::outbound::{Outbound, OutboundError, Slot, Tunnel};
use crate::identity::SecretCache;

/// Binds a transparent capture listener: the IPv4 one at the configured
/// address, the IPv6 one at `[::1]` on the same port (where the datapath
/// steers IPv6 pod TCP). With `cc`, the accepted sockets use that
/// congestion control (see [`super::local_cc`]).
pub fn bind(addr: SocketAddr, cc: Option<&str>) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // IP_TRANSPARENT also applies to IPv6 sockets on Linux.
    setsockopt(&s, sockopt::IpTransparent, &true).map_err(std::io::Error::from)?;
    s.set_reuseaddr(true)?;
    // Accepted connections inherit TCP_NODELAY: one system call less on
    // each captured connection.
    setsockopt(&s, sockopt::TcpNoDelay, &true).map_err(std::io::Error::from)?;
    // Likewise the congestion control, set here once for all of them.
    if let Some(cc) = cc {
        super::local_cc::set(&s, &cc.into())?;
    }
    s.bind(addr)?;
    s.listen(4096)
}

/// The capture side.
pub struct Capture {
    cache: Arc<SecretCache>,
    workloads: Arc<dyn Workloads>,
    outbound: Arc<Outbound>,
    node: String,
    hbone_port: u16,
    metrics: Arc<ProxyMetrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

fn reset(s: TcpStream) {
    // Zero linger: close with RST, so the pod sees a refused connection.
    let _ = s.set_zero_linger();
    drop(s);
}

impl Capture {
    /// A capture side tunnelling through `outbound` to peers' `hbone_port`.
    pub fn new(
        cache: Arc<SecretCache>,
        workloads: Arc<dyn Workloads>,
        outbound: Arc<Outbound>,
        node: String,
        hbone_port: u16,
        metrics: Arc<ProxyMetrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self { cache, workloads, outbound, node, hbone_port, metrics, shutdown }
    }

    /// Serves `listener` until shutdown (then new pod connections fail
    /// closed in the datapath; open tunnels run on).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = super::stopped(&mut shutdown) => {
                    info!("capture draining: no new connections");
                    return;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "capture accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(dst) = tcp.local_addr() else { continue };
            let span = info_span!("capture", src = %peer, %dst);
            tokio::spawn(copy::task(span, self.clone().setup(tcp, peer, dst)));
        }
    }

    /// Opens the tunnel for a captured connection (runs inside its span);
    /// `None` once the connection has been reset instead.
    async fn setup(
        self: Arc<Self>,
        tcp: TcpStream,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<(copy::Tunnel, Captured)> {
        let Some(td) = self.cache.bundle().map(|b| b.trust_domain().clone()) else {
            warn!("no trust bundle yet; connection reset");
            reset(tcp);
            return None;
        };
        let from = self.workloads.by_ip(src.ip()).filter(|w| w.node.as_deref() == Some(self.node.as_str()));
        let Some(from) = from else {
            warn!("source is not a pod of this node; connection reset");
            reset(tcp);
            return None;
        };
        let Some(to) = self.workloads.by_ip(dst.ip()) else {
            warn!("destination is not a pod; connection reset");
            reset(tcp);
            return None;
        };
        let (Ok(src_id), Ok(dst_id)) = (from.identity(&td), to.identity(&td)) else {
            warn!("workload identity invalid; connection reset");
            reset(tcp);
            return None;
        };
        let Some(node_ip) = to.node.as_deref().and_then(|n| self.workloads.node_address(n)) else {
            warn!(target = %to.name, "destination node address unknown; connection reset");
            reset(tcp);
            return None;
        };
        let peer = SocketAddr::new(node_ip, self.hbone_port);
        let tunnel = match self.outbound.open(&src_id, src, &dst_id, dst, peer).await {
            Ok(t) => t,
            Err(e) => {
                warn!(source_identity = %src_id, destination_identity = %dst_id, error = %e, "tunnel failed; connection reset");
                self.metrics.fail(match e {
                    OutboundError::NoCertificate(_) => "no_certificate",
                    OutboundError::Tls(..) => "tls",
                    _ => "connect_failed",
                });
                reset(tcp);
                return None;
            }
        };
        let Tunnel { stream, slot, pair } = tunnel;
        pair.opened();
        // The pod's first bytes follow the CONNECT at once; bytes towards
        // the pod wait for the peer's 200.
        let copy = copy::client(tcp, stream);
        Some((copy, Captured { pair, _slot: slot }))
    }
}

/// What the capture side does when a tunnel's copy ends.
struct Captured {
    pair: Arc<PairMetrics>,
    /// The stream's slot on its pooled connection, freed with this.
    _slot: Slot,
}

impl copy::Finish for Captured {
    fn finish(self, tcp: TcpStream, totals: copy::Totals, result: Result<(), CopyError>) {
        let Captured { pair, _slot: slot } = self;
        drop(slot);
        pair.finished(totals.up, totals.down);
        let (src, dst) = (&pair.labels.source_identity, &pair.labels.destination_identity);
        match result {
            Ok(()) => {
                info!(source_identity = %src, destination_identity = %dst, bytes_sent = totals.up, bytes_received = totals.down, "tunnel closed");
            }
            Err(CopyError::Refused(status)) => {
                warn!(source_identity = %src, destination_identity = %dst, %status, "tunnel refused by the peer; connection reset");
                pair.refused_by_peer();
                reset(tcp);
            }
            Err(e) => {
                // Passed on as a reset: the pod must not mistake a broken
                // tunnel for an orderly close.
                debug!(error = %e, bytes_sent = totals.up, bytes_received = totals.down, "tunnel ended with an error; connection reset");
                reset(tcp);
            }
        }
    }
}
