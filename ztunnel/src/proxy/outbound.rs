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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ca::SpiffeId;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
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

/// The tunnel client.
pub struct Outbound {
    cache: Arc<SecretCache>,
    pool: Mutex<HashMap<Key, SendRequest<Empty<Bytes>>>>,
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
        pool.retain(|_, s| !s.is_closed());
        pool.len()
    }

    /// Forgets pooled connections whose client certificate is no longer
    /// current (they close once their streams end).
    async fn prune_superseded(&self, pool: &mut HashMap<Key, SendRequest<Empty<Bytes>>>) {
        pool.retain(|(src, serial, _, _), s| {
            !s.is_closed() && self.cache.cert(src).is_some_and(|c| &c.serial == serial)
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

    async fn sender(&self, key: &Key) -> Result<SendRequest<Empty<Bytes>>, OutboundError> {
        let mut pool = self.pool.lock().await;
        if !pool.contains_key(key) {
            self.prune_superseded(&mut pool).await;
        }
        if let Some(s) = pool.get(key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = self.dial(key).await?;
        pool.insert(key.clone(), s.clone());
        Ok(s)
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
    ) -> Result<TokioIo<Upgraded>, OutboundError> {
        let Some(cert) = self.cache.cert(src) else {
            return Err(OutboundError::NoCertificate(src.clone()));
        };
        let key = (src.clone(), cert.serial.clone(), dst.clone(), peer);
        let fut = async {
            let mut send = self.sender(&key).await?;
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
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Timeout),
        }
    }
}
