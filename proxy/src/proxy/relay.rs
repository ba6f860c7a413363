//! Byte-for-byte relay of connections Sluice does not inspect.
//!
//! The bytes already read to classify the connection were put back into the stream, so
//! the destination receives exactly what the client sent, from the first byte. Bytes are
//! counted as they are read, so a relay cut by an error still reports what crossed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes relayed so far, client→dst and dst→client; readable while the relay runs (and
/// after it was cut off, so a record can still say what crossed).
#[derive(Debug, Default)]
pub struct Bytes {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Bytes {
    pub fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// Relay `client` to `dst` until both sides close, counting into `bytes`. Returns the
/// error that ended the relay, if any.
pub async fn passthrough(
    client: L4Stream,
    dst: SocketAddr,
    mark: Option<u32>,
    bytes: Arc<Bytes>,
) -> Option<String> {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(dst, mark)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Some(format!("connect to {dst} failed: {e}")),
        Err(_) => {
            return Some(format!(
                "connect to {dst} timed out after {CONNECT_TIMEOUT:?}"
            ))
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = Counted::new(client, bytes.clone(), true);
    let mut upstream = Counted::new(upstream, bytes.clone(), false);
    let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    let (up, down) = bytes.get();
    metrics::PASSTHROUGH_BYTES
        .with_label_values(&["up"])
        .inc_by(up);
    metrics::PASSTHROUGH_BYTES
        .with_label_values(&["down"])
        .inc_by(down);
    result.err().map(|e| format!("relay to {dst} ended: {e}"))
}

/// Connect to `dst`, marking the socket first so the redirect probe lets it through.
async fn connect(dst: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    socket.connect(dst).await
}

/// Set SO_MARK (needs CAP_NET_ADMIN).
pub fn set_mark(socket: &impl std::os::fd::AsFd, mark: u32) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(std::io::Error::from)
}

/// Counts the bytes read from the inner stream (as `up` when it is the client's).
struct Counted<S> {
    inner: S,
    bytes: Arc<Bytes>,
    up: bool,
}

impl<S> Counted<S> {
    fn new(inner: S, bytes: Arc<Bytes>, up: bool) -> Self {
        Counted { inner, bytes, up }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        let counter = if self.up {
            &self.bytes.up
        } else {
            &self.bytes.down
        };
        counter.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
