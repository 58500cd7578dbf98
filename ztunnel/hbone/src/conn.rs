//! One HTTP/2 connection's state, for either role, without IO.
//!
//! The owner feeds received bytes to [`Connection::recv`], takes
//! [`Event`]s from [`Connection::poll_event`], calls the send-side methods
//! ([`Connection::open`], [`Connection::respond`],
//! [`Connection::send_data`], [`Connection::release`],
//! [`Connection::reset`], ...) and writes what [`Connection::transmit`]
//! hands back, in order.
//!
//! Flow control is end to end: a stream's received bytes count against
//! its window until the owner says they left ([`Connection::release`]),
//! and only then is the window reopened, once half of it is used, so a
//! slow reader slows its peer. Sending takes only what both windows allow
//! and tells the owner when a blocked stream may go on
//! ([`Event::Writable`]).
//!
//! Errors follow §5.4: a frame that breaks the connection's rules returns
//! `Err` from [`Connection::recv`] after queueing GOAWAY (the owner flushes
//! and closes); one that breaks a stream's resets that stream
//! ([`Event::Reset`]) and the connection goes on.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::frame::{self, DEFAULT_MAX_FRAME, MAX_WINDOW, Reason, Setting};
use crate::headers::{self, Decoder, Head};

/// The client connection preface (§3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The default initial window (§6.9.2).
const DEFAULT_WINDOW: u32 = 65_535;
/// Queues emptied after a burst keep at most this much room.
const SHRINK_ABOVE: usize = 16;
/// PING payload of a graceful drain's round trip (§6.8).
const DRAIN_PING: [u8; 8] = *b"hbone-dr";

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (odd ids).
    Client,
    /// Accepts streams.
    Server,
}

/// What this side advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Streams the peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE); at least
    /// the default 65,535 (frames the peer sends before it has read this
    /// side's SETTINGS use the default).
    pub stream_window: u32,
    /// The connection's receive window.
    pub connection_window: u32,
    /// Largest frame accepted (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame: u32,
    /// Largest decoded header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 100,
            stream_window: DEFAULT_WINDOW,
            connection_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
            max_header_list: 16 * 1024,
        }
    }
}

impl Config {
    /// The values clamped to what the protocol allows (windows at least the
    /// default and at most 2^31-1, frames 2^14..2^24-1).
    pub fn clamped(self) -> Self {
        Config {
            max_concurrent_streams: self.max_concurrent_streams,
            stream_window: self.stream_window.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            connection_window: self.connection_window.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            max_frame: self.max_frame.clamp(DEFAULT_MAX_FRAME, frame::MAX_MAX_FRAME),
            max_header_list: self.max_header_list,
        }
    }
}

/// What happened on the connection, for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// (Server) a new stream and its request head, already checked to be a
    /// well-formed request (§8.3); whether the method is one this side
    /// serves is the owner's call.
    Request {
        /// Stream.
        stream: u32,
        /// The head.
        head: Head,
        /// The request had no body (END_STREAM on its HEADERS).
        end_stream: bool,
    },
    /// (Client) the final response head of a stream this side opened.
    Response {
        /// Stream.
        stream: u32,
        /// The head (`status` is set).
        head: Head,
        /// The response has no body.
        end_stream: bool,
    },
    /// Bytes for a stream; `end` is the peer's END_STREAM (possibly with
    /// no bytes). Once the bytes have left, [`Connection::release`] them.
    Data {
        /// Stream.
        stream: u32,
        /// Payload.
        data: Bytes,
        /// END_STREAM.
        end: bool,
    },
    /// The stream is gone: reset by the peer, by a stream error this side
    /// found (RST_STREAM already queued), or refused by a GOAWAY before the
    /// peer processed it (`REFUSED_STREAM`, safe to retry elsewhere).
    Reset {
        /// Stream.
        stream: u32,
        /// Code.
        reason: Reason,
        /// Sent by the peer.
        by_peer: bool,
    },
    /// A stream that could not send everything may send again.
    Writable {
        /// Stream.
        stream: u32,
    },
    /// The peer sent GOAWAY: no new streams (client side: streams above
    /// `last_stream` were reset with REFUSED_STREAM already).
    GoAway {
        /// Last stream the peer may process.
        last_stream: u32,
        /// Code.
        reason: Reason,
    },
    /// The answer to a [`Connection::ping`].
    Pong {
        /// Its payload.
        payload: [u8; 8],
    },
}

/// Why [`Connection::open`] cannot open a stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Only servers accept streams.
    #[error("a server does not open streams")]
    NotClient,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    #[error("the peer's stream limit is reached")]
    Busy,
    /// A GOAWAY was sent or received.
    #[error("the connection is going away")]
    GoingAway,
    /// Stream ids are used up (a new connection is needed).
    #[error("stream ids exhausted")]
    Exhausted,
    /// The connection failed.
    #[error("the connection is closed")]
    Closed,
}

/// Why a send-side call failed: the stream is not there (any more) or not
/// in a state for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such open stream (ended, reset, or never opened).
    #[error("no such stream")]
    Unknown,
    /// This side already ended the stream.
    #[error("stream already ended by this side")]
    Ended,
    /// The call does not fit this role or stage (e.g. a second response).
    #[error("not valid for this stream now")]
    State,
}

/// One stream's state: a few counters (the point of this crate).
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Bytes this side may send (may go negative after a SETTINGS change).
    send_window: i64,
    /// Bytes the peer may still send.
    recv_window: u32,
    /// Received bytes delivered to the owner and not yet released.
    held: u32,
    /// Released bytes not yet announced in a WINDOW_UPDATE.
    unannounced: u32,
    /// This side sent END_STREAM.
    local_end: bool,
    /// The peer sent END_STREAM.
    remote_end: bool,
    /// (Client) the final response arrived; (server) this side responded.
    headed: bool,
    /// A send found no window; the owner is told when it opens.
    blocked: bool,
}

/// A DATA frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InData {
    stream: u32,
    /// Payload bytes still to come.
    left: u32,
    /// The frame carries END_STREAM.
    end: bool,
    /// Its stream takes the payload (else it is dropped).
    deliver: bool,
}

/// A header block arriving over HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Partial {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

/// An HTTP/2 connection carrying HBONE tunnels.
pub struct Connection {
    role: Role,
    config: Config,
    /// Server: preface bytes still expected.
    preface_left: usize,
    /// The peer's first frame (its SETTINGS) arrived.
    peer_settings_seen: bool,
    /// This side's SETTINGS was acknowledged.
    settings_acked: bool,

    // The peer's settings.
    peer_initial_window: u32,
    peer_max_frame: u32,
    peer_max_streams: u32,
    /// The peer lowered its header table below the default: the next block
    /// starts with a table size update (to 0; this side never indexes).
    table_update: bool,

    streams: FxHashMap<u32, Stream>,
    /// Streams this side opened that are still in `streams`.
    local_active: u32,
    /// Streams the peer opened that are still in `streams`.
    peer_active: u32,
    /// (Client) the next stream id.
    next_local: u32,
    /// The highest stream id the peer opened.
    last_peer: u32,

    send_window: i64,
    recv_window: u32,
    conn_unannounced: u32,

    partial: Option<Partial>,
    in_data: Option<InData>,
    decoder: Decoder,

    goaway_sent: Option<u32>,
    goaway_received: Option<u32>,
    /// A graceful drain is waiting for its PING's answer.
    draining: bool,
    failed: bool,

    /// Small frames not yet handed out (they go before later data).
    ctl: BytesMut,
    out: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("streams", &self.streams.len())
            .field("send_window", &self.send_window)
            .field("recv_window", &self.recv_window)
            .field("goaway_sent", &self.goaway_sent)
            .field("goaway_received", &self.goaway_received)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection for `role`; its preface (client), SETTINGS and
    /// connection window are queued to send at once.
    pub fn new(role: Role, config: Config) -> Self {
        let config = config.clamped();
        let mut c = Connection {
            role,
            config,
            preface_left: if role == Role::Server { PREFACE.len() } else { 0 },
            peer_settings_seen: false,
            settings_acked: false,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            peer_max_streams: u32::MAX,
            table_update: false,
            streams: FxHashMap::default(),
            local_active: 0,
            peer_active: 0,
            next_local: 1,
            last_peer: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: config.connection_window,
            conn_unannounced: 0,
            partial: None,
            in_data: None,
            decoder: Decoder::new(config.max_header_list as usize),
            goaway_sent: None,
            goaway_received: None,
            draining: false,
            failed: false,
            ctl: BytesMut::with_capacity(128),
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        if role == Role::Client {
            c.ctl.extend_from_slice(PREFACE);
        }
        let mut settings = vec![
            Setting::MaxConcurrentStreams(config.max_concurrent_streams),
            Setting::InitialWindowSize(config.stream_window),
            Setting::MaxFrameSize(config.max_frame),
            Setting::MaxHeaderListSize(config.max_header_list),
        ];
        if role == Role::Client {
            settings.insert(0, Setting::EnablePush(false));
        }
        frame::put_settings(&mut c.ctl, &settings);
        if config.connection_window > DEFAULT_WINDOW {
            frame::put_window_update(&mut c.ctl, 0, config.connection_window - DEFAULT_WINDOW);
        }
        c
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Streams open now (either side's).
    pub fn active(&self) -> usize {
        self.streams.len()
    }

    /// The peer's preface (server side) and SETTINGS arrived.
    pub fn handshaken(&self) -> bool {
        self.peer_settings_seen
    }

    /// This side's SETTINGS was acknowledged by the peer.
    pub fn settings_acked(&self) -> bool {
        self.settings_acked
    }

    /// A GOAWAY was sent or received, or the connection failed: no new
    /// streams.
    pub fn going_away(&self) -> bool {
        self.goaway_sent.is_some() || self.goaway_received.is_some() || self.failed
    }

    /// (Server) whether new streams may still arrive: no GOAWAY sent, or
    /// only a graceful drain's first one (streams in flight may follow it).
    pub fn accepting(&self) -> bool {
        !self.failed && (self.goaway_sent.is_none() || self.draining)
    }

    /// Going away with no stream left (and no drain round trip pending):
    /// once [`Connection::transmit`] is empty the owner may close.
    pub fn is_done(&self) -> bool {
        self.failed || (self.going_away() && self.streams.is_empty() && !self.draining)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front();
        if ev.is_none() && self.events.capacity() > SHRINK_ABOVE {
            // A burst (a thousand tunnels opening at once) must not leave
            // its queue's room allocated for the connection's lifetime.
            self.events = VecDeque::new();
        }
        ev
    }

    /// Appends the bytes to send, in order, to `dst`.
    pub fn transmit(&mut self, dst: &mut Vec<Bytes>) {
        self.flush_ctl();
        dst.extend(self.out.drain(..));
        if self.out.capacity() > SHRINK_ABOVE {
            self.out = VecDeque::new();
        }
    }

    /// Whether anything waits in [`Connection::transmit`].
    pub fn wants_transmit(&self) -> bool {
        !self.ctl.is_empty() || !self.out.is_empty()
    }

    fn flush_ctl(&mut self) {
        if !self.ctl.is_empty() {
            let b = self.ctl.split().freeze();
            self.out.push_back(b);
        }
    }

    // ---------------------------------------------------------------- send

    /// (Client) opens a stream with `CONNECT authority` and `Forwarded:
    /// forwarded`; its HEADERS are queued, its first DATA may follow at once.
    pub fn open(&mut self, authority: &str, forwarded: &str) -> Result<u32, OpenError> {
        if self.role != Role::Client {
            return Err(OpenError::NotClient);
        }
        if self.failed {
            return Err(OpenError::Closed);
        }
        if self.going_away() {
            return Err(OpenError::GoingAway);
        }
        if self.local_active >= self.peer_max_streams {
            return Err(OpenError::Busy);
        }
        let id = self.next_local;
        if id > MAX_WINDOW {
            return Err(OpenError::Exhausted);
        }
        self.next_local = id + 2;
        let block = headers::connect_request(authority, forwarded, std::mem::take(&mut self.table_update));
        frame::put_headers(&mut self.ctl, id, &block, false, self.peer_max_frame);
        self.streams.insert(id, self.new_stream(false));
        self.local_active += 1;
        Ok(id)
    }

    /// (Client) whether [`Connection::open`] would succeed now.
    pub fn can_open(&self) -> bool {
        self.role == Role::Client
            && !self.going_away()
            && self.local_active < self.peer_max_streams
            && self.next_local <= MAX_WINDOW
    }

    /// (Server) answers a request with `status`; `end_stream` ends this
    /// side of the stream with it (a refusal).
    pub fn respond(&mut self, stream: u32, status: u16, end_stream: bool) -> Result<(), StreamError> {
        if self.role != Role::Server {
            return Err(StreamError::State);
        }
        let s = self.streams.get_mut(&stream).ok_or(StreamError::Unknown)?;
        if s.headed {
            return Err(StreamError::State);
        }
        s.headed = true;
        let block = headers::response(status, std::mem::take(&mut self.table_update));
        frame::put_headers(&mut self.ctl, stream, &block, end_stream, self.peer_max_frame);
        if end_stream {
            s.local_end = true;
            self.maybe_remove(stream);
        }
        Ok(())
    }

    /// Asks for [`Event::Writable`] when `stream`'s windows next open (a
    /// sender that found no room, or stopped short of it for its own
    /// reasons).
    pub fn want_writable(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.blocked = true;
        }
    }

    /// Bytes `stream` may send now (both windows).
    pub fn send_capacity(&self, stream: u32) -> usize {
        match self.streams.get(&stream) {
            Some(s) if !s.local_end => s.send_window.min(self.send_window).max(0) as usize,
            _ => 0,
        }
    }

    /// Sends as much of `data` as the windows allow, splitting it into
    /// frames the peer accepts; what is left stays in `data` and
    /// [`Event::Writable`] says when to try again. `end` ends this side of
    /// the stream once all of `data` is sent (empty `data` with `end` sends
    /// END_STREAM alone, which needs no window). A server's data waits for
    /// its response ([`StreamError::State`] before it).
    pub fn send_data(&mut self, stream: u32, data: &mut Bytes, end: bool) -> Result<(), StreamError> {
        let peer_max_frame = self.peer_max_frame as usize;
        let conn_window = self.send_window;
        let s = self.streams.get_mut(&stream).ok_or(StreamError::Unknown)?;
        if s.local_end {
            return Err(StreamError::Ended);
        }
        if self.role == Role::Server && !s.headed {
            return Err(StreamError::State);
        }
        let cap = s.send_window.min(conn_window).max(0) as usize;
        let take = cap.min(data.len());
        let finish = end && take == data.len();
        if take == 0 && !finish {
            s.blocked = true;
            return Ok(());
        }
        s.send_window -= take as i64;
        self.send_window -= take as i64;
        if finish {
            s.local_end = true;
        } else if take < data.len() {
            s.blocked = true;
        }
        let mut left = take;
        loop {
            let n = left.min(peer_max_frame);
            left -= n;
            let last = left == 0;
            frame::put_head(
                &mut self.ctl,
                n,
                frame::kind::DATA,
                if last && finish { frame::flag::END_STREAM } else { 0 },
                stream,
            );
            self.flush_ctl();
            if n > 0 {
                self.out.push_back(data.split_to(n));
            }
            if last {
                break;
            }
        }
        if finish {
            self.maybe_remove(stream);
        }
        Ok(())
    }

    /// The owner is done with `n` received bytes of `stream` (they left for
    /// the pod): the windows reopen by that much, announced once half of a
    /// window is used. Bytes of a stream that is gone were released when it
    /// went.
    pub fn release(&mut self, stream: u32, n: usize) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = (n.min(s.held as usize)) as u32;
        if n == 0 {
            return;
        }
        s.held -= n;
        if !s.remote_end {
            s.unannounced += n;
            if s.unannounced >= self.config.stream_window / 2 {
                let inc = std::mem::take(&mut s.unannounced);
                s.recv_window += inc;
                frame::put_window_update(&mut self.ctl, stream, inc);
            }
        }
        self.release_conn(n);
    }

    fn release_conn(&mut self, n: u32) {
        self.conn_unannounced += n;
        if self.conn_unannounced >= self.config.connection_window / 2 {
            let inc = std::mem::take(&mut self.conn_unannounced);
            self.recv_window += inc;
            frame::put_window_update(&mut self.ctl, 0, inc);
        }
    }

    /// Resets `stream` with `reason` (nothing when it is gone already).
    pub fn reset(&mut self, stream: u32, reason: Reason) {
        if self.streams.contains_key(&stream) {
            frame::put_reset(&mut self.ctl, stream, reason);
            self.remove(stream);
        }
    }

    /// Sends a PING; [`Event::Pong`] carries the answer.
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame::put_ping(&mut self.ctl, false, payload);
    }

    /// Sends GOAWAY at once: streams the peer opened after the last one
    /// seen will not be processed.
    pub fn go_away(&mut self, reason: Reason) {
        let last = self.last_peer;
        if self.goaway_sent.is_none_or(|l| l > last) {
            frame::put_goaway(&mut self.ctl, last, reason);
            self.goaway_sent = Some(last);
        }
    }

    /// Graceful shutdown (§6.8): a GOAWAY that still admits streams in
    /// flight, a PING, and on its answer the final GOAWAY naming the last
    /// stream really accepted. Open streams run on; [`Connection::is_done`]
    /// turns true when they have ended. A client just stops opening.
    pub fn drain(&mut self) {
        if self.role == Role::Client || self.going_away() {
            self.go_away(Reason::NO_ERROR);
            return;
        }
        frame::put_goaway(&mut self.ctl, MAX_WINDOW, Reason::NO_ERROR);
        self.goaway_sent = Some(MAX_WINDOW);
        frame::put_ping(&mut self.ctl, false, DRAIN_PING);
        self.draining = true;
    }

    /// A new stream's state with the current initial windows.
    fn new_stream(&self, remote_end: bool) -> Stream {
        Stream {
            send_window: i64::from(self.peer_initial_window),
            recv_window: self.config.stream_window,
            held: 0,
            unannounced: 0,
            local_end: false,
            remote_end,
            headed: false,
            blocked: false,
        }
    }

    /// Drops a stream both sides have ended.
    fn maybe_remove(&mut self, stream: u32) {
        if self.streams.get(&stream).is_some_and(|s| s.local_end && s.remote_end) {
            self.remove(stream);
        }
    }

    /// Forgets a stream; bytes it still held are released to the
    /// connection (the owner's later release of them is ignored).
    fn remove(&mut self, stream: u32) {
        if let Some(s) = self.streams.remove(&stream) {
            let peer_opens = (stream % 2 == 1) == (self.role == Role::Server);
            if peer_opens {
                self.peer_active -= 1;
            } else {
                self.local_active -= 1;
            }
            if s.held > 0 {
                self.release_conn(s.held);
            }
        }
    }
}

mod recv;
#[cfg(test)]
mod tests;
