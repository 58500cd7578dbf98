//! Backend connections: HTTP/1.1 keep-alive connections per endpoint (in
//! the clear, or over TLS for `https` backends), reused once a response has
//! been read in full, and one multiplexed HTTP/2 connection per endpoint
//! for h2c backends and for `https` backends that choose HTTP/2 by ALPN.
//!
//! The gateway manages connections itself (instead of a generic client) so
//! that a connect failure is visible before the request is handed over: the
//! request, body and all, then goes to the next endpoint untouched.
//!
//! A connection returns to the pool when its response body has been read to
//! the end ([`PooledBody`]), in the task that read it: no task per request.
//! A response abandoned half-way drops (closes) its connection, and one
//! that switches protocols (a WebSocket) takes its connection along.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 128;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, reset by policy).
    #[error("connect to {addr}: {source}")]
    Io {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TCP connect took too long.
    #[error("connect to {addr}: timed out")]
    Timeout {
        /// Endpoint.
        addr: SocketAddr,
    },
    /// The TLS handshake failed (untrusted or misnamed certificate, or
    /// the backend does not speak TLS).
    #[error("TLS to {addr}: {source}")]
    Tls {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP/1 handshake failed.
    #[error("connect to {addr}: {source}")]
    Http {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

/// The TLS clients for `https` backends (trusting `--backend-ca`): one
/// that offers HTTP/2 and HTTP/1.1 by ALPN, and one that offers HTTP/1.1
/// only (for a WebSocket, which needs HTTP/1.1's upgrade).
#[derive(Clone)]
pub struct BackendConnectors {
    /// ALPN `h2`, `http/1.1`.
    pub any: TlsConnector,
    /// ALPN `http/1.1`.
    pub http1: TlsConnector,
}

/// How an `https` backend is reached: the connectors and the name its
/// certificate must carry.
#[derive(Clone, Copy)]
pub struct BackendTls<'a> {
    /// The TLS clients.
    pub connectors: &'a BackendConnectors,
    /// `<service>.<namespace>.svc`.
    pub server_name: &'a Arc<str>,
    /// Whether HTTP/2 may be chosen (not for a WebSocket's request).
    pub h2: bool,
}

/// Idle connections are kept apart by endpoint and by the name a TLS
/// connection's certificate was checked for (`None`: in the clear): two
/// Services naming one endpoint never share a connection checked for the
/// other's name, nor a plain one.
type IdleKey = (SocketAddr, Option<Arc<str>>);

/// A connection checked out for one request.
pub struct Conn {
    /// The endpoint.
    pub addr: SocketAddr,
    /// The name its TLS certificate was checked for (`None`: in the clear).
    pub tls: Option<Arc<str>>,
    /// The request sender.
    pub sender: SendRequest<Incoming>,
    /// Whether it came from the pool (it may have been closed by the
    /// backend meanwhile).
    pub reused: bool,
}

/// The pool.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<IdleKey, Vec<SendRequest<Incoming>>>>,
    /// The current multiplexed HTTP/2 connection per endpoint (and, over
    /// TLS, per name checked), shared by the requests of this serving
    /// thread.
    h2: Mutex<HashMap<IdleKey, H2Entry>>,
}

/// Streams one shared HTTP/2 connection carries before the next request
/// opens another: the least a server should allow (RFC 9113 6.5.2), so
/// requests never queue inside a connection behind long-lived streams
/// (gRPC streaming) at a backend's stream limit.
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

#[derive(Debug)]
struct H2Entry {
    sender: http2::SendRequest<Incoming>,
    streams: Arc<AtomicUsize>,
}

/// An HTTP/2 connection's sender for one request.
pub struct H2Conn {
    /// The request sender (a handle on the shared connection).
    pub sender: http2::SendRequest<Incoming>,
    /// Whether the connection was open before (the backend may have closed
    /// it meanwhile).
    pub reused: bool,
    /// The request's place among the connection's streams, held until its
    /// response ends (hand it to [`PooledBody::shared`]).
    pub stream: StreamSlot,
}

/// One open stream of a shared HTTP/2 connection; counted until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// An idle HTTP/1.1 connection to `addr` (over TLS with `tls`), or a
    /// new connection — which, over TLS, may be HTTP/2 if `tls` allows it
    /// and the backend chooses it.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<BackendTls<'_>>,
    ) -> Result<Checkout, ConnectError> {
        let name = tls.map(|t| t.server_name.clone());
        while let Some(mut sender) = self.take_idle((addr, name.clone())) {
            // Released at the end of the previous body, the connection may
            // not have signalled readiness yet; it does at once, or errs if
            // the backend closed it.
            if sender.ready().await.is_ok() {
                return Ok(Checkout::H1(Conn { addr, tls: name, sender, reused: true }));
            }
        }
        self.connect(addr, connect_timeout, tls).await
    }

    /// A new connection to `addr` (over TLS with `tls`): HTTP/1.1, or over
    /// TLS HTTP/2 when `tls` allows it and the backend chooses it by ALPN
    /// (the connection is then shared like an h2c one).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<BackendTls<'_>>,
    ) -> Result<Checkout, ConnectError> {
        let tcp = tcp_connect(addr, connect_timeout).await?;
        let Some(t) = tls else {
            let sender = http1_over(addr, tcp).await?;
            return Ok(Checkout::H1(Conn { addr, tls: None, sender, reused: false }));
        };
        let name = rustls_pki_types::ServerName::try_from(t.server_name.to_string()).map_err(|e| {
            ConnectError::Tls { addr, source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e) }
        })?;
        let connector = if t.h2 { &t.connectors.any } else { &t.connectors.http1 };
        // The handshake counts against the connect timeout: a backend that
        // takes the TCP connection but never answers TLS moves on too.
        let stream = match tokio::time::timeout(connect_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Tls { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr }),
        };
        let key = (addr, Some(t.server_name.clone()));
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            return Ok(Checkout::H2(self.h2_over(key, stream, connect_timeout).await?));
        }
        let sender = http1_over(addr, stream).await?;
        Ok(Checkout::H1(Conn { addr, tls: key.1, sender, reused: false }))
    }

    /// The current HTTP/2 connection to an h2c endpoint `addr`, or to an
    /// `https` endpoint that chose HTTP/2 (`name`: the name checked); `None`
    /// if there is none, it closed, or it carries
    /// [`H2_STREAMS_PER_CONNECTION`] streams (later requests then share a
    /// new one, and the old one closes once its streams end).
    fn shared_h2(&self, key: &IdleKey) -> Option<H2Conn> {
        let map = lock(&self.h2);
        map.get(key)
            .filter(|e| !e.sender.is_closed() && e.streams.load(Ordering::Relaxed) < H2_STREAMS_PER_CONNECTION)
            .map(|e| H2Conn { sender: e.sender.clone(), reused: true, stream: StreamSlot::take(&e.streams) })
    }

    /// The current HTTP/2 connection to the h2c endpoint `addr`, or a new
    /// one.
    pub async fn checkout_h2(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<H2Conn, ConnectError> {
        match self.shared_h2(&(addr, None)) {
            Some(c) => Ok(c),
            None => self.connect_h2(addr, connect_timeout).await,
        }
    }

    /// A new HTTP/2 connection to the h2c endpoint `addr`, which later
    /// requests share.
    pub async fn connect_h2(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<H2Conn, ConnectError> {
        let tcp = tcp_connect(addr, connect_timeout).await?;
        self.h2_over((addr, None), tcp, connect_timeout).await
    }

    /// HTTP/2 over `io`, shared under `key` by later requests.
    async fn h2_over<T>(&self, key: IdleKey, io: T, connect_timeout: Duration) -> Result<H2Conn, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let addr = key.0;
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io));
        let (sender, conn) = match tokio::time::timeout(connect_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => return Err(ConnectError::Http { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr }),
        };
        tokio::spawn(async move {
            // Ends when the backend closes (GOAWAY, keepalive timeout) or
            // every sender is gone.
            let _ = conn.await;
        });
        let streams = Arc::new(AtomicUsize::new(0));
        let stream = StreamSlot::take(&streams);
        lock(&self.h2).insert(key, H2Entry { sender: sender.clone(), streams });
        Ok(H2Conn { sender, reused: false, stream })
    }

    fn take_idle(&self, addr: IdleKey) -> Option<SendRequest<Incoming>> {
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, addr: IdleKey, sender: SendRequest<Incoming>) {
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_ENDPOINT {
            list.retain(|s| !s.is_closed());
        }
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    }

    /// Wraps a response body so that its connection returns to the pool
    /// once the body has been read to the end.
    pub fn recycle(self: &Arc<Self>, key: IdleKey, sender: SendRequest<Incoming>, body: Incoming) -> PooledBody {
        PooledBody { inner: body, slot: Some((self.clone(), key, sender)), _stream: None }
    }

    /// Forgets every idle connection to endpoints not in `keep`.
    pub fn retain(&self, keep: &dyn Fn(&SocketAddr) -> bool) {
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        idle.retain(|(a, _), _| keep(a));
        drop(idle);
        lock(&self.h2).retain(|(a, _), _| keep(a));
    }
}

/// An HTTP/1.1 client connection over `io`, driven by its own task.
async fn http1_over<T>(addr: SocketAddr, io: T) -> Result<SendRequest<Incoming>, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Http { addr, source })?;
    tokio::spawn(async move {
        // Ends when the backend closes, the sender is dropped, or a 101
        // hands the socket to a WebSocket.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// A TCP connection to a backend endpoint, `TCP_NODELAY` set.
async fn tcp_connect(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr }),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A connection checked out for one request, of either protocol.
#[derive(Debug)]
pub enum Checkout {
    /// An HTTP/1.1 connection (back to the pool at the response's end).
    H1(Conn),
    /// A stream of a shared HTTP/2 connection.
    H2(H2Conn),
}

/// A request that could not be sent, handed back when it was never written.
pub type SendError = hyper::client::conn::TrySendError<http::Request<Incoming>>;

impl Pool {
    /// A connection to `addr` for one request, a new one (`fresh`) or the
    /// pool's: HTTP/2 in the clear (`h2c`), or HTTP/1.1 — over TLS with
    /// `tls`, where the backend may choose HTTP/2 instead (a shared HTTP/2
    /// connection to it is then preferred to an idle HTTP/1.1 one).
    pub async fn get(
        &self,
        h2c: bool,
        fresh: bool,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<BackendTls<'_>>,
    ) -> Result<Checkout, ConnectError> {
        if h2c {
            return Ok(Checkout::H2(if fresh {
                self.connect_h2(addr, connect_timeout).await?
            } else {
                self.checkout_h2(addr, connect_timeout).await?
            }));
        }
        if fresh {
            return self.connect(addr, connect_timeout, tls).await;
        }
        if let Some(t) = tls.filter(|t| t.h2)
            && let Some(c) = self.shared_h2(&(addr, Some(t.server_name.clone())))
        {
            return Ok(Checkout::H2(c));
        }
        self.checkout(addr, connect_timeout, tls).await
    }
}

impl Checkout {
    /// Whether the connection was open before (the backend may have closed
    /// it meanwhile).
    pub fn reused(&self) -> bool {
        match self {
            Checkout::H1(c) => c.reused,
            Checkout::H2(c) => c.reused,
        }
    }

    /// Sends `req`; the response's body keeps the connection's place (an
    /// HTTP/1.1 connection returns to `pool` at its end, an HTTP/2 stream
    /// is counted until then).
    pub async fn send(
        self,
        pool: &Arc<Pool>,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<PooledBody>, SendError> {
        match self {
            Checkout::H1(mut c) => {
                let (parts, body) = c.sender.try_send_request(req).await?.into_parts();
                Ok(http::Response::from_parts(parts, pool.recycle((c.addr, c.tls), c.sender, body)))
            }
            Checkout::H2(mut c) => {
                let resp = c.sender.try_send_request(req).await?;
                let stream = c.stream;
                Ok(resp.map(|body| PooledBody::shared(body, stream)))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn").field("reused", &self.reused).finish()
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("addr", &self.addr).field("reused", &self.reused).finish()
    }
}

/// A backend response body that gives its connection back to the pool at
/// its end.
pub struct PooledBody {
    inner: Incoming,
    slot: Option<(Arc<Pool>, IdleKey, SendRequest<Incoming>)>,
    _stream: Option<StreamSlot>,
}

impl PooledBody {
    /// Wraps a response body of a shared HTTP/2 connection: nothing goes
    /// back to the pool, and its stream counts until the body is done.
    pub fn shared(body: Incoming, stream: StreamSlot) -> PooledBody {
        PooledBody { inner: body, slot: None, _stream: Some(stream) }
    }

    /// Keeps the connection from the pool (its response switched protocols)
    /// and hands over its request sender.
    pub fn detach(&mut self) -> Option<SendRequest<Incoming>> {
        self.slot.take().map(|(_, _, sender)| sender)
    }

    fn release(&mut self) {
        if let Some((pool, addr, sender)) = self.slot.take() {
            pool.put(addr, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.slot = None, // broken: close it
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (e.g. 204, or read to its last frame
        // without a final poll) still hands its connection back.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;

    use super::*;

    /// An h2c server that accepts connections (counting them) and answers
    /// every request with an empty 200.
    async fn h2c_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, accepted)
    }

    /// The server's count once its accept task has caught up.
    async fn accepted_by(count: &AtomicUsize, want: usize) -> usize {
        for _ in 0..100 {
            if count.load(Ordering::Relaxed) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        count.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_shared_h2_connection_carries_a_bounded_number_of_streams() {
        let (addr, accepted) = h2c_server().await;
        let pool = Pool::default();
        let t = Duration::from_secs(2);
        let mut held = Vec::new();
        for i in 0..H2_STREAMS_PER_CONNECTION {
            let c = pool.checkout_h2(addr, t).await.unwrap();
            assert_eq!(c.reused, i > 0, "stream {i}");
            held.push(c);
        }
        assert_eq!(accepted_by(&accepted, 1).await, 1);
        // The first connection is full: the next request opens another,
        // which later ones share.
        let next = pool.checkout_h2(addr, t).await.unwrap();
        assert!(!next.reused);
        assert!(pool.checkout_h2(addr, t).await.unwrap().reused);
        assert_eq!(accepted_by(&accepted, 2).await, 2);
        // Streams that end free their places.
        drop(held);
        drop(next);
        for _ in 0..H2_STREAMS_PER_CONNECTION {
            held = vec![pool.checkout_h2(addr, t).await.unwrap()];
            assert!(held[0].reused);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "no connection beyond the second");
        // An endpoint that leaves the routes loses its connection.
        pool.retain(&|_| false);
        assert!(!pool.checkout_h2(addr, t).await.unwrap().reused);
    }
}
