//! The Ingress TLS gateway (`ztunnel gateway`): serves Kubernetes Ingress
//! objects of class `ztunnel`, terminating TLS at the edge with certificates
//! from `kubernetes.io/tls` Secrets, and proxies to Service endpoints.
//!
//! It runs as a pod like any workload. Its connections to backends are pod
//! traffic, so the node agent's datapath checks them against NetworkPolicy
//! and carries them in the mesh's mTLS tunnels under the gateway's own
//! SPIFFE identity; backends see the gateway pod as the source.
//!
//! - [`model`]: the objects it reads, decoded and validated (pure).
//! - [`routes`]: the route table and the matching rules (pure).
//! - [`certs`]: Secret validation and SNI certificate selection.
//! - [`server`], [`pool`]: listeners, limits and the reverse proxy.
//! - [`metrics`], [`accesslog`]: observability.

pub mod accesslog;
pub mod certs;
mod io;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod proxy_protocol;
pub mod routes;
pub mod server;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use self::metrics::SecretLabels;
use self::model::{GatewayKinds, GatewayObject, GatewayRef};
use self::routes::{ClassSelector, RouteTable};
use self::server::{Limits, Shared};
use crate::agent::source::Change;
use crate::identity::SecretCache;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Off.
    Off,
    /// Standard output.
    Stdout,
    /// A file (appended).
    File(PathBuf),
}

/// Gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where cluster objects come from.
    pub source: crate::kube_source::SourceSpec,
    /// Kubernetes mode: namespaces to read TLS Secrets from (empty: all).
    pub secret_namespaces: Vec<String>,
    /// HTTPS listener.
    pub https: Option<SocketAddr>,
    /// Plain-HTTP listener.
    pub http: Option<SocketAddr>,
    /// Redirect plain HTTP for TLS hosts to this public HTTPS port (`None`:
    /// serve plain HTTP for every host).
    pub redirect_port: Option<u16>,
    /// Admin endpoint.
    pub admin: Option<SocketAddr>,
    /// Which Ingresses to serve.
    pub selector: ClassSelector,
    /// Secret (`namespace/name`) for handshakes no Ingress covers.
    pub default_secret: Option<String>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Access log.
    pub access_log: AccessLogTarget,
    /// How often to look for manifest changes.
    pub poll: Duration,
    /// Worker threads.
    pub threads: usize,
    /// `Strict-Transport-Security` value for HTTPS responses (`None`: off).
    pub hsts: Option<String>,
    /// CA certificates (PEM) that `https` backends' certificates must chain
    /// to (`None`: such backends answer 502).
    pub backend_ca: Option<std::path::PathBuf>,
}

/// The objects the gateway knows, and what it last reported.
struct Store {
    objects: BTreeMap<GatewayRef, GatewayObject>,
    problems: BTreeSet<String>,
}

impl Store {
    /// Applies changes: Secrets are validated into the secret cache (a bad
    /// one is logged, counted and leaves the previous certificate serving),
    /// and the route table is rebuilt.
    fn apply(&mut self, changes: Vec<Change<GatewayObject, GatewayRef>>, shared: &Shared, selector: &ClassSelector) {
        if changes.is_empty() {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        for c in changes {
            match c {
                Change::Apply(o) => {
                    if let GatewayObject::Secret(s) = &o {
                        match certs::load(s, now) {
                            Ok(cert) => {
                                info!(secret = %s.key, serial = %cert.serial, not_after = %cert.not_after, "TLS certificate loaded");
                                shared.cache.put_serving(cert);
                            }
                            Err(e) => {
                                warn!(secret = %s.key, reason = %e, "TLS Secret rejected; the previous certificate (if any) keeps serving");
                                shared
                                    .metrics
                                    .secret_rejections
                                    .get_or_create(&SecretLabels { secret: s.key.to_string(), reason: e.reason() })
                                    .inc();
                            }
                        }
                    }
                    self.objects.insert(o.reference(), o);
                }
                Change::Delete(r) => {
                    if let GatewayRef::Secret(k) = &r {
                        shared.cache.remove_serving(&k.to_string());
                    }
                    self.objects.remove(&r);
                }
            }
        }
        let table = RouteTable::build(self.objects.values(), selector);
        let problems: BTreeSet<String> = table.problems.iter().cloned().collect();
        for p in problems.difference(&self.problems) {
            warn!(problem = %p, "ingress configuration");
        }
        self.problems = problems;
        info!(ingresses = table.served.len(), routes = table.labels.len(), "routes updated");
        shared.set_routes(table);
    }
}

/// `--backend-ca`, re-read when the file changes (a mounted ConfigMap is
/// replaced by a symlink swap: the stamp follows the link), so operators
/// rotate backend CAs without restarting the gateway.
struct BackendCa {
    path: std::path::PathBuf,
    /// Size and modification time of what was last read.
    stamp: Option<(u64, std::time::SystemTime)>,
}

impl BackendCa {
    fn new(path: &std::path::Path) -> Self {
        Self { path: path.to_path_buf(), stamp: None }
    }

    fn current_stamp(&self) -> Option<(u64, std::time::SystemTime)> {
        std::fs::metadata(&self.path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)))
    }

    fn load(&mut self, shared: &Shared) -> anyhow::Result<()> {
        let stamp = self.current_stamp();
        let pem = std::fs::read(&self.path)?;
        // Remembered even when the contents are bad, so a bad file is
        // reported once, not at every poll.
        self.stamp = stamp;
        shared.set_backend_ca(&pem)
    }

    fn reload_if_changed(&mut self, shared: &Shared) {
        if self.current_stamp() == self.stamp {
            return;
        }
        match self.load(shared) {
            Ok(()) => tracing::info!(path = %self.path.display(), "backend CA certificates reloaded"),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "backend CA file rejected; the previous certificates stay in use"
            ),
        }
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let fallback = certs::fallback_certificate().map_err(|e| anyhow::anyhow!("default certificate: {e}"))?;
    let log = match &cfg.access_log {
        AccessLogTarget::Off => accesslog::AccessLog::off(),
        AccessLogTarget::Stdout => accesslog::AccessLog::stdout(),
        AccessLogTarget::File(p) => {
            accesslog::AccessLog::file(p).with_context(|| format!("--access-log {}", p.display()))?
        }
    };
    let cache = Arc::new(SecretCache::new());
    let shared = Arc::new(
        Shared::new(cache.clone(), fallback, cfg.default_secret.clone(), cfg.limits.clone(), cfg.redirect_port, log)
            .with_hsts(cfg.hsts.as_deref())?,
    );
    // Read once before serving (a bad file stops the start), then watched.
    let mut backend_ca = cfg.backend_ca.as_deref().map(BackendCa::new);
    if let Some(ca) = &mut backend_ca {
        ca.load(&shared).with_context(|| format!("--backend-ca {}", ca.path.display()))?;
    }

    // The first sync happens before any listener accepts, so the first
    // client already sees every route and certificate.
    cfg.source.validate()?;
    let mut source = crate::kube_source::open::<GatewayKinds>(
        &cfg.source,
        crate::kube_source::gateway_resources(&cfg.secret_namespaces),
    )?;
    let mut store = Store { objects: BTreeMap::new(), problems: BTreeSet::new() };
    let first = source.poll();
    report(&first.errors);
    store.apply(first.changes, &shared, &cfg.selector);

    let mut registry = Registry::default();
    shared.metrics.register(&mut registry);
    let admin_state = Arc::new(crate::agent::admin::State {
        ready: AtomicBool::new(false),
        registry: Mutex::new(registry),
        certs: Mutex::new(Some(cache.clone())),
        routes: Mutex::new(None),
        services: Mutex::new(None),
        not_ready: Mutex::new("starting\n".into()),
    });
    if let Some(addr) = cfg.admin {
        crate::agent::admin::serve(addr, admin_state.clone()).with_context(|| format!("--admin {addr}"))?;
    }

    let routes_view = shared.clone();
    *admin_state.routes.lock().map_err(|_| anyhow::anyhow!("admin state poisoned"))? =
        Some(crate::agent::admin::RoutesDump(Arc::new(move || {
            let t = routes_view.routes();
            serde_json::json!({"served": t.served, "routes": t.describe(), "problems": t.problems})
        })));
    let poll_shared = shared.clone();
    let selector = cfg.selector.clone();
    let poll = cfg.poll;
    std::thread::Builder::new().name("gateway-source".into()).spawn(move || {
        loop {
            std::thread::sleep(poll);
            let p = source.poll();
            report(&p.errors);
            store.apply(p.changes, &poll_shared, &selector);
            if let Some(ca) = &mut backend_ca {
                ca.reload_if_changed(&poll_shared);
            }
        }
    })?;

    // One single-threaded runtime per serving thread, each with its own
    // SO_REUSEPORT listeners; the kernel spreads connections across them.
    let tls = server::tls_config(&shared).context("TLS configuration")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let mut workers = Vec::new();
    for i in 0..cfg.threads.max(1) {
        let (shared, tls, stop_rx, bound_tx) = (shared.clone(), tls.clone(), stop_rx.clone(), bound_tx.clone());
        let (https, http) = (cfg.https, cfg.http);
        workers.push(std::thread::Builder::new().name(format!("gateway-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(anyhow::anyhow!("tokio runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let listeners = (|| {
                    let https = https.map(|a| listen(a).with_context(|| format!("--https {a}"))).transpose()?;
                    let http = http.map(|a| listen(a).with_context(|| format!("--http {a}"))).transpose()?;
                    Ok::<_, anyhow::Error>((https, http))
                })();
                let (https, http) = match listeners {
                    Ok(l) => {
                        let _ = bound_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                server::serve(shared, tls, https, http, stop_rx, Duration::from_secs(10)).await;
            });
        })?);
    }
    drop(bound_tx);
    for r in bound_rx.iter().take(workers.len()) {
        if let Err(e) = r {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    }
    admin_state.ready.store(true, Ordering::Relaxed);
    info!(https = ?cfg.https, http = ?cfg.http, threads = workers.len(), "gateway serving");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(wait_for_signal());
    info!("signal received: draining");
    admin_state.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// A listener that shares its address with the other serving threads.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn report(errors: &[policy::ManifestError]) {
    for e in errors {
        warn!(error = %e, "manifest rejected");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process ends on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
