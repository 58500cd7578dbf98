//! HTTP/2 frames (RFC 9113 §4, §6): splitting a byte stream into frames,
//! checking each against the rules that hold for it alone, and writing the
//! frames this side sends.
//!
//! Rules that need the connection's state (which stream may carry what,
//! flow control, header blocks spanning frames) are the connection's
//! (`conn`); everything a frame can get wrong by itself is caught here, so
//! the state machine only ever sees well-formed frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame header length.
pub const HEADER_LEN: usize = 9;
/// The smallest `SETTINGS_MAX_FRAME_SIZE` and its default (§6.5.2).
pub const DEFAULT_MAX_FRAME: u32 = 1 << 14;
/// The largest `SETTINGS_MAX_FRAME_SIZE` (§6.5.2).
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (§6).
pub mod kind {
    /// DATA
    pub const DATA: u8 = 0;
    /// HEADERS
    pub const HEADERS: u8 = 1;
    /// PRIORITY (deprecated; parsed and ignored)
    pub const PRIORITY: u8 = 2;
    /// RST_STREAM
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS
    pub const SETTINGS: u8 = 4;
    /// PUSH_PROMISE
    pub const PUSH_PROMISE: u8 = 5;
    /// PING
    pub const PING: u8 = 6;
    /// GOAWAY
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS)
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING)
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION)
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS)
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS)
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    /// Graceful shutdown, or a stream no longer needed.
    pub const NO_ERROR: Reason = Reason(0);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: Reason = Reason(1);
    /// This side failed.
    pub const INTERNAL_ERROR: Reason = Reason(2);
    /// The peer broke flow control.
    pub const FLOW_CONTROL_ERROR: Reason = Reason(3);
    /// SETTINGS not acknowledged in time.
    pub const SETTINGS_TIMEOUT: Reason = Reason(4);
    /// A frame for a stream already half-closed for it.
    pub const STREAM_CLOSED: Reason = Reason(5);
    /// A frame of the wrong size.
    pub const FRAME_SIZE_ERROR: Reason = Reason(6);
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: Reason = Reason(7);
    /// The stream is no longer needed.
    pub const CANCEL: Reason = Reason(8);
    /// The header compression context cannot be kept.
    pub const COMPRESSION_ERROR: Reason = Reason(9);
    /// The CONNECT target's connection was reset or closed abnormally.
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    /// The peer is generating excessive load.
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    /// The transport's security is not good enough.
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    /// HTTP/1.1 is required.
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The code's name, or "UNKNOWN".
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// What a broken frame costs: the whole connection, or one stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A connection error (§5.4.1): GOAWAY with this code, then close.
    #[error("connection error {reason}: {why}")]
    Connection {
        /// The GOAWAY code.
        reason: Reason,
        /// What was wrong, for the log.
        why: &'static str,
    },
    /// A stream error (§5.4.2): RST_STREAM on this stream only.
    #[error("stream {stream} error {reason}: {why}")]
    Stream {
        /// The stream.
        stream: u32,
        /// The RST_STREAM code.
        reason: Reason,
        /// What was wrong, for the log.
        why: &'static str,
    },
}

pub(crate) fn conn_err(reason: Reason, why: &'static str) -> FrameError {
    FrameError::Connection { reason, why }
}

/// One SETTINGS parameter (§6.5.2); unknown identifiers are kept so the
/// caller can ignore them explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// SETTINGS_HEADER_TABLE_SIZE
    HeaderTableSize(u32),
    /// SETTINGS_ENABLE_PUSH
    EnablePush(bool),
    /// SETTINGS_MAX_CONCURRENT_STREAMS
    MaxConcurrentStreams(u32),
    /// SETTINGS_INITIAL_WINDOW_SIZE
    InitialWindowSize(u32),
    /// SETTINGS_MAX_FRAME_SIZE
    MaxFrameSize(u32),
    /// SETTINGS_MAX_HEADER_LIST_SIZE
    MaxHeaderListSize(u32),
    /// Any other identifier (ignored, §6.5.2).
    Unknown(u16, u32),
}

/// A parsed, individually valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA; `flow` is the whole payload length including padding, which
    /// is what flow control counts.
    Data {
        /// Stream.
        stream: u32,
        /// Payload without padding.
        data: Bytes,
        /// END_STREAM.
        end: bool,
        /// Bytes this frame counts against the windows.
        flow: u32,
    },
    /// HEADERS: the first (or only) fragment of a header block.
    Headers {
        /// Stream.
        stream: u32,
        /// Header block fragment (padding and priority removed).
        block: Bytes,
        /// END_STREAM.
        end_stream: bool,
        /// END_HEADERS.
        end_headers: bool,
    },
    /// PRIORITY (carries nothing this implementation uses).
    Priority {
        /// Stream.
        stream: u32,
    },
    /// RST_STREAM.
    Reset {
        /// Stream.
        stream: u32,
        /// Code.
        reason: Reason,
    },
    /// SETTINGS (or its acknowledgement, with no parameters).
    Settings {
        /// ACK flag.
        ack: bool,
        /// Parameters in order.
        params: Vec<Setting>,
    },
    /// PUSH_PROMISE (never allowed here: push is disabled on both sides).
    PushPromise {
        /// Stream.
        stream: u32,
    },
    /// PING.
    Ping {
        /// ACK flag.
        ack: bool,
        /// Opaque data.
        payload: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// Last stream the sender may have processed.
        last_stream: u32,
        /// Code.
        reason: Reason,
        /// Debug data.
        debug: Bytes,
    },
    /// WINDOW_UPDATE (stream 0: the connection).
    WindowUpdate {
        /// Stream, or 0.
        stream: u32,
        /// Increment, 1..=2^31-1.
        increment: u32,
    },
    /// CONTINUATION.
    Continuation {
        /// Stream.
        stream: u32,
        /// Header block fragment.
        block: Bytes,
        /// END_HEADERS.
        end_headers: bool,
    },
    /// A frame of an unknown type (ignored, §4.1, §5.5).
    Unknown {
        /// Type.
        kind: u8,
        /// Stream.
        stream: u32,
    },
}

/// The 9-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: u32,
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }
}

/// Takes the next whole frame off the front of `buf`: `Ok(None)` until one
/// is complete. `max_frame` is this side's SETTINGS_MAX_FRAME_SIZE: a
/// longer frame is refused from its header alone, before it is buffered.
pub fn decode(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let head = Head::parse(&buf[..HEADER_LEN]);
    if head.len > max_frame {
        return Err(conn_err(Reason::FRAME_SIZE_ERROR, "frame longer than SETTINGS_MAX_FRAME_SIZE"));
    }
    let total = HEADER_LEN + head.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(head.len as usize).freeze();
    parse(head, payload).map(Some)
}

/// How many more bytes `buf` needs before [`decode`] can return the next
/// frame (at least one when it is incomplete; 0 when a frame is there).
pub fn wanted(buf: &[u8]) -> usize {
    if buf.len() < HEADER_LEN {
        return HEADER_LEN - buf.len();
    }
    let total = HEADER_LEN + Head::parse(&buf[..HEADER_LEN]).len as usize;
    total.saturating_sub(buf.len())
}

/// Checks one frame against the rules that concern it alone.
pub fn parse(head: Head, mut payload: Bytes) -> Result<Frame, FrameError> {
    let Head { len, kind, flags, stream } = head;
    let stream_err = |reason, why| FrameError::Stream { stream, reason, why };
    match kind {
        kind::DATA => {
            if stream == 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
            }
            let data = unpad(flags, &mut payload)?;
            Ok(Frame::Data { stream, data, end: flags & flag::END_STREAM != 0, flow: len })
        }
        kind::HEADERS => {
            if stream == 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
            }
            let mut block = unpad(flags, &mut payload)?;
            if flags & flag::PRIORITY != 0 {
                if block.len() < 5 {
                    return Err(conn_err(Reason::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                }
                let dep = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & MAX_WINDOW;
                block.advance(5);
                if dep == stream {
                    return Err(stream_err(Reason::PROTOCOL_ERROR, "stream depends on itself"));
                }
            }
            Ok(Frame::Headers {
                stream,
                block,
                end_stream: flags & flag::END_STREAM != 0,
                end_headers: flags & flag::END_HEADERS != 0,
            })
        }
        kind::PRIORITY => {
            if stream == 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
            }
            if len != 5 {
                return Err(stream_err(Reason::FRAME_SIZE_ERROR, "PRIORITY not 5 bytes"));
            }
            let dep = payload.get_u32() & MAX_WINDOW;
            if dep == stream {
                return Err(stream_err(Reason::PROTOCOL_ERROR, "stream depends on itself"));
            }
            Ok(Frame::Priority { stream })
        }
        kind::RST_STREAM => {
            if stream == 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
            }
            if len != 4 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes"));
            }
            Ok(Frame::Reset { stream, reason: Reason(payload.get_u32()) })
        }
        kind::SETTINGS => {
            if stream != 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
            }
            let ack = flags & flag::ACK != 0;
            if ack && len != 0 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            if len % 6 != 0 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes"));
            }
            let mut params = Vec::with_capacity(len as usize / 6);
            while payload.has_remaining() {
                let (id, v) = (payload.get_u16(), payload.get_u32());
                params.push(match id {
                    1 => Setting::HeaderTableSize(v),
                    2 => match v {
                        0 | 1 => Setting::EnablePush(v == 1),
                        _ => return Err(conn_err(Reason::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")),
                    },
                    3 => Setting::MaxConcurrentStreams(v),
                    4 if v > MAX_WINDOW => {
                        return Err(conn_err(Reason::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"));
                    }
                    4 => Setting::InitialWindowSize(v),
                    5 if !(DEFAULT_MAX_FRAME..=MAX_MAX_FRAME).contains(&v) => {
                        return Err(conn_err(Reason::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    5 => Setting::MaxFrameSize(v),
                    6 => Setting::MaxHeaderListSize(v),
                    _ => Setting::Unknown(id, v),
                });
            }
            Ok(Frame::Settings { ack, params })
        }
        kind::PUSH_PROMISE => Ok(Frame::PushPromise { stream }),
        kind::PING => {
            if stream != 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "PING on a stream"));
            }
            if len != 8 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "PING not 8 bytes"));
            }
            let mut p = [0; 8];
            payload.copy_to_slice(&mut p);
            Ok(Frame::Ping { ack: flags & flag::ACK != 0, payload: p })
        }
        kind::GOAWAY => {
            if stream != 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
            }
            if len < 8 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
            }
            let last_stream = payload.get_u32() & MAX_WINDOW;
            let reason = Reason(payload.get_u32());
            Ok(Frame::GoAway { last_stream, reason, debug: payload })
        }
        kind::WINDOW_UPDATE => {
            if len != 4 {
                return Err(conn_err(Reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes"));
            }
            let increment = payload.get_u32() & MAX_WINDOW;
            if increment == 0 {
                return Err(if stream == 0 {
                    conn_err(Reason::PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
                } else {
                    stream_err(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            if stream == 0 {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "CONTINUATION on stream 0"));
            }
            Ok(Frame::Continuation { stream, block: payload, end_headers: flags & flag::END_HEADERS != 0 })
        }
        kind => Ok(Frame::Unknown { kind, stream }),
    }
}

/// Removes the padding of a PADDED frame (§6.1): its length byte and the
/// padding itself, which must leave the pad length shorter than the payload.
fn unpad(flags: u8, payload: &mut Bytes) -> Result<Bytes, FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(std::mem::take(payload));
    }
    if payload.is_empty() {
        return Err(conn_err(Reason::FRAME_SIZE_ERROR, "PADDED frame with no pad length"));
    }
    let pad = payload.get_u8() as usize;
    if pad > payload.len() {
        return Err(conn_err(Reason::PROTOCOL_ERROR, "padding longer than the payload"));
    }
    let keep = payload.len() - pad;
    Ok(payload.split_to(keep))
}

/// Writes a frame header.
pub fn put_head(out: &mut impl BufMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len as u32 <= MAX_MAX_FRAME);
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & MAX_WINDOW);
}

/// The header of a DATA frame carrying `len` bytes.
pub fn data_head(stream: u32, len: usize, end: bool) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    let mut w = &mut h[..];
    put_head(&mut w, len, kind::DATA, if end { flag::END_STREAM } else { 0 }, stream);
    h
}

/// Writes a SETTINGS frame with `params`.
pub fn put_settings(out: &mut BytesMut, params: &[Setting]) {
    put_head(out, params.len() * 6, kind::SETTINGS, 0, 0);
    for p in params {
        let (id, v) = match *p {
            Setting::HeaderTableSize(v) => (1, v),
            Setting::EnablePush(v) => (2, u32::from(v)),
            Setting::MaxConcurrentStreams(v) => (3, v),
            Setting::InitialWindowSize(v) => (4, v),
            Setting::MaxFrameSize(v) => (5, v),
            Setting::MaxHeaderListSize(v) => (6, v),
            Setting::Unknown(id, v) => (id, v),
        };
        out.put_u16(id);
        out.put_u32(v);
    }
}

/// Writes a SETTINGS acknowledgement.
pub fn put_settings_ack(out: &mut BytesMut) {
    put_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Writes a PING (or its acknowledgement).
pub fn put_ping(out: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    put_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.put_slice(&payload);
}

/// Writes a GOAWAY.
pub fn put_goaway(out: &mut BytesMut, last_stream: u32, reason: Reason) {
    put_head(out, 8, kind::GOAWAY, 0, 0);
    out.put_u32(last_stream & MAX_WINDOW);
    out.put_u32(reason.0);
}

/// Writes a WINDOW_UPDATE.
pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

/// Writes a RST_STREAM.
pub fn put_reset(out: &mut BytesMut, stream: u32, reason: Reason) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(reason.0);
}

/// Writes a header block as HEADERS plus as many CONTINUATION frames as
/// `max_frame` (the peer's SETTINGS_MAX_FRAME_SIZE) requires.
pub fn put_headers(out: &mut BytesMut, stream: u32, block: &[u8], end_stream: bool, max_frame: u32) {
    let max = max_frame as usize;
    let mut chunks = block.chunks(max.max(1)).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    put_head(out, first.len(), kind::HEADERS, flags, stream);
    out.put_slice(first);
    while let Some(c) = chunks.next() {
        let f = if chunks.peek().is_none() { flag::END_HEADERS } else { 0 };
        put_head(out, c.len(), kind::CONTINUATION, f, stream);
        out.put_slice(c);
    }
}

#[cfg(test)]
mod tests;
