use super::*;
use crate::frame::{Frame, FrameError};

mod interop;

fn config() -> Config {
    Config {
        max_concurrent_streams: 4,
        stream_window: 100_000,
        connection_window: 300_000,
        max_frame: 16_384,
        max_header_list: 8192,
    }
}

/// Everything `from` has to send, as one buffer.
fn wire(from: &mut Connection) -> BytesMut {
    let mut v = Vec::new();
    from.transmit(&mut v);
    let mut b = BytesMut::new();
    for c in v {
        b.extend_from_slice(&c);
    }
    b
}

/// Moves bytes both ways until neither side has anything to send.
fn pump(a: &mut Connection, b: &mut Connection) {
    for _ in 0..100 {
        let mut ab = wire(a);
        let mut ba = wire(b);
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        b.recv(&mut ab).unwrap();
        a.recv(&mut ba).unwrap();
        assert!(ab.is_empty() && ba.is_empty(), "whole frames only");
    }
    panic!("the two sides never went quiet");
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn pair() -> (Connection, Connection) {
    let mut client = Connection::new(Role::Client, config());
    let mut server = Connection::new(Role::Server, config());
    pump(&mut client, &mut server);
    assert!(client.settings_acked() && server.settings_acked());
    (client, server)
}

/// Opens a tunnel and answers it with `status`.
fn open(client: &mut Connection, server: &mut Connection, status: u16) -> u32 {
    let id = client.open("10.0.0.1:80", "for=\"10.0.0.2:5000\"").unwrap();
    pump(client, server);
    match events(server).as_slice() {
        [Event::Request { stream, head, end_stream: false }] => {
            assert_eq!(*stream, id);
            assert_eq!(head.method.as_deref(), Some("CONNECT"));
            assert_eq!(head.authority.as_deref(), Some("10.0.0.1:80"));
            assert_eq!(head.forwarded.as_deref(), Some("for=\"10.0.0.2:5000\""));
        }
        other => panic!("server saw {other:?}"),
    }
    server.respond(id, status, status != 200).unwrap();
    pump(client, server);
    match events(client).as_slice() {
        [Event::Response { stream, head, end_stream }] => {
            assert_eq!((*stream, head.status, *end_stream), (id, Some(status), status != 200));
        }
        other => panic!("client saw {other:?}"),
    }
    id
}

fn send(c: &mut Connection, id: u32, data: &'static [u8], end: bool) {
    let mut b = Bytes::from_static(data);
    c.send_data(id, &mut b, end).unwrap();
    assert!(b.is_empty());
}

#[test]
fn a_tunnel_carries_bytes_both_ways_and_half_closes() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    send(&mut client, id, b"hello", false);
    send(&mut server, id, b"world", false);
    pump(&mut client, &mut server);
    assert_eq!(events(&mut server), vec![Event::Data { stream: id, data: Bytes::from_static(b"hello"), end: false }]);
    assert_eq!(events(&mut client), vec![Event::Data { stream: id, data: Bytes::from_static(b"world"), end: false }]);
    // The client's half-close; the server still sends.
    send(&mut client, id, b"", true);
    pump(&mut client, &mut server);
    assert_eq!(events(&mut server), vec![Event::Data { stream: id, data: Bytes::new(), end: true }]);
    assert_eq!(client.active(), 1);
    send(&mut server, id, b"bye", true);
    pump(&mut client, &mut server);
    assert_eq!(events(&mut client), vec![Event::Data { stream: id, data: Bytes::from_static(b"bye"), end: true }]);
    assert_eq!((client.active(), server.active()), (0, 0));
    // Sending on the ended stream is refused, not a panic.
    let mut b = Bytes::from_static(b"x");
    assert_eq!(client.send_data(id, &mut b, false), Err(StreamError::Unknown));
}

#[test]
fn a_refusal_ends_the_stream() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 403);
    assert_eq!(server.active(), 1, "the client's side is still open");
    send(&mut client, id, b"", true);
    pump(&mut client, &mut server);
    assert_eq!((client.active(), server.active()), (0, 0));
}

#[test]
fn server_data_waits_for_the_response() {
    let (mut client, mut server) = pair();
    let id = client.open("10.0.0.1:80", "for=x").unwrap();
    pump(&mut client, &mut server);
    events(&mut server);
    let mut b = Bytes::from_static(b"early");
    assert_eq!(server.send_data(id, &mut b, false), Err(StreamError::State));
    assert_eq!(client.respond(id, 200, false), Err(StreamError::State), "clients do not respond");
    server.respond(id, 200, false).unwrap();
    assert_eq!(server.respond(id, 200, false), Err(StreamError::State), "one response per stream");
}

#[test]
fn the_client_may_send_before_the_answer() {
    let (mut client, mut server) = pair();
    let id = client.open("10.0.0.1:80", "for=x").unwrap();
    send(&mut client, id, b"GET / HTTP/1.1\r\n\r\n", false);
    pump(&mut client, &mut server);
    let ev = events(&mut server);
    assert!(matches!(ev[0], Event::Request { .. }));
    assert_eq!(ev[1], Event::Data { stream: id, data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"), end: false });
}

#[test]
fn flow_control_blocks_until_the_reader_releases() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    assert_eq!(client.send_capacity(id), 100_000);
    let mut big = Bytes::from(vec![7u8; 150_000]);
    client.send_data(id, &mut big, true).unwrap();
    assert_eq!(big.len(), 50_000, "the stream window took 100,000");
    assert_eq!(client.send_capacity(id), 0);
    pump(&mut client, &mut server);
    let got: usize = events(&mut server)
        .iter()
        .map(|e| match e {
            Event::Data { data, end: false, .. } => data.len(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(got, 100_000);
    // Not released: nothing reopens.
    pump(&mut client, &mut server);
    assert!(events(&mut client).is_empty());
    // Less than half released: still nothing announced.
    server.release(id, 40_000);
    pump(&mut client, &mut server);
    assert!(events(&mut client).is_empty());
    server.release(id, 60_000);
    pump(&mut client, &mut server);
    assert_eq!(events(&mut client), vec![Event::Writable { stream: id }]);
    client.send_data(id, &mut big, true).unwrap();
    assert!(big.is_empty());
    pump(&mut client, &mut server);
    let ev = events(&mut server);
    let total: usize = ev.iter().map(|e| if let Event::Data { data, .. } = e { data.len() } else { 0 }).sum();
    assert_eq!(total, 50_000);
    assert!(matches!(ev.last(), Some(Event::Data { end: true, .. })));
}

#[test]
fn the_connection_window_is_shared() {
    let (mut client, mut server) = pair();
    let ids: Vec<u32> = (0..4).map(|_| open(&mut client, &mut server, 200)).collect();
    for &id in &ids {
        let mut b = Bytes::from(vec![1u8; 100_000]);
        client.send_data(id, &mut b, false).unwrap();
    }
    // 300,000 of connection window: the fourth stream got nothing.
    assert_eq!(client.send_capacity(ids[3]), 0);
    pump(&mut client, &mut server);
    for e in events(&mut server) {
        if let Event::Data { stream, data, .. } = e {
            server.release(stream, data.len());
        }
    }
    pump(&mut client, &mut server);
    let ev = events(&mut client);
    assert!(ev.contains(&Event::Writable { stream: ids[3] }), "{ev:?}");
    assert_eq!(client.send_capacity(ids[3]), 100_000);
}

#[test]
fn a_peer_beyond_its_window_is_a_flow_control_error() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    // Frames written by hand, ignoring the window.
    let mut raw = BytesMut::new();
    for _ in 0..7 {
        frame::put_head(&mut raw, 16_000, frame::kind::DATA, 0, id);
        raw.extend_from_slice(&[0u8; 16_000]);
    }
    server.recv(&mut raw).unwrap();
    let ev = events(&mut server);
    assert!(ev.contains(&Event::Reset { stream: id, reason: Reason::FLOW_CONTROL_ERROR, by_peer: false }), "{ev:?}");
    // The connection's own window: three streams fill it exactly, a
    // fourth stream's first byte is beyond it.
    let (mut client, mut server) = pair();
    let ids: Vec<u32> = (0..4).map(|_| open(&mut client, &mut server, 200)).collect();
    let mut raw = BytesMut::new();
    for &id in &ids[..3] {
        for _ in 0..10 {
            frame::put_head(&mut raw, 10_000, frame::kind::DATA, 0, id);
            raw.extend_from_slice(&[0u8; 10_000]);
        }
    }
    server.recv(&mut raw).unwrap();
    let mut raw = BytesMut::new();
    frame::put_head(&mut raw, 1, frame::kind::DATA, 0, ids[3]);
    raw.extend_from_slice(b"x");
    let e = server.recv(&mut raw).unwrap_err();
    assert!(matches!(e, FrameError::Connection { reason: Reason::FLOW_CONTROL_ERROR, .. }), "{e:?}");
    assert!(server.is_done());
    let mut goaway = wire(&mut server);
    let mut last = None;
    while let Some(f) = frame::decode(&mut goaway, 1 << 20).unwrap() {
        last = Some(f);
    }
    assert!(matches!(last, Some(Frame::GoAway { reason: Reason::FLOW_CONTROL_ERROR, .. })));
}

#[test]
fn the_stream_limit_holds_on_both_sides() {
    let (mut client, mut server) = pair();
    for _ in 0..4 {
        open(&mut client, &mut server, 200);
    }
    assert_eq!(client.open("10.0.0.1:80", "for=x"), Err(OpenError::Busy));
    assert!(!client.can_open());
    // A client that ignores the limit has the extra stream refused.
    let mut raw = BytesMut::new();
    frame::put_headers(&mut raw, 11, &headers::connect_request("10.0.0.1:80", "for=x", false), false, 16_384);
    server.recv(&mut raw).unwrap();
    assert!(events(&mut server).is_empty());
    let mut out = wire(&mut server);
    assert_eq!(
        frame::decode(&mut out, 1 << 20).unwrap(),
        Some(Frame::Reset { stream: 11, reason: Reason::REFUSED_STREAM })
    );
}

#[test]
fn resets_either_way() {
    let (mut client, mut server) = pair();
    let a = open(&mut client, &mut server, 200);
    let b = open(&mut client, &mut server, 200);
    client.reset(a, Reason::CANCEL);
    server.reset(b, Reason::CONNECT_ERROR);
    pump(&mut client, &mut server);
    assert_eq!(events(&mut server), vec![Event::Reset { stream: a, reason: Reason::CANCEL, by_peer: true }]);
    assert_eq!(events(&mut client), vec![Event::Reset { stream: b, reason: Reason::CONNECT_ERROR, by_peer: true }]);
    assert_eq!((client.active(), server.active()), (0, 0));
    // Frames the peer sent before it saw the reset are dropped quietly.
    let mut raw = BytesMut::new();
    frame::put_head(&mut raw, 3, frame::kind::DATA, 0, a);
    raw.extend_from_slice(b"abc");
    frame::put_window_update(&mut raw, a, 10);
    frame::put_reset(&mut raw, a, Reason::CANCEL);
    server.recv(&mut raw).unwrap();
    assert!(events(&mut server).is_empty());
}

#[test]
fn held_bytes_return_to_the_connection_when_a_stream_goes() {
    let (mut client, mut server) = pair();
    let mut total = 0;
    // Three rounds of 100,000 unreleased bytes on streams that are then
    // reset: without the return the 300,000 connection window would close.
    for _ in 0..3 {
        let id = open(&mut client, &mut server, 200);
        let mut b = Bytes::from(vec![1u8; 100_000]);
        client.send_data(id, &mut b, false).unwrap();
        assert!(b.is_empty());
        pump(&mut client, &mut server);
        total += events(&mut server).len();
        server.reset(id, Reason::CANCEL);
        pump(&mut client, &mut server);
        events(&mut client);
    }
    assert!(total > 0);
    let id = open(&mut client, &mut server, 200);
    assert_eq!(client.send_capacity(id), 100_000);
}

#[test]
fn graceful_drain() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    server.drain();
    assert!(!server.is_done());
    pump(&mut client, &mut server);
    let ev = events(&mut client);
    assert_eq!(ev[0], Event::GoAway { last_stream: MAX_WINDOW, reason: Reason::NO_ERROR });
    assert_eq!(ev[1], Event::GoAway { last_stream: id, reason: Reason::NO_ERROR });
    assert_eq!(client.open("10.0.0.1:80", "for=x"), Err(OpenError::GoingAway));
    // The open tunnel runs to its end, then both sides are done.
    send(&mut client, id, b"last", true);
    send(&mut server, id, b"", true);
    assert!(!server.is_done());
    pump(&mut client, &mut server);
    assert!(server.is_done() && client.is_done());
}

#[test]
fn a_goaway_refuses_streams_above_its_last() {
    let (mut client, mut server) = pair();
    let a = open(&mut client, &mut server, 200);
    let b = client.open("10.0.0.1:80", "for=x").unwrap();
    // The server goes away before it reads b's HEADERS.
    server.go_away(Reason::NO_ERROR);
    let mut to_client = wire(&mut server);
    client.recv(&mut to_client).unwrap();
    assert_eq!(
        events(&mut client),
        vec![
            Event::Reset { stream: b, reason: Reason::REFUSED_STREAM, by_peer: true },
            Event::GoAway { last_stream: a, reason: Reason::NO_ERROR }
        ]
    );
    // b's HEADERS reach the server after its GOAWAY: ignored.
    pump(&mut client, &mut server);
    assert!(events(&mut server).is_empty());
    assert_eq!(server.active(), 1);
}

#[test]
fn pings_are_answered_and_reported() {
    let (mut client, mut server) = pair();
    client.ping(*b"keepaliv");
    pump(&mut client, &mut server);
    assert_eq!(events(&mut client), vec![Event::Pong { payload: *b"keepaliv" }]);
    assert!(events(&mut server).is_empty());
}

#[test]
fn settings_changes_move_open_windows() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    let mut b = Bytes::from(vec![0u8; 100_000]);
    client.send_data(id, &mut b, false).unwrap();
    assert_eq!(client.send_capacity(id), 0);
    // The server lowers, then raises its initial window.
    let mut raw = BytesMut::new();
    frame::put_settings(&mut raw, &[Setting::InitialWindowSize(40_000)]);
    client.recv(&mut raw).unwrap();
    assert_eq!(client.send_capacity(id), 0, "the window went negative");
    let mut raw = BytesMut::new();
    frame::put_settings(&mut raw, &[Setting::InitialWindowSize(200_000), Setting::MaxFrameSize(20_000)]);
    client.recv(&mut raw).unwrap();
    assert_eq!(client.send_capacity(id), 100_000);
    // A stream window pushed above the initial one overflows when the
    // initial window then rises to the maximum.
    let mut raw = BytesMut::new();
    frame::put_window_update(&mut raw, id, 150_000);
    frame::put_settings(&mut raw, &[Setting::InitialWindowSize(MAX_WINDOW)]);
    assert!(matches!(client.recv(&mut raw), Err(FrameError::Connection { reason: Reason::FLOW_CONTROL_ERROR, .. })));
}

#[test]
fn protocol_violations_end_the_connection() {
    type Writer = Box<dyn Fn(&mut BytesMut)>;
    let bad: Vec<(&str, Writer)> = vec![
        (
            "DATA on an idle stream",
            Box::new(|b| {
                frame::put_head(b, 1, frame::kind::DATA, 0, 99);
                b.extend_from_slice(b"x");
            }),
        ),
        (
            "PUSH_PROMISE",
            Box::new(|b| {
                frame::put_head(b, 4, frame::kind::PUSH_PROMISE, frame::flag::END_HEADERS, 1);
                b.extend_from_slice(&[0, 0, 0, 2]);
            }),
        ),
        (
            "interrupted header block",
            Box::new(|b| {
                frame::put_head(b, 1, frame::kind::HEADERS, 0, 1);
                b.extend_from_slice(&[0x82]);
                frame::put_ping(b, false, [0; 8]);
            }),
        ),
        (
            "CONTINUATION alone",
            Box::new(|b| {
                frame::put_head(b, 1, frame::kind::CONTINUATION, frame::flag::END_HEADERS, 1);
                b.extend_from_slice(&[0x82]);
            }),
        ),
        (
            "undecodable block",
            Box::new(|b| {
                frame::put_head(b, 2, frame::kind::HEADERS, frame::flag::END_HEADERS, 1);
                b.extend_from_slice(&[0xff, 0x7f]);
            }),
        ),
        (
            "even stream from a client",
            Box::new(|b| {
                frame::put_headers(b, 2, &headers::connect_request("a:1", "for=x", false), false, 16_384);
            }),
        ),
        ("RST_STREAM on an idle stream", Box::new(|b| frame::put_reset(b, 7, Reason::CANCEL))),
        ("WINDOW_UPDATE on an idle stream", Box::new(|b| frame::put_window_update(b, 7, 1))),
        ("connection window overflow", Box::new(|b| frame::put_window_update(b, 0, MAX_WINDOW))),
    ];
    for (what, write) in bad {
        let (_, mut server) = pair();
        let mut raw = BytesMut::new();
        write(&mut raw);
        assert!(server.recv(&mut raw).is_err(), "{what}");
        assert!(server.is_done(), "{what}");
        assert!(server.recv(&mut BytesMut::new()).is_err(), "{what}: stays failed");
    }
}

#[test]
fn a_bad_request_costs_only_its_stream() {
    let (mut client, mut server) = pair();
    let mut raw = BytesMut::new();
    let mut block = BytesMut::new();
    // CONNECT without :authority.
    block.extend_from_slice(&[0x02, 0x07]);
    block.extend_from_slice(b"CONNECT");
    frame::put_headers(&mut raw, 1, &block, false, 16_384);
    server.recv(&mut raw).unwrap();
    assert!(events(&mut server).is_empty());
    let mut out = wire(&mut server);
    assert_eq!(
        frame::decode(&mut out, 1 << 20).unwrap(),
        Some(Frame::Reset { stream: 1, reason: Reason::PROTOCOL_ERROR })
    );
    // The connection goes on; the client's ids move past the one used.
    client.next_local = 3;
    open(&mut client, &mut server, 200);
}

#[test]
fn preface_and_first_frame() {
    let mut server = Connection::new(Role::Server, config());
    let mut raw = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    assert!(matches!(server.recv(&mut raw), Err(FrameError::Connection { reason: Reason::PROTOCOL_ERROR, .. })));
    // The preface in pieces, then a PING before SETTINGS.
    let mut server = Connection::new(Role::Server, config());
    for piece in PREFACE.chunks(5) {
        server.recv(&mut BytesMut::from(piece)).unwrap();
    }
    let mut raw = BytesMut::new();
    frame::put_ping(&mut raw, false, [0; 8]);
    assert!(server.recv(&mut raw).is_err());
}

#[test]
fn informational_responses_are_skipped() {
    let (mut client, mut server) = pair();
    let id = client.open("10.0.0.1:80", "for=x").unwrap();
    pump(&mut client, &mut server);
    let mut raw = BytesMut::new();
    frame::put_headers(&mut raw, id, &headers::response(100, false), false, 16_384);
    frame::put_headers(&mut raw, id, &headers::response(200, false), false, 16_384);
    client.recv(&mut raw).unwrap();
    assert!(matches!(events(&mut client).as_slice(), [Event::Response { head, .. }] if head.status == Some(200)));
}

#[test]
fn a_lowered_header_table_is_announced_once() {
    let (mut client, mut server) = pair();
    let mut raw = BytesMut::new();
    frame::put_settings(&mut raw, &[Setting::HeaderTableSize(0)]);
    client.recv(&mut raw).unwrap();
    let a = client.open("10.0.0.1:80", "for=x").unwrap();
    let b = client.open("10.0.0.1:80", "for=y").unwrap();
    let mut out = wire(&mut client);
    let mut blocks = Vec::new();
    while let Some(f) = frame::decode(&mut out, 1 << 20).unwrap() {
        if let Frame::Headers { block, .. } = f {
            blocks.push(block);
        }
    }
    assert_eq!(blocks[0][0], 0x20, "a size update to 0 first");
    assert_ne!(blocks[1][0] & 0xe0, 0x20);
    let _ = (a, b, &mut server);
}

#[test]
fn stream_ids_run_out() {
    let (mut client, _server) = pair();
    client.next_local = MAX_WINDOW;
    assert!(client.open("a:1", "for=x").is_ok());
    assert_eq!(client.open("a:1", "for=x"), Err(OpenError::Exhausted));
}

proptest::proptest! {
    /// However the bytes are cut, the server sees the same requests and
    /// the same bytes in order, ended once (DATA payloads are delivered in
    /// pieces as they arrive, so the pieces may differ).
    #[test]
    fn chunking_does_not_matter(cuts in proptest::collection::vec(1usize..20_000, 1..40)) {
        let mut client = Connection::new(Role::Client, config());
        let id = client.open("10.0.0.1:80", "for=x").unwrap();
        let mut b = Bytes::from((0..60_000u32).map(|i| i as u8).collect::<Vec<_>>());
        client.send_data(id, &mut b, true).unwrap();
        proptest::prop_assert!(b.is_empty());
        let all = wire(&mut client);

        fn summary(events: Vec<Event>) -> (Vec<Event>, Vec<u8>, usize) {
            let (mut other, mut data, mut ends) = (Vec::new(), Vec::new(), 0);
            for e in events {
                match e {
                    Event::Data { data: d, end, .. } => {
                        assert_eq!(ends, 0, "bytes after the end");
                        data.extend_from_slice(&d);
                        ends += usize::from(end);
                    }
                    e => other.push(e),
                }
            }
            (other, data, ends)
        }
        let mut whole = Connection::new(Role::Server, config());
        whole.recv(&mut all.clone()).unwrap();
        let expected = summary(events(&mut whole));
        proptest::prop_assert_eq!(expected.1.len(), 60_000);
        proptest::prop_assert_eq!(expected.2, 1);

        let mut server = Connection::new(Role::Server, config());
        let mut buf = BytesMut::new();
        let (mut at, mut i) = (0, 0);
        while at < all.len() {
            let n = cuts[i % cuts.len()].min(all.len() - at);
            buf.extend_from_slice(&all[at..at + n]);
            at += n;
            i += 1;
            server.recv(&mut buf).unwrap();
            proptest::prop_assert!(buf.len() < 16_384 + 9, "a DATA payload waited in the buffer");
        }
        proptest::prop_assert_eq!(summary(events(&mut server)), expected);
    }

    /// Arbitrary bytes after a valid preface and SETTINGS never panic the
    /// server, and a failed connection stays failed.
    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut server = Connection::new(Role::Server, config());
        let mut raw = BytesMut::from(&PREFACE[..]);
        frame::put_settings(&mut raw, &[]);
        raw.extend_from_slice(&bytes);
        if server.recv(&mut raw).is_err() {
            proptest::prop_assert!(server.is_done());
        }
        let mut sink = Vec::new();
        server.transmit(&mut sink);
    }
}

#[test]
fn a_stream_reset_while_its_frame_arrives_gives_the_window_back() {
    let (mut client, mut server) = pair();
    let id = open(&mut client, &mut server, 200);
    let mut b = Bytes::from(vec![5u8; 60_000]);
    client.send_data(id, &mut b, false).unwrap();
    let mut all = wire(&mut client);
    let mut first = all.split_to(1000);
    server.recv(&mut first).unwrap();
    assert!(matches!(events(&mut server).as_slice(), [Event::Data { data, end: false, .. }] if data.len() == 1000 - 9));
    server.reset(id, Reason::CANCEL);
    server.recv(&mut all).unwrap();
    assert!(events(&mut server).is_empty(), "the rest of the frame is dropped");
    // Held and dropped bytes alike went back to the connection's window.
    assert_eq!(server.recv_window + server.conn_unannounced, config().connection_window);
}
