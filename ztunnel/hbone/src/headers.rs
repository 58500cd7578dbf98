//! Header blocks: encoding the few heads HBONE sends, and decoding and
//! checking whatever a peer sends (RFC 9113 §8, RFC 7541).
//!
//! **Encoding** never touches the peer's dynamic table: every field is a
//! literal "without indexing" with a static-table name where one exists, or
//! a fully indexed static entry (`:status: 200`). A CONNECT's `:authority`
//! and `Forwarded` differ on every tunnel (the source port), so indexing
//! them would only churn the table, and a table-free encoder has no state
//! to get out of step. Strings are sent raw; Huffman would save a few bytes
//! per tunnel and cost CPU on both sides.
//!
//! **Decoding** must accept everything HPACK allows (the peer's encoder may
//! index and Huffman-code), so it is the full RFC 7541 decoder of
//! `loona-hpack`, with its dynamic table bounded by what this side
//! advertised. Every block is decoded even when its stream is refused: the
//! table is shared by the whole connection.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// This side's SETTINGS_HEADER_TABLE_SIZE (the HPACK default).
pub const TABLE_SIZE: usize = 4096;

/// Why a header block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// HPACK could not decode it: the compression context is lost, a
    /// connection error (COMPRESSION_ERROR).
    #[error("HPACK: {0}")]
    Compression(String),
    /// Decoded, but not a valid HTTP/2 message head (§8.1.1): a stream error.
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// Larger than this side's SETTINGS_MAX_HEADER_LIST_SIZE.
    #[error("header list of {0} bytes is too large")]
    TooLarge(usize),
}

/// The parts of a decoded head HBONE uses. Other regular fields are checked
/// and counted, not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// `:method`
    pub method: Option<String>,
    /// `:authority`
    pub authority: Option<String>,
    /// `:scheme`
    pub scheme: Option<String>,
    /// `:path`
    pub path: Option<String>,
    /// `:protocol` (extended CONNECT; never enabled here, so refused)
    pub protocol: Option<String>,
    /// `:status`
    pub status: Option<u16>,
    /// `forwarded` (the source address of a tunnel)
    pub forwarded: Option<String>,
    /// How many regular fields the head had.
    pub fields: usize,
}

impl Head {
    /// A request: `:method` present, `:status` absent; CONNECT carries
    /// `:authority` and neither `:scheme` nor `:path` (§8.5), other methods
    /// carry `:scheme` and `:path` (§8.3.1).
    pub fn check_request(&self) -> Result<(), HeaderError> {
        let Some(method) = &self.method else {
            return Err(HeaderError::Malformed("request without :method"));
        };
        if self.status.is_some() {
            return Err(HeaderError::Malformed(":status in a request"));
        }
        if self.protocol.is_some() {
            return Err(HeaderError::Malformed(":protocol without extended CONNECT"));
        }
        if method == "CONNECT" {
            if self.authority.is_none() {
                return Err(HeaderError::Malformed("CONNECT without :authority"));
            }
            if self.scheme.is_some() || self.path.is_some() {
                return Err(HeaderError::Malformed("CONNECT with :scheme or :path"));
            }
        } else if self.scheme.is_none() || self.path.as_deref().is_none_or(str::is_empty) {
            return Err(HeaderError::Malformed("request without :scheme or :path"));
        }
        Ok(())
    }

    /// A response (or trailers when `trailers`): `:status` and nothing
    /// else among pseudo-fields; trailers carry none at all.
    pub fn check_response(&self, trailers: bool) -> Result<(), HeaderError> {
        let request_pseudo = self.method.is_some()
            || self.authority.is_some()
            || self.scheme.is_some()
            || self.path.is_some()
            || self.protocol.is_some();
        if request_pseudo {
            return Err(HeaderError::Malformed("request pseudo-field in a response"));
        }
        match (trailers, self.status) {
            (true, Some(_)) => Err(HeaderError::Malformed("pseudo-field in trailers")),
            (false, None) => Err(HeaderError::Malformed("response without :status")),
            _ => Ok(()),
        }
    }
}

/// Decodes header blocks for one connection.
pub struct Decoder {
    hpack: loona_hpack::Decoder<'static>,
    max_list: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("max_list", &self.max_list).finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that refuses lists larger than `max_list` (§6.5.2 counts
    /// each field as name + value + 32).
    pub fn new(max_list: usize) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(TABLE_SIZE);
        Decoder { hpack, max_list }
    }

    /// Decodes and checks one complete block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Head, HeaderError> {
        let mut head = Head::default();
        let mut size = 0usize;
        let mut err: Option<HeaderError> = None;
        let mut regular_seen = false;
        let outcome = self.hpack.decode_with_cb(block, |name, value| {
            size = size.saturating_add(name.len() + value.len() + 32);
            if err.is_some() {
                return;
            }
            if let Err(e) = field(&mut head, &mut regular_seen, &name, value) {
                err = Some(e);
            }
        });
        if let Err(e) = outcome {
            return Err(HeaderError::Compression(format!("{e:?}")));
        }
        if size > self.max_list {
            return Err(HeaderError::TooLarge(size));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(head),
        }
    }
}

/// Fields that are connection-specific in HTTP/1 and banned in HTTP/2
/// (§8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] =
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"];

fn field(head: &mut Head, regular_seen: &mut bool, name: &[u8], value: Cow<'_, [u8]>) -> Result<(), HeaderError> {
    if name.iter().any(|b| b.is_ascii_uppercase()) {
        return Err(HeaderError::Malformed("upper-case field name"));
    }
    if name.is_empty() {
        return Err(HeaderError::Malformed("empty field name"));
    }
    // §8.2.1: no NUL, CR or LF anywhere; no leading or trailing whitespace in
    // values.
    if name.iter().chain(value.iter()).any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(HeaderError::Malformed("NUL, CR or LF in a field"));
    }
    if value.first().is_some_and(|b| *b == b' ' || *b == b'\t')
        || value.last().is_some_and(|b| *b == b' ' || *b == b'\t')
    {
        return Err(HeaderError::Malformed("whitespace around a field value"));
    }
    if name[0] == b':' {
        if *regular_seen {
            return Err(HeaderError::Malformed("pseudo-field after a regular field"));
        }
        let text = || String::from_utf8(value.to_vec()).map_err(|_| HeaderError::Malformed("pseudo-field not UTF-8"));
        let slot = match name {
            b":method" => &mut head.method,
            b":authority" => &mut head.authority,
            b":scheme" => &mut head.scheme,
            b":path" => &mut head.path,
            b":protocol" => &mut head.protocol,
            b":status" => {
                if head.status.is_some() {
                    return Err(HeaderError::Malformed("repeated :status"));
                }
                let s = std::str::from_utf8(&value).ok().filter(|s| s.len() == 3).and_then(|s| s.parse::<u16>().ok());
                head.status = Some(s.filter(|s| (100..600).contains(s)).ok_or(HeaderError::Malformed("bad :status"))?);
                return Ok(());
            }
            _ => return Err(HeaderError::Malformed("unknown pseudo-field")),
        };
        if slot.is_some() {
            return Err(HeaderError::Malformed("repeated pseudo-field"));
        }
        *slot = Some(text()?);
        return Ok(());
    }
    *regular_seen = true;
    head.fields += 1;
    if CONNECTION_SPECIFIC.contains(&name) {
        return Err(HeaderError::Malformed("connection-specific field"));
    }
    if name == b"te" && &*value != b"trailers" {
        return Err(HeaderError::Malformed("te other than trailers"));
    }
    if name == b"forwarded" {
        let v = String::from_utf8(value.into_owned()).map_err(|_| HeaderError::Malformed("forwarded not UTF-8"))?;
        // Several Forwarded fields are one list (RFC 7239 §4).
        match &mut head.forwarded {
            Some(f) => {
                f.push_str(", ");
                f.push_str(&v);
            }
            None => head.forwarded = Some(v),
        }
    }
    Ok(())
}

/// Static-table indices (RFC 7541 Appendix A) of the names used here.
mod index {
    pub const AUTHORITY: usize = 1;
    pub const METHOD: usize = 2;
    pub const STATUS: usize = 8;
    pub const STATUS_200: usize = 8;
}

fn put_int(out: &mut BytesMut, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.put_u8(first | v as u8);
        return;
    }
    out.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        out.put_u8((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.put_u8(v as u8);
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.put_slice(s);
}

/// A literal field without indexing, with a static name.
fn put_literal_indexed_name(out: &mut BytesMut, name: usize, value: &[u8]) {
    put_int(out, 0, 4, name);
    put_str(out, value);
}

/// A literal field without indexing, with a new name.
fn put_literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0);
    put_str(out, name);
    put_str(out, value);
}

/// The block of `CONNECT authority` with `Forwarded: forwarded`.
/// `table_update` first tells the peer's decoder the table is empty
/// (needed once after the peer lowered SETTINGS_HEADER_TABLE_SIZE).
pub fn connect_request(authority: &str, forwarded: &str, table_update: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(authority.len() + forwarded.len() + 24);
    if table_update {
        put_int(&mut out, 0x20, 5, 0);
    }
    put_literal_indexed_name(&mut out, index::METHOD, b"CONNECT");
    put_literal_indexed_name(&mut out, index::AUTHORITY, authority.as_bytes());
    put_literal(&mut out, b"forwarded", forwarded.as_bytes());
    out.freeze()
}

/// The block of a response with `status`.
pub fn response(status: u16, table_update: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(6);
    if table_update {
        put_int(&mut out, 0x20, 5, 0);
    }
    if status == 200 {
        put_int(&mut out, 0x80, 7, index::STATUS_200);
    } else {
        let s = status.min(999).to_string();
        put_literal_indexed_name(&mut out, index::STATUS, s.as_bytes());
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
