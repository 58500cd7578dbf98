//! The receiving half of [`Connection`]: frames in, state changes and
//! events out, and which errors cost a stream or the connection.

use bytes::{Buf, Bytes, BytesMut};

use super::{Connection, DRAIN_PING, Event, InData, PREFACE, Partial, Role};
use crate::frame::{self, Frame, FrameError, MAX_WINDOW, Reason, Setting, conn_err};
use crate::headers::{self, HeaderError};

impl Connection {
    /// Consumes what `buf` holds of whole frames (a partial frame stays for
    /// the next call). `Err` is a connection error: GOAWAY is queued, the
    /// owner sends what [`Connection::transmit`] has and closes.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), FrameError> {
        if self.failed {
            return Err(conn_err(Reason::PROTOCOL_ERROR, "connection already failed"));
        }
        let r = self.recv_frames(buf);
        if let Err(FrameError::Connection { reason, .. }) = &r {
            let last = self.last_peer;
            frame::put_goaway(&mut self.ctl, last, *reason);
            self.goaway_sent = Some(last);
            self.failed = true;
        }
        r
    }

    fn recv_frames(&mut self, buf: &mut BytesMut) -> Result<(), FrameError> {
        if self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(buf.len());
            if buf[..n] != PREFACE[at..at + n] {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "bad connection preface"));
            }
            let _ = buf.split_to(n);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        loop {
            if let Some(d) = self.in_data {
                // The rest of a DATA frame's payload: delivered as it comes.
                if buf.is_empty() && d.left > 0 {
                    return Ok(());
                }
                let n = (d.left as usize).min(buf.len());
                let piece = buf.split_to(n).freeze();
                let left = d.left - n as u32;
                self.in_data = if left == 0 { None } else { Some(InData { left, ..d }) };
                self.data_piece(d, piece, left == 0);
                continue;
            }
            if let Some(head) = self.streamable_data(buf) {
                buf.advance(frame::HEADER_LEN);
                let deliver = match self.data_start(head.stream, head.len) {
                    Ok(deliver) => deliver,
                    Err(e) => {
                        self.stream_error(e)?;
                        false
                    }
                };
                let end = head.flags & frame::flag::END_STREAM != 0;
                self.in_data = Some(InData { stream: head.stream, left: head.len, end, deliver });
                continue;
            }
            let Some(f) = frame::decode(buf, self.config.max_frame)? else {
                return Ok(());
            };
            if let Err(e) = self.on_frame(f) {
                self.stream_error(e)?;
            }
        }
    }

    /// Resets the stream of a stream error; a connection error is returned.
    fn stream_error(&mut self, e: FrameError) -> Result<(), FrameError> {
        match e {
            FrameError::Stream { stream, reason, .. } => {
                frame::put_reset(&mut self.ctl, stream, reason);
                if self.streams.contains_key(&stream) {
                    self.remove(stream);
                    self.events.push_back(Event::Reset { stream, reason, by_peer: false });
                }
                Ok(())
            }
            e => Err(e),
        }
    }

    /// The header at the front of `buf` if it starts a DATA frame whose
    /// payload can be delivered piece by piece as it arrives (unpadded,
    /// within the limits; anything else takes the whole-frame path, which
    /// also reports its errors). Delivering pieces means a large frame
    /// never waits whole in a buffer, nor is copied when the buffer must
    /// grow to hold it.
    fn streamable_data(&self, buf: &[u8]) -> Option<frame::Head> {
        if buf.len() < frame::HEADER_LEN || self.partial.is_some() || !self.peer_settings_seen {
            return None;
        }
        let head = frame::Head::parse(&buf[..frame::HEADER_LEN]);
        let plain = head.kind == frame::kind::DATA && head.flags & frame::flag::PADDED == 0;
        (plain && head.stream != 0 && head.len <= self.config.max_frame).then_some(head)
    }

    /// Whether `id` names a stream that was never opened (§5.1 "idle").
    fn idle(&self, id: u32) -> bool {
        let peer_opens = (id % 2 == 1) == (self.role == Role::Server);
        if peer_opens { id > self.last_peer } else { id >= self.next_local }
    }

    fn on_frame(&mut self, f: Frame) -> Result<(), FrameError> {
        if !self.peer_settings_seen {
            match &f {
                Frame::Settings { ack: false, .. } => self.peer_settings_seen = true,
                _ => return Err(conn_err(Reason::PROTOCOL_ERROR, "first frame is not SETTINGS")),
            }
        }
        if let Some(p) = &self.partial {
            match &f {
                Frame::Continuation { stream, .. } if *stream == p.stream => {}
                _ => return Err(conn_err(Reason::PROTOCOL_ERROR, "header block interrupted")),
            }
        }
        match f {
            Frame::Data { stream, data, end, flow } => self.on_data(stream, data, end, flow),
            Frame::Headers { stream, block, end_stream, end_headers } => {
                if end_headers {
                    self.on_headers(stream, &block, end_stream)
                } else {
                    let mut b = BytesMut::with_capacity(block.len() * 2);
                    b.extend_from_slice(&block);
                    self.partial = Some(Partial { stream, end_stream, block: b });
                    Ok(())
                }
            }
            Frame::Continuation { block, end_headers, .. } => {
                let Some(mut p) = self.partial.take() else {
                    return Err(conn_err(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                let limit = (self.config.max_header_list as usize).max(16 * 1024) * 2;
                if p.block.len() + block.len() > limit {
                    return Err(conn_err(Reason::ENHANCE_YOUR_CALM, "header block too large"));
                }
                p.block.extend_from_slice(&block);
                if end_headers {
                    self.on_headers(p.stream, &p.block, p.end_stream)
                } else {
                    self.partial = Some(p);
                    Ok(())
                }
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::Reset { stream, reason } => {
                if self.idle(stream) {
                    return Err(conn_err(Reason::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if self.streams.contains_key(&stream) {
                    self.remove(stream);
                    self.events.push_back(Event::Reset { stream, reason, by_peer: true });
                }
                Ok(())
            }
            Frame::Settings { ack: true, .. } => {
                self.settings_acked = true;
                Ok(())
            }
            Frame::Settings { ack: false, params } => self.on_settings(&params),
            Frame::PushPromise { .. } => Err(conn_err(Reason::PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")),
            Frame::Ping { ack: false, payload } => {
                frame::put_ping(&mut self.ctl, true, payload);
                Ok(())
            }
            Frame::Ping { ack: true, payload } => {
                if self.draining && payload == DRAIN_PING {
                    self.draining = false;
                    let last = self.last_peer;
                    frame::put_goaway(&mut self.ctl, last, Reason::NO_ERROR);
                    self.goaway_sent = Some(last);
                } else {
                    self.events.push_back(Event::Pong { payload });
                }
                Ok(())
            }
            Frame::GoAway { last_stream, reason, .. } => {
                if self.goaway_received.is_some_and(|l| last_stream > l) {
                    return Err(conn_err(Reason::PROTOCOL_ERROR, "GOAWAY raised its last stream"));
                }
                self.goaway_received = Some(last_stream);
                if self.role == Role::Client {
                    let mut refused: Vec<u32> =
                        self.streams.keys().copied().filter(|&id| id % 2 == 1 && id > last_stream).collect();
                    refused.sort_unstable();
                    for stream in refused {
                        self.remove(stream);
                        self.events.push_back(Event::Reset { stream, reason: Reason::REFUSED_STREAM, by_peer: true });
                    }
                }
                self.events.push_back(Event::GoAway { last_stream, reason });
                Ok(())
            }
            Frame::WindowUpdate { stream: 0, increment } => {
                self.send_window += i64::from(increment);
                if self.send_window > i64::from(MAX_WINDOW) {
                    return Err(conn_err(Reason::FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
                }
                self.wake_blocked(None);
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                if self.idle(stream) {
                    return Err(conn_err(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
                }
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(());
                };
                s.send_window += i64::from(increment);
                if s.send_window > i64::from(MAX_WINDOW) {
                    return Err(FrameError::Stream {
                        stream,
                        reason: Reason::FLOW_CONTROL_ERROR,
                        why: "stream window above 2^31-1",
                    });
                }
                self.wake_blocked(Some(stream));
                Ok(())
            }
        }
    }

    fn on_settings(&mut self, params: &[Setting]) -> Result<(), FrameError> {
        for p in params {
            match *p {
                Setting::HeaderTableSize(v) => {
                    if (v as usize) < headers::TABLE_SIZE {
                        self.table_update = true;
                    }
                }
                Setting::EnablePush(true) if self.role == Role::Client => {
                    return Err(conn_err(Reason::PROTOCOL_ERROR, "server sent SETTINGS_ENABLE_PUSH=1"));
                }
                Setting::EnablePush(_) => {}
                Setting::MaxConcurrentStreams(v) => self.peer_max_streams = v,
                Setting::InitialWindowSize(v) => {
                    let delta = i64::from(v) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = v;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(MAX_WINDOW) {
                            return Err(conn_err(Reason::FLOW_CONTROL_ERROR, "SETTINGS pushed a window above 2^31-1"));
                        }
                    }
                    if delta > 0 {
                        self.wake_blocked(None);
                    }
                }
                Setting::MaxFrameSize(v) => self.peer_max_frame = v,
                Setting::MaxHeaderListSize(_) | Setting::Unknown(..) => {}
            }
        }
        frame::put_settings_ack(&mut self.ctl);
        Ok(())
    }

    /// Tells blocked streams (one, or all) that have a window now.
    fn wake_blocked(&mut self, only: Option<u32>) {
        if self.send_window <= 0 {
            return;
        }
        let mut woken: Vec<u32> = Vec::new();
        match only {
            Some(id) => {
                if let Some(s) = self.streams.get_mut(&id)
                    && s.blocked
                    && s.send_window > 0
                {
                    s.blocked = false;
                    woken.push(id);
                }
            }
            None => {
                for (&id, s) in self.streams.iter_mut() {
                    if s.blocked && s.send_window > 0 {
                        s.blocked = false;
                        woken.push(id);
                    }
                }
                woken.sort_unstable();
            }
        }
        self.events.extend(woken.into_iter().map(|stream| Event::Writable { stream }));
    }

    /// A DATA frame of `flow` bytes begins: the windows are charged for
    /// all of it at once. `Ok(false)`: its payload is dropped (a stream
    /// this side has finished), already released.
    fn data_start(&mut self, stream: u32, flow: u32) -> Result<bool, FrameError> {
        if self.idle(stream) {
            return Err(conn_err(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        if flow > self.recv_window {
            return Err(conn_err(Reason::FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        self.recv_window -= flow;
        let stream_err = |reason, why| FrameError::Stream { stream, reason, why };
        let Some(s) = self.streams.get_mut(&stream) else {
            // A stream this side reset or finished: the peer may not have
            // known yet. Its bytes still count against the connection.
            self.release_conn(flow);
            return Ok(false);
        };
        let err = if s.remote_end {
            Some(stream_err(Reason::STREAM_CLOSED, "DATA after END_STREAM"))
        } else if self.role == Role::Client && !s.headed {
            Some(stream_err(Reason::PROTOCOL_ERROR, "DATA before the response"))
        } else if flow > s.recv_window {
            Some(stream_err(Reason::FLOW_CONTROL_ERROR, "DATA beyond the stream window"))
        } else {
            None
        };
        if let Some(e) = err {
            self.release_conn(flow);
            return Err(e);
        }
        s.recv_window -= flow;
        Ok(true)
    }

    /// A piece of a DATA frame's payload (`last`: the frame's end).
    fn data_piece(&mut self, d: InData, piece: Bytes, last: bool) {
        if !d.deliver {
            return;
        }
        let end = last && d.end;
        let Some(s) = self.streams.get_mut(&d.stream) else {
            // Reset by the owner while its frame arrived.
            self.release_conn(piece.len() as u32);
            return;
        };
        s.held += piece.len() as u32;
        if end {
            s.remote_end = true;
        }
        if !piece.is_empty() || end {
            self.events.push_back(Event::Data { stream: d.stream, data: piece, end });
        }
        if end {
            self.maybe_remove(d.stream);
        }
    }

    /// A whole DATA frame (padded ones take this path).
    fn on_data(&mut self, stream: u32, data: Bytes, end: bool, flow: u32) -> Result<(), FrameError> {
        if !self.data_start(stream, flow)? {
            return Ok(());
        }
        let padding = flow - data.len() as u32;
        if padding > 0 {
            // Padding is never delivered: released now.
            if let Some(s) = self.streams.get_mut(&stream) {
                s.unannounced += padding;
            }
            self.release_conn(padding);
        }
        self.data_piece(InData { stream, left: 0, end, deliver: true }, data, true);
        Ok(())
    }

    fn on_headers(&mut self, stream: u32, block: &[u8], end_stream: bool) -> Result<(), FrameError> {
        // Every block is decoded, whatever happens to its stream: the HPACK
        // table is the connection's.
        let decoded = self.decoder.decode(block);
        if let Err(HeaderError::Compression(_)) = &decoded {
            return Err(conn_err(Reason::COMPRESSION_ERROR, "header block does not decode"));
        }
        let stream_err = |reason, why| FrameError::Stream { stream, reason, why };
        let peer_opens = (stream % 2 == 1) == (self.role == Role::Server);
        if let Some(s) = self.streams.get_mut(&stream) {
            if s.remote_end {
                return Err(stream_err(Reason::STREAM_CLOSED, "HEADERS after END_STREAM"));
            }
            let informational = self.role == Role::Client && !s.headed;
            let head = match decoded {
                Ok(h) => h,
                Err(_) => return Err(stream_err(Reason::PROTOCOL_ERROR, "malformed head")),
            };
            if informational {
                if head.check_response(false).is_err() {
                    return Err(stream_err(Reason::PROTOCOL_ERROR, "malformed response"));
                }
                if head.status.is_some_and(|s| s < 200) {
                    if end_stream || head.status == Some(101) {
                        return Err(stream_err(Reason::PROTOCOL_ERROR, "bad informational response"));
                    }
                    return Ok(());
                }
                s.headed = true;
                if end_stream {
                    s.remote_end = true;
                }
                self.events.push_back(Event::Response { stream, head, end_stream });
            } else {
                // Trailers: they end the stream and carry nothing HBONE uses.
                if !end_stream {
                    return Err(stream_err(Reason::PROTOCOL_ERROR, "second HEADERS without END_STREAM"));
                }
                if head.check_response(true).is_err() {
                    return Err(stream_err(Reason::PROTOCOL_ERROR, "malformed trailers"));
                }
                s.remote_end = true;
                self.events.push_back(Event::Data { stream, data: Bytes::new(), end: true });
            }
            if end_stream {
                self.maybe_remove(stream);
            }
            return Ok(());
        }
        if !peer_opens {
            if self.idle(stream) {
                return Err(conn_err(Reason::PROTOCOL_ERROR, "HEADERS on a stream this side never opened"));
            }
            // A stream this side reset: the answer crossed the reset.
            return Ok(());
        }
        if stream <= self.last_peer {
            return Err(conn_err(Reason::STREAM_CLOSED, "HEADERS on a closed stream"));
        }
        self.last_peer = stream;
        if self.goaway_sent.is_some_and(|l| stream > l) {
            // After GOAWAY new streams are ignored (§6.8).
            return Ok(());
        }
        if self.peer_active >= self.config.max_concurrent_streams {
            return Err(stream_err(Reason::REFUSED_STREAM, "too many streams"));
        }
        let head = match decoded {
            Ok(h) if h.check_request().is_ok() => h,
            _ => return Err(stream_err(Reason::PROTOCOL_ERROR, "malformed request")),
        };
        self.streams.insert(stream, self.new_stream(end_stream));
        self.peer_active += 1;
        self.events.push_back(Event::Request { stream, head, end_stream });
        Ok(())
    }
}
