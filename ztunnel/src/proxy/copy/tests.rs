//! Tests of the copy: early data, backpressure, half-close, the first
//! bytes' record, the held answer.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use hbone::Role;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::super::mux::{self, Mux};
use super::{CopyError, client, server};

/// A connected loopback pair (application end, proxy end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// The smallest windows HTTP/2 allows, so flow control and backpressure
/// are exercised by a few hundred kilobytes.
fn small() -> hbone::Config {
    hbone::Config { max_concurrent_streams: 10, stream_window: 65_535, connection_window: 65_535, ..Default::default() }
}

/// A client and a server connection over `c` and `s`, their drivers
/// running.
fn muxes<C, S>(c: C, s: S) -> (Mux, Mux)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (cm, cd) = mux::start(Role::Client, small(), c);
    let (sm, sd) = mux::start(Role::Server, small(), s);
    tokio::spawn(cd);
    tokio::spawn(sd);
    (cm, sm)
}

fn piped() -> (Mux, Mux) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    muxes(c, s)
}

#[tokio::test]
async fn early_data_backpressure_half_close_and_counts() {
    early_data_case().await;
}

/// The same on the work-stealing runtime (`--proxy-threads` > 1), where
/// readiness events are handled by other threads while a copy reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_backpressure_half_close_and_counts_multi_thread() {
    for _ in 0..20 {
        early_data_case().await;
    }
}

async fn early_data_case() {
    let (cm, sm) = piped();
    // Server side: read the early data before the copy starts, then hand
    // the stream to a copy towards an echo "pod".
    let server_side = tokio::spawn(async move {
        let (mut stream, head) = sm.accept().await.unwrap();
        assert_eq!(head.method.as_deref(), Some("CONNECT"));
        let early = std::future::poll_fn(|cx| stream.poll_data(cx)).await.unwrap().unwrap();
        stream.release(early.len());
        let (mut echo_app, echo_proxy) = pair().await;
        tokio::spawn(async move {
            // The echo pod: reads slowly in small pieces, echoes, and
            // closes after EOF.
            let mut buf = [0u8; 1000];
            loop {
                let n = echo_app.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                echo_app.write_all(&buf[..n]).await.unwrap();
            }
            echo_app.shutdown().await.unwrap();
        });
        // The test kept the early chunk; the rest goes to the pod.
        let (totals, result) = server(echo_proxy, stream, super::HOLD).await;
        (early, totals, result, sm)
    });
    let (mut app, proxy_end) = pair().await;
    let stream = cm.open("10.0.0.1:80", "for=\"10.0.0.2:1\"").unwrap();
    let client_side = tokio::spawn(client(proxy_end, stream));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let p2 = payload.clone();
    let (mut rd, mut wr) = app.split();
    let writer = async move {
        wr.write_all(&p2).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let reader = rd.read_to_end(&mut back);
    let ((), n) = tokio::join!(writer, reader);
    n.unwrap();
    let (early, server_totals, server_result, _sm) = server_side.await.unwrap();
    server_result.unwrap();
    // Everything after the early chunk came back, in order, then EOF.
    assert!(!early.is_empty());
    assert!(early[..] == payload[..early.len()], "early bytes are the first bytes");
    let expect = &payload[early.len()..];
    let first_diff = back.iter().zip(expect).position(|(a, b)| a != b);
    assert!(
        back[..] == *expect,
        "echo: got {} bytes, expected {}; first difference at {first_diff:?}",
        back.len(),
        expect.len()
    );
    assert_eq!(server_totals.down as usize, payload.len() - early.len());
    assert_eq!(server_totals.up as usize, payload.len() - early.len());
    let (totals, result) = client_side.await.unwrap();
    result.unwrap();
    assert_eq!(totals.up as usize, payload.len());
    assert_eq!(totals.down as usize, payload.len() - early.len());
}

/// What an IO object was asked to write, one entry per flush (the
/// record layer seals and sends what it holds at a flush).
struct Recorder {
    inner: tokio::io::DuplexStream,
    pending: Vec<u8>,
    writes: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl tokio::io::AsyncRead for Recorder {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.pending.extend_from_slice(&buf[..n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::mem::take(&mut self.pending);
        if !flushed.is_empty() {
            self.writes.lock().unwrap().push(flushed);
        }
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The pod's first bytes, already there when the tunnel opens, leave in
/// the same write as the CONNECT (one TLS record, one packet, one wake-up
/// of the peer).
#[tokio::test]
async fn first_bytes_leave_with_the_connect() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = Recorder { inner: c, pending: Vec::new(), writes: writes.clone() };
    let (cm, sm) = muxes(c, s);
    let (mut app, proxy_end) = pair().await;
    app.write_all(b"first bytes").await.unwrap();
    // Let them reach the proxy end's receive queue.
    proxy_end.readable().await.unwrap();
    // As in the proxy: the CONNECT and the copy's first poll in one task
    // poll, before the connection's driver runs.
    let copy = tokio::spawn(async move {
        let stream = cm.open("10.0.0.1:80", "for=x").unwrap();
        client(proxy_end, stream).await
    });
    let (mut stream, _) = sm.accept().await.unwrap();
    let first = std::future::poll_fn(|cx| stream.poll_data(cx)).await.unwrap().unwrap();
    assert_eq!(&first[..], b"first bytes");
    // HEADERS (type 1, END_HEADERS, stream 1) in the write carrying the bytes.
    let writes = writes.lock().unwrap();
    let with_data = writes.iter().find(|w| w.windows(11).any(|x| x == b"first bytes")).unwrap();
    assert!(
        with_data.windows(6).any(|x| x == [1, 4, 0, 0, 0, 1]),
        "CONNECT and first bytes in separate flushes: {writes:?}"
    );
    copy.abort();
}

/// A server-side copy behind a recorded connection: the client's
/// connection, the recorded server writes, and the pod's end.
async fn answering(hold: std::time::Duration) -> (Mux, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>, TcpStream) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Recorder { inner: s, pending: Vec::new(), writes: writes.clone() };
    let (cm, sm) = muxes(c, s);
    let (pod, pod_proxy_end) = pair().await;
    tokio::spawn(async move {
        let (stream, _) = sm.accept().await.unwrap();
        // Let whatever the client sent with its CONNECT arrive first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = server(pod_proxy_end, stream, hold).await;
        drop(sm);
    });
    (cm, writes, pod)
}

async fn response(stream: &mut mux::Stream) -> u16 {
    let r = std::future::poll_fn(|cx| stream.poll_response(cx));
    tokio::time::timeout(std::time::Duration::from_secs(10), r).await.unwrap().unwrap()
}

/// The client sent bytes with its CONNECT: the 200 waits for the pod's
/// answer and leaves in the same flush.
#[tokio::test]
async fn the_answer_leaves_with_the_pods_first_bytes() {
    let (cm, writes, mut pod) = answering(std::time::Duration::from_secs(60)).await;
    let mut stream = cm.open("10.0.0.1:80", "for=x").unwrap();
    stream.send(&mut Bytes::from_static(b"ping"), false).unwrap();
    let mut b = [0u8; 4];
    pod.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    pod.write_all(b"pong").await.unwrap();
    assert_eq!(response(&mut stream).await, 200);
    let data = std::future::poll_fn(|cx| stream.poll_data(cx)).await.unwrap().unwrap();
    assert_eq!(&data[..], b"pong");
    let writes = writes.lock().unwrap();
    let with_data = writes.iter().find(|w| w.windows(4).any(|x| x == b"pong")).unwrap();
    assert!(with_data.windows(6).any(|x| x == [1, 4, 0, 0, 0, 1]), "200 and first bytes apart: {writes:?}");
}

/// A client that sent nothing may be waiting for the 200: it goes at
/// once, long before the hold would end, while the pod says nothing.
#[tokio::test]
async fn a_client_that_sent_nothing_is_answered_at_once() {
    let (cm, _writes, _pod) = answering(std::time::Duration::from_secs(60)).await;
    let mut stream = cm.open("10.0.0.1:80", "for=x").unwrap();
    assert_eq!(response(&mut stream).await, 200);
}

/// A client that sent bytes and then waits for the 200 anyway, towards
/// a pod that says nothing, gets it when the hold ends.
#[tokio::test]
async fn a_held_answer_goes_when_the_hold_ends() {
    let (cm, _writes, mut pod) = answering(std::time::Duration::from_millis(20)).await;
    let mut stream = cm.open("10.0.0.1:80", "for=x").unwrap();
    stream.send(&mut Bytes::from_static(b"ping"), false).unwrap();
    let mut b = [0u8; 4];
    pod.read_exact(&mut b).await.unwrap();
    assert_eq!(response(&mut stream).await, 200);
}

/// Holds end between `hold` and twice that after they start, and holds
/// that start within one slot end together (one timer deadline for tokio).
#[test]
fn holds_of_one_slot_end_together() {
    let hold = std::time::Duration::from_millis(5);
    let t0 = tokio::time::Instant::now();
    let mut ends = std::collections::BTreeSet::new();
    for us in (0..20_000).step_by(250) {
        let now = t0 + std::time::Duration::from_micros(us);
        let end = super::hold_until(now, hold);
        assert!(end >= now + hold && end <= now + 2 * hold, "{us} µs: ends {:?} after", end - now);
        ends.insert(end);
    }
    // 80 holds over 20 ms: one end per 5 ms slot (four or five of them).
    assert!((4..=5).contains(&ends.len()), "{} distinct ends", ends.len());
    assert_eq!(super::hold_until(t0, std::time::Duration::ZERO), t0);
}

/// One slot-end timer per thread and slot: a second hold of the slot keeps
/// it (registered, so that the hold's own timer does not wake the
/// reactor), the next slot replaces it.
#[tokio::test]
async fn one_slot_end_timer_per_slot() {
    let timer = || {
        super::SLOT_END
            .with(|s| s.borrow().as_ref().map(|(at, t)| (*at, &**t as *const tokio::time::Sleep, t.is_elapsed())))
    };
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    super::anchor(until);
    let (at, first, elapsed) = timer().unwrap();
    assert_eq!((at, elapsed), (until, false));
    super::anchor(until);
    assert_eq!(timer().unwrap().1, first, "replaced within its slot");
    let next = until + std::time::Duration::from_secs(60);
    super::anchor(next);
    assert_eq!(timer().unwrap().0, next);
}

/// See [`super::Answer::Held`]: the hold is boxed, so the answer's state
/// takes two words at most in every open tunnel's task.
#[test]
fn the_unanswered_state_costs_no_room() {
    assert!(std::mem::size_of::<super::Answer>() <= 16);
}

#[tokio::test]
async fn a_refusal_ends_the_copy_with_its_status() {
    let (cm, sm) = piped();
    tokio::spawn(async move {
        while let Some((mut stream, _)) = sm.accept().await {
            let _ = stream.respond(403, true);
        }
    });
    let (mut app, proxy_end) = pair().await;
    let stream = cm.open("10.0.0.1:80", "for=x").unwrap();
    app.write_all(b"sent before the answer").await.unwrap();
    let (_, result) = client(proxy_end, stream).await;
    assert!(matches!(result, Err(CopyError::Refused(s)) if s == StatusCode::FORBIDDEN), "{result:?}");
}

/// A connection that breaks mid-tunnel ends the copy with an error (which
/// the proxy passes on to the pod as a reset), not as an orderly close.
#[tokio::test]
async fn a_broken_connection_is_an_error_not_an_eof() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (cm, cd) = mux::start(Role::Client, small(), c);
    let driver = tokio::spawn(cd);
    let (sm, sd) = mux::start(Role::Server, small(), s);
    let server_driver = tokio::spawn(sd);
    let (_app, proxy_end) = pair().await;
    let stream = cm.open("10.0.0.1:80", "for=x").unwrap();
    let copy = tokio::spawn(client(proxy_end, stream));
    let (mut accepted, _) = sm.accept().await.unwrap();
    accepted.respond(200, false).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The server's side of the pipe goes away.
    server_driver.abort();
    let (_, result) = tokio::time::timeout(std::time::Duration::from_secs(5), copy).await.unwrap().unwrap();
    assert!(matches!(result, Err(CopyError::Mux(_))), "{result:?}");
    assert!(driver.await.unwrap().is_err());
}
