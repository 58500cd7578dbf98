//! Prometheus metrics of the ingress gateway.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched Ingress rule host (`*` for a rule without host, `-` when
    /// nothing matched), never the raw Host header: that would let clients
    /// create unbounded label values.
    pub host: String,
    /// `namespace/ingress path`, or `-`.
    pub route: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

/// Labels of a latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// As in [`RequestLabels`].
    pub host: String,
    /// As in [`RequestLabels`].
    pub route: String,
}

/// Labels of a failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels of a rejected Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SecretLabels {
    /// `namespace/name`.
    pub secret: String,
    /// Why.
    pub reason: &'static str,
}

fn latency() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Gateway metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// Requests by host, route and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the backend's response headers, by host and route.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// TLS handshakes that failed, by reason.
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Backend connection attempts that failed (each retried elsewhere).
    pub backend_connect_failures: Counter,
    /// Secrets rejected (the previous certificate keeps serving).
    pub secret_rejections: Family<SecretLabels, Counter>,
    /// Connections refused because the connection limit was reached.
    pub connections_refused: Counter,
    /// Client connections open (WebSockets included).
    pub connections: Gauge,
    /// WebSocket connections open (switched and joined to a backend).
    pub websockets: Gauge,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_header_rejections: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency),
            handshake_failures: Family::default(),
            backend_connect_failures: Counter::default(),
            secret_rejections: Family::default(),
            connections_refused: Counter::default(),
            connections: Gauge::default(),
            websockets: Gauge::default(),
            proxy_header_rejections: Counter::default(),
        }
    }
}

impl GatewayMetrics {
    /// Registers everything under `ztunnel_gateway_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ztunnel_gateway");
        r.register("requests", "Requests by host, route and status class", self.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from request to the backend's response headers",
            self.latency.clone(),
        );
        r.register("tls_handshake_failures", "Failed TLS handshakes by reason", self.handshake_failures.clone());
        r.register(
            "backend_connect_failures",
            "Failed backend connection attempts",
            self.backend_connect_failures.clone(),
        );
        r.register(
            "secret_rejections",
            "TLS Secrets rejected; the previous certificate keeps serving",
            self.secret_rejections.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at the connection limit",
            self.connections_refused.clone(),
        );
        r.register("connections", "Client connections open, WebSockets included", self.connections.clone());
        r.register("websockets", "WebSocket connections open", self.websockets.clone());
        r.register(
            "proxy_header_rejections",
            "Connections closed for a missing, malformed or late PROXY protocol header",
            self.proxy_header_rejections.clone(),
        );
    }
}

/// `2xx`, `3xx`, ... for a status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
