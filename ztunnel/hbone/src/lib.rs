//! HBONE's HTTP/2, without IO.
//!
//! An HBONE connection is HTTP/2 over mutual TLS whose only requests are
//! `CONNECT ip:port` tunnels (RFC 9113 §8.5): one stream per tunnelled TCP
//! connection, a `200` to open it, DATA both ways, END_STREAM for each
//! half-close, RST_STREAM to abort. This crate is the protocol for that and
//! nothing else: no request bodies to buffer, no priorities, no server push,
//! no trailers to deliver, no table-based header compression on the sending
//! side.
//!
//! It exists because the general-purpose `h2` crate keeps ~340 bytes and a
//! shared, locked stream store per stream, and spends a good share of a
//! node proxy's CPU per new tunnel on machinery tunnels never use
//! (BENCHMARKS.md, sessions 11–13). Here a stream is a few counters in a
//! map owned by its connection.
//!
//! The crate is sans-IO: [`conn::Connection`] takes received bytes and
//! calls from its owner, and hands back events and bytes to send. The
//! caller owns the socket, the TLS session, the timers and the tasks, so
//! every rule below is tested without any of them.
//!
//! - [`frame`]: frame parsing and the per-frame rules (§4, §6);
//! - [`headers`]: header blocks (HPACK decoding of anything, encoding of
//!   the few heads HBONE sends) and message-head rules (§8);
//! - [`conn`]: the connection: preface and SETTINGS, stream states (§5.1),
//!   concurrency limits, flow control (§5.2, §6.9), PING, GOAWAY and
//!   graceful drain (§6.8), and which errors cost a stream or the
//!   connection (§5.4).

#![forbid(unsafe_code)]

pub mod conn;
pub mod frame;
pub mod headers;

pub use conn::{Config, Connection, Event, OpenError, Role};
pub use frame::Reason;
pub use headers::Head;
