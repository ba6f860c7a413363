//! A small write buffer under a client connection's TLS (or plain HTTP) layer.
//!
//! Pingora writes a response's head and its body as separate writes; under TLS each
//! becomes a record, and on an unbuffered socket each record its own `writev(2)` — for a
//! small answer two syscalls, two packets and two wake-ups of the client where one
//! would do (profiled at saturation: the head's own write was ~12 % of the data-plane
//! thread). Pingora's listeners put a 1,460-byte buffer there (`L4BufferSettings`), but
//! only on streams they accept themselves; Sluice accepts its own (`listen`), so this
//! wrapper does the same job: writes smaller than the buffer gather until a flush, or
//! until the next write would not fit; larger ones go straight through (after what is
//! gathered). Unlike Pingora's, the buffer is given back once flushed, so a connection
//! that idles holds none.
//!
//! Everything else — reads, the socket and proxy digests, the connection id, peeking —
//! is the inner stream's.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes gathered at most before they are written (one MSS, as Pingora's default).
pub const WRITE_BUF: usize = 1460;

/// A client connection with a write buffer of [`WRITE_BUF`] bytes.
#[derive(Debug)]
pub struct Coalesce {
    inner: L4Stream,
    /// Gathered bytes; `buf[written..]` still to write. Empty (no allocation) between
    /// flushes.
    buf: Vec<u8>,
    written: usize,
}

impl Coalesce {
    /// Wrap an accepted connection.
    pub fn new(inner: L4Stream) -> Coalesce {
        Coalesce {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Write out what is gathered; the buffer is freed once it is all written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Gather `bufs` (the caller made sure they fit the buffer).
    fn gather(&mut self, bufs: &[IoSlice<'_>]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_BUF);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
    }
}

impl AsyncRead for Coalesce {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesce {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.buf.len() + len > WRITE_BUF {
            ready!(this.poll_drain(cx))?;
        }
        if len >= WRITE_BUF {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.gather(bufs);
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Coalesce {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            tracing::debug!(error = %e, "closing a client connection");
        }
    }
}

impl UniqueID for Coalesce {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Coalesce {}

#[async_trait]
impl Peek for Coalesce {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl GetTimingDigest for Coalesce {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Coalesce {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Coalesce {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the wrapped server side and a plain client side.
    async fn pair() -> (Coalesce, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (
            Coalesce::new(L4Stream::from(server.unwrap().0)),
            client.unwrap(),
        )
    }

    /// What the peer has received so far, without waiting.
    fn received(client: &tokio::net::TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        match client.try_read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn small_writes_gather_until_a_flush_and_large_ones_pass_in_order() {
        let (mut s, mut client) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        s.write_all(b"body").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            received(&client).is_empty(),
            "nothing leaves before a flush"
        );
        s.flush().await.unwrap();
        assert_eq!(s.buf.capacity(), 0, "the buffer is given back once flushed");
        let mut got = vec![0u8; 23];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nbody");

        // A write that would not fit sends what is gathered first, then itself, in order.
        let big = vec![b'x'; 3 * WRITE_BUF];
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
        let mut got = vec![0u8; 4 + big.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..4 + big.len()], &big[..]);
        assert_eq!(&got[4 + big.len()..], b"tail");

        // Vectored writes (what rustls makes) gather whole or pass whole.
        let n = s
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .await
            .unwrap();
        assert_eq!(n, 4);
        AsyncWriteExt::shutdown(&mut s).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"abcd", "a shutdown writes what is gathered first");
    }

    /// A client that never reads: writes block on the socket instead of gathering more
    /// than the buffer holds, so a slow or hostile reader costs at most `WRITE_BUF` here.
    #[tokio::test]
    async fn a_client_that_never_reads_cannot_grow_the_buffer() {
        let (mut s, _client) = pair().await;
        let chunk = vec![b'z'; 700];
        let mut sent = 0usize;
        loop {
            let w = tokio::time::timeout(Duration::from_millis(200), s.write(&chunk)).await;
            match w {
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break, // blocked: the kernel's buffers are full
            }
            assert!(s.buf.len() <= WRITE_BUF, "gathered {} bytes", s.buf.len());
            assert!(sent < 1 << 30, "writes never blocked");
        }
        assert!(
            sent > WRITE_BUF,
            "the socket took data before it blocked: {sent}"
        );
        assert!(s.buf.len() <= WRITE_BUF);
    }

    #[tokio::test]
    async fn writes_to_a_peer_that_went_away_fail() {
        let (mut s, client) = pair().await;
        drop(client);
        let chunk = vec![b'y'; 600];
        let mut failed = false;
        for _ in 0..10_000 {
            if s.write_all(&chunk).await.is_err() || s.flush().await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "an error, not an endless buffer");
    }
}
