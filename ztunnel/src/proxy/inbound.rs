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

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ca::{IdentityError, SpiffeId, TrustDomain};
use hbone::{Head, Role};
use http::StatusCode;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::copy;
use super::metrics::{ConnLabels, PairMetrics, ProxyMetrics, ReasonLabels};
use super::mux::{self, Stream};
use super::{keepalive, mux_config, tls};
use crate::identity::SecretCache;

/// A workload as the proxy needs it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `namespace/name`, for logs.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node it is scheduled on.
    pub node: Option<String>,
    /// Its namespace is in policy audit mode (see
    /// `policy::cluster::POLICY_AUDIT_LABEL`): a tunnel its ingress policy
    /// denies is let through and reported.
    pub policy_audit: bool,
    /// Its identity, once asked for (see [`Workload::identity`]).
    identity: OnceLock<SpiffeId>,
}

impl Workload {
    /// A workload; its identity is derived when first asked for.
    pub fn new(name: String, namespace: String, service_account: String, node: Option<String>) -> Self {
        Self { name, namespace, service_account, node, policy_audit: false, identity: OnceLock::new() }
    }

    /// The same, with its namespace in policy audit mode or not.
    pub fn with_policy_audit(mut self, audit: bool) -> Self {
        self.policy_audit = audit;
        self
    }

    /// Its identity in trust domain `td`. Remembered: the capture side asks
    /// for two on every new tunnel, and a [`Workloads`] source that keeps
    /// its workloads between lookups then validates and builds each once.
    pub fn identity(&self, td: &TrustDomain) -> Result<SpiffeId, IdentityError> {
        if let Some(id) = self.identity.get()
            && id.trust_domain() == td
        {
            return Ok(id.clone());
        }
        let id = SpiffeId::new(td, &self.namespace, &self.service_account)?;
        // A workload asked in another trust domain (a bundle that changed
        // domain) keeps the first; the check above then builds anew.
        let _ = self.identity.set(id.clone());
        Ok(id)
    }
}

/// The cluster state the proxy consults.
pub trait Workloads: Send + Sync {
    /// The workload owning `ip`.
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>>;
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
    /// Policy audit mode: a tunnel the destination's ingress policy denies
    /// is logged and counted, and let through. Identity checks still apply.
    pub policy_audit: bool,
    /// Congestion control of delivery sockets (see [`super::local_cc`]);
    /// `None`: the node's default.
    pub local_cc: Option<std::ffi::OsString>,
}

/// What the inbound side does when a tunnel's copy ends.
struct Delivered {
    pair: Arc<PairMetrics>,
}

impl copy::Finish for Delivered {
    fn finish(self, upstream: TcpStream, totals: copy::Totals, result: Result<(), copy::CopyError>) {
        match result {
            Ok(()) => info!(bytes_to_pod = totals.down, bytes_from_pod = totals.up, "tunnel closed"),
            Err(e) => {
                // The pod sees a reset, as it would from a direct peer whose
                // connection broke.
                debug!(error = %e, bytes_to_pod = totals.down, bytes_from_pod = totals.up, "tunnel ended with an error");
                let _ = upstream.set_zero_linger();
            }
        }
        self.pair.finished(totals.down, totals.up);
    }
}

/// The inbound side.
pub struct Inbound {
    cache: Arc<SecretCache>,
    workloads: Arc<dyn Workloads>,
    config: InboundConfig,
    metrics: Arc<ProxyMetrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Streams one HBONE connection may carry at once: twice what a client
/// opens (see `outbound::STREAMS_PER_CONNECTION`).
const MAX_STREAMS: u32 = 2 * super::outbound::STREAMS_PER_CONNECTION as u32;

/// Answers a tunnel that will not be opened (the stream ends with it).
fn refuse(mut stream: Stream, code: StatusCode) {
    let _ = stream.respond(code.as_u16(), true);
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
            let (this, tls) = (self.clone(), tls.clone());
            tokio::spawn(
                async move {
                    let handshake = super::session::accept(&tls, tcp);
                    let stream = match tokio::time::timeout(this.config.handshake_timeout, handshake).await {
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
                    let identity = stream.peer_certificates().first().map(|c| tls::peer_identity(&this.cache, c));
                    let Some(Ok(identity)) = identity else {
                        info!("no usable peer identity after handshake");
                        this.handshake_failed("identity");
                        return;
                    };
                    let sni = stream.server_name().and_then(|s| tls::identity_from_sni(s, &this.cache));
                    let serial = stream.peer_certificates().first().and_then(|c| ca::peer::serial_of(c));
                    info!(peer_identity = %identity, peer_serial = serial.as_deref().unwrap_or("?"), "HBONE connection accepted");
                    let (mux, driver) = mux::start(Role::Server, mux_config(MAX_STREAMS), stream);
                    tokio::pin!(driver);
                    // Every tunnel of this connection is between the same
                    // two identities: one set of counters for all of them.
                    let pair = this.metrics.pair(ConnLabels {
                        direction: "inbound",
                        source_identity: identity.to_string(),
                        destination_identity: sni.as_ref().map(ToString::to_string).unwrap_or_default(),
                    });
                    let _gauge = this.metrics.hbone_connection("inbound");
                    let ka = keepalive(mux.clone());
                    tokio::pin!(ka);
                    // A peer that never sends the HTTP/2 preface must not
                    // hold the task: the same bound as the TLS handshake.
                    let preface = tokio::time::sleep(this.config.handshake_timeout);
                    tokio::pin!(preface);
                    let mut shutdown = this.shutdown.clone();
                    let mut draining = false;
                    loop {
                        tokio::select! {
                            next = mux.accept() => match next {
                                Some((stream, head)) => {
                                    let span = info_span!("tunnel", src = tracing::field::Empty, dst = tracing::field::Empty, peer_identity = %identity);
                                    tokio::spawn(copy::task(span, this.clone().setup(stream, head, identity.clone(), sni.clone(), pair.clone())));
                                }
                                // Going away with nothing more to accept: the
                                // driver finishes the open tunnels.
                                None => {
                                    if let Err(e) = (&mut driver).await {
                                        debug!(error = %e, "HBONE connection ended");
                                    }
                                    break;
                                }
                            },
                            r = &mut driver => {
                                if let Err(e) = r {
                                    if mux.handshaken() {
                                        debug!(error = %e, "HBONE connection ended");
                                    } else {
                                        info!(error = %e, "HTTP/2 handshake failed");
                                        this.handshake_failed("http2");
                                    }
                                }
                                break;
                            }
                            () = &mut preface, if !mux.handshaken() => {
                                info!("HTTP/2 handshake timed out");
                                this.handshake_failed("timeout");
                                break;
                            }
                            () = super::stopped(&mut shutdown), if !draining => {
                                // GOAWAY: no new streams; open tunnels finish.
                                mux.drain();
                                draining = true;
                            }
                            why = &mut ka => {
                                info!(reason = why, "HBONE connection dropped");
                                break;
                            }
                        }
                    }
                }
                .instrument(info_span!("hbone_in", %peer)),
            );
        }
    }

    /// Checks and connects a tunnel (runs inside its span); `None` once it
    /// has been refused.
    async fn setup(
        self: Arc<Self>,
        stream: Stream,
        head: Head,
        peer: SpiffeId,
        sni: Option<SpiffeId>,
        pair: Arc<PairMetrics>,
    ) -> Option<(copy::Tunnel, Delivered)> {
        let (src, dst) = match self.check(&head, &peer, sni.as_ref()) {
            Ok(addrs) => addrs,
            Err(code) => {
                refuse(stream, code);
                return None;
            }
        };
        let span = tracing::Span::current();
        span.record("src", tracing::field::display(src));
        span.record("dst", tracing::field::display(dst));
        // 5. Deliver.
        let upstream = match tokio::time::timeout(self.config.connect_timeout, self.connect(src, dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(error = %e, "destination connect failed");
                self.metrics.fail("connect_failed");
                refuse(stream, StatusCode::SERVICE_UNAVAILABLE);
                return None;
            }
            Err(_) => {
                warn!("destination connect timed out");
                self.metrics.fail("connect_failed");
                refuse(stream, StatusCode::SERVICE_UNAVAILABLE);
                return None;
            }
        };
        pair.opened();
        // The 200 may wait for the pod's first bytes (see `Outgoing::answer`).
        let copy = copy::server(upstream, stream, copy::HOLD);
        Some((copy, Delivered { pair }))
    }

    /// Steps 1-4 of the module docs: the tunnel's source and destination, or
    /// the status refusing it.
    fn check(
        &self,
        head: &Head,
        peer: &SpiffeId,
        sni: Option<&SpiffeId>,
    ) -> Result<(SocketAddr, SocketAddr), StatusCode> {
        let method = head.method.as_deref().unwrap_or("");
        if method != "CONNECT" {
            warn!(%method, peer_identity = %peer, "rejected: not a CONNECT");
            self.metrics.fail("not_connect");
            return Err(StatusCode::METHOD_NOT_ALLOWED);
        }
        let authority = head.authority.as_deref().unwrap_or("");
        let Ok(dst) = authority.parse::<SocketAddr>() else {
            warn!(%authority, "rejected: CONNECT target is not ip:port");
            self.metrics.fail("bad_request");
            return Err(StatusCode::BAD_REQUEST);
        };
        let src = head.forwarded.as_deref().and_then(forwarded_for);
        let Some(src) = src else {
            warn!(%dst, "rejected: no Forwarded: for= source address");
            self.metrics.fail("bad_request");
            return Err(StatusCode::BAD_REQUEST);
        };
        // 2. The peer must be the workload that owns the source address.
        let Some(owner) = self.workloads.by_ip(src.ip()) else {
            warn!(%src, %dst, peer_identity = %peer, reason = "unknown_source", "denied: no workload owns the source address");
            self.metrics.fail("unknown_source");
            return Err(StatusCode::FORBIDDEN);
        };
        if owner.namespace != peer.namespace() || owner.service_account != peer.service_account() {
            warn!(
                %src, %dst, peer_identity = %peer,
                reason = "identity_mismatch",
                owner = %owner.name,
                owner_identity = %format!("{}/{}", owner.namespace, owner.service_account),
                "denied: peer identity does not own the source address"
            );
            self.metrics.fail("identity_mismatch");
            return Err(StatusCode::FORBIDDEN);
        }
        // 3. A local destination, the one the client authenticated.
        let Some(target) = self.workloads.by_ip(dst.ip()).filter(|w| w.node.as_deref() == Some(&self.config.node))
        else {
            warn!(%src, %dst, peer_identity = %peer, reason = "not_local", "rejected: destination is not a workload on this node");
            self.metrics.fail("not_local");
            return Err(StatusCode::NOT_FOUND);
        };
        if sni.is_none_or(|s| s.namespace() != target.namespace || s.service_account() != target.service_account) {
            warn!(%src, %dst, peer_identity = %peer, reason = "wrong_destination_identity", target = %target.name, "rejected: tunnel opened for another identity");
            self.metrics.fail("wrong_destination_identity");
            return Err(StatusCode::BAD_REQUEST);
        }
        // 4. Ingress policy with the verified source.
        if let Err(why) = self.workloads.ingress(src.ip(), dst.ip(), dst.port()) {
            if self.config.policy_audit || target.policy_audit {
                let scope = if self.config.policy_audit { "node" } else { "namespace" };
                warn!(%src, %dst, peer_identity = %peer, reason = "policy", policy = %why, target = %target.name, audit = scope, "would be denied by NetworkPolicy; let through (policy audit mode)");
                self.metrics.policy_audits.inc();
                return Ok((src, dst));
            }
            warn!(%src, %dst, peer_identity = %peer, reason = "policy", policy = %why, target = %target.name, "denied by NetworkPolicy");
            self.metrics.fail("policy");
            return Err(StatusCode::FORBIDDEN);
        }
        Ok((src, dst))
    }

    async fn connect(&self, src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
        connect_from(self.config.transparent.then_some(src.ip()), dst, self.config.local_cc.as_ref()).await
    }
}

/// Connects to `dst`, from `src` when given (IP_TRANSPARENT: the pod's
/// address, which is not local here; the source port is picked at connect
/// time, unique per 4-tuple, because a bind-time search per address is slow
/// and runs out early with many connections from one pod).
///
/// A pod on this node answers the SYN within the `connect` call itself (the
/// veth hands the packets on in the same softirq), so the socket is usually
/// connected when `connect` returns `EINPROGRESS`: one `getpeername` then
/// saves a round through the reactor (an `epoll_wait`, a wake-up of this
/// task and a `getsockopt`) on every new connection's path.
async fn connect_from(
    src: Option<IpAddr>,
    dst: SocketAddr,
    cc: Option<&std::ffi::OsString>,
) -> std::io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};

    let family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = sock::socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    if let Some(ip) = src {
        // Sets the same socket flag as IPV6_TRANSPARENT.
        sock::setsockopt(&fd, sockopt::IpTransparent, &true)?;
        sock::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
        sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(ip, 0)))?;
    }
    sock::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    if let Some(cc) = cc {
        super::local_cc::set(&fd, cc)?;
    }
    let connected = match sock::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) => true,
        Err(Errno::EINPROGRESS) => sock::getpeername::<SockaddrStorage>(fd.as_raw_fd()).is_ok(),
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    if !connected {
        stream
            .async_io(Interest::WRITABLE, || {
                if let Some(e) = stream.take_error()? {
                    return Err(e);
                }
                match stream.peer_addr() {
                    Ok(_) => Ok(()),
                    // Woken before the handshake ended: clear the readiness
                    // and wait on.
                    Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32) => {
                        Err(std::io::ErrorKind::WouldBlock.into())
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::connect_from;

    /// A local server answers within `connect`: the stream comes back
    /// connected and carries bytes both ways; a closed port is refused.
    #[tokio::test]
    async fn connects_at_once_and_reports_a_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = connect_from(None, addr, None).await.unwrap();
        assert!(s.nodelay().unwrap());
        let (mut a, _) = l.accept().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        a.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        a.write_all(b"pong").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        drop(l);
        let e = connect_from(None, addr, None).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
}
