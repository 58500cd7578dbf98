//! The admin endpoint: `/ready` (200 once the first sync is done, 503
//! before) and `/metrics` (Prometheus text). A deliberately small HTTP/1.0
//! server on std sockets: one short-lived thread per request, bounded
//! request size, read timeouts, so a slow or garbage-speaking client can
//! neither block the agent nor grow its memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of flow decisions: fixed words, so counting a decision allocates
/// nothing (there are several per new connection).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Why.
    pub reason: &'static str,
}

/// Labels of datapath packet counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allowed` or `dropped`.
    pub verdict: String,
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Flow decisions (one per verdict event).
    pub flows: Family<FlowLabels, Counter>,
    /// Verdict events lost to a full event ring (the verdicts stand; the
    /// flow log and `flows` miss them).
    pub flow_events_lost: Counter,
    /// Packets through the classifiers (from the per-CPU counters).
    pub packets: Family<PacketLabels, Counter>,
    /// Bytes through the classifiers.
    pub bytes: Family<PacketLabels, Counter>,
    /// Policy syncs applied to the maps.
    pub syncs: Counter,
    /// Failed map writes (a full map): the affected traffic is denied.
    pub sync_errors: Counter,
    /// Rejected manifests.
    pub rejected_objects: Counter,
    /// Pods with classifiers attached.
    pub attached_pods: Gauge,
    /// 1 while the agent runs in policy audit mode.
    pub policy_audit: Gauge,
    /// Pods of this node whose namespace is in policy audit mode.
    pub policy_audit_pods: Gauge,
    /// Interfaces in the unknown-interface guard's judged set (-1: no
    /// guard).
    pub guard_judged: Gauge,
    /// Failed updates of the guard's set (new or replaced veths stay
    /// dropped until one succeeds).
    pub guard_sync_errors: Counter,
    /// Service frontends translated at the socket (-1: translation off).
    pub service_frontends: Gauge,
}

impl Metrics {
    /// Registers every metric under the `ztunnel` prefix.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ztunnel");
        r.register("flows", "Flow decisions of the datapath", self.flows.clone());
        r.register(
            "flow_events_lost",
            "Flow decisions not logged because the event ring was full",
            self.flow_events_lost.clone(),
        );
        r.register("datapath_packets", "Packets judged by the classifiers", self.packets.clone());
        r.register("datapath_bytes", "Bytes judged by the classifiers", self.bytes.clone());
        r.register("policy_syncs", "Policy changes written to the maps", self.syncs.clone());
        r.register("map_sync_errors", "Failed map writes (affected traffic is denied)", self.sync_errors.clone());
        r.register("rejected_objects", "Manifests rejected as invalid", self.rejected_objects.clone());
        r.register("attached_pods", "Pods with classifiers attached", self.attached_pods.clone());
        r.register(
            "policy_audit_mode",
            "1 while NetworkPolicy denials are reported, not enforced (--policy-audit)",
            self.policy_audit.clone(),
        );
        r.register(
            "policy_audit_pods",
            "Pods of this node whose namespace is in policy audit mode (label ztunnel.io/policy-audit=true)",
            self.policy_audit_pods.clone(),
        );
        r.register(
            "guard_judged_interfaces",
            "Pod interfaces the unknown-interface guard lets through (-1: no --pod-interface-prefix)",
            self.guard_judged.clone(),
        );
        r.register(
            "guard_sync_errors",
            "Failed updates of the unknown-interface guard (its set is stale until one succeeds)",
            self.guard_sync_errors.clone(),
        );
        r.register(
            "service_frontends",
            "Service frontends (cluster IP, port, protocol) translated to backends at the socket (-1: off)",
            self.service_frontends.clone(),
        );
    }
}

/// Shared state the server reads.
#[derive(Debug)]
pub struct State {
    /// Whether the first sync is done.
    pub ready: AtomicBool,
    /// The registry.
    pub registry: Mutex<Registry>,
    /// Workload certificates for `/config_dump` (serials and expiries,
    /// never keys), when the mTLS side runs.
    pub certs: Mutex<Option<Arc<crate::identity::SecretCache>>>,
    /// The ingress gateway's routes for `/config_dump`, when it runs.
    pub routes: Mutex<Option<RoutesDump>>,
    /// The Service frontends translated at the socket and their backends
    /// (`None`: translation off).
    pub services: Mutex<Option<serde_json::Value>>,
    /// Why `/ready` says 503.
    pub not_ready: Mutex<String>,
}

/// Produces the ingress routes section of `/config_dump`.
#[derive(Clone)]
pub struct RoutesDump(pub Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for RoutesDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoutesDump")
    }
}

const MAX_REQUEST: usize = 8 * 1024;
const MAX_CONCURRENT: usize = 32;

/// Starts the server on `addr` (returns the bound address).
pub fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            if active.load(Ordering::Relaxed) >= MAX_CONCURRENT {
                continue; // dropped: too many slow clients
            }
            active.fetch_add(1, Ordering::Relaxed);
            let (state, active) = (state.clone(), active.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &state);
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(bound)
}

fn handle(mut s: TcpStream, state: &State) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return respond(&mut s, "400 Bad Request", "text/plain", "bad request\n");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    match path {
        "/healthz" => respond(&mut s, "200 OK", "text/plain", "alive\n"),
        "/ready" | "/healthz/ready" => {
            if state.ready.load(Ordering::Relaxed) {
                respond(&mut s, "200 OK", "text/plain", "ready\n")
            } else {
                let why = state.not_ready.lock().map(|w| w.clone()).unwrap_or_default();
                respond(&mut s, "503 Service Unavailable", "text/plain", &why)
            }
        }
        "/metrics" => {
            let mut body = String::new();
            let encoded = match state.registry.lock() {
                Ok(r) => prometheus_client::encoding::text::encode(&mut body, &r).is_ok(),
                Err(_) => false,
            };
            if encoded {
                respond(&mut s, "200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", &body)
            } else {
                respond(&mut s, "500 Internal Server Error", "text/plain", "encoding failed\n")
            }
        }
        "/config_dump" => {
            let certs = state.certs.lock().ok().and_then(|c| c.clone());
            let routes = state.routes.lock().ok().and_then(|r| r.clone()).map(|f| (f.0)());
            let services = state.services.lock().ok().and_then(|s| s.clone());
            let body = serde_json::json!({
                "ingress": routes,
                "services": services,
                "serving_certificates": certs.as_ref().map(|c| c.serving_summary()).unwrap_or_default(),
                "secret_cache_version": certs.as_ref().map(|c| c.version()),
                "certificates": certs.as_ref().map(|c| c.summary()).unwrap_or_default(),
                "trust_bundle": certs.as_ref().and_then(|c| c.bundle()).map(|b| serde_json::json!({
                    "version": b.bundle.version,
                    "signer": b.bundle.signer,
                    "roots": b.bundle.roots.iter().map(|r| r.authority.clone()).collect::<Vec<_>>(),
                })),
            });
            respond(&mut s, "200 OK", "application/json", &format!("{body:#}\n"))
        }
        _ => respond(&mut s, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn ready_metrics_and_garbage() {
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let state = Arc::new(State {
            ready: AtomicBool::new(false),
            registry: Mutex::new(registry),
            certs: Mutex::new(None),
            routes: Mutex::new(None),
            services: Mutex::new(None),
            not_ready: Mutex::new("not synced yet\n".into()),
        });
        let addr = serve("127.0.0.1:0".parse().unwrap(), state.clone()).unwrap();
        assert!(get(addr, b"GET /ready HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 503"));
        state.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, b"GET /ready HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 200"));
        metrics.syncs.inc();
        metrics.flows.get_or_create(&FlowLabels { direction: "egress", verdict: "denied", reason: "denied" }).inc();
        let m = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(m.contains("ztunnel_policy_syncs_total 1"), "{m}");
        assert!(m.contains("ztunnel_flows_total{direction=\"egress\",verdict=\"denied\",reason=\"denied\"} 1"), "{m}");
        assert!(get(addr, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.0 405"));
        assert!(get(addr, &[b'A'; 9000]).starts_with("HTTP/1.0 400"));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 404"));
    }
}
