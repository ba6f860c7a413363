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
//! when it arrives is the session built, that byte handed to Pingora's parser as the start
//! of the request (`set_pipelined_prefix`, which parses before it reads), and
//! `process_new_http` entered. The loop otherwise does what Pingora's does: the same
//! keep-alive timeout, the per-connection request limit, the settings a finished session
//! carries to the next, and, as Pingora's proxy does while it waits, it closes an idle
//! connection as soon as a graceful shutdown starts (a client whose request races that
//! close sees the connection end before a byte of an answer, which HTTP clients retry,
//! RFC 9112 §9.3.1).
//!
//! HTTP/2 (ALPN `h2`), h2c and custom protocols stay on Pingora's path: an h2 connection's
//! idle cost is its own accept loop. Sluice never enables HTTP/1.1 pipelining, so a
//! finished session never carries bytes read past its request and the byte read here is
//! always the next request's first.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

/// How long a kept-alive connection may idle before its next request (Pingora's default).
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// What a request head's buffer starts with (Pingora's own initial size): the first byte
/// goes in, the parser reads the rest into the same buffer.
const HEADER_BUF: usize = 4096;

/// Serve every request of one connection through `app`, as Pingora's loop would, waiting
/// between HTTP/1.1 requests outside `process_new_http`.
pub(super) async fn serve<A>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
) -> Option<Stream>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let options = app.server_options();
    let h2c = options.is_some_and(|o| o.h2c) && stream.get_ssl_digest().is_none();
    let custom = options.is_some_and(|o| o.force_custom);
    let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
    if !h1 || h2c || custom {
        return ServerApp::process_new(app, stream, shutdown).await;
    }
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(keepalive(shutdown));
    session.set_keepalive_reuses_remaining(options.and_then(|o| o.keepalive_request_limit));
    let mut result = app.process_new_http(session, shutdown).await;
    while let Some((mut stream, settings)) = result.map(|r| r.consume()) {
        let first = next_request(&mut stream, shutdown).await?;
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => settings.apply_to_session(&mut session),
            // What a finished session returns without settings: keep-alive as on the first.
            None => session.set_keepalive(keepalive(shutdown)),
        }
        session.set_pipelined_prefix(first);
        result = app.process_new_http(session, shutdown).await;
    }
    None
}

/// The keep-alive a new connection gets: none once the server is shutting down.
fn keepalive(shutdown: &ShutdownWatch) -> Option<u64> {
    (!*shutdown.borrow()).then_some(KEEPALIVE_IDLE.as_secs())
}

/// Wait for the first byte of the connection's next request. `None` when the client
/// closes it, idles past the keep-alive timeout, fails, or the server starts to shut down.
async fn next_request(stream: &mut Stream, shutdown: &ShutdownWatch) -> Option<BytesMut> {
    let mut shutdown = shutdown.clone();
    let mut byte = [0u8; 1];
    let read = tokio::select! {
        read = tokio::time::timeout(KEEPALIVE_IDLE, stream.read(&mut byte)) => read,
        // Also when the watch's sender is gone: the server is going away.
        _ = shutdown.wait_for(|stopping| *stopping) => return None,
    };
    match read {
        Ok(Ok(1)) => {
            let mut buf = BytesMut::with_capacity(HEADER_BUF);
            buf.extend_from_slice(&byte);
            Some(buf)
        }
        // 0: closed by the client; an error; or the keep-alive timeout.
        _ => None,
    }
}
