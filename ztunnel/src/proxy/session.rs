//! TLS sessions of HBONE connections: rustls runs the handshake, then
//! [`super::record`] protects the traffic.
//!
//! The handshake is rustls' own, through its unbuffered API, with the
//! verifiers and certificate resolvers of [`tls`](super::tls); nothing about
//! who is trusted changes here. Once it completes, rustls hands over the
//! traffic secrets and keeps the key schedule ([`KernelConnection`]): when
//! either side updates its key (this side does after half of the suite's
//! confidentiality limit, at most 2^23 records, well inside AES-GCM's) rustls
//! derives the next secret.
//!
//! Why not rustls' buffered stream: see the `record` module — per received
//! byte it makes three copies in user space, here none (the AEAD writes the
//! plaintext into HTTP/2's read buffer), and per sent byte one, here none
//! for all but the record that starts each HTTP/2 write.
//!
//! - **Buffers**: received ciphertext waits in a buffer that offers the
//!   socket 64–256 KiB per `recv` and is released whenever it holds no
//!   partial record; sealed records wait in chunks (one per write from
//!   HTTP/2) released as the socket takes them. An idle connection holds
//!   neither.
//! - **Backpressure**: once [`WRITE_HIGH`] bytes of sealed records wait for
//!   the socket, a write waits until they are sent (a write takes at most
//!   what is left below the mark, and at least one record).
//! - **Closing**: `poll_shutdown` sends `close_notify` and then the FIN;
//!   a received `close_notify` (or a clean EOF between records) reads as
//!   EOF; an EOF inside a record is an error.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ExtractedSecrets, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::record::{self, Keys, PostHandshake, RecordError, content};

/// Room offered to one `recv` of ciphertext during a bulk transfer (the
/// last read brought at least a full record)...
const READ_ROOM: usize = 256 * 1024;
/// ...and otherwise. A connection whose reads are small (requests,
/// responses, CONNECTs) drains its buffer on every read and releases it
/// (an idle connection holds none), so each read allocates anew: 32 KiB
/// comes from the allocator's thread cache, 256 KiB took a trip through
/// its arena and back on every read (2.4% of the agents' CPU in the
/// connection-rate benchmark). Still room for nearly two whole records.
const QUIET_ROOM: usize = 32 * 1024;
/// Sealed bytes that may wait for the socket before a write waits.
pub const WRITE_HIGH: usize = 256 * 1024;
/// Longest post-handshake message accepted (a session ticket is a few
/// hundred bytes).
const MAX_HANDSHAKE: usize = 64 * 1024;
/// At most this many chunks go to one `writev`.
const MAX_IOV: usize = 16;

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// rustls' side of an established connection: the key schedule.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_tx_secret(),
            Self::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_rx_secret(),
            Self::Server(k) => k.update_rx_secret(),
        }
    }

    /// Records one key may seal before it must be replaced.
    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Self::Client(k) => k.negotiated_cipher_suite(),
            Self::Server(k) => k.negotiated_cipher_suite(),
        };
        suite.tls13().map_or(1 << 24, |s| s.common.confidentiality_limit)
    }

    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), io::Error> {
        match self {
            // Resumption is off (see `tls`); rustls checks the ticket and
            // stores nothing.
            Self::Client(k) => k.handle_new_session_ticket(body).map_err(invalid),
            // Only servers send tickets.
            Self::Server(_) => Err(invalid(RecordError::UnexpectedMessage(4))),
        }
    }
}

/// An established HBONE TLS connection (see the module docs).
pub struct TlsStream {
    io: TcpStream,
    kernel: Kernel,
    rx: Keys,
    tx: Keys,
    /// This side replaces its key after this many records.
    update_after: u64,
    /// Received ciphertext not opened yet (ends with a partial record, if
    /// any).
    rbuf: BytesMut,
    /// Opened content the caller's buffer had no room for.
    plain: Bytes,
    /// Sealed records waiting for the socket, each with how much of it was
    /// written already.
    wq: VecDeque<(Vec<u8>, usize)>,
    /// Bytes in `wq` not written yet.
    pending: usize,
    /// The peer's `close_notify` arrived (or a clean EOF).
    read_closed: bool,
    /// This side's `close_notify` is queued.
    write_closed: bool,
    /// The last read brought at least a full record's worth: the next is
    /// offered `READ_ROOM` rather than `QUIET_ROOM`.
    bulk: bool,
    /// The start of a post-handshake message continued in the next record.
    hs: Vec<u8>,
    /// A record failed after earlier ones had filled the caller's buffer:
    /// the bytes are returned first, this error with the next read.
    failed: Option<io::Error>,
    peer_certs: Vec<CertificateDer<'static>>,
    sni: Option<String>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tx_seq", &self.tx.seq())
            .field("rx_seq", &self.rx.seq())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// Either side's unbuffered connection, as the handshake driver needs it.
trait Handshaking: std::ops::DerefMut<Target = rustls::unbuffered::UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error>;
}

impl Handshaking for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Client(k)))
    }
}

impl Handshaking for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Server(k)))
    }
}

/// Runs the client side of a handshake on `io`.
pub async fn connect(config: Arc<ClientConfig>, name: ServerName<'static>, io: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
    TlsStream::establish(conn, io, None).await
}

/// Runs the server side of a handshake on `io`. The SNI the client sent is
/// kept (rustls' unbuffered server does not expose it), see
/// [`TlsStream::server_name`].
pub async fn accept(config: &Arc<ServerConfig>, io: TcpStream) -> io::Result<TlsStream> {
    let sni = Arc::new(OnceLock::new());
    let mut c = ServerConfig::clone(config);
    c.cert_resolver = Arc::new(SniRecorder { inner: c.cert_resolver.clone(), sni: sni.clone() });
    let conn = UnbufferedServerConnection::new(Arc::new(c)).map_err(invalid)?;
    TlsStream::establish(conn, io, Some(sni)).await
}

/// Remembers the SNI of the one handshake it serves.
#[derive(Debug)]
struct SniRecorder {
    inner: Arc<dyn ResolvesServerCert>,
    sni: Arc<OnceLock<String>>,
}

impl ResolvesServerCert for SniRecorder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let _ = self.sni.set(name.to_string());
        }
        self.inner.resolve(hello)
    }
}

/// Where the whole record starting at `at` in `buf` ends, if it is there.
fn record_end(buf: &[u8], at: usize) -> Option<usize> {
    let hdr = buf.get(at..at + record::HEADER)?;
    let end = at + record::HEADER + usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    (end <= buf.len()).then_some(end)
}

async fn read_more(io: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(16 * 1024);
    loop {
        io.readable().await?;
        match io.try_read_buf(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during the TLS handshake")),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

impl TlsStream {
    async fn establish<C: Handshaking>(
        mut conn: C,
        mut io: TcpStream,
        sni: Option<Arc<OnceLock<String>>>,
    ) -> io::Result<Self> {
        let mut incoming: Vec<u8> = Vec::new();
        let mut outgoing: Vec<u8> = Vec::new();
        // Bytes of `incoming` rustls has been offered (whole records).
        let mut offered = 0;
        loop {
            // rustls is offered whole records one more at a time, and none
            // once the handshake is complete: whatever follows (application
            // data, a key update, a ticket) is the record layer's. rustls
            // would otherwise act on a key update itself and keep the
            // answer it owes the peer to itself.
            if !conn.is_handshaking() {
                offered = 0;
            } else if offered == 0 {
                offered = record_end(&incoming, 0).unwrap_or(0);
            }
            let end = offered;
            let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..end]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    // rustls queued an alert saying why; send it (best
                    // effort) so the peer learns more than a reset.
                    let UnbufferedStatus { state, .. } = conn.process(&mut []);
                    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
                        let mut alert = vec![0; 64];
                        if let Ok(n) = enc.encode(&mut alert) {
                            let _ = io.write_all(&alert[..n]).await;
                        }
                    }
                    return Err(invalid(e));
                }
            };
            let mut blocked = false;
            let mut established = false;
            match state {
                ConnectionState::EncodeTlsData(mut enc) => {
                    let at = outgoing.len();
                    outgoing.resize(at + 16 * 1024, 0);
                    let n = match enc.encode(&mut outgoing[at..]) {
                        Err(EncodeError::InsufficientSize(s)) => {
                            outgoing.resize(at + s.required_size, 0);
                            enc.encode(&mut outgoing[at..])
                        }
                        other => other,
                    }
                    .map_err(|e| invalid(format!("{e:?}")))?;
                    outgoing.truncate(at + n);
                }
                ConnectionState::TransmitTlsData(t) => {
                    io.write_all(&outgoing).await?;
                    outgoing.clear();
                    t.done();
                }
                ConnectionState::BlockedHandshake => blocked = true,
                ConnectionState::WriteTraffic(_) => established = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during the TLS handshake"));
                }
                // Application data is never offered to rustls (it sees no
                // record after the one that completes the handshake), and
                // early (0-RTT) data is never enabled.
                _ => return Err(invalid("unexpected TLS state during the handshake")),
            }
            incoming.drain(..discard);
            offered -= discard.min(offered);
            if established && !conn.is_handshaking() {
                break;
            }
            // A server may send its first data before the client's last
            // handshake message arrived: that still needs reading.
            if blocked || established {
                // rustls needs more: the next whole record (a handshake
                // message may span several), or else more bytes.
                match record_end(&incoming, offered) {
                    Some(end) => offered = end,
                    None => read_more(&io, &mut incoming).await?,
                }
            }
        }
        let peer_certs = conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let (secrets, kernel) = conn.into_kernel().map_err(invalid)?;
        let rx = Keys::new(secrets.rx.0, &secrets.rx.1).map_err(invalid)?;
        let tx = Keys::new(secrets.tx.0, &secrets.tx.1).map_err(invalid)?;
        // Well inside the limit: a key update costs one small record.
        let update_after = kernel.confidentiality_limit().min(1 << 24) / 2;
        Ok(Self {
            io,
            kernel,
            rx,
            tx,
            update_after,
            rbuf: BytesMut::from(&incoming[..]),
            plain: Bytes::new(),
            wq: VecDeque::new(),
            pending: 0,
            read_closed: false,
            write_closed: false,
            failed: None,
            bulk: false,
            hs: Vec::new(),
            peer_certs,
            sni: sni.and_then(|s| s.get().cloned()),
        })
    }

    /// The peer's certificate chain (leaf first), as verified in the
    /// handshake.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certs
    }

    /// The SNI the client sent (server side).
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Replace this side's key after `records` records (tests use small
    /// values to exercise key updates).
    #[cfg(test)]
    pub fn update_after(&mut self, records: u64) {
        self.update_after = records;
    }

    /// Queues one record of `typ` with `content` (control messages).
    fn queue_control(&mut self, typ: u8, content: &[u8]) -> Result<(), RecordError> {
        let mut out = vec![0; record::sealed_len(content.len())];
        self.tx.seal(typ, content, &mut out)?;
        self.pending += out.len();
        self.wq.push_back((out, 0));
        Ok(())
    }

    /// Sends a key update under the current key and switches to the next.
    fn update_tx_key(&mut self) -> io::Result<()> {
        self.queue_control(content::HANDSHAKE, &record::KEY_UPDATE_NOT_REQUESTED).map_err(invalid)?;
        let (seq, secrets) = self.kernel.update_tx().map_err(invalid)?;
        self.tx = Keys::new(seq, &secrets).map_err(invalid)?;
        Ok(())
    }

    /// Acts on a control record's content.
    fn control(&mut self, typ: u8, msg: &[u8]) -> io::Result<()> {
        if !self.hs.is_empty() && typ != content::HANDSHAKE {
            // A handshake message was cut and something else came between.
            return Err(invalid(RecordError::Malformed("handshake message interleaved with other records")));
        }
        match typ {
            content::ALERT => {
                if record::alert(msg).map_err(invalid)? {
                    self.read_closed = true;
                }
            }
            content::HANDSHAKE => {
                let mut hs = std::mem::take(&mut self.hs);
                hs.extend_from_slice(msg);
                if hs.len() > MAX_HANDSHAKE {
                    return Err(invalid(RecordError::Malformed("oversized handshake message")));
                }
                let (msgs, used) = record::post_handshake(&hs).map_err(invalid)?;
                for m in msgs {
                    match m {
                        PostHandshake::KeyUpdate { update_requested } => {
                            // (`post_handshake` saw it end its record.)
                            let (seq, secrets) = self.kernel.update_rx().map_err(invalid)?;
                            self.rx = Keys::new(seq, &secrets).map_err(invalid)?;
                            // Nothing may follow this side's close_notify.
                            if update_requested && !self.write_closed {
                                self.update_tx_key()?;
                            }
                        }
                        PostHandshake::NewSessionTicket(body) => self.kernel.new_session_ticket(body)?,
                    }
                }
                hs.drain(..used);
                self.hs = hs;
            }
            other => return Err(invalid(RecordError::UnexpectedContent(other))),
        }
        Ok(())
    }

    /// Opens the complete records in `rbuf`: application data straight into
    /// `out` while it has room for a whole record, the rest into `plain`.
    #[allow(unsafe_code)]
    fn open_records(&mut self, out: &mut ReadBuf<'_>) -> io::Result<()> {
        let start = out.filled().len();
        while self.plain.is_empty() && !self.read_closed {
            let Some(len) = record::complete(&self.rbuf).map_err(invalid)? else { break };
            let room = len - record::HEADER - record::TAG;
            let (typ, n, ctl) = if out.remaining() >= room {
                // SAFETY: the AEAD writes all `room` bytes before anything
                // reads them (and on failure nothing is read); only the
                // content it wrote is then marked initialized.
                let dst = unsafe { as_bytes(&mut out.unfilled_mut()[..room]) };
                let (typ, n) = self.rx.open(&self.rbuf[..len], dst).map_err(invalid)?;
                if typ == content::APPLICATION_DATA {
                    // SAFETY: `n` bytes were written by the AEAD just now.
                    unsafe { out.assume_init(n) };
                    out.advance(n);
                    (typ, n, None)
                } else {
                    (typ, n, Some(dst[..n].to_vec()))
                }
            } else if out.filled().len() > start {
                // The caller has bytes; this record waits for the next read.
                break;
            } else {
                let mut dst = vec![0; room];
                let (typ, n) = self.rx.open(&self.rbuf[..len], &mut dst).map_err(invalid)?;
                dst.truncate(n);
                if typ == content::APPLICATION_DATA {
                    let mut b = Bytes::from(dst);
                    let k = out.remaining().min(n);
                    out.put_slice(&b.split_to(k));
                    self.plain = b;
                    (typ, n, None)
                } else {
                    (typ, n, Some(dst))
                }
            };
            self.rbuf.advance(len);
            match ctl {
                Some(msg) => self.control(typ, &msg[..n])?,
                None if !self.hs.is_empty() => {
                    return Err(invalid(RecordError::Malformed("handshake message interleaved with application data")));
                }
                None => debug_assert_eq!(typ, content::APPLICATION_DATA),
            }
        }
        if self.rbuf.is_empty() {
            // Nothing partial: release the buffer (an idle connection holds
            // none).
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what the socket has into `rbuf` (`copy::read_into`: a short
    /// read clears readiness without a second `recv`): `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let room = if self.bulk { READ_ROOM } else { QUIET_ROOM };
        // A read is offered at least a quarter of that.
        if self.rbuf.capacity() - self.rbuf.len() < room / 4 {
            // Moves a partial record (at most one, < 17 KiB) to the front
            // when the buffer is uniquely owned, else reallocates.
            self.rbuf.reserve(room - self.rbuf.len().min(room / 2));
        }
        let read = super::copy::read_into(&self.io, &mut self.rbuf);
        if let Ok(n) = read {
            self.bulk = n >= record::MAX_CONTENT;
        }
        if read.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) && self.rbuf.is_empty() {
            // Nothing there and nothing partial: hold no buffer while idle.
            self.rbuf = BytesMut::new();
        }
        read
    }

    /// Seals `bufs` (as much as the write budget allows) into one chunk:
    /// returns how many plaintext bytes it took.
    #[allow(unsafe_code)]
    fn seal_from(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let budget = WRITE_HIGH.saturating_sub(self.pending).max(record::MAX_CONTENT);
        let take = total.min(budget);
        if take == 0 {
            return Ok(0);
        }
        let records = take.div_ceil(record::MAX_CONTENT) as u64;
        if self.tx.seq().saturating_add(records) >= self.update_after {
            self.update_tx_key()?;
        }
        let size = take + records as usize * (record::sealed_len(0));
        let mut chunk: Vec<u8> = Vec::with_capacity(size);
        let (mut i, mut off, mut done) = (0, 0, 0);
        while done < take {
            let n = (take - done).min(record::MAX_CONTENT);
            while bufs[i].len() == off {
                i += 1;
                off = 0;
            }
            let at = chunk.len();
            let rec_len = record::sealed_len(n);
            // SAFETY: every byte of the record is written below (the header
            // and, by the AEAD, the ciphertext, type and tag; in the gathered
            // case the content first) before `set_len` exposes it; on an
            // error the length is not extended.
            let out = unsafe { as_bytes(&mut chunk.spare_capacity_mut()[..rec_len]) };
            if bufs[i].len() - off >= n {
                self.tx.seal(content::APPLICATION_DATA, &bufs[i][off..off + n], out).map_err(invalid)?;
                off += n;
            } else {
                // The record's content spans buffers (an HTTP/2 frame header
                // and the start of its payload): gather it, seal in place.
                let mut got = 0;
                while got < n {
                    while bufs[i].len() == off {
                        i += 1;
                        off = 0;
                    }
                    let k = (bufs[i].len() - off).min(n - got);
                    out[record::HEADER + got..record::HEADER + got + k].copy_from_slice(&bufs[i][off..off + k]);
                    got += k;
                    off += k;
                }
                self.tx.seal_in_place(content::APPLICATION_DATA, n, out).map_err(invalid)?;
            }
            // SAFETY: see above; `rec_len` more bytes are initialized.
            unsafe { chunk.set_len(at + rec_len) };
            done += n;
        }
        self.pending += chunk.len();
        self.wq.push_back((chunk, 0));
        Ok(take)
    }

    /// Writes queued records until none are left or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending > 0 {
            ready!(self.io.poll_write_ready(cx))?;
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for ((chunk, done), slot) in self.wq.iter().zip(iov.iter_mut()) {
                *slot = IoSlice::new(&chunk[*done..]);
                n_iov += 1;
            }
            match self.io.try_write_vectored(&iov[..n_iov]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(mut n) => {
                    self.pending -= n;
                    while n > 0 {
                        let Some((chunk, done)) = self.wq.front_mut() else { break };
                        let k = (chunk.len() - *done).min(n);
                        *done += k;
                        n -= k;
                        if *done == chunk.len() {
                            self.wq.pop_front();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Views memory the AEAD is about to write as bytes.
///
/// # Safety
/// Nothing may read a byte of the result before it has been written.
#[allow(unsafe_code)]
unsafe fn as_bytes(buf: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    // SAFETY: same layout; the caller guarantees write-before-read.
    unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.plain.is_empty() {
                let k = out.remaining().min(this.plain.len());
                out.put_slice(&this.plain.split_to(k));
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(e));
            }
            let before = out.filled().len();
            if let Err(e) = this.open_records(out) {
                if out.filled().len() == before {
                    return Poll::Ready(Err(e));
                }
                this.failed = Some(e);
                return Poll::Ready(Ok(()));
            }
            if this.pending > 0 {
                // A key update answered while reading goes out now, not
                // only with the next write. A failed write is the writer's
                // to report (the next write finds the socket broken).
                let _ = this.poll_send(cx);
            }
            if out.filled().len() > before || !this.plain.is_empty() || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            ready!(this.io.poll_read_ready(cx))?;
            match this.fill() {
                Ok(0) if this.rbuf.is_empty() => {
                    // EOF between records: the connection ended without
                    // close_notify. HTTP/2 above notices a cut frame.
                    this.read_closed = true;
                }
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed inside a TLS record",
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.pending >= WRITE_HIGH {
            ready!(this.poll_send(cx))?;
        }
        let n = this.seal_from(bufs)?;
        // Start sending at once; what the socket does not take now waits
        // for the flush that follows every write.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            this.queue_control(content::ALERT, &record::CLOSE_NOTIFY).map_err(invalid)?;
            this.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
