//! The CA server: an HTTPS JSON API (HTTP/1.1 and HTTP/2) in front of the CA
//! core, plus a plain-HTTP admin endpoint for `/metrics` and `/ready`.
//!
//! The server never writes CA state: operators change it with the CLI, and
//! every replica notices the new state file within the reload interval and
//! serves it (new bundle version, new signer). Signing is stateless, so any
//! number of replicas can serve from the same material. A state that fails
//! to load is logged and counted; the last good one keeps serving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration as StdDuration, Instant};

use bytes::Bytes;
use ca::api::{ErrorBody, SignRequest, SignResponse};
use ca::{CaState, Signer, TrustBundle, WorkloadIndex, authorize, validate_csr};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator, bearer};
use crate::metrics::{CertLabel, Metrics};
use crate::store::{DirStore, StoreError};
use crate::tls::pem_certs;

/// Where time comes from (tests use a fake clock).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A settable clock for tests.
#[derive(Debug)]
pub struct FakeClock(Mutex<OffsetDateTime>);

impl FakeClock {
    /// A clock stopped at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        Self(Mutex::new(t))
    }

    /// Moves the clock.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        self.0.lock().map(|t| *t).unwrap_or_else(|e| *e.into_inner())
    }
}

/// Where the server reads CA state and credentials from.
pub trait Source: Send + Sync {
    /// Something that changes whenever the state or the credentials change.
    fn fingerprint(&self) -> String;
    /// The CA state.
    fn load_state(&self) -> Result<CaState, StoreError>;
    /// The node authenticator.
    fn load_authenticator(&self) -> Result<Arc<dyn Authenticator>, StoreError>;
}

impl Source for DirStore {
    fn fingerprint(&self) -> String {
        format!("{:?}{:?}", self.stamp(), self.tokens_stamp())
    }

    fn load_state(&self) -> Result<CaState, StoreError> {
        self.load()
    }

    fn load_authenticator(&self) -> Result<Arc<dyn Authenticator>, StoreError> {
        Ok(Arc::new(crate::auth::NodeTokens::new(&self.tokens()?)))
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS API address.
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (`/metrics`, `/ready`).
    pub admin: Option<SocketAddr>,
    /// DNS names in the API's server certificate (clients verify one).
    pub server_names: Vec<String>,
    /// How often to look for a changed state.
    pub reload: StdDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 15012)),
            admin: None,
            server_names: vec!["localhost".into(), "ztunnel-ca".into(), "ztunnel-ca.ztunnel-system.svc".into()],
            reload: StdDuration::from_millis(500),
        }
    }
}

/// Longest accepted request body.
const MAX_BODY: usize = 64 * 1024;
/// Longest bundle long-poll.
const MAX_WAIT: u64 = 300;
/// Lifetime of the API's own certificate.
const SERVER_CERT_TTL: Duration = Duration::hours(24);

/// What the server serves now, rebuilt on every state change.
struct Current {
    state: CaState,
    signer: Signer,
    bundle: TrustBundle,
    cert: Arc<CertifiedKey>,
    cert_renew_at: OffsetDateTime,
    fingerprint: String,
}

struct Shared {
    source: Box<dyn Source>,
    current: RwLock<Arc<Current>>,
    auth: RwLock<Arc<dyn Authenticator>>,
    version: watch::Sender<u64>,
    index: Arc<dyn WorkloadIndex + Send + Sync>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// Latest leaf per (node, identity) this replica issued: authority and
    /// expiry (for "live leaves per root" in status).
    ledger: Mutex<HashMap<(String, String), (String, OffsetDateTime)>>,
    server_key: KeyPair,
    names: Vec<String>,
    ips: Vec<IpAddr>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// State or credentials could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA material is unusable.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// A socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Shared {
    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn authenticator(&self) -> Arc<dyn Authenticator> {
        match self.auth.read() {
            Ok(a) => a.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn build(&self, state: CaState, fingerprint: String, previous: Option<&Current>) -> Result<Current, ServeError> {
        let now = self.clock.now();
        let signer = Signer::new(&state.active)?;
        let bundle = state.bundle(now);
        // Keep the API certificate unless the signer changed or it is half
        // way through its life.
        let (cert, cert_renew_at) = match previous {
            Some(p)
                if p.signer.authority() == signer.authority()
                    && p.state.active.intermediate_pem == state.active.intermediate_pem
                    && now < p.cert_renew_at =>
            {
                (p.cert.clone(), p.cert_renew_at)
            }
            _ => (self.server_cert(&signer, now)?, now + SERVER_CERT_TTL / 2),
        };
        Ok(Current { state, signer, bundle, cert, cert_renew_at, fingerprint })
    }

    fn server_cert(&self, signer: &Signer, now: OffsetDateTime) -> Result<Arc<CertifiedKey>, ServeError> {
        let chain = signer.issue_server(&self.names, &self.ips, &self.server_key, SERVER_CERT_TTL, now)?;
        let certs: Vec<CertificateDer<'static>> = chain.iter().flat_map(|p| pem_certs(p)).collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()));
        let signing =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| ServeError::Tls(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    fn publish(&self, cur: Current) {
        let version = cur.bundle.version;
        self.update_gauges(&cur);
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(cur),
            Err(e) => *e.into_inner() = Arc::new(cur),
        }
        self.version.send_replace(version);
    }

    fn update_gauges(&self, cur: &Current) {
        let now = self.clock.now();
        self.metrics.bundle_version.set(cur.bundle.version as i64);
        let mut authorities = vec![&cur.state.active];
        match &cur.state.stage {
            ca::Stage::Prepared { next, .. } | ca::Stage::Propagated { next, .. } => authorities.push(next),
            ca::Stage::Switched { previous, .. } => authorities.push(previous),
            ca::Stage::Stable => {}
        }
        let mut expiry = Vec::new();
        for a in authorities {
            for (kind, info) in [("root", a.root_info()), ("intermediate", a.intermediate_info())] {
                if let Ok(info) = info {
                    let label = CertLabel { authority: a.id.clone(), kind: kind.into() };
                    expiry.push((label, (info.not_after - now).as_seconds_f64()));
                }
            }
        }
        self.metrics.set_expiry(expiry);
    }

    /// Reloads the state if it changed (or the API certificate is due).
    fn reload(&self) {
        let fingerprint = self.source.fingerprint();
        let cur = self.current();
        let now = self.clock.now();
        if fingerprint == cur.fingerprint && now < cur.cert_renew_at {
            self.update_gauges(&cur);
            return;
        }
        if fingerprint != cur.fingerprint {
            match self.source.load_authenticator() {
                Ok(a) => match self.auth.write() {
                    Ok(mut w) => *w = a,
                    Err(e) => *e.into_inner() = a,
                },
                Err(e) => {
                    self.metrics.reload_errors.inc();
                    warn!(error = %e, "node credentials not reloaded; previous ones stay in use");
                }
            }
        }
        let state = match self.source.load_state() {
            Ok(s) => s,
            Err(e) => {
                self.metrics.reload_errors.inc();
                warn!(error = %e, "CA state not reloaded; previous state keeps serving");
                return;
            }
        };
        let old_version = cur.bundle.version;
        match self.build(state, fingerprint, Some(&cur)) {
            Ok(next) => {
                if next.bundle.version != old_version {
                    info!(
                        version = next.bundle.version,
                        stage = next.state.stage.name(),
                        signer = %next.bundle.signer,
                        roots = next.bundle.roots.len(),
                        "CA state reloaded"
                    );
                }
                self.publish(next);
            }
            Err(e) => {
                self.metrics.reload_errors.inc();
                warn!(error = %e, "CA state unusable; previous state keeps serving");
            }
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().cert.clone())
    }
}

/// A bound, ready server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Arc<ServerConfig>,
    reload: StdDuration,
}

impl Server {
    /// Loads the state, binds the sockets and prepares TLS.
    pub async fn bind(
        config: Config,
        source: Box<dyn Source>,
        index: Arc<dyn WorkloadIndex + Send + Sync>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServeError> {
        let state = source.load_state()?;
        let auth = source.load_authenticator()?;
        let fingerprint = source.fingerprint();
        let listener =
            TcpListener::bind(config.listen).await.map_err(|e| ServeError::Bind { addr: config.listen, source: e })?;
        let admin = match config.admin {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|e| ServeError::Bind { addr: a, source: e })?),
            None => None,
        };
        let mut ips = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])];
        if let Ok(a) = listener.local_addr()
            && !a.ip().is_unspecified()
            && !ips.contains(&a.ip())
        {
            ips.push(a.ip());
        }
        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ServeError::Tls(e.to_string()))?;
        let (tx, _) = watch::channel(state.version);
        let shared = Arc::new(Shared {
            source,
            current: RwLock::new(Arc::new(placeholder_current(&state)?)),
            auth: RwLock::new(auth),
            version: tx,
            index,
            clock,
            metrics: Metrics::new(),
            ledger: Mutex::new(HashMap::new()),
            server_key,
            names: config.server_names.clone(),
            ips,
        });
        let first = shared.build(state, fingerprint, None)?;
        shared.publish(first);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(shared.clone())));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { shared, listener, admin, tls: Arc::new(tls), reload: config.reload })
    }

    /// The API's bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The admin endpoint's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bundle being served.
    pub fn bundle(&self) -> TrustBundle {
        self.shared.current().bundle.clone()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server { shared, listener, admin, tls, reload } = self;
        let reloader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(reload);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let s = shared.clone();
                    // File IO and key parsing off the async workers.
                    let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                }
            })
        };
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, shared.clone())));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(StdDuration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(StdDuration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        reloader.abort();
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}

/// A throwaway [`Current`] used only until the first real build.
fn placeholder_current(state: &CaState) -> Result<Current, ServeError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ServeError::Tls(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(Current {
        state: state.clone(),
        signer: Signer::new(&state.active)?,
        bundle: state.bundle(OffsetDateTime::UNIX_EPOCH),
        cert: Arc::new(CertifiedKey::new(Vec::new(), signing)),
        cert_renew_at: OffsetDateTime::UNIX_EPOCH,
        fingerprint: String::new(),
    })
}

type Resp = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, reason: &str, msg: impl ToString) -> Resp {
    json(status, &ErrorBody { reason: reason.into(), error: msg.to_string() })
}

async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/sign") => {
            let start = Instant::now();
            let r = sign(shared, req, peer).await;
            shared.metrics.sign_seconds.observe(start.elapsed().as_secs_f64());
            r
        }
        (&Method::GET, "/v1/bundle") => bundle(shared, req).await,
        (&Method::GET, "/v1/status") => status(shared),
        (&Method::GET, "/healthz") => json(StatusCode::OK, &"ok"),
        (_, "/v1/sign" | "/v1/bundle" | "/v1/status") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn sign(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    // The (bounded) body is read before answering, even a refusal: an
    // HTTP/2 response sent while the client still uploads resets the
    // stream, and clients report that as a transport error instead of the
    // status.
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            shared.metrics.deny("bad_request");
            warn!(%peer, error = %e, "sign request refused: body unreadable or over 64 KiB");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", format!("request body: {e}"));
        }
    };
    let auth = auth.as_deref();
    let authenticator = shared.authenticator();
    let node = match bearer(auth) {
        Ok(t) => authenticator.authenticate(t).await,
        Err(e) => Err(e),
    };
    let node = match node {
        Ok(n) => n,
        Err(e @ AuthError::Unavailable(_)) => {
            shared.metrics.deny("auth_unavailable");
            warn!(%peer, reason = %e, "sign request refused: cannot authenticate now");
            return error(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", e);
        }
        Err(e) => {
            shared.metrics.deny("unauthenticated");
            warn!(%peer, reason = %e, "sign request refused: not authenticated");
            return error(StatusCode::UNAUTHORIZED, "unauthenticated", e);
        }
    };
    let request: SignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.deny("bad_request");
            warn!(%peer, %node, error = %e, "sign request refused: malformed JSON");
            return error(StatusCode::BAD_REQUEST, "bad_request", format!("request: {e}"));
        }
    };
    let cur = shared.current();
    let csr = match validate_csr(request.csr.as_bytes(), &cur.state.trust_domain) {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.deny("bad_csr");
            warn!(%peer, %node, reason = %e, "sign request refused: bad CSR");
            return error(StatusCode::BAD_REQUEST, "bad_csr", e);
        }
    };
    if let Err(d) = authorize(shared.index.as_ref(), &node, &csr.identity) {
        shared.metrics.deny("denied");
        warn!(%peer, node = %d.node, identity = %d.identity, "sign request denied: {d}");
        return error(StatusCode::FORBIDDEN, "denied", d);
    }
    let now = shared.clock.now();
    let ttl = request.ttl_seconds.map(|s| Duration::seconds(s.min(i64::MAX as u64) as i64));
    let issued = match cur.signer.issue(&csr, &csr.identity, ttl, &cur.state.policy, now) {
        Ok(i) => i,
        Err(e) => {
            shared.metrics.deny("internal");
            warn!(%node, identity = %csr.identity, error = %e, "signing failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
        }
    };
    shared.metrics.issued.inc();
    if let Ok(mut l) = shared.ledger.lock() {
        l.insert((node.clone(), issued.identity.to_string()), (issued.authority.clone(), issued.not_after));
    }
    debug!(%node, identity = %issued.identity, serial = %issued.serial, not_after = %issued.not_after, "issued");
    json(
        StatusCode::OK,
        &SignResponse {
            identity: issued.identity,
            chain: issued.chain,
            serial: issued.serial,
            not_before: issued.not_before,
            not_after: issued.not_after,
            bundle: cur.bundle.clone(),
        },
    )
}

fn etag(v: u64) -> String {
    format!("\"{v}\"")
}

fn bundle_response(b: &TrustBundle) -> Resp {
    let mut r = json(StatusCode::OK, b);
    if let Ok(v) = HeaderValue::from_str(&etag(b.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn bundle(shared: &Shared, req: Request<Incoming>) -> Resp {
    let known = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().trim_matches('"').parse::<u64>().ok());
    let wait = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_WAIT);
    let mut rx = shared.version.subscribe();
    let cur = shared.current();
    let Some(known) = known.filter(|k| *k == cur.bundle.version) else {
        return bundle_response(&cur.bundle);
    };
    if wait > 0 {
        let changed = tokio::time::timeout(StdDuration::from_secs(wait), rx.wait_for(|v| *v != known)).await;
        if matches!(changed, Ok(Ok(_))) {
            return bundle_response(&shared.current().bundle);
        }
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(&etag(known)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// `/v1/status`: the CA status plus what this replica issued.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// CA state summary.
    pub ca: ca::CaStatus,
    /// Unexpired leaves this replica issued, by authority (latest per node
    /// and identity; other replicas are not counted).
    pub live_leaves: std::collections::BTreeMap<String, usize>,
}

fn status(shared: &Shared) -> Resp {
    let now = shared.clock.now();
    let cur = shared.current();
    let mut live = std::collections::BTreeMap::new();
    if let Ok(l) = shared.ledger.lock() {
        for (authority, not_after) in l.values() {
            if *not_after > now {
                *live.entry(authority.clone()).or_insert(0) += 1;
            }
        }
    }
    match cur.state.status(now) {
        Ok(ca) => json(StatusCode::OK, &StatusBody { ca, live_leaves: live }),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let r = match req.uri().path() {
                        "/metrics" => {
                            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                            );
                            r
                        }
                        "/ready" | "/healthz/ready" | "/healthz" => json(StatusCode::OK, &"ready"),
                        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
