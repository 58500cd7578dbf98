//! Backend connections: HTTP/1.1 keep-alive connections per endpoint,
//! reused once a response has been read in full, and for h2c backends one
//! multiplexed HTTP/2 connection per endpoint.
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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

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
    /// The HTTP/1 handshake failed.
    #[error("connect to {addr}: {source}")]
    Http {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

/// A connection checked out for one request.
pub struct Conn {
    /// The endpoint.
    pub addr: SocketAddr,
    /// The request sender.
    pub sender: SendRequest<Incoming>,
    /// Whether it came from the pool (it may have been closed by the
    /// backend meanwhile).
    pub reused: bool,
}

/// The pool.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Incoming>>>>,
    /// One multiplexed HTTP/2 connection per h2c endpoint, shared by the
    /// requests of this serving thread.
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>,
}

/// An HTTP/2 connection's sender for one request.
pub struct H2Conn {
    /// The request sender (a handle on the shared connection).
    pub sender: http2::SendRequest<Incoming>,
    /// Whether the connection was open before (the backend may have closed
    /// it meanwhile).
    pub reused: bool,
}

impl Pool {
    /// An idle connection to `addr`, or a new one.
    pub async fn checkout(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.take_idle(addr) {
            // Released at the end of the previous body, the connection may
            // not have signalled readiness yet; it does at once, or errs if
            // the backend closed it.
            if sender.ready().await.is_ok() {
                return Ok(Conn { addr, sender, reused: true });
            }
        }
        self.connect(addr, connect_timeout).await
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr }),
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| ConnectError::Http { addr, source })?;
        tokio::spawn(async move {
            // Ends when the backend closes, the sender is dropped, or a 101
            // hands the socket to a WebSocket.
            let _ = conn.with_upgrades().await;
        });
        Ok(Conn { addr, sender, reused: false })
    }

    /// The HTTP/2 connection to `addr`, opened if there is none, or it
    /// closed, or it has no room for another stream now (long-lived gRPC
    /// streams at the backend's stream limit do not hold up other
    /// requests: they get a connection of their own, which later ones share).
    pub async fn checkout_h2(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<H2Conn, ConnectError> {
        let open = lock(&self.h2).get(&addr).filter(|s| !s.is_closed()).cloned();
        if let Some(mut sender) = open
            && matches!(std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await, Poll::Ready(Ok(())))
        {
            return Ok(H2Conn { sender, reused: true });
        }
        self.connect_h2(addr, connect_timeout).await
    }

    /// A new HTTP/2 connection to `addr`, which later requests share.
    pub async fn connect_h2(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<H2Conn, ConnectError> {
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Err(_) => return Err(ConnectError::Timeout { addr }),
        };
        let _ = tcp.set_nodelay(true);
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tcp));
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
        lock(&self.h2).insert(addr, sender.clone());
        Ok(H2Conn { sender, reused: false })
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
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

    fn put(&self, addr: SocketAddr, sender: SendRequest<Incoming>) {
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
    pub fn recycle(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<Incoming>, body: Incoming) -> PooledBody {
        PooledBody { inner: body, slot: Some((self.clone(), addr, sender)) }
    }

    /// Forgets every idle connection to endpoints not in `keep`.
    pub fn retain(&self, keep: &dyn Fn(&SocketAddr) -> bool) {
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        idle.retain(|a, _| keep(a));
        drop(idle);
        lock(&self.h2).retain(|a, _| keep(a));
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
    slot: Option<(Arc<Pool>, SocketAddr, SendRequest<Incoming>)>,
}

impl PooledBody {
    /// Wraps a response body of a multiplexed connection (nothing to
    /// return to the pool).
    pub fn shared(body: Incoming) -> PooledBody {
        PooledBody { inner: body, slot: None }
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
