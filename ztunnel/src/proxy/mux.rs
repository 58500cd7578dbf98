//! HBONE connections as tasks: the sans-IO protocol of the `hbone` crate,
//! a transport (the TLS session), and the handles tunnels use.
//!
//! One [`Driver`] future per connection moves bytes between the transport
//! and the protocol state; tunnels reach that state through a [`Stream`]
//! handle (open or accepted), all behind one lock per connection. A
//! stream's whole asynchronous state is a [`Slot`]: the frames received and
//! not yet taken, one waker (a tunnel's copy polls both directions from one
//! task), and how the stream ended — some 80 bytes beside the protocol's
//! own few counters, where `h2` kept ~340 per stream.
//!
//! Wake-ups: a handle that queues frames wakes the driver only if the driver
//! is parked (it takes the driver's waker, so a burst of sends wakes it
//! once); the driver wakes a stream's task only for that stream's events.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use hbone::conn::StreamError;
use hbone::{Config, Connection, Event, Head, OpenError, Reason, Role};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a stream or connection operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The stream was reset (by the peer, a protocol error, or a GOAWAY
    /// before the peer took it).
    #[error("stream reset: {0}")]
    Reset(Reason),
    /// The connection is gone.
    #[error("HBONE connection closed: {0}")]
    Closed(Arc<str>),
    /// A new stream could not be opened.
    #[error("cannot open a stream: {0}")]
    Open(OpenError),
    /// A call that does not fit the stream's state.
    #[error("stream: {0}")]
    Stream(StreamError),
}

/// Received chunks waiting for a stream's handle: usually none or one, so
/// one is kept inline and a queue allocated only while more wait (a
/// `VecDeque` would keep its first allocation for the stream's life).
#[derive(Debug, Default)]
enum Chunks {
    #[default]
    None,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl Chunks {
    fn push(&mut self, b: Bytes) {
        *self = match std::mem::take(self) {
            Chunks::None => Chunks::One(b),
            Chunks::One(a) => Chunks::Many(VecDeque::from([a, b])),
            Chunks::Many(mut q) => {
                q.push_back(b);
                Chunks::Many(q)
            }
        };
    }

    fn pop(&mut self) -> Option<Bytes> {
        match self {
            Chunks::None => None,
            Chunks::One(_) => match std::mem::take(self) {
                Chunks::One(b) => Some(b),
                _ => None,
            },
            Chunks::Many(q) => {
                let b = q.pop_front();
                if q.is_empty() {
                    *self = Chunks::None;
                }
                b
            }
        }
    }
}

/// A stream's asynchronous state.
#[derive(Debug, Default)]
struct Slot {
    /// Received bytes not yet taken by the handle.
    recv: Chunks,
    /// The handle's task.
    waker: Option<Waker>,
    /// (Client) the response status, 0 until it arrives.
    status: u16,
    /// The peer ended its side.
    end: bool,
    /// How the stream was reset.
    reset: Option<Reason>,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

struct State {
    conn: Connection,
    slots: FxHashMap<u32, Slot>,
    /// The driver, while parked.
    driver: Option<Waker>,
    /// (Server) accepted streams not yet taken.
    accepted: VecDeque<(u32, Head)>,
    /// The task waiting in `accept`, or for a PING's answer.
    acceptor: Option<Waker>,
    pinger: Option<Waker>,
    /// Answers to PINGs received.
    pongs: u64,
    /// Set once the connection has ended; every call then fails with it.
    closed: Option<Arc<str>>,
    /// Bytes handed to the connection and not yet written to the transport.
    unsent: usize,
    /// Streams waiting for `unsent` to fall.
    starved: Vec<u32>,
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Hands the protocol's events to the streams they concern.
    fn dispatch(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Request { stream, head, .. } => {
                    // `end_stream` shows up as an empty end of data: a
                    // CONNECT with END_STREAM is a tunnel with nothing to
                    // send, which the copy handles like any EOF.
                    self.slots.insert(stream, Slot::default());
                    self.accepted.push_back((stream, head));
                    if let Some(w) = self.acceptor.take() {
                        w.wake();
                    }
                }
                Event::Response { stream, head, end_stream } => {
                    if let Some(s) = self.slots.get_mut(&stream) {
                        s.status = head.status.unwrap_or(0);
                        s.end |= end_stream;
                        s.wake();
                    }
                }
                Event::Data { stream, data, end } => {
                    if let Some(s) = self.slots.get_mut(&stream) {
                        if !data.is_empty() {
                            s.recv.push(data);
                        }
                        s.end |= end;
                        s.wake();
                    }
                }
                Event::Reset { stream, reason, .. } => {
                    if let Some(s) = self.slots.get_mut(&stream) {
                        s.reset = Some(reason);
                        s.wake();
                    }
                }
                Event::Writable { stream } => {
                    if let Some(s) = self.slots.get_mut(&stream) {
                        s.wake();
                    }
                }
                Event::GoAway { .. } => {
                    if let Some(w) = self.acceptor.take() {
                        w.wake();
                    }
                }
                Event::Pong { .. } => {
                    self.pongs += 1;
                    if let Some(w) = self.pinger.take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// The connection ended: every stream and waiter learns it.
    fn close(&mut self, why: Arc<str>) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(why);
        for s in self.slots.values_mut() {
            s.wake();
        }
        for w in [self.acceptor.take(), self.pinger.take()].into_iter().flatten() {
            w.wake();
        }
    }

    fn closed_err(&self) -> Option<MuxError> {
        self.closed.as_ref().map(|w| MuxError::Closed(w.clone()))
    }
}

/// A handle on one HBONE connection: opens (client) or accepts (server)
/// streams, pings, drains. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while the lock was held leaves a protocol state that may be
    // half-updated; the connection is failed rather than trusted.
    match state.lock() {
        Ok(g) => g,
        Err(p) => {
            let mut g = p.into_inner();
            g.close("internal error (a task panicked)".into());
            g
        }
    }
}

/// Starts a connection over `io` (after its TLS handshake): the handle,
/// and the driver that must be polled for anything to move.
pub fn start<T>(role: Role, config: Config, io: T) -> (Mux, Driver<T>) {
    let state = Arc::new(Mutex::new(State {
        conn: Connection::new(role, config),
        slots: FxHashMap::default(),
        driver: None,
        accepted: VecDeque::new(),
        acceptor: None,
        pinger: None,
        pongs: 0,
        closed: None,
        unsent: 0,
        starved: Vec::new(),
    }));
    let driver = Driver {
        state: state.clone(),
        io,
        rbuf: BytesMut::new(),
        wq: VecDeque::new(),
        flushed: true,
        eof: false,
        bulk: false,
    };
    (Mux { state }, driver)
}

impl Mux {
    /// (Client) opens a tunnel to `authority` for the source `forwarded`;
    /// bytes may be sent at once, before the answer.
    pub fn open(&self, authority: &str, forwarded: &str) -> Result<Stream, MuxError> {
        let mut st = lock(&self.state);
        if let Some(e) = st.closed_err() {
            return Err(e);
        }
        let id = st.conn.open(authority, forwarded).map_err(MuxError::Open)?;
        st.slots.insert(id, Slot::default());
        st.wake_driver();
        Ok(Stream { state: self.state.clone(), id, ended: false })
    }

    /// (Server) the next tunnel and its request head; `None` once the
    /// connection has ended or goes away with nothing more to accept.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<(Stream, Head)>> {
        let mut st = lock(&self.state);
        if let Some((id, head)) = st.accepted.pop_front() {
            return Poll::Ready(Some((Stream { state: self.state.clone(), id, ended: false }, head)));
        }
        if st.accepted.capacity() > 16 {
            // Not the room of the largest burst for the connection's life.
            st.accepted = VecDeque::new();
        }
        if st.closed.is_some() || !st.conn.accepting() {
            return Poll::Ready(None);
        }
        st.acceptor = Some(cx.waker().clone());
        Poll::Pending
    }

    /// [`Mux::poll_accept`] as a future.
    pub async fn accept(&self) -> Option<(Stream, Head)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Sends a PING and waits for its answer (or the connection's end).
    pub async fn ping(&self) -> Result<(), MuxError> {
        let before = {
            let mut st = lock(&self.state);
            if let Some(e) = st.closed_err() {
                return Err(e);
            }
            st.conn.ping(*b"hbone-ka");
            st.wake_driver();
            st.pongs
        };
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.state);
            if st.pongs > before {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = st.closed_err() {
                return Poll::Ready(Err(e));
            }
            st.pinger = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Graceful close: no new streams (a server announces it with GOAWAY
    /// and a PING round trip, §6.8); open ones run to their end, then the
    /// driver closes the connection.
    pub fn drain(&self) {
        let mut st = lock(&self.state);
        st.conn.drain();
        if let Some(w) = st.acceptor.take() {
            w.wake();
        }
        st.wake_driver();
    }

    /// The peer's preface and SETTINGS arrived.
    pub fn handshaken(&self) -> bool {
        lock(&self.state).conn.handshaken()
    }
}

/// One tunnel's stream. Dropping it before both sides ended resets the
/// stream (CANCEL).
pub struct Stream {
    state: Arc<Mutex<State>>,
    id: u32,
    /// This side ended the stream (END_STREAM sent or queued).
    ended: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    /// The stream's id.
    #[cfg(test)]
    pub fn id(&self) -> u32 {
        self.id
    }

    fn slot(st: &mut State, id: u32) -> Result<&mut Slot, MuxError> {
        let closed = st.closed_err();
        let slot = st.slots.get_mut(&id).ok_or(MuxError::Stream(StreamError::Unknown))?;
        if let Some(r) = slot.reset {
            return Err(MuxError::Reset(r));
        }
        match closed {
            Some(e) => Err(e),
            None => Ok(slot),
        }
    }

    /// (Client) the peer's answer to CONNECT: its status.
    pub fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Result<u16, MuxError>> {
        let mut st = lock(&self.state);
        // An answer that arrived counts even if a reset followed it (a
        // refusal, then RST_STREAM to stop the bytes sent early).
        if let Some(s) = st.slots.get(&self.id)
            && s.status != 0
        {
            return Poll::Ready(Ok(s.status));
        }
        let slot = Self::slot(&mut st, self.id)?;
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// (Server) answers the request; `end` ends this side with it.
    pub fn respond(&mut self, status: u16, end: bool) -> Result<(), MuxError> {
        let mut st = lock(&self.state);
        Self::slot(&mut st, self.id)?;
        st.conn.respond(self.id, status, end).map_err(MuxError::Stream)?;
        self.ended |= end;
        st.wake_driver();
        Ok(())
    }

    /// Sends what the windows allow of `data` (the rest stays); `end` ends
    /// this side once all of it is sent.
    pub fn send(&mut self, data: &mut Bytes, end: bool) -> Result<(), MuxError> {
        let mut st = lock(&self.state);
        Self::slot(&mut st, self.id)?;
        // What the windows allow, and what the connection's backlog does.
        let room = SEND_BACKLOG.saturating_sub(st.unsent);
        let window = st.conn.send_capacity(self.id);
        let take = window.min(room).min(data.len());
        let mut part = data.split_to(take);
        let last = end && data.is_empty();
        if !data.is_empty() {
            // Told when there is room again: by the peer's window update,
            // or by the driver once the backlog is written.
            if window <= room {
                st.conn.want_writable(self.id);
            } else if !st.starved.contains(&self.id) {
                st.starved.push(self.id);
            }
        }
        if take == 0 && !last {
            return Ok(());
        }
        st.conn.send_data(self.id, &mut part, last).map_err(MuxError::Stream)?;
        debug_assert!(part.is_empty());
        st.unsent += take;
        self.ended |= last;
        st.wake_driver();
        Ok(())
    }

    /// Ready once the stream may send (its windows are open and the
    /// connection's backlog has room), or failed.
    pub fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MuxError>> {
        let mut st = lock(&self.state);
        Self::slot(&mut st, self.id)?;
        let backlogged = st.unsent >= SEND_BACKLOG;
        let window = st.conn.send_capacity(self.id);
        if !backlogged && window > 0 {
            return Poll::Ready(Ok(()));
        }
        if window == 0 {
            st.conn.want_writable(self.id);
        }
        if backlogged && !st.starved.contains(&self.id) {
            st.starved.push(self.id);
        }
        if let Some(s) = st.slots.get_mut(&self.id) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next received bytes; `None` once the peer ended its side (after
    /// everything it sent). Take them with [`Stream::release`] once they
    /// have left.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, MuxError>>> {
        let mut st = lock(&self.state);
        let closed = st.closed_err();
        let Some(slot) = st.slots.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(MuxError::Stream(StreamError::Unknown))));
        };
        // What arrived before a reset or the connection's end is still
        // delivered; the failure comes after it.
        if let Some(b) = slot.recv.pop() {
            return Poll::Ready(Some(Ok(b)));
        }
        // A peer that ended its side cleanly and then reset the stream
        // (e.g. NO_ERROR: "stop sending") delivered everything.
        if slot.end {
            return Poll::Ready(None);
        }
        if let Some(r) = slot.reset {
            return Poll::Ready(Some(Err(MuxError::Reset(r))));
        }
        if let Some(e) = closed {
            return Poll::Ready(Some(Err(e)));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// `n` received bytes have left (to the pod): the peer may send as much
    /// again.
    pub fn release(&mut self, n: usize) {
        let mut st = lock(&self.state);
        st.conn.release(self.id, n);
        if st.conn.wants_transmit() {
            st.wake_driver();
        }
    }

    /// Resets the stream.
    pub fn reset(&mut self, reason: Reason) {
        let mut st = lock(&self.state);
        st.conn.reset(self.id, reason);
        if let Some(s) = st.slots.get_mut(&self.id) {
            s.reset.get_or_insert(reason);
        }
        st.wake_driver();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        st.slots.remove(&self.id);
        // Nothing happens to a stream both sides have ended already. One
        // whose peer still sends after this side ended (a refusal) is told
        // to stop, which is no error (RFC 9113 §8.1).
        st.conn.reset(self.id, if self.ended { Reason::NO_ERROR } else { Reason::CANCEL });
        if st.conn.wants_transmit() || st.conn.is_done() {
            st.wake_driver();
        }
    }
}

/// Drives one connection: reads and decrypts what arrives, hands it to
/// the protocol, writes what the protocol queued. Resolves when the
/// connection has ended (with why, for the log).
pub struct Driver<T> {
    state: Arc<Mutex<State>>,
    io: T,
    rbuf: BytesMut,
    wq: VecDeque<Bytes>,
    /// Everything written was flushed.
    flushed: bool,
    eof: bool,
    /// The last read was large.
    bulk: bool,
}

/// Room offered to one read while reads are small (frames of new tunnels,
/// requests and responses)...
const READ_MIN: usize = 32 * 1024;
/// ...and during a bulk transfer (the TLS layer decrypts records straight
/// into it).
const READ_BULK: usize = 256 * 1024;
/// Bytes tunnels may queue on a connection ahead of its transport. Bytes
/// read from a pod are encrypted soon after, while still in the cache; the
/// windows alone (megabytes) would let a fast pod's bytes pile up behind a
/// busy socket and go cold (ten per cent of a bulk transfer's throughput).
const SEND_BACKLOG: usize = 512 * 1024;

/// At most this many buffers per vectored write.
const MAX_IOV: usize = 32;

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    fn fail(&mut self, why: Arc<str>) -> Poll<Result<(), Arc<str>>> {
        lock(&self.state).close(why.clone());
        Poll::Ready(Err(why))
    }

    /// Reads what the transport has; `Ready(Ok(true))` when bytes came.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.eof {
            return Poll::Pending;
        }
        // DATA payloads are handed on as they arrive (see
        // `hbone::conn`), so what stays in the buffer between reads is at
        // most a partial frame header or small control frame: offering a
        // fixed room never makes the buffer grow by copying a frame.
        let room = if self.bulk { READ_BULK } else { READ_MIN };
        self.rbuf.reserve(room);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Ok(n)) => {
                self.bulk = n >= READ_MIN / 2;
                let mut st = lock(&self.state);
                let r = st.conn.recv(&mut self.rbuf);
                st.dispatch();
                if !st.conn.accepting()
                    && let Some(w) = st.acceptor.take()
                {
                    // A drain's round trip ended: nothing more to accept.
                    w.wake();
                }
                if let Err(e) = r {
                    st.close(format!("protocol error: {e}").into());
                }
                if self.rbuf.is_empty() {
                    // Nothing partial: an idle connection holds no buffer.
                    self.rbuf = BytesMut::new();
                }
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes queued bytes; `Ready(Ok(()))` when all were written and
    /// flushed.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.wq.is_empty() {
                let mut st = lock(&self.state);
                let mut out = Vec::new();
                st.conn.transmit(&mut out);
                drop(st);
                self.wq.extend(out);
            }
            if self.wq.is_empty() {
                if self.wq.capacity() > MAX_IOV {
                    self.wq = VecDeque::new();
                }
                if !self.flushed {
                    std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    self.flushed = true;
                }
                return Poll::Ready(Ok(()));
            }
            let slices: Vec<IoSlice<'_>> = self.wq.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?;
            drop(slices);
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.flushed = false;
            {
                let mut st = lock(&self.state);
                st.unsent = st.unsent.saturating_sub(n);
                if st.unsent < SEND_BACKLOG / 2 && !st.starved.is_empty() {
                    let starved = std::mem::take(&mut st.starved);
                    for id in starved {
                        if let Some(s) = st.slots.get_mut(&id) {
                            s.wake();
                        }
                    }
                }
            }
            let mut left = n;
            while left > 0 {
                let Some(front) = self.wq.front_mut() else { break };
                if front.len() <= left {
                    left -= front.len();
                    self.wq.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = Result<(), Arc<str>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            {
                let mut st = lock(&this.state);
                if let Some(why) = st.closed.clone() {
                    drop(st);
                    // A protocol error still sends its GOAWAY, best effort.
                    let _ = this.poll_write_all(cx);
                    return Poll::Ready(Err(why));
                }
                st.driver = Some(cx.waker().clone());
            }
            let wrote = match this.poll_write_all(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return this.fail(format!("write: {e}").into()),
                Poll::Pending => false,
            };
            if wrote && lock(&this.state).conn.is_done() {
                let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                lock(&this.state).close("closed".into());
                return Poll::Ready(Ok(()));
            }
            match this.poll_read_some(cx) {
                Poll::Ready(Ok(true)) => {
                    // Let the tunnels take what this read delivered (write it
                    // to their pods, release their windows) before reading
                    // more: reading until the socket is drained first piled
                    // up pieces that went cold and delayed window updates,
                    // ~10% of a bulk transfer's throughput. What the read
                    // queued (PING answers, window updates) goes first.
                    let _ = this.poll_write_all(cx);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(false)) => return this.fail("peer closed the connection".into()),
                Poll::Ready(Err(e)) => return this.fail(format!("read: {e}").into()),
                Poll::Pending => {}
            }
            // Nothing to read; go on only if a handle queued frames since.
            if wrote && lock(&this.state).conn.wants_transmit() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests;
