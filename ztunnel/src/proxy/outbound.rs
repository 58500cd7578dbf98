//! The client side of HBONE: tunnels to peer nodes' proxies, pooled.
//!
//! Connections are keyed by (source identity, destination identity, peer
//! proxy address): the TLS client certificate is the source workload's and
//! the server must prove the destination workload's identity, so a
//! connection can carry only flows between those two. Flows multiplex as
//! HTTP/2 streams (the server bounds concurrent streams; extra flows wait
//! for capacity); broken connections are dropped from the pool and
//! re-established on the next flow. Idle connections are closed by the
//! HTTP/2 keepalive and the pool forgets closed ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ca::SpiffeId;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::debug;

use super::tls;
use crate::identity::SecretCache;

/// Why a tunnel could not be opened. The caller resets the original
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No certificate for the source identity (fail closed).
    #[error("no certificate for {0}")]
    NoCertificate(SpiffeId),
    /// TCP connect to the peer proxy failed.
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The TLS handshake failed (e.g. the peer is not the expected identity).
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    /// HTTP/2 failure.
    #[error("HTTP/2: {0}")]
    Http(String),
    /// The peer refused the tunnel.
    #[error("peer answered {0}")]
    Refused(StatusCode),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// Pool key: source identity *and its certificate serial*, destination
/// identity, peer proxy. After a renewal new flows open a connection with
/// the new certificate; the old connection keeps its streams until they end
/// and then idles out.
type Key = (SpiffeId, String, SpiffeId, SocketAddr);

/// Streams per pooled connection before another connection is opened
/// (bounds head-of-line blocking and per-connection flow-control sharing;
/// the server allows more).
const STREAMS_PER_CONNECTION: usize = 100;

/// One pooled HTTP/2 connection and its number of open tunnels.
struct Pooled {
    send: SendRequest<Empty<Bytes>>,
    streams: Arc<AtomicUsize>,
}

/// An open tunnel. Dropping it closes the stream and frees its slot in the
/// pooled connection.
pub struct Tunnel {
    io: TokioIo<Upgraded>,
    streams: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("streams_on_connection", &self.streams.load(Ordering::Relaxed)).finish()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The tunnel client.
pub struct Outbound {
    cache: Arc<SecretCache>,
    pool: Mutex<HashMap<Key, Vec<Pooled>>>,
    timeout: Duration,
}

impl Outbound {
    /// A client using certificates from `cache`.
    pub fn new(cache: Arc<SecretCache>) -> Self {
        Self { cache, pool: Mutex::new(HashMap::new()), timeout: Duration::from_secs(10) }
    }

    /// Number of pooled connections (closed ones are pruned first).
    #[cfg(test)]
    pub async fn pool_size(&self) -> usize {
        let mut pool = self.pool.lock().await;
        pool.values_mut().for_each(|v| v.retain(|p| !p.send.is_closed()));
        pool.values().map(Vec::len).sum()
    }

    /// Forgets closed connections, and connections whose client certificate
    /// is no longer current (they close once their streams end).
    fn prune(&self, pool: &mut HashMap<Key, Vec<Pooled>>) {
        pool.retain(|(src, serial, _, _), conns| {
            conns.retain(|p| !p.send.is_closed());
            !conns.is_empty() && self.cache.cert(src).is_some_and(|c| &c.serial == serial)
        });
    }

    async fn dial(&self, key: &Key) -> Result<SendRequest<Empty<Bytes>>, OutboundError> {
        let (src, _, dst, peer) = key;
        let config = tls::client_config(&self.cache, src, dst).map_err(|e| OutboundError::Http(e.to_string()))?;
        let tcp = TcpStream::connect(peer).await.map_err(|e| OutboundError::Connect(*peer, e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(tls::sni_for(dst)).map_err(|e| OutboundError::Http(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| OutboundError::Tls(*peer, e))?;
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(1 << 20);
        let (send, conn) = b.handshake(TokioIo::new(stream)).await.map_err(|e| OutboundError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "HBONE client connection ended");
            }
        });
        Ok(send)
    }

    /// A connection with a free stream slot (taken), dialling a new one when
    /// all pooled connections are full.
    async fn sender(&self, key: &Key) -> Result<(SendRequest<Empty<Bytes>>, Arc<AtomicUsize>), OutboundError> {
        let mut pool = self.pool.lock().await;
        if let Some(p) = pool.get(key).and_then(|conns| {
            conns.iter().find(|p| !p.send.is_closed() && p.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)
        }) {
            p.streams.fetch_add(1, Ordering::Relaxed);
            return Ok((p.send.clone(), p.streams.clone()));
        }
        // Only when a connection must be opened: sweep out closed and
        // superseded ones (not on every tunnel).
        self.prune(&mut pool);
        let send = self.dial(key).await?;
        let streams = Arc::new(AtomicUsize::new(1));
        pool.entry(key.clone()).or_default().push(Pooled { send: send.clone(), streams: streams.clone() });
        Ok((send, streams))
    }

    /// Opens a tunnel for the flow `src_addr` → `dst_addr` through the proxy
    /// at `peer`.
    pub async fn connect(
        &self,
        src: &SpiffeId,
        src_addr: SocketAddr,
        dst: &SpiffeId,
        dst_addr: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Tunnel, OutboundError> {
        let Some(cert) = self.cache.cert(src) else {
            return Err(OutboundError::NoCertificate(src.clone()));
        };
        let key = (src.clone(), cert.serial.clone(), dst.clone(), peer);
        let (mut send, streams) =
            tokio::time::timeout(self.timeout, self.sender(&key)).await.map_err(|_| OutboundError::Timeout)??;
        // From here the slot is ours: the guard gives it back on any exit.
        let guard = SlotGuard(Some(streams));
        let fut = async {
            send.ready().await.map_err(|e| OutboundError::Http(e.to_string()))?;
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(dst_addr.to_string())
                .header("forwarded", format!("for=\"{src_addr}\""))
                .body(Empty::new())
                .map_err(|e| OutboundError::Http(e.to_string()))?;
            let resp = send.send_request(req).await.map_err(|e| OutboundError::Http(e.to_string()))?;
            if resp.status() != StatusCode::OK {
                return Err(OutboundError::Refused(resp.status()));
            }
            let up = hyper::upgrade::on(resp).await.map_err(|e| OutboundError::Http(e.to_string()))?;
            Ok(TokioIo::new(up))
        };
        let io = tokio::time::timeout(self.timeout, fut).await.map_err(|_| OutboundError::Timeout)??;
        Ok(Tunnel { io, streams: guard.take() })
    }
}

/// Returns a taken stream slot unless handed over to a [`Tunnel`].
struct SlotGuard(Option<Arc<AtomicUsize>>);

impl SlotGuard {
    fn take(mut self) -> Arc<AtomicUsize> {
        // `take` leaves None, so Drop below does nothing.
        self.0.take().unwrap_or_default()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
