//! Socket adaptors for the HBONE transport.
//!
//! [`ReadAhead`] sits between a node-to-node TCP socket and rustls. rustls
//! asks its transport for at most 4 KiB per read (a bound on its own
//! buffer), so a 16 KiB TLS record costs four `recv` calls and a 1 Gb/s
//! stream a quarter of a million of them per second. Here one `recv` offers
//! 64–256 KiB (a chunk of the thread's read slab, see `copy`); rustls then
//! copies its 4 KiB pieces out of memory. The chunk is released once
//! drained, so an idle connection holds no buffer (an emptied `Bytes`
//! would still keep the whole 256 KiB slab it was split from alive).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket that reads ahead in large chunks (see the module docs).
#[derive(Debug)]
pub struct ReadAhead {
    io: TcpStream,
    /// The unread rest of the last chunk; `None` once drained.
    buf: Option<Bytes>,
}

impl ReadAhead {
    /// Wraps `io`.
    pub fn new(io: TcpStream) -> Self {
        Self { io, buf: None }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(buf) = &mut this.buf {
                let n = out.remaining().min(buf.len());
                out.put_slice(&buf[..n]);
                buf.advance(n);
                if buf.is_empty() {
                    // Drained: the chunk (and its slab) is released.
                    this.buf = None;
                }
                return Poll::Ready(Ok(()));
            }
            ready!(this.io.poll_read_ready(cx))?;
            match super::copy::read_chunk(&this.io) {
                Ok(Some(b)) => this.buf = Some(b),
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_eof() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut w = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (r, _) = l.accept().await.unwrap();
        let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            for part in p2.chunks(7_001) {
                w.write_all(part).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let mut r = super::ReadAhead::new(r);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, payload);
        assert!(r.buf.is_none(), "a drained reader holds no chunk");
    }
}
