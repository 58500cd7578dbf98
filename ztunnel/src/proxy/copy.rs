//! Moving bytes between a pod's TCP connection and its HBONE stream.
//!
//! The copy talks to the stream directly (no `AsyncRead` / `AsyncWrite`
//! adaptor in between), so a byte is copied once per side in user space:
//! from the pod's socket into a chunk handed to the stream as is, or from a
//! received DATA frame straight into the pod's socket.
//!
//! - **Memory**: an idle tunnel holds no buffer. Reads go into a per-thread
//!   slab; each read's bytes are split off it (reference-counted, no copy)
//!   and live only until the connection has written them; a chunk that
//!   must wait for the peer's window is copied out first, so a stalled
//!   tunnel does not pin a whole slab. Received frames are held only until
//!   the pod's socket takes them.
//! - **Backpressure**: data is handed to the stream only as its flow
//!   control window allows (no unbounded send buffer), and the receive
//!   window is released only once the bytes are in the pod's socket, so a
//!   slow reader slows the peer, never grows a buffer.
//! - **Early data**: on the client side the copy may start before the
//!   peer's answer to CONNECT has arrived; bytes from the pod flow at once
//!   (a new stream has the peer's initial window at once, so they leave
//!   with the CONNECT, saving a round trip per new connection), and bytes
//!   towards the pod only after a `200`. Any other answer ends the copy
//!   with [`CopyError::Refused`]. On the server side the `200` of a client
//!   that sent early waits (briefly) for the pod's first bytes and travels
//!   with them ([`server`]).
//! - **Half-close**: EOF from the pod ends the stream (END_STREAM); the
//!   peer's END_STREAM shuts down writing towards the pod (or, when the
//!   pod's side has ended already, the close that follows sends the FIN).
//!   The copy ends when both directions have.
//! - **Syscalls**: a read shorter than the space offered means the socket's
//!   queue is empty, so its readiness is cleared there and then instead of
//!   by one more `recv` returning `EAGAIN` (see [`read_into`] for why
//!   that is race-free).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hbone::Reason;
use http::StatusCode;
use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;

use super::mux::{MuxError, Stream};

/// Slab size per thread: a bulk transfer's read takes up to a quarter of
/// it (sixteen TLS records), one DATA frame. 256 KiB slabs carried a single
/// stream 3–5% faster than 64 KiB ones (8 of 9 alternating runs).
const SLAB: usize = 256 * 1024;
/// A read is offered at least this much room; a smaller remainder of the
/// slab is left to the chunks already split off it.
const MIN_READ: usize = 64 * 1024;
thread_local! {
    static SLAB_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Why a tunnel's copy ended early.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The peer answered CONNECT with something other than 200.
    #[error("peer answered {0}")]
    Refused(StatusCode),
    /// The HBONE stream or connection failed (reset, GOAWAY, broken
    /// connection).
    #[error("HBONE: {0}")]
    Mux(#[from] MuxError),
    /// The pod's connection failed.
    #[error("pod connection: {0}")]
    Io(#[from] io::Error),
}

/// Reads what `tcp` has into a chunk split off the thread's slab: `Ok(None)`
/// at EOF, `WouldBlock` when nothing is there.
pub(crate) fn read_chunk(tcp: &TcpStream) -> io::Result<Option<Bytes>> {
    SLAB_BUF.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() - slab.len() < MIN_READ {
            // Earlier chunks keep the old allocation alive as long as they
            // need it; this thread moves on to a fresh one.
            *slab = BytesMut::with_capacity(SLAB);
        }
        match read_into(tcp, &mut slab)? {
            0 => Ok(None),
            n => Ok(Some(slab.split_to(n).freeze())),
        }
    })
}

/// Appends what `tcp` has to `buf` (up to its spare capacity): `Ok(0)` at
/// EOF, `WouldBlock` when nothing is there.
///
/// A read shorter than the room offered means the receive queue is now
/// empty, so the socket's readiness is cleared without another `recv`
/// returning `EAGAIN`. The read runs inside `try_io`, whose readiness
/// snapshot is taken *before* it: tokio clears only if no new readiness
/// event arrived since (and never clears "read closed"), so bytes arriving
/// during or after the read still wake the task, on any runtime flavour.
pub(crate) fn read_into(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = None;
    let outcome = tcp.try_io(Interest::READABLE, || {
        let n = tcp.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
    });
    match (got, outcome) {
        (Some(n), _) => Ok(n),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Err(io::ErrorKind::WouldBlock.into()),
    }
}

// Bytes waiting in either direction are boxed: most tunnels are idle most
// of the time, and tokio allocates a task in 128-byte steps (cells are
// cache-line aligned); two inline `Bytes` (64 bytes), with the inline span,
// put every open tunnel's task at 384 bytes instead of 256.

#[derive(Default)]
struct Up {
    /// Bytes read from the pod that the stream has no window for yet.
    pending: Option<Box<Bytes>>,
    /// `pending` is its own allocation (not a slice of the read slab).
    compact: bool,
    eof: bool,
    done: bool,
    total: u64,
}

#[derive(Default)]
struct Down {
    /// Received bytes the pod's socket has not taken yet.
    pending: Option<Box<Bytes>>,
    /// Something was written to the pod's socket, or tried.
    wrote: bool,
    eof: bool,
    done: bool,
    total: u64,
}

/// Where the tunnel's answer stands.
enum Answer {
    /// Client side: the peer has not answered CONNECT yet; bytes towards
    /// the pod wait for its `200`.
    Awaited,
    /// Server side: the `200` is held back (see [`server`]) until this
    /// deadline at the latest. Boxed: a tunnel's task stays in its
    /// allocation size class.
    Held(Pin<Box<tokio::time::Sleep>>),
    /// Answered.
    Done,
}

/// The copy future; resolves to the byte counts (pod → peer, peer → pod)
/// and how it ended. It owns the pod's socket; [`Tunnel::into_tcp`] gives
/// it back (e.g. to reset it).
pub struct Tunnel {
    tcp: TcpStream,
    stream: Stream,
    answer: Answer,
    up: Up,
    down: Down,
}

/// The shortest a `200` is held back for the pod's first bytes; the longest
/// is twice that (see [`hold_until`]).
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// When a hold that starts `now` ends: `now + hold` rounded up to a
/// multiple of `hold` from a fixed origin. Every hold of one such slot then
/// ends at the same instant, and tokio wakes its reactor (an eventfd write
/// and one more `epoll_wait`) only when a timer is registered *earlier*
/// than the earliest one it has: the first hold of a slot pays that, the
/// others (all of them, at a steady connection rate) do not.
fn hold_until(now: tokio::time::Instant, hold: std::time::Duration) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    let step = hold.as_nanos().max(1);
    let since = (now + hold).saturating_duration_since(origin).as_nanos();
    let at = since.div_ceil(step) * step;
    origin + std::time::Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX))
}

thread_local! {
    /// A timer at the end of this thread's current hold slot, registered
    /// until then whether or not any hold still waits for it.
    static SLOT_END: RefCell<Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>> =
        const { RefCell::new(None) };
}

/// Keeps a timer registered at `until` (a hold slot's end) on this thread.
///
/// A held answer is usually cancelled long before its slot ends (the pod
/// answered), which removes its timer; tokio then knows no timer before
/// the next connection's hold, and registering that one wakes the reactor
/// again: one eventfd write and one more `epoll_wait` per new connection.
/// With this timer in place for the rest of the slot, only the first hold
/// of each slot does. Nothing waits on it (a no-op waker).
fn anchor(until: tokio::time::Instant) {
    SLOT_END.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_some_and(|(at, _)| *at == until) {
            return;
        }
        let mut timer = Box::pin(tokio::time::sleep_until(until));
        // The first poll registers it.
        let _ = timer.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()));
        *slot = Some((until, timer));
    });
}

/// The client side's copy: `stream` was just opened (its CONNECT is on
/// its way); the pod's bytes flow at once, bytes towards the pod after the
/// peer's `200`. Any other answer ends the copy with
/// [`CopyError::Refused`].
pub fn client(tcp: TcpStream, stream: Stream) -> Tunnel {
    Tunnel { tcp, stream, answer: Answer::Awaited, up: Up::default(), down: Down::default() }
}

/// The server side's copy of an accepted, checked tunnel, answering `200`.
///
/// When the peer's first bytes are already there as the copy starts,
/// the peer is not waiting for the answer (ours never does: a pod's
/// bytes flow from the start, see the module docs), so the answer is
/// held back until the pod's first bytes (or its EOF) and leaves with
/// them, in one record: the peer wakes once for both instead of twice,
/// on every new connection of a request/response protocol. `hold`
/// ([`HOLD`] in the proxy) bounds the wait for the pod (to between
/// `hold` and twice that), so that a client which sent bytes and then
/// waits for the answer anyway is slowed, never stalled. With no bytes
/// from the peer yet, the `200` goes at once: the peer may be waiting
/// for it (an HBONE client that does not send early), or the pod speaks
/// first.
pub fn server(tcp: TcpStream, stream: Stream, hold: std::time::Duration) -> Tunnel {
    let until = hold_until(tokio::time::Instant::now(), hold);
    anchor(until);
    let answer = Answer::Held(Box::pin(tokio::time::sleep_until(until)));
    Tunnel { tcp, stream, answer, up: Up::default(), down: Down::default() }
}

impl Tunnel {
    /// The pod's socket.
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }
}

/// Sends the held `200` now.
fn answer_now(stream: &mut Stream, answer: &mut Answer) -> Result<(), MuxError> {
    if let Answer::Held(_) = answer {
        stream.respond(200, false)?;
        *answer = Answer::Done;
    }
    Ok(())
}

/// Answers now unless the answer may still wait: the peer has sent bytes
/// (`peer_sent`) and the hold has not expired.
fn poll_answer(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    answer: &mut Answer,
    peer_sent: bool,
) -> Result<(), MuxError> {
    if let Answer::Held(deadline) = answer
        && (!peer_sent || deadline.as_mut().poll(cx).is_ready())
    {
        answer_now(stream, answer)?;
    }
    Ok(())
}

/// Byte counts of a finished copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Pod → peer.
    pub up: u64,
    /// Peer → pod.
    pub down: u64,
}

fn poll_up(
    cx: &mut Context<'_>,
    tcp: &TcpStream,
    stream: &mut Stream,
    answer: &mut Answer,
    up: &mut Up,
) -> Poll<Result<(), CopyError>> {
    loop {
        if let Some(pending) = up.pending.as_deref_mut() {
            stream.send(pending, false)?;
            if pending.is_empty() {
                up.pending = None;
                continue;
            }
            if stream.poll_capacity(cx)?.is_pending() {
                // Waiting for the peer's window (a slow reader over
                // there): keep just these bytes, not the 256 KiB slab
                // they were read into, however long that takes.
                if !up.compact {
                    *pending = Bytes::copy_from_slice(pending);
                    up.compact = true;
                }
                return Poll::Pending;
            }
            continue;
        }
        if up.eof {
            answer_now(stream, answer)?;
            stream.send(&mut Bytes::new(), true)?;
            up.done = true;
            return Poll::Ready(Ok(()));
        }
        ready!(tcp.poll_read_ready(cx))?;
        match read_chunk(tcp) {
            Ok(Some(mut b)) => {
                answer_now(stream, answer)?;
                up.total += b.len() as u64;
                up.compact = false;
                // Straight on when the window allows (the usual case);
                // only what it does not waits, boxed.
                stream.send(&mut b, false)?;
                if !b.is_empty() {
                    up.pending = Some(Box::new(b));
                }
            }
            Ok(None) => up.eof = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

fn poll_down(
    cx: &mut Context<'_>,
    tcp: &mut TcpStream,
    stream: &mut Stream,
    answer: &mut Answer,
    down: &mut Down,
    up_done: bool,
) -> Poll<Result<(), CopyError>> {
    if let Answer::Awaited = answer {
        let status = ready!(stream.poll_response(cx))?;
        if status != 200 {
            return Poll::Ready(Err(CopyError::Refused(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            )));
        }
        *answer = Answer::Done;
    }
    loop {
        while let Some(pending) = down.pending.as_deref_mut() {
            ready!(tcp.poll_write_ready(cx))?;
            ready!(write_some(tcp, stream, pending))?;
            if pending.is_empty() {
                down.pending = None;
            }
        }
        if down.eof {
            // With the pod's side already ended the socket is closed right
            // after this, and the close sends the FIN: no separate shutdown.
            if !up_done {
                ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
            }
            down.done = true;
            return Poll::Ready(Ok(()));
        }
        match ready!(stream.poll_data(cx)) {
            Some(Ok(mut b)) => {
                down.total += b.len() as u64;
                // Straight into the pod's socket when it has room (the
                // usual case); only what it does not take waits, boxed.
                if !b.is_empty() && !down.wrote {
                    down.wrote = true;
                    first_write(tcp, stream, &mut b)?;
                }
                if !b.is_empty() {
                    ready!(write_some(tcp, stream, &mut b))?;
                }
                if !b.is_empty() {
                    down.pending = Some(Box::new(b));
                }
            }
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => down.eof = true,
        }
    }
}

/// The first bytes for the pod, written to the socket without asking
/// tokio: a socket the server side has just connected is not known to be
/// writable until the reactor's next turn reports it (accepted ones are
/// assumed writable), and waiting for that turn would cost every new
/// tunnel one more `epoll_wait` and wake-up before its first bytes arrive.
/// The readiness tokio tracks stays as it is (edge-triggered epoll reports
/// the socket's state on registration anyway), so `EAGAIN` just leaves the
/// bytes to the usual path.
fn first_write(tcp: &TcpStream, stream: &mut Stream, b: &mut Bytes) -> Result<(), CopyError> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    match send(tcp.as_raw_fd(), b, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
        Ok(n) => {
            took(stream, b, n);
            Ok(())
        }
        Err(nix::errno::Errno::EAGAIN) => Ok(()),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Writes what the pod's socket takes of `b` (nothing when it is full),
/// releasing that much of the stream's receive window. `Ready(Err)` when
/// the connection failed; never `Pending`.
fn write_some(tcp: &TcpStream, stream: &mut Stream, b: &mut Bytes) -> Poll<Result<(), CopyError>> {
    match tcp.try_write(b) {
        Ok(0) => Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
        Ok(n) => {
            took(stream, b, n);
            Poll::Ready(Ok(()))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(e.into())),
    }
}

/// The pod's socket took the first `n` bytes of `b`: only those reopen the
/// stream's receive window.
fn took(stream: &mut Stream, b: &mut Bytes, n: usize) {
    b.advance(n);
    stream.release(n);
}

impl Future for Tunnel {
    type Output = (Totals, Result<(), CopyError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // The peer's answer first: a refusal also closes the stream for
        // sending, and the refusal is the better reason to report.
        let mut result = Ok(());
        if !this.down.done
            && let Poll::Ready(Err(e)) =
                poll_down(cx, &mut this.tcp, &mut this.stream, &mut this.answer, &mut this.down, this.up.done)
        {
            result = Err(e);
        }
        if result.is_ok()
            && let Err(e) = poll_answer(cx, &mut this.stream, &mut this.answer, this.down.total > 0)
        {
            result = Err(e.into());
        }
        if result.is_ok()
            && !this.up.done
            && let Poll::Ready(Err(e)) = poll_up(cx, &this.tcp, &mut this.stream, &mut this.answer, &mut this.up)
        {
            result = Err(e);
        }
        let totals = Totals { up: this.up.total, down: this.down.total };
        if let Err(e) = result {
            this.stream.reset(Reason::CANCEL);
            return Poll::Ready((totals, Err(e)));
        }
        if this.up.done && this.down.done {
            return Poll::Ready((totals, Ok(())));
        }
        Poll::Pending
    }
}

/// What a side does when its tunnel's copy has ended (log, metrics, reset).
pub trait Finish: Unpin {
    /// Called once with the pod's socket, the byte counts and the outcome.
    fn finish(self, tcp: TcpStream, totals: Totals, result: Result<(), CopyError>);
}

/// A tunnel's task: its setup (boxed, so its state — lookups, the connect
/// or CONNECT, perhaps a new pooled connection — is freed as soon as it is
/// done), then the copy, then [`Finish::finish`], all inside `span`.
///
/// Written out by hand rather than as an `async` block, which would keep
/// room for every value it ever held: this is what stays allocated for as
/// long as a tunnel is open, ~10,000 times over on a busy node.
pub struct Task<S, F> {
    /// Boxed, and only when enabled (at the default `warn` a tunnel's span
    /// is disabled): 8 bytes per open tunnel instead of 40.
    span: Option<Box<tracing::Span>>,
    stage: Stage<S, F>,
}

/// Where a [`Task`] is: the setup and the copy never coexist.
enum Stage<S, F> {
    Setup(Pin<Box<S>>),
    Copy(Tunnel, F),
    Done,
}

/// A task running `setup` and then the copy it yields (`None`: nothing to
/// copy, e.g. the tunnel was refused).
pub fn task<S, F>(span: tracing::Span, setup: S) -> Task<S, F>
where
    S: Future<Output = Option<(Tunnel, F)>>,
    F: Finish,
{
    let span = (!span.is_disabled()).then(|| Box::new(span));
    Task { span, stage: Stage::Setup(Box::pin(setup)) }
}

impl<S, F> Future for Task<S, F>
where
    S: Future<Output = Option<(Tunnel, F)>>,
    F: Finish,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        if let Stage::Setup(setup) = &mut this.stage {
            // The setup's state is freed here, as soon as it is done.
            this.stage = match ready!(setup.as_mut().poll(cx)) {
                Some((copy, fin)) => Stage::Copy(copy, fin),
                None => Stage::Done,
            };
        }
        let Stage::Copy(copy, _) = &mut this.stage else {
            return Poll::Ready(());
        };
        let (totals, result) = ready!(Pin::new(copy).poll(cx));
        if let Stage::Copy(copy, fin) = std::mem::replace(&mut this.stage, Stage::Done) {
            fin.finish(copy.into_tcp(), totals, result);
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests;
