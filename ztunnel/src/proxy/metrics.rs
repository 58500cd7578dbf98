//! Prometheus metrics of the proxy (registered on the agent's `/metrics`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a tunnelled connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    /// `outbound` (captured here) or `inbound` (delivered here).
    pub direction: &'static str,
    /// Source workload identity.
    pub source_identity: String,
    /// Destination workload identity.
    pub destination_identity: String,
}

/// Labels of a refusal or failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels of a certificate gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IdentityLabels {
    /// Workload identity.
    pub identity: String,
}

/// Proxy metrics.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Connections opened.
    pub opened: Family<ConnLabels, Counter>,
    /// Connections closed.
    pub closed: Family<ConnLabels, Counter>,
    /// Bytes from source to destination.
    pub bytes_sent: Family<ConnLabels, Counter>,
    /// Bytes from destination to source.
    pub bytes_received: Family<ConnLabels, Counter>,
    /// TLS handshakes that failed on the HBONE listener, by reason.
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Tunnels refused or failed, by reason (`policy`, `identity_mismatch`,
    /// `unknown_source`, `not_local`, `connect_failed`, ...).
    pub tunnel_failures: Family<ReasonLabels, Counter>,
    /// Seconds until each workload certificate expires.
    pub cert_expiry_seconds: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    /// Tunnels currently open (both directions).
    pub active: Gauge,
    /// HBONE connections currently open: `outbound` are the pooled client
    /// connections, `inbound` those accepted on the HBONE listener.
    pub hbone_connections: Family<DirectionLabels, Gauge>,
    /// Tunnels NetworkPolicy denies, let through in policy audit mode.
    pub policy_audits: Counter,
}

/// Labels of [`ProxyMetrics::hbone_connections`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
}

impl ProxyMetrics {
    /// Registers every metric under `ztunnel_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ztunnel");
        r.register("tcp_connections_opened", "Tunnelled TCP connections opened", self.opened.clone());
        r.register("tcp_connections_closed", "Tunnelled TCP connections closed", self.closed.clone());
        r.register("tcp_sent_bytes", "Bytes from source to destination through tunnels", self.bytes_sent.clone());
        r.register(
            "tcp_received_bytes",
            "Bytes from destination to source through tunnels",
            self.bytes_received.clone(),
        );
        r.register(
            "handshake_failures",
            "Failed TLS handshakes on the HBONE listener",
            self.handshake_failures.clone(),
        );
        r.register("tunnel_failures", "Tunnels refused or failed, by reason", self.tunnel_failures.clone());
        r.register(
            "certificate_expiry_seconds",
            "Seconds until a workload certificate expires",
            self.cert_expiry_seconds.clone(),
        );
        r.register("tunnels_active", "Tunnels currently open", self.active.clone());
        r.register(
            "hbone_connections",
            "HBONE connections open (outbound: pooled client connections; inbound: accepted)",
            self.hbone_connections.clone(),
        );
        r.register(
            "tunnel_policy_audits",
            "Tunnels NetworkPolicy denies, let through in policy audit mode",
            self.policy_audits.clone(),
        );
    }

    /// Counts an HBONE connection open until the returned guard is dropped.
    pub fn hbone_connection(&self, direction: &'static str) -> ConnectionGauge {
        let g = self.hbone_connections.get_or_create(&DirectionLabels { direction }).clone();
        g.inc();
        ConnectionGauge(g)
    }

    /// Counts a failure.
    pub fn fail(&self, reason: &'static str) {
        self.tunnel_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The counters of one identity pair and direction, looked up once.
    pub fn pair(&self, labels: ConnLabels) -> Arc<PairMetrics> {
        Arc::new(PairMetrics {
            opened: self.opened.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
            sent: self.bytes_sent.get_or_create(&labels).clone(),
            received: self.bytes_received.get_or_create(&labels).clone(),
            active: self.active.clone(),
            refused_by_peer: self.tunnel_failures.get_or_create(&ReasonLabels { reason: "refused_by_peer" }).clone(),
            labels,
        })
    }
}

/// One open HBONE connection in [`ProxyMetrics::hbone_connections`];
/// uncounted on drop.
#[derive(Debug)]
pub struct ConnectionGauge(Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The counters of one identity pair and direction, shared by every tunnel
/// between them (per HBONE connection on the inbound side, per pooled
/// connection on the outbound side): a tunnel holds one reference instead
/// of its own label strings, and counts without hashing labels.
#[derive(Debug)]
pub struct PairMetrics {
    /// The labels (also used in log lines).
    pub labels: ConnLabels,
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
    active: Gauge,
    refused_by_peer: Counter,
}

impl PairMetrics {
    /// Counts a tunnel opened (and active).
    pub fn opened(&self) {
        self.opened.inc();
        self.active.inc();
    }

    /// Counts a tunnel the peer refused (in `tunnel_failures`).
    pub fn refused_by_peer(&self) {
        self.refused_by_peer.inc();
    }

    /// Counts a tunnel's bytes and close.
    pub fn finished(&self, sent: u64, received: u64) {
        self.sent.inc_by(sent);
        self.received.inc_by(received);
        self.closed.inc();
        self.active.dec();
    }
}
