//! The gateway's listeners: TLS (HTTP/1.1 and HTTP/2 by ALPN) and plain
//! HTTP (redirects to HTTPS for TLS hosts), and the reverse proxy to
//! backends (routing here, the backend side in `upstream`).
//!
//! Limits that keep slow or hostile clients from exhausting the gateway:
//! a connection cap (excess connections are closed at accept), a TLS
//! handshake timeout, an HTTP/1 header timeout (hyper starts it whenever it
//! waits for a request, so it also bounds idle keep-alive), a header size
//! cap (431), a per-connection HTTP/2 stream cap, an idle timeout for
//! connections with no request in flight, and a request timeout to the
//! backend's response headers (504).
//!
//! WebSocket upgrades (HTTP/1.1) are forwarded; a backend's 101 joins the
//! client and backend connections byte for byte (see `switch`). Behind a
//! load balancer each connection may start with a PROXY protocol header
//! (`--proxy-protocol`), which then names the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::accesslog::{AccessLog, Entry};
use super::certs::SniResolver;
use super::io::{IdleIo, Prefixed, read_proxy_header};
use super::metrics::{GatewayMetrics, ReasonLabels, RequestLabels, RouteLabels, status_class};
use super::pool::{BackendConnectors, Pool, PooledBody};
use super::routes::{BackendProtocol, RouteTable, normalize_host};
use super::upstream::{forward, has_token, is_websocket_switch, is_websocket_upgrade, strip_hop_by_hop};
use crate::identity::SecretCache;
use crate::identity::cache::ServingCert;

/// Response body: a backend's streamed body or a short local one.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/1 request headers (and idle keep-alive).
    pub header_timeout: Duration,
    /// A connection with no request in flight.
    pub idle_timeout: Duration,
    /// Request to the backend's response headers.
    pub request_timeout: Duration,
    /// TCP connect to a backend endpoint.
    pub connect_timeout: Duration,
    /// Request header bytes (431 above).
    pub max_header_bytes: usize,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// Every connection starts with a PROXY protocol header (within the
    /// handshake timeout) naming the client.
    pub proxy_protocol: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_streams: 128,
            proxy_protocol: false,
        }
    }
}

/// State shared by the listeners, the SNI resolver and the source loop.
pub struct Shared {
    routes: RwLock<Arc<Active>>,
    /// The secret cache (Ingress Secrets by `namespace/name`).
    pub cache: Arc<SecretCache>,
    fallback: Arc<ServingCert>,
    default_secret: Option<String>,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
    pools: std::sync::Mutex<Vec<std::sync::Weak<Pool>>>,
    log: AccessLog,
    pub(super) limits: Limits,
    redirect: Option<u16>,
    unmatched: RouteMetrics,
    /// Places under `--max-connections`, shared by every serving thread.
    permits: Arc<Semaphore>,
    /// `Strict-Transport-Security` for HTTPS responses.
    hsts: Option<HeaderValue>,
    /// TLS client for `https` backends (trusting `--backend-ca`, replaced
    /// when the file changes); `None`: such backends answer 502.
    backend_tls: RwLock<Option<BackendConnectors>>,
    /// An `https` backend was met without `--backend-ca` (said once).
    pub(super) warned_no_backend_ca: std::sync::atomic::AtomicBool,
}

/// Metric handles of one route, resolved when the table is installed so
/// a request touches no label maps.
#[derive(Debug, Clone)]
struct RouteMetrics {
    latency: prometheus_client::metrics::histogram::Histogram,
    classes: [prometheus_client::metrics::counter::Counter; 5],
}

impl RouteMetrics {
    fn new(m: &GatewayMetrics, host: &str, route: &str) -> Self {
        let class = |status: &'static str| {
            m.requests.get_or_create(&RequestLabels { host: host.into(), route: route.into(), status }).clone()
        };
        Self {
            latency: m.latency.get_or_create(&RouteLabels { host: host.into(), route: route.into() }).clone(),
            classes: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
        }
    }

    fn observe(&self, status: u16, elapsed: Duration) {
        let i = match status_class(status) {
            "1xx" => 0,
            "2xx" => 1,
            "3xx" => 2,
            "4xx" => 3,
            _ => 4,
        };
        self.classes[i].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// The installed route table and its routes' metric handles.
#[derive(Debug, Default)]
pub struct Active {
    table: RouteTable,
    metrics: Vec<RouteMetrics>,
}

impl std::ops::Deref for Active {
    type Target = RouteTable;
    fn deref(&self) -> &RouteTable {
        &self.table
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("limits", &self.limits).finish()
    }
}

impl Shared {
    /// New state with an empty route table. `redirect`: the public HTTPS
    /// port that plain-HTTP requests for TLS hosts are redirected to.
    pub fn new(
        cache: Arc<SecretCache>,
        fallback: ServingCert,
        default_secret: Option<String>,
        limits: Limits,
        redirect: Option<u16>,
        log: AccessLog,
    ) -> Self {
        let metrics = Arc::new(GatewayMetrics::default());
        Self {
            routes: RwLock::new(Arc::new(Active::default())),
            cache,
            fallback: Arc::new(fallback),
            default_secret,
            unmatched: RouteMetrics::new(&metrics, "-", "-"),
            metrics,
            pools: std::sync::Mutex::new(Vec::new()),
            log,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            redirect,
            hsts: None,
            backend_tls: RwLock::new(None),
            warned_no_backend_ca: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Speaks TLS to `https` backends from now on, trusting the CA
    /// certificates in `ca_pem` (PEM; offers HTTP/1.1 by ALPN). Connections
    /// already pooled keep the trust they were made with. On error the
    /// previous roots stay.
    pub fn set_backend_ca(&self, ca_pem: &[u8]) -> anyhow::Result<()> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| anyhow::anyhow!("not PEM certificates: {e}"))?;
            roots.add(cert).map_err(|e| anyhow::anyhow!("not a usable CA certificate: {e}"))?;
        }
        anyhow::ensure!(!roots.is_empty(), "no CA certificate in it");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http1 = tokio_rustls::TlsConnector::from(Arc::new(cfg.clone()));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = BackendConnectors { any: tokio_rustls::TlsConnector::from(Arc::new(cfg)), http1 };
        match self.backend_tls.write() {
            Ok(mut g) => *g = Some(connector),
            Err(e) => *e.into_inner() = Some(connector),
        }
        Ok(())
    }

    pub(super) fn backend_connector(&self) -> Option<BackendConnectors> {
        match self.backend_tls.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Adds `Strict-Transport-Security: value` to every HTTPS response that
    /// does not carry one from its backend.
    pub fn with_hsts(mut self, value: Option<&str>) -> Result<Self, http::header::InvalidHeaderValue> {
        self.hsts = value.map(HeaderValue::from_str).transpose()?;
        Ok(self)
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<Active> {
        match self.routes.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Swaps in a new route table; requests and handshakes from now on use
    /// it, those in flight finish with the old one.
    pub fn set_routes(&self, table: RouteTable) {
        let metrics = table.labels.iter().map(|(h, r)| RouteMetrics::new(&self.metrics, h, r)).collect();
        let table = Arc::new(Active { table, metrics });
        let endpoints: std::collections::HashSet<SocketAddr> = table.endpoints().collect();
        match self.routes.write() {
            Ok(mut g) => *g = table,
            Err(e) => *e.into_inner() = table,
        }
        let mut pools = match self.pools.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        pools.retain(|p| p.strong_count() > 0);
        for p in pools.iter().filter_map(std::sync::Weak::upgrade) {
            p.retain(&|a| endpoints.contains(a));
        }
    }

    /// A backend connection pool for one serving thread.
    fn new_pool(&self) -> Arc<Pool> {
        let pool = Arc::new(Pool::default());
        match self.pools.lock() {
            Ok(mut g) => g.push(Arc::downgrade(&pool)),
            Err(e) => e.into_inner().push(Arc::downgrade(&pool)),
        }
        pool
    }

    /// The certificate for handshakes no Secret covers.
    pub fn default_cert(&self) -> Arc<ServingCert> {
        self.default_secret.as_deref().and_then(|s| self.cache.serving(s)).unwrap_or_else(|| self.fallback.clone())
    }
}

/// Builds the TLS configuration: TLS 1.2 and 1.3, AEAD suites only (the
/// provider offers no others), ALPN h2 and http/1.1, session tickets. One
/// configuration serves every thread, so a session resumes on any of them.
pub fn tls_config(shared: &Arc<Shared>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { shared: shared.clone() }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order (AES-GCM, then ChaCha20; TLS 1.3 first) rather than the
    // client's: a client cannot talk the gateway into a weaker choice.
    cfg.ignore_client_order = true;
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
    Ok(Arc::new(cfg))
}

/// Runs the listeners until `shutdown` turns true, then drains connections
/// for up to `drain`. Each serving thread runs this on its own
/// single-threaded runtime with its own listeners (`SO_REUSEPORT`) and its
/// own backend pool, like nginx workers: a request and its backend
/// exchange never cross threads.
pub async fn serve(
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    https: Option<TcpListener>,
    http: Option<TcpListener>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = shared.permits.clone();
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let builder = Arc::new(http_builder(&shared.limits));
    let pool = shared.new_pool();
    let mut tasks = Vec::new();
    for (listener, tls) in [(https, true), (http, false)] {
        let Some(listener) = listener else { continue };
        let (shared, acceptor, permits, graceful, builder, pool) =
            (shared.clone(), acceptor.clone(), permits.clone(), graceful.clone(), builder.clone(), pool.clone());
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => break,
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    shared.metrics.connections_refused.inc();
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (shared, acceptor, graceful, builder, pool) =
                    (shared.clone(), acceptor.clone(), graceful.clone(), builder.clone(), pool.clone());
                tokio::spawn(async move {
                    let slot = ConnSlot::new(permit, shared.metrics.clone());
                    let info = ConnInfo {
                        client: peer,
                        client_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
                        client_text: peer.to_string().into(),
                        tls,
                        inflight: Arc::new(AtomicUsize::new(0)),
                        pool,
                        slot: std::sync::Mutex::new(Some(slot)),
                    };
                    // The slot is released when the last request of the
                    // connection is done with it, or, for a connection
                    // upgraded to a WebSocket, when that ends.
                    connection(shared.clone(), tcp, info, tls.then_some(acceptor), &graceful, &builder).await;
                });
            }
        }));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    for t in tasks {
        let _ = t.await;
    }
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
    } else {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// What requests on one connection share.
#[derive(Debug)]
struct ConnInfo {
    client: SocketAddr,
    /// The client's address as a header value, made once per connection.
    client_ip: Option<HeaderValue>,
    /// The client's address for the access log, made once per connection.
    client_text: Arc<str>,
    tls: bool,
    inflight: Arc<AtomicUsize>,
    pool: Arc<Pool>,
    /// The connection's place under the connection limit; an upgraded
    /// connection takes it along.
    slot: std::sync::Mutex<Option<ConnSlot>>,
}

/// A client connection's place under `--max-connections` and in the open
/// connections gauge, held for as long as the client's socket is open: by
/// the HTTP connection, then by its WebSocket if it upgrades.
#[derive(Debug)]
struct ConnSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<GatewayMetrics>,
}

impl ConnSlot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, metrics: Arc<GatewayMetrics>) -> Self {
        metrics.connections.inc();
        Self { _permit: permit, metrics }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

fn handshake_reason(e: &std::io::Error) -> &'static str {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match t {
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => "invalid_message",
            rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
            _ => "other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "eof",
        _ => "other",
    }
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    info: ConnInfo,
    acceptor: Option<TlsAcceptor>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    builder: &auto::Builder<TokioExecutor>,
) {
    let mut info = info;
    let tcp = if shared.limits.proxy_protocol {
        let read = tokio::time::timeout(shared.limits.handshake_timeout, read_proxy_header(tcp)).await;
        match read {
            Ok(Ok((io, header))) => {
                if let Some(client) = header.source {
                    info.client = client;
                    info.client_ip = HeaderValue::from_str(&client.ip().to_string()).ok();
                    info.client_text = client.to_string().into();
                }
                io
            }
            Ok(Err(e)) => {
                debug!(balancer = %info.client, error = %e, "no valid PROXY protocol header");
                shared.metrics.proxy_header_rejections.inc();
                return;
            }
            Err(_) => {
                debug!(balancer = %info.client, "no PROXY protocol header within the handshake timeout");
                shared.metrics.proxy_header_rejections.inc();
                return;
            }
        }
    } else {
        Prefixed::new(tcp, Bytes::new())
    };
    let (peer, inflight) = (info.client, info.inflight.clone());
    let info = Arc::new(info);
    let svc = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| handle(shared.clone(), info.clone(), req))
    };
    let idle = shared.limits.idle_timeout;
    let result = match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = handshake_reason(&e);
                    debug!(client = %peer, reason, error = %e, "TLS handshake failed");
                    shared.metrics.handshake_failures.get_or_create(&ReasonLabels { reason }).inc();
                    return;
                }
                Err(_) => {
                    shared.metrics.handshake_failures.get_or_create(&ReasonLabels { reason: "timeout" }).inc();
                    return;
                }
            };
            let io = TokioIo::new(IdleIo::new(tls, idle, inflight));
            graceful.watch(builder.serve_connection_with_upgrades(io, svc).into_owned()).await
        }
        None => {
            let io = TokioIo::new(IdleIo::new(tcp, idle, inflight));
            graceful.watch(builder.serve_connection_with_upgrades(io, svc).into_owned()).await
        }
    };
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "connection ended with an error");
    }
}

struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn local(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())).map_err(|n| match n {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

async fn handle(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    info.inflight.fetch_add(1, Ordering::Relaxed);
    let _guard = InflightGuard(info.inflight.clone());
    let start = Instant::now();
    // The Host header as is (HTTP/1.1, no copy), else `:authority` (HTTP/2).
    let authority = match req.headers().get(header::HOST) {
        Some(h) if req.version() != Version::HTTP_2 => Some(h.clone()),
        _ => req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
    .filter(|h| h.to_str().is_ok());
    let mut entry = shared.log.enabled().then(|| Entry {
        client: info.client,
        client_text: Some(info.client_text.clone()),
        tls: info.tls,
        method: req.method().clone(),
        host: authority.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default().to_string(),
        path: req.uri().path_and_query().cloned(),
        version: req.version(),
        ..Entry::default()
    });
    let active = shared.routes();
    let (mut response, route) = route(&shared, &active, &info, req, authority, &mut entry).await;
    if info.tls
        && let Some(hsts) = &shared.hsts
        && !response.headers().contains_key(header::STRICT_TRANSPORT_SECURITY)
    {
        response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    route.and_then(|id| active.metrics.get(id)).unwrap_or(&shared.unmatched).observe(status, elapsed);
    if let Some(mut e) = entry {
        e.status = status;
        e.duration = elapsed;
        shared.log.write(&e);
    }
    Ok(response)
}

/// Routes and proxies one request; returns the response and the route's
/// id, if one matched.
async fn route(
    shared: &Arc<Shared>,
    active: &Active,
    info: &ConnInfo,
    mut req: Request<Incoming>,
    authority: Option<HeaderValue>,
    entry: &mut Option<Entry>,
) -> (Response<Body>, Option<usize>) {
    let Some((authority, text)) = authority.as_ref().and_then(|h| Some((h.clone(), h.to_str().ok()?))) else {
        return (local(StatusCode::BAD_REQUEST, "missing Host\n"), None);
    };
    let host = normalize_host(text);
    if !info.tls
        && let Some(port) = shared.redirect
        && active.tls_for(&host).is_some()
    {
        let port = if port == 443 { String::new() } else { format!(":{port}") };
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{port}{pq}");
        let mut r = local(StatusCode::PERMANENT_REDIRECT, "redirecting to HTTPS\n");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return (r, None);
    }
    let Some(m) = active.lookup(&host, req.uri().path()) else {
        return (local(StatusCode::NOT_FOUND, "no route\n"), None);
    };
    if let Some(e) = entry.as_mut() {
        e.route = Some(m.label.clone());
        e.backend = Some(m.target.label.clone());
    }
    if m.target.endpoints.is_empty() {
        return (local(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoints\n"), Some(m.id));
    }

    // Taken before the request goes on: the client's side of a WebSocket
    // switch, completed once the 101 has been written to the client.
    // (Not to an h2c backend: WebSockets over HTTP/2 are not offered.)
    let h2c = m.target.protocol == BackendProtocol::H2c;
    let client_upgrade = (!h2c && is_websocket_upgrade(&req)).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // gRPC asks for trailers with `TE: trailers`, the one TE value HTTP/2
    // allows; kept for h2c backends, which may insist on it, and for
    // `https` ones, which may speak HTTP/2 (to an HTTP/1.1 one it means the
    // same: trailers are welcome).
    let trailers =
        (h2c || m.target.protocol == BackendProtocol::Https) && has_token(&parts.headers, header::TE, "trailers");
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    if client_upgrade.is_some() {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", info.client.ip())).ok(),
        None => info.client_ip.clone(),
    };
    if let Some(v) = xff {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(if info.tls { "https" } else { "http" }));
    h.insert("x-forwarded-host", authority.clone());
    h.insert(header::HOST, authority);
    parts.version = Version::HTTP_11;
    parts.uri = parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let req = Request::from_parts(parts, body);

    let forwarded =
        tokio::time::timeout(shared.limits.request_timeout, forward(shared, &info.pool, &m.target, req, entry)).await;
    let response = match forwarded {
        Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => match client_upgrade {
            Some(client) if is_websocket_switch(resp.headers()) => switch(shared, info, client, resp),
            _ => {
                debug!(backend = %m.target.label, "backend switched protocols unasked or not to a WebSocket");
                local(StatusCode::BAD_GATEWAY, "bad gateway\n")
            }
        },
        Ok(Ok(mut resp)) => {
            strip_hop_by_hop(resp.headers_mut());
            resp.map(BodyExt::boxed_unsync)
        }
        Ok(Err(status)) => local(
            status,
            if status == StatusCode::SERVICE_UNAVAILABLE { "no endpoint reachable\n" } else { "bad gateway\n" },
        ),
        Err(_) => local(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
    };
    (response, Some(m.id))
}

/// Answers the client with the backend's 101 and, once both connections
/// have switched, copies bytes between them until both directions end (or
/// the client connection's idle timeout passes with no byte either way).
/// The backend connection belongs to the WebSocket from here on, never to
/// the pool; the client connection's slot under the connection limit moves
/// to the WebSocket.
fn switch(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    client: hyper::upgrade::OnUpgrade,
    mut resp: Response<PooledBody>,
) -> Response<Body> {
    let backend = hyper::upgrade::on(&mut resp);
    let (mut parts, mut body) = resp.into_parts();
    let sender = body.detach();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let slot = match info.slot.lock() {
        Ok(mut g) => g.take(),
        Err(e) => e.into_inner().take(),
    };
    let (metrics, client_addr) = (shared.metrics.clone(), info.client);
    tokio::spawn(async move {
        let joined = tokio::try_join!(client, backend);
        // The backend's request channel is kept until its connection has
        // handed the socket over.
        drop(sender);
        let (client, backend) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                debug!(client = %client_addr, error = %e, "WebSocket switch failed");
                return;
            }
        };
        metrics.websockets.inc();
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => debug!(client = %client_addr, up, down, "WebSocket closed"),
            Err(e) => debug!(client = %client_addr, error = %e, "WebSocket ended"),
        }
        metrics.websockets.dec();
        drop(slot);
    });
    Response::from_parts(parts, Empty::new().map_err(|n| match n {}).boxed_unsync())
}
