//! Against the `h2` crate (what HBONE peers built on hyper speak), over an
//! in-memory pipe: this crate's server with h2's client, and its client
//! with h2's server.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn big_config() -> Config {
    Config {
        max_concurrent_streams: 100,
        stream_window: 1 << 20,
        connection_window: 4 << 20,
        max_frame: 1 << 20,
        max_header_list: 16 * 1024,
    }
}

/// Runs `conn` over `io`, handing each event to `on` (which may act on the
/// connection), until the connection is done or the pipe closes.
async fn drive(
    mut conn: Connection,
    io: DuplexStream,
    mut on: impl FnMut(&mut Connection, Event),
) -> Result<(), String> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = BytesMut::with_capacity(1 << 16);
    loop {
        while let Some(ev) = conn.poll_event() {
            on(&mut conn, ev);
        }
        let mut out = Vec::new();
        conn.transmit(&mut out);
        for b in out {
            wr.write_all(&b).await.map_err(|e| e.to_string())?;
        }
        if conn.is_done() {
            return Ok(());
        }
        buf.reserve(1 << 16);
        let n = rd.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        conn.recv(&mut buf).map_err(|e| e.to_string())?;
    }
}

/// An echo server: CONNECT gets 200 and its bytes back (with its
/// half-close), anything else 405. Bytes that find no window wait in
/// `pending` until the stream is writable.
fn echo() -> impl FnMut(&mut Connection, Event) {
    let mut pending: FxHashMap<u32, (Bytes, bool)> = FxHashMap::default();
    move |conn, ev| match ev {
        Event::Request { stream, head, .. } => {
            let connect = head.method.as_deref() == Some("CONNECT");
            conn.respond(stream, if connect { 200 } else { 405 }, !connect).unwrap();
        }
        Event::Data { stream, data, end } => {
            let n = data.len();
            let (mut b, _) = pending.remove(&stream).unwrap_or_default();
            b = if b.is_empty() { data } else { [b, data].concat().into() };
            conn.send_data(stream, &mut b, end).unwrap();
            if !b.is_empty() {
                pending.insert(stream, (b, end));
            }
            conn.release(stream, n);
        }
        Event::Writable { stream } => {
            if let Some((mut b, end)) = pending.remove(&stream) {
                conn.send_data(stream, &mut b, end).unwrap();
                if !b.is_empty() {
                    pending.insert(stream, (b, end));
                }
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn h2_client_to_this_server() {
    // Room for everything in flight: `drive` writes before it reads again.
    let (a, b) = tokio::io::duplex(16 << 20);
    let server = tokio::spawn(drive(Connection::new(Role::Server, big_config()), b, echo()));
    let (mut client, conn) =
        h2::client::Builder::new().initial_window_size(1 << 20).handshake::<_, Bytes>(a).await.unwrap();
    let conn = tokio::spawn(conn);

    // A tunnel: 3 MB each way, more than any window, so flow control
    // works on both sides.
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .header("forwarded", "for=\"10.0.0.2:4000\"")
        .body(())
        .unwrap();
    let (resp, mut tx) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut rx = resp.into_body();
    let payload: Bytes = (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let sender = {
        let payload = payload.clone();
        tokio::spawn(async move {
            let mut left = payload;
            while !left.is_empty() {
                tx.reserve_capacity(left.len().min(1 << 20));
                let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx)).await.unwrap().unwrap();
                let chunk = left.split_to(cap.min(left.len()));
                tx.send_data(chunk, left.is_empty()).unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.unwrap();
        rx.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    sender.await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload[..], "echoed bytes differ");

    // Not a CONNECT: 405 on the same connection.
    let req = http::Request::builder().method("GET").uri("https://10.0.0.1/").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 405);

    // With every handle gone h2 ends the connection (GOAWAY), and this
    // side, with no stream left, is done.
    drop((client, rx));
    conn.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn this_client_to_h2_server() {
    // Room for everything in flight: `drive` writes before it reads again.
    let (a, b) = tokio::io::duplex(16 << 20);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new().initial_window_size(1 << 20).handshake::<_, Bytes>(b).await.unwrap();
        while let Some(req) = conn.accept().await {
            let (req, mut respond) = req.unwrap();
            assert_eq!(req.method(), http::Method::CONNECT);
            assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("10.0.0.1:80"));
            assert_eq!(req.headers()["forwarded"], "for=\"10.0.0.2:4000\"");
            let mut tx = respond.send_response(http::Response::new(()), false).unwrap();
            let mut rx = req.into_body();
            tokio::spawn(async move {
                while let Some(chunk) = rx.data().await {
                    let chunk = chunk.unwrap();
                    rx.flow_control().release_capacity(chunk.len()).unwrap();
                    tx.reserve_capacity(chunk.len());
                    let mut left = chunk;
                    while !left.is_empty() {
                        let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx)).await.unwrap().unwrap();
                        tx.send_data(left.split_to(cap.min(left.len())), false).unwrap();
                    }
                }
                tx.send_data(Bytes::new(), true).unwrap();
            });
        }
    });

    let payload: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let mut conn = Connection::new(Role::Client, big_config());
    let id = conn.open("10.0.0.1:80", "for=\"10.0.0.2:4000\"").unwrap();
    let mut to_send = Bytes::from(payload.clone());
    conn.send_data(id, &mut to_send, true).unwrap();
    let mut got = Vec::new();
    let mut status = None;
    let mut ended = false;
    drive(conn, a, |conn, ev| match ev {
        Event::Response { head, .. } => status = head.status,
        Event::Data { stream, data, end } => {
            got.extend_from_slice(&data);
            conn.release(stream, data.len());
            ended |= end;
            if end {
                conn.go_away(Reason::NO_ERROR);
            }
        }
        Event::Writable { stream } => {
            if !to_send.is_empty() {
                conn.send_data(stream, &mut to_send, true).unwrap();
            }
        }
        other => panic!("{other:?}"),
    })
    .await
    .unwrap();
    assert_eq!(status, Some(200));
    assert!(ended);
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");
    server.abort();
}
