//! The driver and handles over an in-memory pipe.

#![allow(clippy::unwrap_used)]

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use hbone::{Reason, Role};

use super::{Mux, MuxError, start};

fn config() -> hbone::Config {
    hbone::Config { max_concurrent_streams: 2, ..Default::default() }
}

fn pair() -> (Mux, Mux, tokio::task::JoinHandle<Result<(), std::sync::Arc<str>>>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (cm, cd) = start(Role::Client, config(), c);
    let (sm, sd) = start(Role::Server, config(), s);
    tokio::spawn(cd);
    (cm, sm, tokio::spawn(sd))
}

#[tokio::test]
async fn streams_open_answer_carry_and_end() {
    let (cm, sm, _) = pair();
    let mut a = cm.open("10.0.0.1:80", "for=\"10.0.0.2:7\"").unwrap();
    a.send(&mut Bytes::from_static(b"hello"), true).unwrap();
    let (mut b, head) = sm.accept().await.unwrap();
    assert_eq!(head.forwarded.as_deref(), Some("for=\"10.0.0.2:7\""));
    b.respond(200, false).unwrap();
    assert_eq!(poll_fn(|cx| b.poll_data(cx)).await.unwrap().unwrap(), "hello");
    assert!(poll_fn(|cx| b.poll_data(cx)).await.is_none(), "END_STREAM after the bytes");
    b.send(&mut Bytes::from_static(b"bye"), true).unwrap();
    assert_eq!(poll_fn(|cx| a.poll_response(cx)).await.unwrap(), 200);
    assert_eq!(poll_fn(|cx| a.poll_data(cx)).await.unwrap().unwrap(), "bye");
    assert!(poll_fn(|cx| a.poll_data(cx)).await.is_none());
}

#[tokio::test]
async fn dropping_a_handle_resets_its_stream() {
    let (cm, sm, _) = pair();
    let a = cm.open("10.0.0.1:80", "for=x").unwrap();
    let (mut b, _) = sm.accept().await.unwrap();
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| b.poll_data(cx))).await.unwrap();
    assert_eq!(r, Some(Err(MuxError::Reset(Reason::CANCEL))));
}

#[tokio::test]
async fn the_peers_stream_limit_is_enforced_and_its_end_frees_room() {
    let (cm, sm, _) = pair();
    let a = cm.open("10.0.0.1:80", "for=x").unwrap();
    let _b = cm.open("10.0.0.1:80", "for=x").unwrap();
    let _ = sm.accept().await.unwrap();
    let _ = sm.accept().await.unwrap();
    // The server's SETTINGS (2 streams) has arrived by now.
    assert!(matches!(cm.open("10.0.0.1:80", "for=x"), Err(MuxError::Open(hbone::OpenError::Busy))));
    drop(a);
    assert!(cm.open("10.0.0.1:80", "for=x").is_ok());
}

#[tokio::test]
async fn pings_are_answered() {
    let (cm, sm, _) = pair();
    tokio::time::timeout(Duration::from_secs(5), cm.ping()).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), sm.ping()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_drain_lets_open_streams_finish_then_ends_the_connection() {
    let (cm, sm, server) = pair();
    let mut a = cm.open("10.0.0.1:80", "for=x").unwrap();
    let (mut b, _) = sm.accept().await.unwrap();
    b.respond(200, false).unwrap();
    sm.drain();
    assert!(sm.accept().await.is_none(), "nothing more to accept");
    // A new stream is refused by the GOAWAY...
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(cm.open("10.0.0.1:80", "for=x"), Err(MuxError::Open(hbone::OpenError::GoingAway))));
    // ...the open one still works both ways and ends.
    a.send(&mut Bytes::from_static(b"last"), true).unwrap();
    assert_eq!(poll_fn(|cx| b.poll_data(cx)).await.unwrap().unwrap(), "last");
    b.send(&mut Bytes::new(), true).unwrap();
    assert!(!server.is_finished());
    drop(b);
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn a_peer_that_breaks_the_protocol_fails_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut raw, s) = tokio::io::duplex(64 * 1024);
    let (sm, sd) = start(Role::Server, config(), s);
    let driver = tokio::spawn(sd);
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    // SETTINGS on stream 1: a connection error.
    raw.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 1]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), driver).await.unwrap().unwrap();
    assert!(r.unwrap_err().contains("protocol error"));
    assert!(sm.accept().await.is_none());
    // The GOAWAY went out before the close.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), raw.read_to_end(&mut got)).await;
    assert!(got.windows(2).any(|w| w == [0, 7]) || got.windows(1).any(|w| w == [7]), "{got:?}");
}
