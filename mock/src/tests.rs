//! End-to-end tests of the mock provider over real sockets: plain HTTP, TLS, HTTP/2.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

// ---- a small client -------------------------------------------------------------

/// A request body of pieces, so that large bodies can share one buffer.
struct Pieces(VecDeque<Bytes>);

impl Pieces {
    fn one(body: impl Into<Bytes>) -> Self {
        Self(VecDeque::from([body.into()]))
    }
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

enum Sender {
    H1(http1::SendRequest<Pieces>),
    H2(http2::SendRequest<Pieces>),
}

impl Sender {
    async fn handshake<IO>(io: IO, h2: bool) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Self::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(sender)
        }
    }

    async fn plain(addr: SocketAddr) -> Self {
        Self::handshake(TcpStream::connect(addr).await.unwrap(), false).await
    }

    async fn send(&mut self, req: Request<Pieces>) -> Response<Incoming> {
        match self {
            Self::H1(s) => s.send_request(req).await.unwrap(),
            Self::H2(s) => s.send_request(req).await.unwrap(),
        }
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Pieces) -> Request<Pieces> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example.test");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    bytes: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn answer(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        // Bedrock's event streams are binary; everything else must be UTF-8.
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
    }
}

async fn call(
    mock: &MockHandle,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut sender = Sender::plain(mock.local_addr()).await;
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let response = sender
        .send(request(method, path, &all, Pieces::one(body.to_owned())))
        .await;
    answer(response).await
}

async fn post(mock: &MockHandle, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
    call(mock, "POST", path, headers, &body.to_string()).await
}

async fn start(opts: MockOptions) -> MockHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockProvider::start(listener, None, opts).unwrap()
}

/// The JSON of every `data:` line but `[DONE]`, and whether `[DONE]` ended the stream.
fn sse_data(text: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let values = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (values, done)
}

/// `(event, data)` of every event of a named-event stream.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines();
            let event = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .unwrap();
            let data = lines.next().and_then(|l| l.strip_prefix("data: ")).unwrap();
            (event.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn assert_streamed(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert!(answer.headers.get("content-length").is_none());
}

const CHAT: &str = "/v1/chat/completions";

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three rivers in Europe."},
            {"role": "assistant", "content": "Rhine, Danube, Seine."},
            {"role": "user", "content": [{"type": "text", "text": "And two in Asia?"}]}
        ]
    })
}

/// 3 + 5 + 3 + 4 words across the four messages.
const CHAT_WORDS: u64 = 15;

// ---- OpenAI ---------------------------------------------------------------------

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": "Answer in French."}],
        "messages": [{"role": "user", "content": "What is a sluice gate?"}]
    })
}

fn gemini_body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be kind"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello there"}]},
            {"role": "model", "parts": [{"text": "Hi!"}]},
            {"role": "user", "parts": [{"text": "Explain"}, {"text": "sluices"}]}
        ]
    })
}

// The tests, by topic.
mod anthropic;
mod bedrock;
mod controls;
mod gemini;
mod openai;
mod transport;
