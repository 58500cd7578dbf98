//! TLS 1.3 record protection for established HBONE connections (RFC 8446
//! §5.2–5.5), with no IO.
//!
//! rustls runs the handshake and keeps the key schedule (see `session`);
//! once a connection is established this module seals and opens its
//! records. It exists to remove copies: rustls' buffered API copies every
//! received byte three times (socket chunk → deframer buffer → a `Vec` per
//! record → the caller's buffer) and every sent byte once (the caller's
//! buffer → the record it encrypts in place). Here the AEAD reads the
//! ciphertext where the socket put it and writes the plaintext straight
//! into the caller's buffer, and on the sending side reads the plaintext
//! where HTTP/2 left it and writes the record into the outgoing buffer.
//!
//! What a record layer must get right, and where it is done here:
//! - a nonce never repeats under one key: each direction's [`Keys`] derives
//!   it from the static IV and a sequence number that only counts up and
//!   fails at its end ([`RecordError::SequenceExhausted`]);
//! - the header is authenticated (it is the AEAD's additional data) and
//!   its length bounded before anything is read ([`complete`]);
//! - the inner content type is the last non-zero byte of the plaintext;
//!   padding is accepted, a record of only zeros is refused ([`Keys::open`]);
//! - after the handshake only `application_data` records exist on the
//!   wire; anything else is refused before decryption.
//!
//! Key updates and session tickets are parsed here ([`post_handshake`]) and
//! acted on by `session`, which asks rustls for the next traffic secret.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// AEAD tag length (all TLS 1.3 AEADs offered here).
pub const TAG: usize = 16;
/// Largest content of one record.
pub const MAX_CONTENT: usize = 1 << 14;
/// Largest `encrypted_record` the RFC allows (content, type, padding, tag).
pub const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;
/// Outer type of every protected record.
const APPLICATION_DATA: u8 = 23;
/// `legacy_record_version` of every TLS 1.3 record.
const LEGACY_VERSION: u16 = 0x0303;

/// Inner content types (RFC 8446 §5.1).
pub mod content {
    /// `alert`
    pub const ALERT: u8 = 21;
    /// `handshake` (post-handshake messages: key update, session tickets)
    pub const HANDSHAKE: u8 = 22;
    /// `application_data`
    pub const APPLICATION_DATA: u8 = 23;
}

/// Why a record could not be sealed or opened. Every variant ends the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The negotiated suite has no AEAD here.
    #[error("cipher suite not supported by the record layer")]
    UnsupportedSuite,
    /// The traffic key was rejected by the AEAD.
    #[error("bad traffic key")]
    BadKey,
    /// A record whose outer type is not `application_data`.
    #[error("unexpected record type {0} after the handshake")]
    OuterType(u8),
    /// A record whose version field is not 0x0303.
    #[error("unexpected record version {0:#06x}")]
    Version(u16),
    /// A record longer than the RFC allows or too short to hold a tag.
    #[error("record length {0} out of range")]
    Length(usize),
    /// The AEAD rejected the record (tampered, or the wrong key).
    #[error("record failed authentication")]
    Authentication,
    /// Decrypted content longer than 2^14 bytes.
    #[error("record content of {0} bytes is too long")]
    Overflow(usize),
    /// A plaintext with no non-zero byte (no content type).
    #[error("record has no content type")]
    NoContentType,
    /// 2^64 records under one key.
    #[error("record sequence number exhausted")]
    SequenceExhausted,
    /// A post-handshake message that does not parse.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A post-handshake message this side must not receive.
    #[error("unexpected handshake message type {0} after the handshake")]
    UnexpectedMessage(u8),
    /// An inner content type this side must not receive.
    #[error("unexpected content type {0}")]
    UnexpectedContent(u8),
    /// The peer sent a fatal alert.
    #[error("peer sent alert {0}")]
    Alert(u8),
}

/// One direction's traffic key, IV and sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the IV.
        f.debug_struct("Keys").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys for `secrets`, starting at sequence number `seq`.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::BadKey)?;
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::BadKey)?;
        Ok(Self { key: LessSafeKey::new(key), iv, seq })
    }

    /// Records sealed or opened so far under this key.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next record's nonce (RFC 8446 §5.3): the IV XOR the sequence
    /// number, which is consumed.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::SequenceExhausted)?;
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Seals `src` (at most [`MAX_CONTENT`] bytes) as one record of inner
    /// type `typ` into `out`, which must be [`sealed_len`]`(src.len())`
    /// bytes. The plaintext is read where it is; nothing is copied.
    pub fn seal(&mut self, typ: u8, src: &[u8], out: &mut [u8]) -> Result<(), RecordError> {
        let n = src.len();
        debug_assert!(n <= MAX_CONTENT && out.len() == sealed_len(n));
        let hdr = header(n);
        let nonce = self.next_nonce()?;
        out[..HEADER].copy_from_slice(&hdr);
        let (ct, type_and_tag) = out[HEADER..].split_at_mut(n);
        self.key
            .seal_out_of_place_scatter(nonce, Aad::from(hdr), src, ct, &[typ], type_and_tag)
            .map_err(|_| RecordError::BadKey)
    }

    /// Seals a record whose `n` content bytes are already in place at
    /// `out[HEADER..]` (for content gathered from several buffers); `out` is
    /// [`sealed_len`]`(n)` bytes.
    pub fn seal_in_place(&mut self, typ: u8, n: usize, out: &mut [u8]) -> Result<(), RecordError> {
        debug_assert!(n <= MAX_CONTENT && out.len() == sealed_len(n));
        let hdr = header(n);
        let nonce = self.next_nonce()?;
        out[..HEADER].copy_from_slice(&hdr);
        out[HEADER + n] = typ;
        let (body, tag_out) = out[HEADER..].split_at_mut(n + 1);
        let tag = self.key.seal_in_place_separate_tag(nonce, Aad::from(hdr), body).map_err(|_| RecordError::BadKey)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens one whole record `rec` (header included, as [`complete`]
    /// measured it) into `out`, which must be `rec.len() - HEADER - TAG`
    /// bytes: returns the inner content type and the content's length (the
    /// content is `out[..len]`).
    pub fn open(&mut self, rec: &[u8], out: &mut [u8]) -> Result<(u8, usize), RecordError> {
        let body = rec.get(HEADER..).ok_or(RecordError::Length(rec.len()))?;
        let split = body.len().checked_sub(TAG).ok_or(RecordError::Length(body.len()))?;
        let (ct, tag) = body.split_at(split);
        let hdr: [u8; HEADER] = rec[..HEADER].try_into().map_err(|_| RecordError::Length(rec.len()))?;
        let nonce = self.next_nonce()?;
        self.key
            .open_separate_gather(nonce, Aad::from(hdr), ct, tag, &mut out[..split])
            .map_err(|_| RecordError::Authentication)?;
        // The content type is the last non-zero byte; zeros after it are
        // padding.
        let typ_at = out[..split].iter().rposition(|b| *b != 0).ok_or(RecordError::NoContentType)?;
        if typ_at > MAX_CONTENT {
            return Err(RecordError::Overflow(typ_at));
        }
        Ok((out[typ_at], typ_at))
    }
}

/// Bytes one sealed record of `n` content bytes takes on the wire.
pub const fn sealed_len(n: usize) -> usize {
    HEADER + n + 1 + TAG
}

/// The header of a record carrying `n` content bytes (no padding).
fn header(n: usize) -> [u8; HEADER] {
    let len = (n + 1 + TAG) as u16;
    let [hi, lo] = len.to_be_bytes();
    let [vhi, vlo] = LEGACY_VERSION.to_be_bytes();
    [APPLICATION_DATA, vhi, vlo, hi, lo]
}

/// Whether `buf` starts with a whole record: its length (header included)
/// if so, `None` if more bytes are needed. The header is checked first, so
/// a peer cannot make this side wait for (or buffer) more than one
/// maximum-sized record.
pub fn complete(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(hdr) = buf.get(..HEADER) else { return Ok(None) };
    if hdr[0] != APPLICATION_DATA {
        return Err(RecordError::OuterType(hdr[0]));
    }
    let version = u16::from_be_bytes([hdr[1], hdr[2]]);
    if version != LEGACY_VERSION {
        return Err(RecordError::Version(version));
    }
    let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    if !(TAG + 1..=MAX_CIPHERTEXT).contains(&len) {
        return Err(RecordError::Length(len));
    }
    Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
}

/// A post-handshake message (RFC 8446 §4.6).
#[derive(Debug, PartialEq, Eq)]
pub enum PostHandshake<'a> {
    /// `key_update`: the peer's next records use its next traffic secret;
    /// `update_requested` asks this side to update its own too.
    KeyUpdate {
        /// The peer asked for this side's key to be updated as well.
        update_requested: bool,
    },
    /// `new_session_ticket`, the message body.
    NewSessionTicket(&'a [u8]),
}

const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;

/// Splits handshake content into its whole messages: returns them and
/// how many bytes they took (a message continued in the next record is
/// left for later; RFC 8446 §5.1 allows fragmenting handshake messages).
pub fn post_handshake(mut msgs: &[u8]) -> Result<(Vec<PostHandshake<'_>>, usize), RecordError> {
    let mut out = Vec::new();
    let mut used = 0;
    while let [typ, a, b, c, rest @ ..] = msgs {
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        let Some((body, rest)) = rest.split_at_checked(len) else { break };
        out.push(match (*typ, body) {
            (KEY_UPDATE, [0]) => PostHandshake::KeyUpdate { update_requested: false },
            (KEY_UPDATE, [1]) => PostHandshake::KeyUpdate { update_requested: true },
            (KEY_UPDATE, _) => return Err(RecordError::Malformed("key_update")),
            (NEW_SESSION_TICKET, body) => PostHandshake::NewSessionTicket(body),
            (other, _) => return Err(RecordError::UnexpectedMessage(other)),
        });
        used += 4 + len;
        msgs = rest;
    }
    Ok((out, used))
}

/// The content of a `key_update` that does not ask the peer to update.
pub const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// What an alert's content means for the connection: `Ok(true)` for
/// `close_notify` (the peer sends no more), `Ok(false)` for
/// `user_canceled` (a warning, a `close_notify` follows), an error for
/// everything else (fatal in TLS 1.3).
pub fn alert(content: &[u8]) -> Result<bool, RecordError> {
    match content {
        [_, 0] => Ok(true),
        [_, 90] => Ok(false),
        [_, d] => Err(RecordError::Alert(*d)),
        _ => Err(RecordError::Malformed("alert")),
    }
}

/// The content of a `close_notify` alert (level warning).
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(k: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm { key: AeadKey::from([k; 32]), iv: Iv::new([k ^ 0x5a; 12]) }
    }

    fn pair() -> (Keys, Keys) {
        (Keys::new(0, &secrets(7)).unwrap(), Keys::new(0, &secrets(7)).unwrap())
    }

    fn sealed(k: &mut Keys, typ: u8, src: &[u8]) -> Vec<u8> {
        let mut out = vec![0; sealed_len(src.len())];
        k.seal(typ, src, &mut out).unwrap();
        out
    }

    #[test]
    fn sealed_records_open_in_order_and_the_two_seal_paths_agree() {
        let (mut a, mut b) = pair();
        let (mut c, _) = pair();
        for (i, n) in [0usize, 1, 100, MAX_CONTENT].into_iter().enumerate() {
            let src: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
            let rec = sealed(&mut a, content::APPLICATION_DATA, &src);
            // The same record, gathered in place by a third key at the same
            // sequence number, is byte-identical.
            let mut inplace = vec![0; sealed_len(n)];
            inplace[HEADER..HEADER + n].copy_from_slice(&src);
            c.seal_in_place(content::APPLICATION_DATA, n, &mut inplace).unwrap();
            assert_eq!(rec, inplace);
            assert_eq!(complete(&rec).unwrap(), Some(rec.len()));
            assert_eq!(complete(&rec[..rec.len() - 1]).unwrap(), None);
            let mut out = vec![0; rec.len() - HEADER - TAG];
            let (typ, len) = b.open(&rec, &mut out).unwrap();
            assert_eq!((typ, &out[..len]), (content::APPLICATION_DATA, &src[..]));
        }
        assert_eq!((a.seq(), b.seq()), (4, 4));
    }

    #[test]
    fn a_record_out_of_order_tampered_or_under_another_key_is_refused() {
        let (mut a, mut b) = pair();
        let first = sealed(&mut a, content::APPLICATION_DATA, b"one");
        let second = sealed(&mut a, content::APPLICATION_DATA, b"two");
        let mut out = vec![0; first.len() - HEADER - TAG];
        // Replayed or reordered: the nonce differs.
        assert!(matches!(b.open(&second, &mut out), Err(RecordError::Authentication)));
        let (mut a, mut b) = pair();
        let rec = sealed(&mut a, content::APPLICATION_DATA, b"payload");
        for at in [3, HEADER, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[at] ^= 1;
            let (_, mut fresh) = pair();
            let mut out = vec![0; bad.len() - HEADER - TAG];
            assert!(fresh.open(&bad, &mut out).is_err(), "flipped byte {at} accepted");
        }
        let mut other = Keys::new(0, &secrets(8)).unwrap();
        let mut out = vec![0; rec.len() - HEADER - TAG];
        assert!(matches!(other.open(&rec, &mut out), Err(RecordError::Authentication)));
        // The untouched record still opens under the right key.
        assert!(b.open(&rec, &mut out).is_ok());
    }

    #[test]
    fn padding_is_stripped_and_a_plaintext_of_zeros_refused() {
        // Content "hi", type alert, three bytes of padding, sealed by hand.
        let (mut a, mut b) = pair();
        let inner = [b'h', b'i', content::ALERT, 0, 0, 0];
        let mut rec = vec![0; HEADER + inner.len() + TAG];
        rec[HEADER..HEADER + inner.len()].copy_from_slice(&inner);
        // Reuse seal_in_place's framing: 5 content bytes + its type byte.
        a.seal_in_place(0, inner.len() - 1, &mut rec).unwrap();
        let mut out = vec![0; rec.len() - HEADER - TAG];
        let (typ, len) = b.open(&rec, &mut out).unwrap();
        assert_eq!((typ, &out[..len]), (content::ALERT, &b"hi"[..]));

        let (mut a, mut b) = pair();
        let zeros = sealed(&mut a, 0, &[0, 0, 0]);
        let mut out = vec![0; zeros.len() - HEADER - TAG];
        assert!(matches!(b.open(&zeros, &mut out), Err(RecordError::NoContentType)));
    }

    #[test]
    fn headers_are_checked_before_the_body_arrives() {
        assert_eq!(complete(&[23, 3, 3]).unwrap(), None);
        assert!(matches!(complete(&[22, 3, 3, 0, 20]), Err(RecordError::OuterType(22))));
        assert!(matches!(complete(&[20, 3, 3, 0, 1]), Err(RecordError::OuterType(20))));
        assert!(matches!(complete(&[23, 3, 1, 0, 20]), Err(RecordError::Version(0x0301))));
        let too_long = (MAX_CIPHERTEXT + 1) as u16;
        assert!(matches!(complete(&[23, 3, 3, (too_long >> 8) as u8, too_long as u8]), Err(RecordError::Length(_))));
        assert!(matches!(complete(&[23, 3, 3, 0, 16]), Err(RecordError::Length(16))));
        assert_eq!(complete(&[23, 3, 3, 0, 17]).unwrap(), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever arrives, measuring and opening it never panics, never
        /// asks for more than one maximum record, and nothing that was not
        /// sealed under the key opens.
        #[test]
        fn garbage_is_measured_and_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            valid_header in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = bytes;
            if valid_header && bytes.len() >= HEADER {
                let len = (bytes.len() - HEADER) as u16;
                bytes[..HEADER].copy_from_slice(&[23, 3, 3, (len >> 8) as u8, len as u8]);
            }
            if let Ok(Some(len)) = complete(&bytes) {
                proptest::prop_assert!(len <= bytes.len() && len <= HEADER + MAX_CIPHERTEXT);
                let (_, mut k) = pair();
                let mut out = vec![0; len - HEADER - TAG];
                proptest::prop_assert!(k.open(&bytes[..len], &mut out).is_err());
            }
            let _ = post_handshake(&bytes).map(|(_, used)| assert!(used <= bytes.len()));
            let _ = alert(&bytes);
        }

        /// Any content of any type comes back as sealed, and any flipped
        /// bit in the record is caught.
        #[test]
        fn sealed_content_opens_unchanged_and_any_flipped_bit_is_caught(
            content in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            typ in 1u8..=255,
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (mut a, mut b) = pair();
            let rec = sealed(&mut a, typ, &content);
            let mut out = vec![0; rec.len() - HEADER - TAG];
            let (t, n) = b.open(&rec, &mut out).unwrap();
            proptest::prop_assert_eq!((t, &out[..n]), (typ, &content[..]));
            let mut bad = rec.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 1 << bit;
            let (_, mut fresh) = pair();
            proptest::prop_assert!(complete(&bad).is_err() || fresh.open(&bad, &mut out).is_err());
        }
    }

    #[test]
    fn the_sequence_number_never_wraps() {
        let mut k = Keys::new(u64::MAX, &secrets(1)).unwrap();
        let mut out = vec![0; sealed_len(1)];
        assert!(matches!(k.seal(content::APPLICATION_DATA, b"x", &mut out), Err(RecordError::SequenceExhausted)));
    }

    #[test]
    fn post_handshake_messages_parse_and_garbage_is_refused() {
        let ku = PostHandshake::KeyUpdate { update_requested: false };
        assert_eq!(post_handshake(&KEY_UPDATE_NOT_REQUESTED).unwrap(), (vec![ku], 5));
        let two = [KEY_UPDATE, 0, 0, 1, 1, NEW_SESSION_TICKET, 0, 0, 2, 9, 9];
        assert_eq!(
            post_handshake(&two).unwrap(),
            (vec![PostHandshake::KeyUpdate { update_requested: true }, PostHandshake::NewSessionTicket(&[9, 9])], 11)
        );
        // A message continued in the next record is left for later.
        assert_eq!(post_handshake(&two[..9]).unwrap(), (vec![PostHandshake::KeyUpdate { update_requested: true }], 5));
        assert_eq!(post_handshake(&[KEY_UPDATE, 0]).unwrap(), (vec![], 0));
        assert!(post_handshake(&[KEY_UPDATE, 0, 0, 1, 2]).is_err());
        assert!(post_handshake(&[KEY_UPDATE, 0, 0, 2, 0, 0]).is_err());
        assert!(matches!(post_handshake(&[1, 0, 0, 0]), Err(RecordError::UnexpectedMessage(1))));
        assert!(alert(&CLOSE_NOTIFY).unwrap());
        assert!(!alert(&[1, 90]).unwrap());
        assert!(matches!(alert(&[2, 40]), Err(RecordError::Alert(40))));
        assert!(alert(&[2]).is_err());
    }
}
