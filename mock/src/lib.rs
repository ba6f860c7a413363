//! A fast, deterministic mock LLM provider: the upstream that `sluice demo`, the
//! end-to-end tests and the benchmark harness put behind the proxy.
//!
//! It answers the OpenAI (chat completions, responses, completions, embeddings, models,
//! also under Azure's `/openai/deployments/{d}/…` and Groq's `/openai/v1/…` prefixes),
//! Anthropic (messages), Gemini (`generateContent`, `streamGenerateContent`) and AWS
//! Bedrock Runtime (`/model/{modelId}/converse`, `converse-stream`, `invoke`,
//! `invoke-with-response-stream`) APIs with bodies shaped like the real ones, plain or
//! streamed (SSE, Gemini's streamed JSON array, or Bedrock's AWS event-stream frames),
//! over plain HTTP or TLS with HTTP/1.1 and HTTP/2 chosen by ALPN.
//!
//! What it is **not**: a provider emulator. It does no tokenisation, no model behaviour,
//! no authentication and no rate limiting; it is meant for loopback tests, demos and
//! benchmarks only, never as a stand-in for a provider in production.
//!
//! # Determinism
//! The reply text is `"Mock reply to: "` followed by the first 64 characters of the last
//! user message, split on character boundaries into N chunks (N = [`MockOptions::default_chunks`]
//! or the `x-mock-chunks` header) that concatenate exactly to the text. Usage counts
//! input tokens as the whitespace-separated words of every input message (at least 1) and
//! output tokens as N. The model is echoed from the request body (from the path for Gemini
//! and Bedrock, and from the deployment for Azure when the body names none). Only ids and
//! timestamps vary between runs.
//!
//! # Controls (request headers)
//! | header | effect |
//! |---|---|
//! | `x-mock-chunks: N` | N content chunks (1..=100000) |
//! | `x-mock-delay-ms: N` | pause N ms between streamed frames |
//! | `x-mock-status: S` | answer status S (400..=599) with the provider's error JSON |
//! | `x-mock-no-usage: 1` | omit usage everywhere, streams included |
//! | `x-mock-content: TEXT` | reply with TEXT instead of the default text |
//! | `x-mock-body-bytes: N` | pad the reply text to N bytes (benchmarks) |
//!
//! # Inspection
//! `GET /__mock/requests` returns every request seen (a JSON array of [`SeenRequest`],
//! oldest first; at most 10,000 are kept, and recorded bodies total at most 512 MiB);
//! `DELETE /__mock/requests` clears it;
//! `GET /__mock/health` answers `ok`. These requests are not recorded themselves.
//!
//! Request bodies are streamed: each is hashed whole and only its first
//! [`MockOptions::max_recorded_body`] bytes are kept for inspection, so a 50 MB upload
//! costs a bounded amount of memory. A body larger than the 8 MiB parse limit is not
//! parsed; its short top-level members (`model`, `stream`, …) are still found by an
//! incremental scan, and its input tokens are estimated as one per 4 bytes.

mod anthropic;
mod bedrock;
mod body;
mod gemini;
mod openai;
pub mod pki;
mod reply;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use self::body::MockBody;
use self::reply::Controls;

/// Most requests [`MockHandle::requests`] keeps; older ones are dropped first.
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// Most bytes of recorded bodies kept in all; older requests are dropped first.
pub const MAX_RECORDED_BODY_BYTES: usize = 512 << 20;

/// Bodies up to this size are parsed as JSON; larger ones are scanned incrementally.
const PARSE_LIMIT: usize = 8 << 20;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`MockHandle::shutdown`] lets in-flight exchanges finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Tuning of a [`MockProvider`].
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Content chunks of a streamed answer when `x-mock-chunks` is absent (default 8).
    pub default_chunks: usize,
    /// Pause between streamed frames when `x-mock-delay-ms` is absent (default 0).
    pub chunk_delay: Duration,
    /// Leading bytes of each request body kept in [`SeenRequest::body`] (default 1 MiB).
    pub max_recorded_body: usize,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            default_chunks: 8,
            chunk_delay: Duration::ZERO,
            max_recorded_body: 1 << 20,
        }
    }
}

/// The mock provider server; see the [module documentation](self).
#[derive(Debug)]
pub struct MockProvider {
    _private: (),
}

impl MockProvider {
    /// Serve on an already bound listener; `tls` `None` serves plain HTTP (HTTP/1.1, or
    /// HTTP/2 with prior knowledge). Returns at once: serving happens on tasks spawned on
    /// the current Tokio runtime, until [`MockHandle::shutdown`] or the handle is dropped.
    ///
    /// # Errors
    /// When called outside a Tokio runtime, or when the listener's address is unknown.
    pub fn start(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        opts: MockOptions,
    ) -> std::io::Result<MockHandle> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            std::io::Error::other(format!("the mock provider needs a Tokio runtime: {e}"))
        })?;
        let local_addr = listener.local_addr()?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let shared = Arc::new(Shared {
            opts,
            seen: Mutex::new(Recorded::new(
                MAX_RECORDED_REQUESTS,
                MAX_RECORDED_BODY_BYTES,
            )),
            builder,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let acceptor = tls.map(TlsAcceptor::from);
        tracing::debug!(%local_addr, tls = acceptor.is_some(), "mock provider starting");
        let task = runtime.spawn(accept_loop(listener, acceptor, shared.clone(), stop_rx));
        Ok(MockHandle {
            local_addr,
            shared,
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// The running mock: its address, what it has seen, and how to stop it. Dropping the
/// handle stops the server at once; [`MockHandle::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct MockHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockHandle {
    /// The address the mock listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every request seen so far (inspection requests excepted), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.seen().list.iter().cloned().collect()
    }

    /// Forget the requests seen so far.
    pub fn clear(&self) {
        self.shared.seen().clear();
    }

    /// Stop accepting, let in-flight exchanges finish (for a few seconds at most), then
    /// close every connection.
    pub async fn shutdown(mut self) {
        // Receivers may all be gone already (the accept loop ended); nothing to tell then.
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "mock provider accept loop failed");
            }
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

/// One request the mock received, as kept for inspection.
#[derive(Clone, Debug, Serialize)]
pub struct SeenRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// The `Host` header, or the `:authority` of an HTTP/2 request.
    pub host: Option<String>,
    /// Every header in arrival order, values decoded as lossy UTF-8.
    pub headers: Vec<(String, String)>,
    /// Length of the whole body in bytes.
    pub body_len: u64,
    /// Lower-case hex SHA-256 of the whole body.
    pub body_sha256: String,
    /// The first [`MockOptions::max_recorded_body`] bytes of the body, lossy UTF-8.
    pub body: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
}

/// The ALPN protocols a mock's `rustls::ServerConfig` should carry: `h2`, `http/1.1`.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// State shared by the accept loop, every connection and the handle.
struct Shared {
    opts: MockOptions,
    seen: Mutex<Recorded>,
    builder: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: SeenRequest) {
        self.seen().push(request);
    }
}

/// The requests kept for inspection, bounded in count and in body bytes.
#[derive(Debug)]
struct Recorded {
    list: VecDeque<SeenRequest>,
    body_bytes: usize,
    max_len: usize,
    max_body_bytes: usize,
}

impl Recorded {
    fn new(max_len: usize, max_body_bytes: usize) -> Self {
        Self {
            list: VecDeque::new(),
            body_bytes: 0,
            max_len,
            max_body_bytes,
        }
    }

    /// Keep `request`, dropping the oldest ones beyond the limits (the newest one is
    /// always kept).
    fn push(&mut self, request: SeenRequest) {
        self.body_bytes += request.body.len();
        self.list.push_back(request);
        while self.list.len() > self.max_len
            || (self.body_bytes > self.max_body_bytes && self.list.len() > 1)
        {
            if let Some(old) = self.list.pop_front() {
                self.body_bytes -= old.body.len();
            }
        }
    }

    fn clear(&mut self) {
        self.list.clear();
        self.body_bytes = 0;
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // A send or the sender's drop: stop either way.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(serve_tcp(tcp, peer, tls.clone(), shared.clone(), stop.clone()));
                }
                Err(e) => {
                    // Typically EMFILE or a connection reset before accept: back off a
                    // little rather than spin.
                    tracing::warn!(error = %e, "mock provider accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = conns.len(),
            "mock provider closing connections still busy"
        );
    }
    conns.shutdown().await;
}

async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
    }
    match tls {
        None => serve_io(tcp, peer, shared, stop).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) => serve_io(stream, peer, shared, stop).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "mock TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "mock TLS handshake timed out"),
        },
    }
}

async fn serve_io<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let service = service_fn(move |req| handle(svc_shared.clone(), req));
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "mock connection ended with an error");
    }
}

/// The request body, streamed through: hashed whole, its head kept.
struct BodyDigest {
    len: u64,
    sha: Sha256,
    head: Vec<u8>,
    keep: usize,
    scan: Option<scan::TopLevelScan>,
}

impl BodyDigest {
    fn new(keep: usize, size_hint: u64) -> Self {
        let initial = usize::try_from(size_hint).unwrap_or(usize::MAX).min(keep);
        Self {
            len: 0,
            sha: Sha256::new(),
            head: Vec::with_capacity(initial),
            keep,
            scan: None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.len += data.len() as u64;
        let taken = (self.keep - self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..taken]);
        match &mut self.scan {
            Some(scan) => scan.feed(data),
            None if self.len > PARSE_LIMIT as u64 => {
                let mut scan = scan::TopLevelScan::default();
                scan.feed(&self.head);
                scan.feed(&data[taken..]);
                self.scan = Some(scan);
            }
            None => {}
        }
    }
}

/// A request body as the provider handlers see it.
pub(crate) struct JsonBody {
    /// The parsed object, or for an oversized body its short top-level members.
    pub value: Value,
    /// For an oversized body, its estimated input tokens.
    pub estimated_tokens: Option<u64>,
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    if let Some(rest) = parts.uri.path().strip_prefix("/__mock/") {
        return Ok(inspect(&shared, &parts.method, rest));
    }

    let opts = &shared.opts;
    let keep = opts.max_recorded_body.max(PARSE_LIMIT);
    let mut digest = BodyDigest::new(keep, hyper::body::Body::size_hint(&incoming).lower());
    let mut incoming = incoming;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %path, "mock failed reading a request body");
                return Ok(openai::error(
                    StatusCode::BAD_REQUEST,
                    &format!("Could not read the request body: {e}"),
                ));
            }
        }
    }

    let host = parts
        .headers
        .get(HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
    let BodyDigest {
        len: body_len,
        sha,
        head,
        scan,
        ..
    } = digest;
    let recorded = head.len().min(opts.max_recorded_body);
    shared.record(SeenRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        host,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body_sha256: hex::encode(sha.finalize()),
        body: String::from_utf8_lossy(&head[..recorded]).into_owned(),
        http_version: format!("{:?}", parts.version),
    });

    let Some(route) = reply::route(parts.uri.path(), parts.uri.query()) else {
        return Ok(openai::error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {})", parts.method, parts.uri.path()),
        ));
    };
    let provider = route.provider(&parts.headers);
    if parts.method != route.method() {
        return Ok(provider.error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "Method {} is not allowed on {}",
                parts.method,
                parts.uri.path()
            ),
        ));
    }
    let controls = Controls::from_headers(&parts.headers, opts);
    if let Some(status) = controls.status {
        return Ok(provider.error(status, &reply::status_message(status)));
    }
    if route.method() == Method::GET {
        return Ok(route.respond(
            &JsonBody {
                value: Value::Null,
                estimated_tokens: None,
            },
            &controls,
            &parts.headers,
        ));
    }

    let body = if let Some(scan) = scan {
        JsonBody {
            value: Value::Object(scan.into_members()),
            estimated_tokens: Some((body_len / 4).max(1)),
        }
    } else {
        match serde_json::from_slice::<Value>(&head) {
            Ok(value @ Value::Object(_)) => JsonBody {
                value,
                estimated_tokens: None,
            },
            Ok(_) => {
                return Ok(provider.error(
                    StatusCode::BAD_REQUEST,
                    "The request body must be a JSON object.",
                ));
            }
            Err(e) => {
                return Ok(provider.error(
                    StatusCode::BAD_REQUEST,
                    &format!("We could not parse the JSON body of your request: {e}"),
                ));
            }
        }
    };
    Ok(route.respond(&body, &controls, &parts.headers))
}

/// The `/__mock/…` inspection endpoints.
fn inspect(shared: &Shared, method: &Method, rest: &str) -> Response<MockBody> {
    match (method, rest) {
        (&Method::GET, "requests") => {
            let seen = shared.seen();
            let (first, second) = seen.list.as_slices();
            // Serialise under the lock rather than clone up to 10,000 bodies; only
            // inspection makes recording wait like this.
            let json = serde_json::to_vec(&Chained(first, second));
            drop(seen);
            match json {
                Ok(json) => body::json_bytes(StatusCode::OK, Bytes::from(json)),
                Err(e) => openai::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (&Method::DELETE, "requests") => {
            shared.seen().clear();
            body::empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, "health") => {
            let mut response = Response::new(MockBody::full(Bytes::from_static(b"ok")));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
            response
        }
        _ => openai::error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({method} /__mock/{rest})"),
        ),
    }
}

/// Two slices serialised as one JSON array (a `VecDeque`'s halves).
struct Chained<'a>(&'a [SeenRequest], &'a [SeenRequest]);

impl Serialize for Chained<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().chain(self.1))
    }
}
