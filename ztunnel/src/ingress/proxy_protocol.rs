//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load
//! balancer in front of the gateway sends before the client's bytes, naming
//! the client's address. Pure parsing; the listener reads and strips it
//! (`server.rs`).
//!
//! Behind such a load balancer every connection must start with a header:
//! one without is closed, never served under the balancer's address, since
//! anything else would let a client that reaches the gateway directly
//! choose the address it is logged and forwarded as.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Largest version 2 address block accepted (addresses and TLVs; load
/// balancers send well under this), bounding what is buffered per connection.
pub const V2_MAX_BLOCK: usize = 2048;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client (`None`: the balancer's own connection, e.g. a health
    /// check (`LOCAL`, `UNKNOWN`), or a family other than TCP over IP; the
    /// TCP peer is used then).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with either signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A version 1 line that does not parse.
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
    /// A version 2 header that does not parse.
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the header and its length in bytes (what follows is the
/// client's).
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyHeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(ProxyHeaderError::V1("no CRLF within 107 bytes")) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyHeaderError::V1("not text"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Some((Header { source: None, destination: None }, end + 2)));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyHeaderError::V1("family is not TCP4, TCP6 or UNKNOWN")),
    };
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyHeaderError::V1("expected four fields after the family"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip: IpAddr = s.parse().map_err(|_| ProxyHeaderError::V1("bad address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ProxyHeaderError::V1("address does not match the family"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        // Decimal without sign or leading zeros, as the specification asks.
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyHeaderError::V1("bad port"));
        }
        s.parse().map_err(|_| ProxyHeaderError::V1("bad port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Some((Header { source: Some(source), destination: Some(destination) }, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_BLOCK {
        return Err(ProxyHeaderError::V2("address block too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let block = &buf[16..16 + len];
    let total = 16 + len;
    match command {
        // LOCAL: the balancer's own connection; addresses are ignored.
        0 => return Ok(Some((Header { source: None, destination: None }, total))),
        1 => {}
        _ => return Err(ProxyHeaderError::V2("command is neither LOCAL nor PROXY")),
    }
    let header = match family {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
        0x11 => {
            let b = block.get(..12).ok_or(ProxyHeaderError::V2("IPv4 block shorter than 12 bytes"))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Header {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
        0x21 => {
            let b = block.get(..36).ok_or(ProxyHeaderError::V2("IPv6 block shorter than 36 bytes"))?;
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Header {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // UNSPEC, UDP, UNIX: nothing usable as a client address.
        _ => Header { source: None, destination: None },
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut block = src.to_vec();
        block.extend_from_slice(&[10, 0, 0, 1]);
        block.extend_from_slice(&sport.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(tlvs);
        v2(1, 0x11, &block)
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = parse(line).unwrap().unwrap();
        assert_eq!(h.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
        assert_eq!(&line[n..], b"GET / HTTP/1.1\r\n");

        let (h, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 8443\r\n").unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4242".parse().unwrap()));
        let (h, n) = parse(b"PROXY UNKNOWN ffff:f...f ffff 65535\r\nrest").unwrap().unwrap();
        assert_eq!((h.source, n), (None, 37));

        for bad in [
            &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1("no CRLF within 107 bytes")));
    }

    #[test]
    fn version_2_headers() {
        let mut bytes = v2_tcp4([203, 0, 113, 7], 56324, &[]);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!(h.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
        assert_eq!(&bytes[n..], b"\x16\x03\x01");

        // TLVs after the addresses (e.g. an AWS VPC endpoint id) are skipped.
        let bytes = v2_tcp4([198, 51, 100, 1], 1, &[0xea, 0x00, 0x03, b'v', b'p', b'c']);
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!((h.source.unwrap().ip().to_string(), n), ("198.51.100.1".to_string(), bytes.len()));

        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0x10, 0x92, 0x01, 0xbb]);
        let (h, _) = parse(&v2(1, 0x21, &block)).unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4242".parse().unwrap()));

        // LOCAL (health checks) and families without a TCP client address.
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().0.source, None);
        assert_eq!(parse(&v2(1, 0x12, &[0; 12])).unwrap().unwrap().0.source, None);
        assert_eq!(parse(&v2(1, 0x31, &[0; 216])).unwrap().unwrap().0.source, None);

        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err(), "unknown command");
        assert!(parse(&v2(1, 0x11, &[0; 11])).is_err(), "short IPv4 block");
        assert!(parse(&v2(1, 0x21, &[0; 35])).is_err(), "short IPv6 block");
        let mut v1_version = v2(1, 0x11, &[0; 12]);
        v1_version[12] = 0x11;
        assert!(parse(&v1_version).is_err(), "version 1 in a v2 header");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyHeaderError::V2("address block too long")));
    }

    #[test]
    fn not_a_header() {
        for bad in [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01\x02\x00", b"PROXZ", b"\r\n\r\n\0\r\nQUIZ\n"] {
            assert_eq!(parse(bad), Err(ProxyHeaderError::NotProxy), "{bad:?}");
        }
    }

    proptest! {
        /// Every proper prefix of a valid header asks for more bytes, and
        /// the whole header parses to its exact length.
        #[test]
        fn prefixes_ask_for_more(src in any::<[u8; 4]>(), port in any::<u16>(), v1 in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let header = if v1 {
                format!("PROXY TCP4 {} 10.0.0.1 {port} 443\r\n", Ipv4Addr::from(src)).into_bytes()
            } else {
                v2_tcp4(src, port, &[])
            };
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&header[..cut]), Ok(None));
            }
            let mut whole = header.clone();
            whole.extend_from_slice(&tail);
            let (h, n) = parse(&whole).unwrap().unwrap();
            prop_assert_eq!(n, header.len());
            prop_assert_eq!(h.source, Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(src)), port)));
        }

        /// Arbitrary bytes, with or without a signature in front, never
        /// panic and never claim more bytes than were given.
        #[test]
        fn garbage_is_refused_or_incomplete(prefix in 0usize..3, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = match prefix {
                0 => Vec::new(),
                1 => b"PROXY ".to_vec(),
                _ => V2_SIGNATURE.to_vec(),
            };
            buf.extend_from_slice(&body);
            if let Ok(Some((_, n))) = parse(&buf) {
                prop_assert!(n <= buf.len());
            }
        }
    }
}
