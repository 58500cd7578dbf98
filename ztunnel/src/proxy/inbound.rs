//! The HBONE listener (port 15008).
//!
//! Per TLS connection: the client certificate was verified by the TLS layer
//! (chain to the current bundle, validity, trust domain). Per tunnel
//! (`CONNECT <dst-ip>:<port>` with `Forwarded: for="<src-ip>:<port>"`):
//!
//! 1. only CONNECT (405 otherwise) with an IP:port authority and a source
//!    address (400 otherwise);
//! 2. the source address must belong to a workload whose identity is the
//!    peer's (403 "unknown source" / "identity mismatch": no spoofing);
//! 3. the destination must be a workload on this node, and the one whose
//!    identity the client asked for in SNI (404 / 400);
//! 4. the destination's ingress NetworkPolicy is evaluated with the
//!    verified source (403 naming the isolating policies);
//! 5. connect to the destination — from the original source address when
//!    `transparent` (IP_TRANSPARENT), so the pod and its to-pod TC program
//!    see the real flow — answer 200, and copy bytes both ways with bounded
//!    buffers and half-close; a failed connect answers 503.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ca::SpiffeId;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::metrics::{ConnLabels, ProxyMetrics, ReasonLabels};
use super::tls;
use crate::identity::SecretCache;

/// A workload as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `namespace/name`, for logs.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node it is scheduled on.
    pub node: Option<String>,
}

/// The cluster state the proxy consults.
pub trait Workloads: Send + Sync {
    /// The workload owning `ip`.
    fn by_ip(&self, ip: IpAddr) -> Option<Workload>;
    /// The address of a node (where its HBONE listener is).
    fn node_address(&self, node: &str) -> Option<IpAddr>;
    /// Whether the destination's ingress policy admits a TCP connection from
    /// `src` to `dst:port`; `Err` says which policies isolate it.
    fn ingress(&self, src: IpAddr, dst: IpAddr, port: u16) -> Result<(), String>;
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// This node.
    pub node: String,
    /// Connect to pods from the original source address (needs
    /// CAP_NET_ADMIN and the reply routing described in ARCHITECTURE.md).
    pub transparent: bool,
    /// Timeout for connecting to the destination pod.
    pub connect_timeout: Duration,
    /// Timeout for the TLS handshake.
    pub handshake_timeout: Duration,
}

/// The inbound side.
pub struct Inbound {
    cache: Arc<SecretCache>,
    workloads: Arc<dyn Workloads>,
    config: InboundConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

type Resp = Response<Empty<Bytes>>;

fn status(code: StatusCode) -> Resp {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// Parses `for="1.2.3.4:5"`, `for=1.2.3.4:5` or `for="[::1]:5"` from a
/// `Forwarded` header.
pub fn forwarded_for(v: &str) -> Option<SocketAddr> {
    v.split([';', ',']).find_map(|part| {
        let (k, val) = part.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        val.trim().trim_matches('"').parse().ok()
    })
}

impl Inbound {
    /// A listener over `cache` and `workloads`. When `shutdown` turns true
    /// it stops accepting and sends GOAWAY on every connection; open tunnels
    /// run on until they end (the agent bounds the wait).
    pub fn new(
        cache: Arc<SecretCache>,
        workloads: Arc<dyn Workloads>,
        config: InboundConfig,
        metrics: Arc<ProxyMetrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self { cache, workloads, config, metrics, shutdown }
    }

    fn handshake_failed(&self, reason: &'static str) {
        self.metrics.handshake_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Serves `listener` until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let tls = match tls::server_config(&self.cache) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "HBONE listener has no TLS configuration; not serving");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let mut shutdown = self.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = super::stopped(&mut shutdown) => {
                    info!("HBONE listener draining: no new connections");
                    return;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(
                async move {
                    let stream = match tokio::time::timeout(this.config.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            info!(error = %e, "handshake rejected");
                            this.handshake_failed(if e.to_string().contains("peer identity") {
                                "identity"
                            } else {
                                "tls"
                            });
                            return;
                        }
                        Err(_) => {
                            info!("handshake timed out");
                            this.handshake_failed("timeout");
                            return;
                        }
                    };
                    let (_, conn) = stream.get_ref();
                    let identity =
                        conn.peer_certificates().and_then(|c| c.first()).map(|c| tls::peer_identity(&this.cache, c));
                    let Some(Ok(identity)) = identity else {
                        info!("no usable peer identity after handshake");
                        this.handshake_failed("identity");
                        return;
                    };
                    let sni = conn.server_name().and_then(|s| tls::identity_from_sni(s, &this.cache));
                    let serial = conn.peer_certificates().and_then(|c| c.first()).and_then(|c| ca::peer::serial_of(c));
                    info!(peer_identity = %identity, peer_serial = serial.as_deref().unwrap_or("?"), "HBONE connection accepted");
                    let svc = {
                        let this = this.clone();
                        service_fn(move |req| {
                            let (this, identity, sni) = (this.clone(), identity.clone(), sni.clone());
                            async move { Ok::<_, Infallible>(this.tunnel(req, identity, sni).await) }
                        })
                    };
                    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    h2.timer(hyper_util::rt::TokioTimer::new())
                        .max_concurrent_streams(1000)
                        .keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .initial_stream_window_size(1 << 20)
                        .initial_connection_window_size(4 << 20)
                        .max_frame_size(1 << 20);
                    let conn = h2.serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    let mut shutdown = this.shutdown.clone();
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = super::stopped(&mut shutdown) => {
                            // GOAWAY: no new streams; open tunnels finish.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        debug!(error = %e, "HBONE connection ended");
                    }
                }
                .instrument(info_span!("hbone_in", %peer)),
            );
        }
    }

    async fn tunnel(&self, mut req: Request<Incoming>, peer: SpiffeId, sni: Option<SpiffeId>) -> Resp {
        if req.method() != Method::CONNECT {
            warn!(method = %req.method(), peer_identity = %peer, "rejected: not a CONNECT");
            self.metrics.fail("not_connect");
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let Some(dst) = req.uri().authority().and_then(|a| a.as_str().parse::<SocketAddr>().ok()) else {
            warn!(uri = %req.uri(), "rejected: CONNECT target is not ip:port");
            self.metrics.fail("bad_request");
            return status(StatusCode::BAD_REQUEST);
        };
        let src = req.headers().get("forwarded").and_then(|v| v.to_str().ok()).and_then(forwarded_for);
        let Some(src) = src else {
            warn!(%dst, "rejected: no Forwarded: for= source address");
            self.metrics.fail("bad_request");
            return status(StatusCode::BAD_REQUEST);
        };
        let span = info_span!("tunnel", %src, %dst, peer_identity = %peer);
        async move {
            // 2. The peer must be the workload that owns the source address.
            let Some(owner) = self.workloads.by_ip(src.ip()) else {
                warn!(reason = "unknown_source", "denied: no workload owns the source address");
                self.metrics.fail("unknown_source");
                return status(StatusCode::FORBIDDEN);
            };
            if owner.namespace != peer.namespace() || owner.service_account != peer.service_account() {
                warn!(
                    reason = "identity_mismatch",
                    owner = %owner.name,
                    owner_identity = %format!("{}/{}", owner.namespace, owner.service_account),
                    "denied: peer identity does not own the source address"
                );
                self.metrics.fail("identity_mismatch");
                return status(StatusCode::FORBIDDEN);
            }
            // 3. A local destination, the one the client authenticated.
            let Some(target) = self.workloads.by_ip(dst.ip()).filter(|w| w.node.as_deref() == Some(&self.config.node))
            else {
                warn!(reason = "not_local", "rejected: destination is not a workload on this node");
                self.metrics.fail("not_local");
                return status(StatusCode::NOT_FOUND);
            };
            if sni.as_ref().is_none_or(|s| s.namespace() != target.namespace || s.service_account() != target.service_account)
            {
                warn!(reason = "wrong_destination_identity", target = %target.name, "rejected: tunnel opened for another identity");
                self.metrics.fail("wrong_destination_identity");
                return status(StatusCode::BAD_REQUEST);
            }
            // 4. Ingress policy with the verified source.
            if let Err(why) = self.workloads.ingress(src.ip(), dst.ip(), dst.port()) {
                warn!(reason = "policy", policy = %why, target = %target.name, "denied by NetworkPolicy");
                self.metrics.fail("policy");
                return status(StatusCode::FORBIDDEN);
            }
            // 5. Deliver.
            let upstream = match tokio::time::timeout(self.config.connect_timeout, self.connect(src, dst)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(error = %e, "destination connect failed");
                    self.metrics.fail("connect_failed");
                    return status(StatusCode::SERVICE_UNAVAILABLE);
                }
                Err(_) => {
                    warn!("destination connect timed out");
                    self.metrics.fail("connect_failed");
                    return status(StatusCode::SERVICE_UNAVAILABLE);
                }
            };
            let upgrade = hyper::upgrade::on(&mut req);
            let labels = ConnLabels {
                direction: "inbound",
                source_identity: peer.to_string(),
                destination_identity: sni.as_ref().map(ToString::to_string).unwrap_or_default(),
            };
            let metrics = self.metrics.clone();
            metrics.opened.get_or_create(&labels).inc();
            metrics.active.inc();
            tokio::spawn(
                async move {
                    let (mut tx, mut rx) = (0, 0);
                    match upgrade.await {
                        Ok(up) => {
                            let mut up = TokioIo::new(up);
                            let mut upstream = upstream;
                            match super::copy::bidirectional(&mut up, &mut upstream)
                                .await
                            {
                                Ok((a, b)) => {
                                    (tx, rx) = (a, b);
                                    info!(bytes_to_pod = tx, bytes_from_pod = rx, "tunnel closed");
                                }
                                Err(e) => debug!(error = %e, "tunnel ended with an error"),
                            }
                        }
                        Err(e) => debug!(error = %e, "upgrade failed"),
                    }
                    metrics.finished(&labels, tx, rx);
                    metrics.active.dec();
                }
                .in_current_span(),
            );
            debug!(target = %target.name, "tunnel open");
            status(StatusCode::OK)
        }
        .instrument(span)
        .await
    }

    async fn connect(&self, src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if dst.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if self.config.transparent {
            set_transparent(&socket)?;
            socket.set_reuseaddr(true)?;
            // Pick the source port at connect time (unique per 4-tuple), not
            // at bind time (unique per address): with many connections from
            // one pod address, bind-time search is slow and runs out early.
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(std::io::Error::from)?;
            socket.bind(SocketAddr::new(src.ip(), 0))?;
        }
        let s = socket.connect(dst).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// IP_TRANSPARENT lets the socket use the pod's address as its source (on
/// Linux it sets the same socket flag as IPV6_TRANSPARENT).
fn set_transparent(socket: &TcpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::IpTransparent, &true).map_err(std::io::Error::from)
}
