//! The mTLS half of the agent: workload certificates for the identities of
//! this node's pods (from the CA), and the HBONE listener that delivers
//! tunnelled flows to them.
//!
//! It keeps its own copy of the cluster state (fed the same changes as the
//! policy compiler) because the inbound side re-evaluates ingress policy
//! with the reference evaluator for each tunnel and looks up which
//! workload owns a source address.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ca::{SpiffeId, TrustDomain};
use policy::eval::{SideVerdict, evaluate_ingress};
use policy::{Cluster, Protocol};

use super::source::Change;
use crate::identity::manager::Timing;
use crate::identity::{IdentityManager, SecretCache};
use crate::proxy::inbound::{Inbound, InboundConfig, Workload, Workloads};
use crate::proxy::metrics::ProxyMetrics;

/// Settings of the mTLS side.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// CA API address (`host:port`).
    pub ca_address: String,
    /// Name in the CA's certificate.
    pub ca_server_name: String,
    /// Bootstrap trust bundle (the CA directory's `bundle.pem`).
    pub ca_bundle: PathBuf,
    /// This node's CA token file.
    pub ca_token: PathBuf,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// HBONE listen address (port 15008).
    pub hbone: SocketAddr,
    /// Deliver from the original source address (IP_TRANSPARENT).
    pub transparent: bool,
    /// Capture listener the datapath steers pod TCP to; `None` serves
    /// inbound tunnels only.
    pub capture: Option<std::net::SocketAddrV4>,
    /// Proxy worker threads. One keeps every hand-off of a tunnel on one
    /// core (lowest latency; on the 2-core benchmark machine also the most
    /// throughput); raise it on nodes with cores to spare.
    pub threads: usize,
    /// Policy audit mode (see `InboundConfig::policy_audit`).
    pub policy_audit: bool,
    /// TCP congestion control of the node-local legs (pod ↔ proxy): the
    /// proxy's capture and delivery sockets, and through the datapath the
    /// pods' sockets of captured and delivered connections; `None` leaves
    /// every socket on its own. See `local_cc` in the proxy module.
    pub local_cc: Option<String>,
}

/// Mark on steered packets, and the routing table that delivers them locally.
pub const REDIRECT_MARK: u32 = 0x7a00;
/// The mark bits ours are matched on (`ZT_MARK_MASK` in `ebpf/bpf/maps.h`).
const REDIRECT_MASK: u32 = 0xff00;
const REDIRECT_TABLE: &str = "122";

/// Routes packets carrying the redirect mark to the local stack (where
/// `bpf_sk_assign` hands them to the proxy's socket): `ip rule fwmark ->
/// table 122: local 0.0.0.0/0 dev lo`, and with `v6` the same for IPv6
/// (`local ::/0`). Idempotent.
fn install_redirect_routing(v6: bool) -> anyhow::Result<()> {
    let ip = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        std::process::Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))
    };
    let mark = format!("{REDIRECT_MARK:#x}/{REDIRECT_MASK:#x}");
    let (family, any) = if v6 { ("-6", "::/0") } else { ("-4", "0.0.0.0/0") };
    // Remove an existing rule first so restarts do not stack duplicates.
    while ip(&[family, "rule", "del", "fwmark", &mark, "lookup", REDIRECT_TABLE])?.status.success() {}
    let out = ip(&[family, "rule", "add", "fwmark", &mark, "lookup", REDIRECT_TABLE, "pref", "122"])?;
    anyhow::ensure!(out.status.success(), "ip {family} rule add: {}", String::from_utf8_lossy(&out.stderr).trim());
    let out = ip(&[family, "route", "replace", "local", any, "dev", "lo", "table", REDIRECT_TABLE])?;
    anyhow::ensure!(out.status.success(), "ip {family} route replace: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The cluster as the proxy sees it.
struct View {
    cluster: RwLock<Cluster>,
    /// Workloads looked up by address since the last change: every new
    /// tunnel looks up two on each node, and building one from the pod
    /// (four strings) cost more than the rest of a lookup. Emptied on every
    /// change, so an entry is never older than the state; bounded, because
    /// the addresses looked up come from the network (a `Forwarded` header).
    by_ip: std::sync::Mutex<HashMap<IpAddr, Arc<Workload>>>,
}

/// Most addresses [`View`] remembers between changes; past it, it starts
/// over.
const VIEW_CACHE_MAX: usize = 1 << 16;

impl View {
    fn new() -> Self {
        Self { cluster: RwLock::new(Cluster::new()), by_ip: Default::default() }
    }

    fn apply(&self, change: &Change) {
        let Ok(mut c) = self.cluster.write() else { return };
        match change {
            Change::Apply(o) => c.apply(o.clone()),
            Change::Delete(r) => {
                c.delete(r);
            }
        }
        // Still under the write lock: no lookup of the old state can fill
        // the cache after this.
        self.cache().clear();
    }

    /// The remembered lookups. A panic elsewhere while holding the lock
    /// leaves nothing half-done (each use is one map operation), so a
    /// poisoned lock is used as it is rather than failing every lookup.
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<Workload>>> {
        self.by_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Workloads for View {
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        if let Some(w) = self.cache().get(&ip) {
            return Some(w.clone());
        }
        let c = self.cluster.read().ok()?;
        let p = c.pod_by_ip(ip)?;
        let w = Arc::new(
            Workload::new(p.key.to_string(), p.key.namespace.to_string(), p.service_account.clone(), p.node.clone())
                .with_policy_audit(c.policy_audited(&p.key.namespace)),
        );
        // Filled under the state's read lock: a change (which takes the
        // write lock, then empties this) cannot slip in between.
        let mut cache = self.cache();
        if cache.len() >= VIEW_CACHE_MAX {
            cache.clear();
        }
        cache.insert(ip, w.clone());
        Some(w)
    }

    fn node_address(&self, node: &str) -> Option<IpAddr> {
        let c = self.cluster.read().ok()?;
        let n = c.node(node)?;
        n.addresses.iter().find(|a| a.is_ipv4()).or(n.addresses.first()).copied()
    }

    fn ingress(&self, src: IpAddr, dst: IpAddr, port: u16) -> Result<(), String> {
        let c = self.cluster.read().map_err(|_| "cluster state unavailable".to_string())?;
        match evaluate_ingress(&c, src, dst, port, Protocol::Tcp) {
            SideVerdict::Allowed(_) => Ok(()),
            SideVerdict::Denied { isolated_by } => {
                Err(isolated_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// The running mTLS side.
pub struct Mesh {
    /// The proxy's runtime (driven by its own thread).
    rt: tokio::runtime::Handle,
    node: String,
    td: TrustDomain,
    view: Arc<View>,
    manager: IdentityManager,
    /// Certificates and bundle (for the admin endpoint).
    pub cache: Arc<SecretCache>,
    metrics: Arc<ProxyMetrics>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Identities this node needs now.
    wanted: std::sync::Mutex<BTreeSet<SpiffeId>>,
}

impl Mesh {
    /// Connects to the CA and starts the HBONE listener (and the capture
    /// listener); registers the proxy metrics.
    pub fn start(
        cfg: &MeshConfig,
        node: &str,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let td = TrustDomain::new(&cfg.trust_domain)?;
        let bundle = std::fs::read_to_string(&cfg.ca_bundle)
            .with_context(|| format!("--ca-bundle {}", cfg.ca_bundle.display()))?;
        let token = std::fs::read_to_string(&cfg.ca_token)
            .with_context(|| format!("--ca-token {}", cfg.ca_token.display()))?
            .trim()
            .to_string();
        let client = ca_server::CaClient::new(&cfg.ca_address, &cfg.ca_server_name, &bundle, Some(token))?;
        // One thread (the default): a single-threaded runtime, so every
        // hand-off between a tunnel's tasks is a local queue push with no
        // cross-thread wake-up machinery; more threads: the work-stealing one.
        let rt = if cfg.threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.threads)
                .thread_name("ztunnel-proxy")
                .enable_all()
                .build()?
        };
        let cache = Arc::new(SecretCache::new());
        let view = Arc::new(View::new());
        let listener =
            rt.block_on(tokio::net::TcpListener::bind(cfg.hbone)).with_context(|| format!("--hbone {}", cfg.hbone))?;
        let metrics = Arc::new(ProxyMetrics::default());
        metrics.register(registry);
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let inbound = Arc::new(Inbound::new(
            cache.clone(),
            view.clone(),
            InboundConfig {
                node: node.to_string(),
                transparent: cfg.transparent,
                connect_timeout: Duration::from_secs(5),
                handshake_timeout: Duration::from_secs(10),
                policy_audit: cfg.policy_audit,
                local_cc: cfg.local_cc.as_ref().map(Into::into),
            },
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        rt.spawn(inbound.serve(listener));
        if let Some(addr) = cfg.capture {
            install_redirect_routing(false)?;
            let listener = {
                let _guard = rt.enter();
                crate::proxy::capture::bind(addr.into(), cfg.local_cc.as_deref())
                    .with_context(|| format!("--capture {addr}"))?
            };
            // IPv6 pod TCP is steered to [::1] on the same port. Without
            // IPv6 on the node it stays dropped (fail closed), as the
            // datapath finds no listener.
            let addr6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));
            let listener6 = install_redirect_routing(true).and_then(|()| {
                let _guard = rt.enter();
                crate::proxy::capture::bind(addr6, cfg.local_cc.as_deref())
                    .with_context(|| format!("IPv6 capture listener {addr6}"))
            });
            let listener6 = match listener6 {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "no IPv6 capture: IPv6 pod TCP is dropped while the mesh is on"
                    );
                    None
                }
            };
            let outbound = Arc::new(crate::proxy::outbound::Outbound::new(cache.clone(), metrics.clone()));
            let capture = Arc::new(crate::proxy::capture::Capture::new(
                cache.clone(),
                view.clone(),
                outbound,
                node.to_string(),
                cfg.hbone.port(),
                metrics.clone(),
                shutdown_rx.clone(),
            ));
            rt.spawn(capture.clone().serve(listener));
            if let Some(l) = listener6 {
                rt.spawn(capture.serve(l));
            }
        }
        let manager = {
            let _guard = rt.enter();
            IdentityManager::start(cache.clone(), Arc::new(client), Timing::default())
        };
        // Certificate expiry gauges, refreshed every second.
        {
            let (cache, metrics) = (cache.clone(), metrics.clone());
            rt.spawn(async move {
                loop {
                    let now = time::OffsetDateTime::now_utc();
                    metrics.cert_expiry_seconds.clear();
                    for c in cache.summary() {
                        metrics
                            .cert_expiry_seconds
                            .get_or_create(&crate::proxy::metrics::IdentityLabels { identity: c.identity })
                            .set((c.not_after - now).as_seconds_f64());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        tracing::info!(hbone = %cfg.hbone, ca = %cfg.ca_address, "mTLS side started");
        let handle = rt.handle().clone();
        // The runtime's driver: a current-thread runtime runs its tasks
        // only inside `block_on`.
        std::thread::Builder::new()
            .name("ztunnel-proxy".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        let rt = handle;
        Ok(Self { rt, node: node.to_string(), td, view, manager, cache, metrics, shutdown, wanted: Default::default() })
    }

    /// Applies a cluster change to the proxy's view.
    pub fn apply(&self, change: &Change) {
        self.view.apply(change);
    }

    /// Requests certificates for exactly the identities of this node's pods.
    pub fn refresh_identities(&self) {
        let wanted: BTreeSet<SpiffeId> = match self.view.cluster.read() {
            Ok(c) => c
                .pods()
                .filter(|p| p.node.as_deref() == Some(self.node.as_str()) && !p.host_network)
                .filter_map(|p| SpiffeId::new(&self.td, &p.key.namespace, &p.service_account).ok())
                .collect(),
            Err(_) => return,
        };
        let _guard = self.rt.enter();
        self.manager.set_wanted(&wanted);
        if let Ok(mut w) = self.wanted.lock() {
            *w = wanted;
        }
    }

    /// Ready when the trust bundle is in and every needed identity has a
    /// certificate.
    pub fn ready(&self) -> bool {
        self.cache.bundle().is_some()
            && self.wanted.lock().is_ok_and(|w| w.iter().all(|id| self.cache.cert(id).is_some()))
    }

    /// Graceful drain: stop accepting (new pod connections now fail closed
    /// in the datapath), GOAWAY on every HBONE connection, and wait up to
    /// `deadline` for open tunnels to finish.
    pub fn drain(&self, deadline: Duration) {
        self.shutdown.send_replace(true);
        let start = std::time::Instant::now();
        while self.metrics.active.get() > 0 && start.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.metrics.active.get();
        if left > 0 {
            tracing::warn!(tunnels = left, "drain deadline reached; closing the remaining tunnels");
        } else {
            tracing::info!("drained: no tunnels open");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(name: &str, sa: &str, ip: &str) -> Change {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{nodeName: node-1, serviceAccountName: {sa}}}\nstatus: {{podIP: {ip}}}\n"
        );
        let mut parsed = policy::manifest::parse_str("t.yaml", &yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        Change::Apply(parsed.objects.remove(0).1)
    }

    /// Lookups are remembered between changes and never outlive one: an
    /// address that moves to another pod, or goes away, is seen at once.
    #[test]
    fn workloads_by_address_follow_every_change() {
        let view = View::new();
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        assert!(view.by_ip(ip).is_none());
        view.apply(&pod("web", "web", "10.1.0.5"));
        let first = view.by_ip(ip).unwrap();
        assert_eq!((first.name.as_str(), first.service_account.as_str()), ("shop/web", "web"));
        assert!(Arc::ptr_eq(&first, &view.by_ip(ip).unwrap()), "not remembered");
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(first.identity(&td).unwrap().to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        // The pod is replaced by one of another service account.
        view.apply(&pod("web", "admin", "10.1.0.5"));
        assert_eq!(view.by_ip(ip).unwrap().service_account, "admin");
        // The address moves to another pod; the first one loses it.
        view.apply(&pod("web", "admin", "10.1.0.6"));
        view.apply(&pod("db", "db", "10.1.0.5"));
        assert_eq!(view.by_ip(ip).unwrap().name, "shop/db");
        let Change::Apply(db) = pod("db", "db", "10.1.0.5") else { unreachable!() };
        view.apply(&Change::Delete(db.reference()));
        assert!(view.by_ip(ip).is_none());
    }
}
