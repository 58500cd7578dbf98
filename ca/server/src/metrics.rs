//! Prometheus metrics of the CA server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Label: why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unauthenticated`, `bad_request`, `bad_csr`, `denied`, `internal`.
    pub reason: String,
}

/// Label: a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertLabel {
    /// Authority id.
    pub authority: String,
    /// `root` or `intermediate`.
    pub kind: String,
}

/// All metrics.
pub struct Metrics {
    /// Registry to encode.
    pub registry: Registry,
    /// Certificates issued.
    pub issued: Counter,
    /// Requests refused, by reason.
    pub denied: Family<ReasonLabel, Counter>,
    /// Time to answer a sign request.
    pub sign_seconds: Histogram,
    /// Seconds until each CA certificate expires (set with
    /// [`Metrics::set_expiry`]).
    pub expiry_seconds: Family<CertLabel, Gauge<f64, AtomicU64>>,
    /// The certificates `expiry_seconds` has a series for.
    expiry_labels: Mutex<Vec<CertLabel>>,
    /// Current bundle version.
    pub bundle_version: Gauge,
    /// Failed reloads of the CA state (the previous state keeps serving).
    pub reload_errors: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ztunnel_ca");
        let issued = Counter::default();
        registry.register("certificates_issued", "Workload certificates issued", issued.clone());
        let denied = Family::<ReasonLabel, Counter>::default();
        registry.register("requests_denied", "Sign requests refused, by reason", denied.clone());
        let sign_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("sign_duration_seconds", "Time to answer a sign request", sign_seconds.clone());
        let expiry_seconds = Family::<CertLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until a CA certificate expires",
            expiry_seconds.clone(),
        );
        let bundle_version = Gauge::default();
        registry.register("bundle_version", "Version of the trust bundle being served", bundle_version.clone());
        let reload_errors = Counter::default();
        registry.register("reload_errors", "Failed reloads of the CA state", reload_errors.clone());
        Self {
            registry,
            issued,
            denied,
            sign_seconds,
            expiry_seconds,
            expiry_labels: Mutex::new(Vec::new()),
            bundle_version,
            reload_errors,
        }
    }

    /// Sets the expiry gauges to exactly `values`: the new values first,
    /// then the series of certificates no longer in the state are removed.
    /// (Clearing the family and filling it again left a window in which a
    /// scrape saw no expiry at all, which an alert on the metric's absence
    /// would take for a dead CA.)
    pub fn set_expiry(&self, values: Vec<(CertLabel, f64)>) {
        let mut labels = self.expiry_labels.lock().unwrap_or_else(|e| e.into_inner());
        for (label, seconds) in &values {
            self.expiry_seconds.get_or_create(label).set(*seconds);
        }
        let live: Vec<CertLabel> = values.into_iter().map(|(l, _)| l).collect();
        for old in labels.iter().filter(|l| !live.contains(l)) {
            self.expiry_seconds.remove(old);
        }
        *labels = live;
    }

    /// Counts a refusal.
    pub fn deny(&self, reason: &str) {
        self.denied.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Prometheus text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{CertLabel, Metrics};

    fn label(authority: &str, kind: &str) -> CertLabel {
        CertLabel { authority: authority.into(), kind: kind.into() }
    }

    /// Scrapes while the gauges are refreshed (as every reload does) always
    /// see the series; a certificate no longer in the state loses its series.
    #[test]
    fn expiry_series_never_vanish_during_updates_and_stale_ones_go() {
        let m = std::sync::Arc::new(Metrics::new());
        m.set_expiry(vec![(label("a", "root"), 100.0), (label("a", "intermediate"), 50.0)]);
        let writer = {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    m.set_expiry(vec![(label("a", "root"), 100.0 - i as f64), (label("a", "intermediate"), 50.0)]);
                }
            })
        };
        while !writer.is_finished() {
            let text = m.encode();
            assert!(text.contains("authority=\"a\",kind=\"root\""), "{text}");
        }
        writer.join().unwrap();
        m.set_expiry(vec![(label("b", "root"), 10.0), (label("a", "root"), 1.0)]);
        let text = m.encode();
        assert!(text.contains("authority=\"b\",kind=\"root\""), "{text}");
        assert!(text.contains("authority=\"a\",kind=\"root\""), "{text}");
        assert!(!text.contains("kind=\"intermediate\""), "{text}");
    }
}
