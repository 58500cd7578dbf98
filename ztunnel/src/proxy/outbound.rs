//! The client side of HBONE: tunnels to peer nodes' proxies, pooled.
//!
//! Connections are keyed by (source identity, destination identity, peer
//! proxy address): the TLS client certificate is the source workload's and
//! the server must prove the destination workload's identity, so a
//! connection can carry only flows between those two. Flows multiplex as
//! HTTP/2 streams (the server bounds concurrent streams; extra flows wait
//! for capacity); broken connections are dropped from the pool and
//! re-established on the next flow. Each connection is driven by its own
//! task, which also pings the peer (a connection whose peer stops
//! answering is dropped) and closes it after [`IDLE_TIMEOUT`] without
//! tunnels; the pool forgets closed ones. A connection that once carried
//! more than [`RETIRE_AFTER_PEAK`] tunnels at a time is closed as soon as
//! its last tunnel ends (see there).
//!
//! HTTP/2 is the `hbone` crate's, driven by `mux`, rather than hyper's
//! CONNECT upgrade or the general-purpose `h2`: the copy hands chunks to the
//! stream without an extra copy or a task and channel per tunnel, sends the
//! pod's first bytes right behind the CONNECT (a new stream has its window
//! at once), and a stream costs a few counters instead of ~340 bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ca::SpiffeId;
use hbone::Role;
use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{debug, info};

use super::metrics::{ConnLabels, PairMetrics, ProxyMetrics};
use super::mux::{self, Mux, Stream};
use super::{KEEPALIVE_INTERVAL, keepalive, mux_config, tls};
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
    /// The peer refused the tunnel (only from waiting for the answer, as
    /// `connect` does; `open` leaves the answer to the copy).
    #[cfg_attr(not(test), expect(dead_code))]
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
type Key = (SpiffeId, Arc<str>, SpiffeId, SocketAddr);

/// Streams per pooled connection before another connection is opened
/// (bounds head-of-line blocking and per-connection flow-control sharing).
/// Each connection costs ~45 KB (TLS and HTTP/2 buffers, header tables,
/// stream slab) on both nodes, so 10,000 tunnels over 100-stream
/// connections spent 4 MB per agent on them; over 1000-stream connections,
/// 0.4 MB. The server allows twice as many, so a stream the client has
/// already seen end but the server has not yet is never refused.
pub(crate) const STREAMS_PER_CONNECTION: usize = 1000;
/// A connection's stream count once it is closed: above any real count, so
/// no new tunnel can take a slot on it.
const CLOSED: usize = usize::MAX / 2;
/// A pooled connection with no tunnel for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A connection that once carried more tunnels than this at a time is
/// closed (gracefully) as soon as it carries none, instead of idling in the
/// pool. HTTP/2 keeps a connection's stream table and frame queue at the
/// size of the largest burst it has seen (~0.6 KB per tunnel of the peak,
/// on each node) for as long as the connection lives: after a burst of a
/// thousand tunnels that is ~0.6 MB per connection and side, held until
/// the idle timeout, or forever while a trickle keeps the connection in
/// use. Retiring it costs the next tunnel one TLS handshake; a pair of
/// workloads with steady traffic below this never pays it.
pub(crate) const RETIRE_AFTER_PEAK: usize = 64;

/// The pooled connections of one key.
type Conns = Arc<Mutex<Vec<Pooled>>>;

/// One pooled HTTP/2 connection, its state and the counters of its
/// identity pair.
struct Pooled {
    mux: Mux,
    state: Arc<ConnState>,
    pair: Arc<PairMetrics>,
}

/// What the pool, the tunnels and a connection's task share about it.
struct ConnState {
    /// Tunnels open on it, or [`CLOSED`] and more once it may take none.
    streams: AtomicUsize,
    /// The most tunnels it has carried at once.
    peak: AtomicUsize,
    /// Above this peak it is retired when its last tunnel ends.
    retire_after: usize,
    /// Tells its task that it was retired.
    retired: tokio::sync::Notify,
}

impl Pooled {
    fn is_closed(&self) -> bool {
        self.state.streams.load(Ordering::Acquire) >= CLOSED
    }

    /// Takes a stream slot if the connection is open and has one of its
    /// `limit` free.
    fn take_slot(&self, limit: usize) -> bool {
        let taken =
            self.state.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        match taken {
            Ok(before) => {
                self.state.peak.fetch_max(before + 1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// A stream slot on a pooled connection, given back on drop.
pub struct Slot(Arc<ConnState>);

impl Drop for Slot {
    fn drop(&mut self) {
        let state = &self.0;
        let before = state.streams.fetch_sub(1, Ordering::AcqRel);
        // The last tunnel of a connection that has seen a large burst:
        // retire it, unless a new tunnel took a slot in the meantime.
        if before == 1
            && state.peak.load(Ordering::Relaxed) > state.retire_after
            && state.streams.compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            state.retired.notify_one();
        }
    }
}

/// A tunnel whose CONNECT is on its way: bytes may be sent at once; the
/// peer's answer arrives on the stream (see `copy::client`). Dropping it
/// resets the stream and frees its slot.
pub struct Tunnel {
    /// The stream.
    pub stream: Stream,
    /// The stream's slot on its connection.
    pub slot: Slot,
    /// The counters of the tunnel's identity pair.
    pub pair: Arc<PairMetrics>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("streams_on_connection", &self.slot.0.streams.load(Ordering::Relaxed)).finish()
    }
}

/// The tunnel client.
pub struct Outbound {
    cache: Arc<SecretCache>,
    /// Connections per key. Each key has its own lock, held while a new
    /// connection for that key is dialled (tunnels for the same key wait
    /// and then share it); the map's lock is held only to find the entry,
    /// so a slow or unreachable peer never delays tunnels to other peers.
    pool: std::sync::Mutex<HashMap<Key, Conns>>,
    timeout: Duration,
    /// Tunnels per connection ([`STREAMS_PER_CONNECTION`]; tests lower it).
    streams_per_connection: usize,
    /// [`RETIRE_AFTER_PEAK`] (tests lower it).
    retire_after: usize,
    metrics: Arc<ProxyMetrics>,
}

impl Outbound {
    /// A client using certificates from `cache`, counting tunnels in
    /// `metrics`.
    pub fn new(cache: Arc<SecretCache>, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            cache,
            pool: std::sync::Mutex::new(HashMap::new()),
            timeout: Duration::from_secs(10),
            streams_per_connection: STREAMS_PER_CONNECTION,
            retire_after: RETIRE_AFTER_PEAK,
            metrics,
        }
    }

    /// The same with another bound on tunnels per connection.
    #[cfg(test)]
    pub fn with_streams_per_connection(mut self, n: usize) -> Self {
        self.streams_per_connection = n;
        self
    }

    /// The same with another peak above which a connection is retired.
    #[cfg(test)]
    pub fn with_retire_after(mut self, n: usize) -> Self {
        self.retire_after = n;
        self
    }

    /// Number of open pooled connections.
    #[cfg(test)]
    pub async fn pool_size(&self) -> usize {
        let all: Vec<Conns> = self.map().values().cloned().collect();
        let mut n = 0;
        for conns in all {
            n += conns.lock().await.iter().filter(|p| !p.is_closed()).count();
        }
        n
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Conns>> {
        // The map holds no invariant a panic could break half-way.
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets keys whose connections are all closed, and keys whose client
    /// certificate is no longer current (their connections close once
    /// their streams end). Keys in use right now (locked) stay.
    fn prune(&self) {
        self.map().retain(|(src, serial, _, _), conns| {
            let Ok(mut conns) = conns.try_lock() else { return true };
            conns.retain(|p| !p.is_closed());
            !conns.is_empty() && self.cache.cert(src).is_some_and(|c| &c.serial == serial)
        });
    }

    /// Opens a connection for `key`; its task removes it from `conns` when
    /// it is retired.
    async fn dial(&self, key: &Key, conns: &Conns) -> Result<(Mux, Arc<ConnState>), OutboundError> {
        let (src, _, dst, peer) = key;
        let config = tls::client_config(&self.cache, src, dst).map_err(|e| OutboundError::Http(e.to_string()))?;
        let tcp = TcpStream::connect(peer).await.map_err(|e| OutboundError::Connect(*peer, e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(tls::sni_for(dst)).map_err(|e| OutboundError::Http(e.to_string()))?;
        let stream = super::session::connect(config, name, tcp).await.map_err(|e| OutboundError::Tls(*peer, e))?;
        // This side opens every stream; the peer may open none.
        let (mux, driver) = mux::start(Role::Client, mux_config(0), stream);
        // One slot taken for the tunnel that dialled.
        let state = Arc::new(ConnState {
            streams: AtomicUsize::new(1),
            peak: AtomicUsize::new(1),
            retire_after: self.retire_after,
            retired: tokio::sync::Notify::new(),
        });
        let shared = state.clone();
        let pooled_in = Arc::downgrade(conns);
        let gauge = self.metrics.hbone_connection("outbound");
        let peer = *peer;
        let handle = mux.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            let mut conn = driver;
            let ka = keepalive(handle.clone());
            tokio::pin!(ka);
            let idle = async {
                let mut idle_for = Duration::ZERO;
                loop {
                    tokio::time::sleep(KEEPALIVE_INTERVAL).await;
                    idle_for = if shared.streams.load(Ordering::Acquire) == 0 {
                        idle_for + KEEPALIVE_INTERVAL
                    } else {
                        Duration::ZERO
                    };
                    // Closing only succeeds while no tunnel holds a slot.
                    if idle_for >= IDLE_TIMEOUT
                        && shared.streams.compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    {
                        return;
                    }
                }
            };
            let retired = tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "HBONE client connection ended");
                    }
                    false
                }
                why = &mut ka => {
                    info!(%peer, reason = why, "HBONE client connection dropped");
                    false
                }
                () = idle => {
                    debug!(%peer, "idle HBONE client connection closed");
                    false
                }
                () = shared.retired.notified() => true,
            };
            // Whatever ended it, no new tunnel may pick it from the pool
            // (the idle and retire paths have already marked it).
            let _ = shared
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < CLOSED).then_some(n + CLOSED));
            if let Some(conns) = pooled_in.upgrade() {
                conns.lock().await.retain(|p| !Arc::ptr_eq(&p.state, &shared));
            }
            if retired {
                debug!(%peer, "HBONE client connection retired after a burst");
            }
            // Closed gracefully: GOAWAY, then the driver ends once no stream
            // is left and what the last tunnel queued (its END_STREAM) is
            // flushed. Bounded, as a peer may never answer.
            handle.drain();
            let _ = tokio::time::timeout(super::KEEPALIVE_TIMEOUT, &mut conn).await;
        });
        Ok((mux, state))
    }

    /// A connection with a free stream slot (taken), dialling a new one when
    /// all pooled connections are full.
    async fn sender(&self, key: &Key) -> Result<(Mux, Slot, Arc<PairMetrics>), OutboundError> {
        let entry = self.map().entry(key.clone()).or_default().clone();
        let mut conns = entry.lock().await;
        if let Some(p) = conns.iter().find(|p| p.take_slot(self.streams_per_connection)) {
            return Ok((p.mux.clone(), Slot(p.state.clone()), p.pair.clone()));
        }
        // Only when a connection must be opened: sweep out closed ones, and
        // other keys' leftovers (not on every tunnel).
        conns.retain(|p| !p.is_closed());
        self.prune();
        let (mux, state) = self.dial(key, &entry).await?;
        let (src, _, dst, _) = key;
        let pair = self.metrics.pair(ConnLabels {
            direction: "outbound",
            source_identity: src.to_string(),
            destination_identity: dst.to_string(),
        });
        conns.push(Pooled { mux: mux.clone(), state: state.clone(), pair: pair.clone() });
        drop(conns);
        // A key pruned while this dial ran (its entry was locked, so it was
        // kept) is back in the map if it had been removed.
        self.map().entry(key.clone()).or_insert(entry);
        Ok((mux, Slot(state), pair))
    }

    /// Opens a tunnel for the flow `src_addr` → `dst_addr` through the proxy
    /// at `peer`. Returns once the CONNECT is sent, without waiting for the
    /// answer.
    pub async fn open(
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
        let fut = async {
            let (mux, slot, pair) = self.sender(&key).await?;
            // The source port makes the Forwarded value different on every
            // tunnel: it is sent as a literal that touches neither side's
            // HPACK table (see `hbone::headers`).
            let stream = mux
                .open(&dst_addr.to_string(), &format!("for=\"{src_addr}\""))
                .map_err(|e| OutboundError::Http(e.to_string()))?;
            Ok::<_, OutboundError>(Tunnel { stream, slot, pair })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| OutboundError::Timeout)?
    }

    /// Opens a tunnel and waits for the peer to accept it (tests, tools):
    /// a byte stream over the tunnel.
    #[cfg(test)]
    pub async fn connect(
        &self,
        src: &SpiffeId,
        src_addr: SocketAddr,
        dst: &SpiffeId,
        dst_addr: SocketAddr,
        peer: SocketAddr,
    ) -> Result<test_io::Stream, OutboundError> {
        let mut t = self.open(src, src_addr, dst, dst_addr, peer).await?;
        let status = tokio::time::timeout(self.timeout, std::future::poll_fn(|cx| t.stream.poll_response(cx)))
            .await
            .map_err(|_| OutboundError::Timeout)?
            .map_err(|e| OutboundError::Http(e.to_string()))?;
        if status != 200 {
            return Err(OutboundError::Refused(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)));
        }
        Ok(test_io::Stream { stream: t.stream, buf: bytes::Bytes::new(), _slot: t.slot })
    }
}

/// A byte-stream view of a tunnel for tests.
#[cfg(test)]
pub mod test_io {
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use bytes::{Buf, Bytes};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    fn io_err(e: super::mux::MuxError) -> std::io::Error {
        std::io::Error::other(e)
    }

    /// An accepted tunnel.
    pub struct Stream {
        pub(super) stream: super::Stream,
        pub(super) buf: Bytes,
        pub(super) _slot: super::Slot,
    }

    impl std::fmt::Debug for Stream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Stream").field("stream_id", &self.stream.id()).finish()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            while self.buf.is_empty() {
                match ready!(self.stream.poll_data(cx)) {
                    Some(Ok(b)) => {
                        self.stream.release(b.len());
                        self.buf = b;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                    None => return Poll::Ready(Ok(())),
                }
            }
            let n = out.remaining().min(self.buf.len());
            out.put_slice(&self.buf[..n]);
            self.buf.advance(n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            ready!(self.stream.poll_capacity(cx)).map_err(io_err)?;
            let mut b = Bytes::copy_from_slice(buf);
            self.stream.send(&mut b, false).map_err(io_err)?;
            Poll::Ready(Ok(buf.len() - b.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.stream.send(&mut Bytes::new(), true).map_err(io_err)?;
            Poll::Ready(Ok(()))
        }
    }
}
