//! The HTTP/1.1 keep-alive loop of the data plane, run by Sluice instead of Pingora.
//!
//! Pingora's own loop (`impl ServerApp for T: HttpServerApp`) waits for a kept-alive
//! connection's next request *inside* `process_new_http`: the boxed future of the whole
//! proxy path (sized for the session, the context and every phase, ~13 KB) and the
//! 4 KiB header buffer it allocates before reading stay alive for as long as the client
//! idles. On a node most connections to a provider idle most of the time (SDK pools keep
//! them for minutes), so that is most of what an idle connection costs.
//!
//! Here the wait is a read of the next request's first byte from this small future; only
//! when it arrives is a buffer taken and the rest of the head read into it — whole within
//! `downstream.header_timeout_ms` of that byte and no larger than
//! `downstream.max_header_bytes` (Pingora bounds each read of a head, not the head: a
//! client sending a byte every 59 s held a connection for as long as it liked). Then the
//! session is built, the head handed to Pingora's parser as the start of the request
//! (`set_pipelined_prefix`, which parses before it reads; bytes past the head are the
//! body's start), and `process_new_http` entered. A head that is late or too large gets
//! `408` / `431` and the connection closes. The loop otherwise does what Pingora's does:
//! the keep-alive timeout (`downstream.keepalive_idle_ms`; the first request of a
//! connection waits as long), the per-connection request limit, the settings a finished
//! session carries to the next, and, as Pingora's proxy does while it waits, it closes an
//! idle connection as soon as a graceful shutdown starts (a client whose request races
//! that close sees the connection end before a byte of an answer, which HTTP clients
//! retry, RFC 9112 §9.3.1).
//!
//! HTTP/2 (ALPN `h2`), h2c and custom protocols stay on Pingora's path: an h2 connection's
//! idle cost is its own accept loop. Sluice never enables HTTP/1.1 pipelining, so a
//! finished session never carries bytes read past its request and the byte read here is
//! always the next request's first.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a request head's buffer starts with (Pingora's own initial size).
const HEADER_BUF: usize = 4096;

/// How long the `408` / `431` of a refused head may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Bounds on a client's handshake and on waiting for and reading its request heads
/// (`downstream:` in the config).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest wait for a request's first byte.
    pub idle: Duration,
    /// Longest time from a head's first byte to its end.
    pub head: Duration,
    /// Largest head, bytes.
    pub max_bytes: usize,
    /// Longest TLS handshake (before any head: the connection's first bytes after its
    /// ClientHello).
    pub tls_handshake: Duration,
}

impl HeadLimits {
    /// From the validated config.
    pub fn of(c: &crate::config::DownstreamConfig) -> HeadLimits {
        HeadLimits {
            idle: Duration::from_millis(c.keepalive_idle_ms),
            head: Duration::from_millis(c.header_timeout_ms),
            max_bytes: c.max_header_bytes,
            tls_handshake: Duration::from_millis(c.tls_handshake_timeout_ms),
        }
    }
}

/// How a connection's requests ended, for its record.
pub(super) enum Served {
    /// The connection is done with (closed, idle, shut down, or handed back by Pingora
    /// for reuse: `Some`).
    Ended(Option<Stream>),
    /// A request head was refused here: `request_head_timeout` or `request_head_too_large`.
    HeadRefused(&'static str),
}

/// Serve every request of one connection through `app`, as Pingora's loop would, waiting
/// for and reading each HTTP/1.1 request head outside `process_new_http`.
pub(super) async fn serve<A>(
    app: &Arc<A>,
    mut stream: Stream,
    shutdown: &ShutdownWatch,
    limits: HeadLimits,
) -> Served
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let options = app.server_options();
    let h2c = options.is_some_and(|o| o.h2c) && stream.get_ssl_digest().is_none();
    let custom = options.is_some_and(|o| o.force_custom);
    let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
    if !h1 || h2c || custom {
        return Served::Ended(ServerApp::process_new(app, stream, shutdown).await);
    }
    let mut settings = None;
    loop {
        let head = match next_head(&mut stream, shutdown, limits).await {
            Head::Read(head) => head,
            Head::None => return Served::Ended(None),
            Head::Refused(reason, status) => {
                refuse(&mut stream, status).await;
                return Served::HeadRefused(reason);
            }
        };
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(s) => HttpPersistentSettings::apply_to_session(s, &mut session),
            // The first request of the connection, or what a finished session returns
            // without settings: as a new connection.
            None => {
                session
                    .set_keepalive((!*shutdown.borrow()).then_some(limits.idle.as_secs().max(1)));
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        session.set_pipelined_prefix(head);
        match app.process_new_http(session, shutdown).await {
            Some(reuse) => (stream, settings) = reuse.consume(),
            None => return Served::Ended(None),
        }
    }
}

enum Head {
    Read(BytesMut),
    /// No request: closed by the client, idle past the keep-alive timeout, a read
    /// error, or the server is shutting down.
    None,
    /// Late or too large: the reason for the record and the status to answer.
    Refused(&'static str, &'static str),
}

/// Wait for the next request's first byte (holding no buffer meanwhile), then read the
/// rest of its head within the limits.
async fn next_head(stream: &mut Stream, shutdown: &ShutdownWatch, limits: HeadLimits) -> Head {
    let mut shutdown = shutdown.clone();
    let mut byte = [0u8; 1];
    let read = tokio::select! {
        read = tokio::time::timeout(limits.idle, stream.read(&mut byte)) => read,
        // Also when the watch's sender is gone: the server is going away.
        _ = shutdown.wait_for(|stopping| *stopping) => return Head::None,
    };
    let Ok(Ok(1)) = read else {
        return Head::None;
    };
    let deadline = tokio::time::Instant::now() + limits.head;
    let mut buf = BytesMut::with_capacity(HEADER_BUF);
    buf.extend_from_slice(&byte);
    let mut searched = 0;
    loop {
        if head_ends(&buf, searched) {
            return Head::Read(buf);
        }
        if buf.len() > limits.max_bytes {
            return Head::Refused(
                "request_head_too_large",
                "431 Request Header Fields Too Large",
            );
        }
        // The end marker may straddle two reads.
        searched = buf.len().saturating_sub(3);
        if buf.capacity() == buf.len() {
            buf.reserve(HEADER_BUF.min(limits.max_bytes + 1 - buf.len()).max(1));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Head::None,
            Ok(Ok(_)) => {}
            Err(_) => return Head::Refused("request_head_timeout", "408 Request Timeout"),
        }
    }
}

/// Whether `buf` holds a whole head: an empty line (`LF LF` or `LF CR LF`, the line ends
/// Pingora's parser takes) at or after `from`, and after the request line's first byte —
/// the parser skips empty lines before a request line, so blank lines sent first must not
/// pass for a head's end (a client would then trickle the real head past the deadline).
fn head_ends(buf: &[u8], from: usize) -> bool {
    let Some(start) = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
        return false;
    };
    let tail = &buf[from.max(start).min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Answer a refused head and close: best effort, within [`REFUSAL_WRITE`].
async fn refuse(stream: &mut Stream, status: &str) {
    let answer = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::head_ends;

    #[test]
    fn a_head_ends_at_its_empty_line_wherever_the_reads_split_it() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n{}";
        assert!(head_ends(head, 0));
        assert!(
            !head_ends(&head[..head.len() - 4], 0),
            "the body's start is not a head's end"
        );
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        // Two reads, split anywhere: the first holds no end; searching the second from
        // 3 bytes before the first's end (as the reader does) finds it.
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..whole.len() {
            assert!(!head_ends(&whole[..cut], 0), "cut at {cut}");
            assert!(head_ends(whole, cut.saturating_sub(3)), "cut at {cut}");
        }
        assert!(head_ends(b"GET / HTTP/1.1\nHost: a\n\n", 0), "bare LF");
        assert!(
            head_ends(b"GET / HTTP/1.1\nHost: a\n\r\n", 0),
            "LF, then CRLF"
        );
        // Blank lines before the request line are skipped by the parser: no head yet.
        assert!(!head_ends(b"\r\n\r\n", 0));
        assert!(!head_ends(b"\n\nGET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(head_ends(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
    }
}
