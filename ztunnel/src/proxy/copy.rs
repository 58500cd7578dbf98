//! Bidirectional copy that holds no buffer while a connection is idle.
//!
//! `tokio::io::copy_bidirectional` owns two buffers per connection for its
//! whole life; with 10,000 mostly idle tunnels per side that is most of the
//! proxy's memory. Here each worker thread reads into one shared scratch
//! buffer and writes straight out of it; only bytes the writer cannot take
//! yet (backpressure) are copied into a buffer owned by that direction, and
//! that buffer is freed as soon as it drains. Half-close is passed on: EOF
//! on one side shuts down writing on the other, and the copy ends when both
//! directions have.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Scratch size per worker thread: several TLS records per read.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (only under backpressure).
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    done: bool,
    dirty: bool,
    total: u64,
}

fn poll_half<R, W>(cx: &mut Context<'_>, r: &mut R, w: &mut W, h: &mut Half) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        while h.written < h.pending.len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &h.pending[h.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            h.written += n;
            h.dirty = true;
        }
        if !h.pending.is_empty() {
            // Drained: give the memory back.
            h.pending = Vec::new();
            h.written = 0;
        }
        if h.eof {
            ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
            h.done = true;
            return Poll::Ready(Ok(()));
        }
        let step = BUF.with(|b| -> Poll<io::Result<()>> {
            let mut b = b.borrow_mut();
            let mut rb = ReadBuf::new(&mut b[..]);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = rb.filled();
            if data.is_empty() {
                h.eof = true;
                return Poll::Ready(Ok(()));
            }
            h.total += data.len() as u64;
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        h.dirty = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if off < data.len() {
                h.pending = data[off..].to_vec();
                h.written = 0;
            }
            Poll::Ready(Ok(()))
        });
        match step {
            Poll::Ready(Ok(())) => continue,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Nothing to read: push out what was written.
                if h.dirty
                    && let Poll::Ready(r) = Pin::new(&mut *w).poll_flush(cx)
                {
                    r?;
                    h.dirty = false;
                }
                return Poll::Pending;
            }
        }
    }
}

/// The copy future.
pub struct Bidirectional<'a, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Half,
    b_to_a: Half,
}

impl<A, B> Future for Bidirectional<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let ab = if this.a_to_b.done { Poll::Ready(Ok(())) } else { poll_half(cx, this.a, this.b, &mut this.a_to_b) };
        if let Poll::Ready(Err(e)) = ab {
            return Poll::Ready(Err(e));
        }
        let ba = if this.b_to_a.done { Poll::Ready(Ok(())) } else { poll_half(cx, this.b, this.a, &mut this.b_to_a) };
        if let Poll::Ready(Err(e)) = ba {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok((this.a_to_b.total, this.b_to_a.total)));
        }
        Poll::Pending
    }
}

/// Copies `a` → `b` and `b` → `a` until both reach EOF; returns the byte
/// counts (a→b, b→a).
pub fn bidirectional<'a, A, B>(a: &'a mut A, b: &'a mut B) -> Bidirectional<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Bidirectional { a, b, a_to_b: Half::default(), b_to_a: Half::default() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_backpressure_and_half_close() {
        // Small pipes force partial writes and pending buffers.
        let (mut a_outer, mut a) = tokio::io::duplex(1024);
        let (mut b, mut b_outer) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { super::bidirectional(&mut a, &mut b).await });
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            a_outer.write_all(&p2).await.unwrap();
            a_outer.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_outer.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_outer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        b_outer.write_all(b"reply after EOF").await.unwrap();
        b_outer.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after EOF");
        let (ab, ba) = task.await.unwrap().unwrap();
        assert_eq!((ab, ba), (300_000, 15));
    }
}
