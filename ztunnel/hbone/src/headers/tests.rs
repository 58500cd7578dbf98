use super::*;

fn decode(block: &[u8]) -> Result<Head, HeaderError> {
    Decoder::new(16 * 1024).decode(block)
}

#[test]
fn connect_round_trip() {
    let block = connect_request("10.0.1.5:8080", "for=\"10.0.2.7:41234\"", false);
    let head = decode(&block).unwrap();
    assert_eq!(head.method.as_deref(), Some("CONNECT"));
    assert_eq!(head.authority.as_deref(), Some("10.0.1.5:8080"));
    assert_eq!(head.forwarded.as_deref(), Some("for=\"10.0.2.7:41234\""));
    assert_eq!(head.fields, 1);
    head.check_request().unwrap();
    // Nothing was indexed: a second decoder (no shared table) reads it too,
    // and with a table size update in front.
    let again = connect_request("10.0.1.5:8080", "for=\"10.0.2.7:41234\"", true);
    assert_eq!(decode(&again).unwrap(), head);
}

#[test]
fn responses_round_trip() {
    for status in [200u16, 403, 503, 100] {
        let head = decode(&response(status, false)).unwrap();
        assert_eq!(head.status, Some(status));
        head.check_response(false).unwrap();
    }
    assert_eq!(&response(200, false)[..], &[0x88]);
}

/// Blocks from an encoder that indexes (the dynamic table) and from the
/// RFC's Huffman examples decode as well: whatever a peer's HPACK does.
#[test]
fn foreign_encodings_decode() {
    let mut enc = loona_hpack::Encoder::new();
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"CONNECT"),
        (b":authority", b"10.1.1.1:80"),
        (b"forwarded", b"for=10.2.2.2"),
        (b"x-extra", b"1"),
    ];
    let first = enc.encode(fields.iter().copied());
    let second = enc.encode(fields.iter().copied());
    assert!(second.len() < first.len(), "the encoder indexed");
    let mut d = Decoder::new(16 * 1024);
    for block in [first, second] {
        let head = d.decode(&block).unwrap();
        assert_eq!(head.authority.as_deref(), Some("10.1.1.1:80"));
        assert_eq!(head.forwarded.as_deref(), Some("for=10.2.2.2"));
        assert_eq!(head.fields, 2);
    }
    // RFC 7541 C.4.1: a Huffman-coded request.
    let huffman =
        [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
    let head = Decoder::new(16 * 1024).decode(&huffman).unwrap();
    assert_eq!(head.method.as_deref(), Some("GET"));
    assert_eq!(head.authority.as_deref(), Some("www.example.com"));
    assert_eq!(head.path.as_deref(), Some("/"));
    head.check_request().unwrap();
}

fn block(fields: &[(&[u8], &[u8])]) -> Bytes {
    let mut out = BytesMut::new();
    for (n, v) in fields {
        put_literal(&mut out, n, v);
    }
    out.freeze()
}

#[test]
fn malformed_heads() {
    type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;
    let cases: Vec<(Fields<'_>, &str)> = vec![
        (vec![(b":method", b"CONNECT"), (b"Forwarded", b"x")], "upper-case field name"),
        (vec![(b"forwarded", b"x"), (b":method", b"CONNECT")], "pseudo-field after a regular field"),
        (vec![(b":method", b"CONNECT"), (b":method", b"GET")], "repeated pseudo-field"),
        (vec![(b":method", b"CONNECT"), (b":bogus", b"1")], "unknown pseudo-field"),
        (vec![(b":method", b"CONNECT"), (b"connection", b"close")], "connection-specific field"),
        (vec![(b":method", b"CONNECT"), (b"te", b"gzip")], "te other than trailers"),
        (vec![(b":method", b"CONNECT"), (b"x", b"a\r\nb")], "NUL, CR or LF in a field"),
        (vec![(b":method", b"CONNECT"), (b"x", b" a")], "whitespace around a field value"),
        (vec![(b":status", b"2000")], "bad :status"),
        (vec![(b":status", b"099")], "bad :status"),
    ];
    for (fields, why) in cases {
        assert_eq!(decode(&block(&fields)), Err(HeaderError::Malformed(why)), "{fields:?}");
    }
}

#[test]
fn request_and_response_rules() {
    let head = |fields: &[(&[u8], &[u8])]| decode(&block(fields)).unwrap();
    assert!(head(&[(b":method", b"CONNECT")]).check_request().is_err());
    assert!(head(&[(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")]).check_request().is_err());
    assert!(head(&[(b":method", b"GET"), (b":authority", b"a:1")]).check_request().is_err());
    head(&[(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/x")]).check_request().unwrap();
    assert!(
        head(&[(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":protocol", b"websocket")])
            .check_request()
            .is_err()
    );
    assert!(head(&[(b":authority", b"a:1")]).check_request().is_err());
    assert!(head(&[(b":status", b"200"), (b":method", b"GET")]).check_response(false).is_err());
    assert!(head(&[(b"x", b"y")]).check_response(false).is_err());
    head(&[(b"x", b"y")]).check_response(true).unwrap();
    assert!(head(&[(b":status", b"200")]).check_response(true).is_err());
}

#[test]
fn several_forwarded_fields_are_one_list() {
    let h = decode(&block(&[(b":method", b"CONNECT"), (b"forwarded", b"for=a"), (b"forwarded", b"for=b")])).unwrap();
    assert_eq!(h.forwarded.as_deref(), Some("for=a, for=b"));
}

#[test]
fn size_limit_and_compression_errors() {
    let big = vec![b'v'; 5000];
    let b = block(&[(b":method", b"CONNECT"), (b"x", &big)]);
    assert!(matches!(Decoder::new(4096).decode(&b), Err(HeaderError::TooLarge(_))));
    // An index beyond both tables.
    assert!(matches!(decode(&[0xff, 0x7f]), Err(HeaderError::Compression(_))));
    // A literal whose length runs past the block.
    assert!(matches!(decode(&[0x00, 0x05, b'a']), Err(HeaderError::Compression(_))));
}

proptest::proptest! {
    /// Arbitrary blocks decode or fail; never a panic.
    #[test]
    fn arbitrary_blocks_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
        let mut d = Decoder::new(16 * 1024);
        let _ = d.decode(&bytes);
        let _ = d.decode(&bytes);
    }

    /// Any authority and Forwarded value this side encodes comes back as is.
    #[test]
    fn encoded_connects_decode(authority in "[0-9a-f:.\\[\\]]{1,60}", fwd in "[ -~]{0,300}") {
        let fwd = fwd.trim_matches([' ', '\t']).to_string();
        let head = decode(&connect_request(&authority, &fwd, false)).unwrap();
        proptest::prop_assert_eq!(head.authority.as_deref(), Some(authority.as_str()));
        proptest::prop_assert_eq!(head.forwarded.as_deref(), Some(fwd.as_str()));
    }
}
