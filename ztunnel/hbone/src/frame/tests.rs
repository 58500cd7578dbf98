use super::*;

fn raw(len: usize, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    put_head(&mut b, len, kind, flags, stream);
    b.extend_from_slice(payload);
    b
}

fn one(len: usize, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Option<Frame>, FrameError> {
    decode(&mut raw(len, kind, flags, stream, payload), DEFAULT_MAX_FRAME)
}

fn conn(reason: Reason) -> impl Fn(&Result<Option<Frame>, FrameError>) -> bool {
    move |r| matches!(r, Err(FrameError::Connection { reason: got, .. }) if *got == reason)
}

#[test]
fn waits_for_a_whole_frame_and_leaves_the_next() {
    let mut b = raw(3, kind::DATA, 0, 1, b"abc");
    b.extend_from_slice(&raw(1, kind::DATA, flag::END_STREAM, 1, b"d"));
    let mut partial = BytesMut::from(&b[..5]);
    assert_eq!(decode(&mut partial, DEFAULT_MAX_FRAME), Ok(None));
    assert_eq!(wanted(&partial), 4);
    let mut partial = BytesMut::from(&b[..10]);
    assert_eq!(decode(&mut partial, DEFAULT_MAX_FRAME), Ok(None));
    assert_eq!(wanted(&partial), 2);
    let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert_eq!(f, Frame::Data { stream: 1, data: Bytes::from_static(b"abc"), end: false, flow: 3 });
    let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert_eq!(f, Frame::Data { stream: 1, data: Bytes::from_static(b"d"), end: true, flow: 1 });
    assert!(b.is_empty());
}

#[test]
fn an_oversized_frame_is_refused_from_its_header() {
    let mut b = BytesMut::new();
    put_head(&mut b, 20_000, kind::DATA, 0, 1);
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&decode(&mut b, DEFAULT_MAX_FRAME)));
}

#[test]
fn padding_is_removed_and_counted() {
    let f = one(6, kind::DATA, flag::PADDED, 3, b"\x02abc\0\0").unwrap().unwrap();
    assert_eq!(f, Frame::Data { stream: 3, data: Bytes::from_static(b"abc"), end: false, flow: 6 });
    assert!(conn(Reason::PROTOCOL_ERROR)(&one(3, kind::DATA, flag::PADDED, 3, b"\x05ab")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(0, kind::DATA, flag::PADDED, 3, b"")));
}

#[test]
fn headers_lose_priority_and_padding() {
    let f = one(9, kind::HEADERS, flag::PRIORITY | flag::END_HEADERS | flag::PADDED, 1, b"\x01\0\0\0\x03\x10xy\0")
        .unwrap()
        .unwrap();
    assert_eq!(f, Frame::Headers { stream: 1, block: Bytes::from_static(b"xy"), end_stream: false, end_headers: true });
    let e = one(5, kind::HEADERS, flag::PRIORITY, 1, b"\0\0\0\x01\x10");
    assert!(matches!(e, Err(FrameError::Stream { stream: 1, reason: Reason::PROTOCOL_ERROR, .. })));
}

#[test]
fn stream_zero_rules() {
    for k in [kind::DATA, kind::HEADERS, kind::PRIORITY, kind::RST_STREAM, kind::CONTINUATION] {
        let payload = [0u8; 5];
        let len = if k == kind::RST_STREAM { 4 } else { 5 };
        assert!(conn(Reason::PROTOCOL_ERROR)(&one(len, k, 0, 0, &payload[..len])), "type {k}");
    }
    for (k, len) in [(kind::SETTINGS, 6), (kind::PING, 8), (kind::GOAWAY, 8)] {
        let payload = [0u8; 8];
        assert!(conn(Reason::PROTOCOL_ERROR)(&one(len, k, 0, 1, &payload[..len])), "type {k}");
    }
}

#[test]
fn fixed_lengths() {
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(3, kind::RST_STREAM, 0, 1, b"abc")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(7, kind::PING, 0, 0, b"1234567")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(7, kind::GOAWAY, 0, 0, b"1234567")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(5, kind::WINDOW_UPDATE, 0, 0, b"12345")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(5, kind::SETTINGS, 0, 0, b"12345")));
    assert!(conn(Reason::FRAME_SIZE_ERROR)(&one(6, kind::SETTINGS, flag::ACK, 0, b"\0\x01\0\0\0\0")));
    let e = one(4, kind::PRIORITY, 0, 1, b"1234");
    assert!(matches!(e, Err(FrameError::Stream { stream: 1, reason: Reason::FRAME_SIZE_ERROR, .. })));
}

#[test]
fn settings_values_are_checked() {
    let mut b = BytesMut::new();
    put_settings(
        &mut b,
        &[
            Setting::EnablePush(false),
            Setting::InitialWindowSize(MAX_WINDOW),
            Setting::MaxFrameSize(MAX_MAX_FRAME),
            Setting::Unknown(0x99, 7),
        ],
    );
    let f = decode(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Settings {
            ack: false,
            params: vec![
                Setting::EnablePush(false),
                Setting::InitialWindowSize(MAX_WINDOW),
                Setting::MaxFrameSize(MAX_MAX_FRAME),
                Setting::Unknown(0x99, 7)
            ]
        }
    );
    assert!(conn(Reason::PROTOCOL_ERROR)(&one(6, kind::SETTINGS, 0, 0, b"\0\x02\0\0\0\x02")));
    assert!(conn(Reason::FLOW_CONTROL_ERROR)(&one(6, kind::SETTINGS, 0, 0, b"\0\x04\x80\0\0\0")));
    assert!(conn(Reason::PROTOCOL_ERROR)(&one(6, kind::SETTINGS, 0, 0, b"\0\x05\0\0\x3f\xff")));
    assert!(conn(Reason::PROTOCOL_ERROR)(&one(6, kind::SETTINGS, 0, 0, b"\0\x05\x01\0\0\0")));
}

#[test]
fn window_update_of_zero() {
    assert!(conn(Reason::PROTOCOL_ERROR)(&one(4, kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0")));
    let e = one(4, kind::WINDOW_UPDATE, 0, 5, b"\x80\0\0\0");
    assert!(matches!(e, Err(FrameError::Stream { stream: 5, reason: Reason::PROTOCOL_ERROR, .. })));
}

#[test]
fn written_frames_parse_back() {
    let mut b = BytesMut::new();
    put_ping(&mut b, true, *b"12345678");
    put_goaway(&mut b, 7, Reason::ENHANCE_YOUR_CALM);
    put_window_update(&mut b, 3, 1000);
    put_reset(&mut b, 3, Reason::CANCEL);
    put_settings_ack(&mut b);
    b.extend_from_slice(&data_head(9, 0, true));
    let mut got = Vec::new();
    while let Some(f) = decode(&mut b, DEFAULT_MAX_FRAME).unwrap() {
        got.push(f);
    }
    assert_eq!(
        got,
        vec![
            Frame::Ping { ack: true, payload: *b"12345678" },
            Frame::GoAway { last_stream: 7, reason: Reason::ENHANCE_YOUR_CALM, debug: Bytes::new() },
            Frame::WindowUpdate { stream: 3, increment: 1000 },
            Frame::Reset { stream: 3, reason: Reason::CANCEL },
            Frame::Settings { ack: true, params: vec![] },
            Frame::Data { stream: 9, data: Bytes::new(), end: true, flow: 0 },
        ]
    );
}

#[test]
fn a_long_header_block_is_split_into_continuations() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut b = BytesMut::new();
    put_headers(&mut b, 5, &block, true, DEFAULT_MAX_FRAME);
    let mut joined = Vec::new();
    let mut frames = Vec::new();
    while let Some(f) = decode(&mut b, DEFAULT_MAX_FRAME).unwrap() {
        match &f {
            Frame::Headers { block, .. } | Frame::Continuation { block, .. } => joined.extend_from_slice(block),
            _ => panic!("unexpected {f:?}"),
        }
        frames.push(f);
    }
    assert_eq!(joined, block);
    assert_eq!(frames.len(), 3);
    assert!(matches!(frames[0], Frame::Headers { end_stream: true, end_headers: false, .. }));
    assert!(matches!(frames[1], Frame::Continuation { end_headers: false, .. }));
    assert!(matches!(frames[2], Frame::Continuation { end_headers: true, .. }));
}

#[test]
fn unknown_types_and_the_reserved_bit() {
    let f = one(2, 0xfa, 0xff, 0x8000_0003, b"zz").unwrap().unwrap();
    assert_eq!(f, Frame::Unknown { kind: 0xfa, stream: 3 });
    assert_eq!(Reason(0xd).name(), "HTTP_1_1_REQUIRED");
    assert_eq!(Reason(0x77).name(), "UNKNOWN");
}

proptest::proptest! {
    /// Whatever the bytes, decoding ends in frames, a wait for more, or an
    /// error: never a panic, and never more consumed than given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let mut b = BytesMut::from(&bytes[..]);
        let mut before = b.len();
        while let Ok(Some(_)) = decode(&mut b, DEFAULT_MAX_FRAME) {
            proptest::prop_assert!(b.len() < before);
            before = b.len();
        }
    }
}
