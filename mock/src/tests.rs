//! End-to-end tests of the mock provider over real sockets: plain HTTP, TLS, HTTP/2.

use std::collections::{HashMap, VecDeque};
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

#[tokio::test]
async fn openai_chat_plain() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[], chat_body(false)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(a.headers.get("x-request-id").is_some());
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock reply to: And two in Asia?"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], CHAT_WORDS);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], CHAT_WORDS + 8);
    mock.shutdown().await;
}

#[tokio::test]
async fn openai_chat_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[("x-mock-chunks", "5")], chat_body(true)).await;
    assert_streamed(&a);
    let (chunks, done) = sse_data(&a.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 5 + 1 + 1);
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o-mini"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: And two in Asia?");
    assert!(chunks[..6]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["usage"], Value::Null);
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["prompt_tokens"], CHAT_WORDS);
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 5);

    // Without include_usage there is no usage chunk.
    let mut body = chat_body(true);
    body.as_object_mut().unwrap().remove("stream_options");
    let (chunks, done) = sse_data(&post(&mock, CHAT, &[], body).await.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 8 + 1);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn openai_prefixes_and_azure() {
    let mock = start(MockOptions::default()).await;
    for path in [
        "/openai/v1/chat/completions",
        "/v1beta/openai/chat/completions",
        "/api/v1/chat/completions",
    ] {
        let v = post(&mock, path, &[], chat_body(false)).await.json();
        assert_eq!(v["model"], "gpt-4o-mini", "{path}");
    }
    let mut body = chat_body(false);
    body.as_object_mut().unwrap().remove("model");
    let a = post(
        &mock,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        &[],
        body,
    )
    .await;
    assert_eq!(a.json()["model"], "prod-gpt4o");
    assert_eq!(
        mock.requests().last().unwrap().path,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn openai_responses() {
    let mock = start(MockOptions::default()).await;
    let body = json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "Tell me a joke"});
    let v = post(&mock, "/v1/responses", &[], body.clone()).await.json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert_eq!(v["model"], "gpt-4.1");
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Mock reply to: Tell me a joke"
    );
    assert_eq!(v["usage"]["input_tokens"], 2 + 4);
    assert_eq!(v["usage"]["output_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 14);

    let mut body = body;
    body["stream"] = json!(true);
    body["input"] =
        json!([{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}]);
    let a = post(&mock, "/v1/responses", &[("x-mock-chunks", "3")], body).await;
    assert_streamed(&a);
    let events = sse_events(&a.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(
            (&data["type"], data["sequence_number"].as_u64()),
            (&json!(name), Some(i as u64))
        );
    }
    let deltas: String = events[4..7]
        .iter()
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Mock reply to: Hi there");
    assert_eq!(events[7].1["text"], "Mock reply to: Hi there");
    let completed = &events[10].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "Mock reply to: Hi there"
    );
    assert_eq!(completed["usage"]["input_tokens"], 2 + 2);
    assert_eq!(completed["usage"]["output_tokens"], 3);
    assert_eq!(events[0].1["response"]["usage"], Value::Null);
}

#[tokio::test]
async fn openai_completions_embeddings_models() {
    let mock = start(MockOptions::default()).await;
    let v = post(
        &mock,
        "/v1/completions",
        &[],
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
    )
    .await
    .json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Mock reply to: Say hi");
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": true});
    let (chunks, done) = sse_data(
        &post(&mock, "/v1/completions", &[("x-mock-chunks", "2")], body)
            .await
            .text,
    );
    assert!(done);
    assert_eq!(chunks.len(), 3);
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: Say hi");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");

    let body = json!({"model": "text-embedding-3-small", "input": ["one two", "three"], "encoding_format": "float"});
    let v = post(&mock, "/v1/embeddings", &[], body).await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let floats: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), 8);
    assert!(floats.iter().all(|f| (-1.0..=1.0).contains(f)));
    assert_eq!(
        (data[1]["index"].as_u64(), data[1]["object"].as_str()),
        (Some(1), Some("embedding"))
    );

    // The SDK's default base64 encoding carries the same vector as little-endian f32s.
    let body =
        json!({"model": "text-embedding-3-small", "input": "one two", "encoding_format": "base64"});
    let v = post(&mock, "/v1/embeddings", &[], body).await.json();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        decoded,
        floats.iter().map(|f| *f as f32).collect::<Vec<_>>()
    );
    // Four decimals, as the float encoding shows them.
    assert!(floats
        .iter()
        .all(|f| ((f * 10_000.0).round() - f * 10_000.0).abs() < 1e-6));

    let a = call(&mock, "GET", "/v1/models", &[], "").await;
    let v = a.json();
    assert_eq!(v["object"], "list");
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "gpt-4o-mini"));
    let v = call(
        &mock,
        "GET",
        "/v1/models",
        &[("anthropic-version", "2023-06-01")],
        "",
    )
    .await
    .json();
    assert_eq!(v["data"][0]["type"], "model");
}

// ---- Anthropic ------------------------------------------------------------------

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": "Answer in French."}],
        "messages": [{"role": "user", "content": "What is a sluice gate?"}]
    })
}

#[tokio::test]
async fn anthropic_messages_plain() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        anthropic_body(false),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("request-id").is_some());
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert_eq!(v["model"], "claude-sonnet-4-20250514");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Mock reply to: What is a sluice gate?"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 3 + 5);
    assert_eq!(v["usage"]["output_tokens"], 8);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

    let v = post(
        &mock,
        "/v1/messages/count_tokens",
        &[],
        anthropic_body(false),
    )
    .await
    .json();
    assert_eq!(v, json!({"input_tokens": 8}));
}

#[tokio::test]
async fn anthropic_messages_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-chunks", "4")],
        anthropic_body(true),
    )
    .await;
    assert_streamed(&a);
    let events = sse_events(&a.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(events
        .iter()
        .all(|(name, data)| data["type"] == json!(name)));
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "claude-sonnet-4-20250514");
    assert_eq!(start["usage"]["input_tokens"], 8);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 0);
    let text: String = events[3..7]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "Mock reply to: What is a sluice gate?");
    assert_eq!(events[8].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[8].1["usage"]["output_tokens"], 4);
}

// ---- Bedrock --------------------------------------------------------------------

const HAIKU_PATH: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0";
const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

fn converse_body() -> Value {
    json!({
        "system": [{"text": "Answer in French."}],
        "messages": [{"role": "user", "content": [{"text": "What is a sluice gate?"}]}],
        "inferenceConfig": {"maxTokens": 100}
    })
}

fn invoke_body() -> Value {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is a sluice gate?"}]
    })
}

/// The `(string headers, JSON payload)` of every event-stream message, both CRCs checked.
fn event_frames(mut b: &[u8]) -> Vec<(HashMap<String, String>, Value)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let u32_at = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let total = u32_at(b, 0) as usize;
        let headers_len = u32_at(b, 4) as usize;
        assert_eq!(u32_at(b, 8), crc32fast::hash(&b[..8]), "prelude CRC");
        assert_eq!(
            u32_at(b, total - 4),
            crc32fast::hash(&b[..total - 4]),
            "message CRC"
        );
        let mut h = &b[12..12 + headers_len];
        let mut headers = HashMap::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8(h[1..1 + n].to_vec()).unwrap();
            assert_eq!(h[1 + n], 7, "string header");
            let len = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8(h[4 + n..4 + n + len].to_vec()).unwrap();
            headers.insert(name, value);
            h = &h[4 + n + len..];
        }
        let payload = serde_json::from_slice(&b[12 + headers_len..total - 4]).unwrap();
        out.push((headers, payload));
        b = &b[total..];
    }
    out
}

#[tokio::test]
async fn bedrock_converse_plain_and_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        &format!("{HAIKU_PATH}/converse"),
        &[],
        converse_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("x-amzn-requestid").is_some());
    let v = a.json();
    assert_eq!(
        v["output"]["message"],
        json!({"role": "assistant", "content": [{"text": "Mock reply to: What is a sluice gate?"}]})
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": 8, "outputTokens": 8, "totalTokens": 16})
    );

    let a = post(
        &mock,
        &format!("{HAIKU_PATH}/converse-stream"),
        &[("x-mock-chunks", "3")],
        converse_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = event_frames(&a.bytes);
    let names: Vec<&str> = frames
        .iter()
        .map(|(h, _)| {
            assert_eq!(h[":message-type"], "event");
            assert_eq!(h[":content-type"], "application/json");
            h[":event-type"].as_str()
        })
        .collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert!(frames.iter().all(|(_, p)| p["p"].is_string()));
    let text: String = frames[1..4]
        .iter()
        .map(|(_, p)| p["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "Mock reply to: What is a sluice gate?");
    assert_eq!(frames[5].1["stopReason"], "end_turn");
    assert_eq!(frames[6].1["usage"]["inputTokens"], 8);
    assert_eq!(frames[6].1["usage"]["outputTokens"], 3);
}

#[tokio::test]
async fn bedrock_invoke_plain_and_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, &format!("{HAIKU_PATH}/invoke"), &[], invoke_body()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-amzn-bedrock-input-token-count"], "5");
    assert_eq!(a.headers["x-amzn-bedrock-output-token-count"], "8");
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_bdrk_"));
    assert_eq!(v["model"], HAIKU);
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Mock reply to: What is a sluice gate?"}])
    );
    assert_eq!(v["usage"]["input_tokens"], 5);

    // A literal `:` in the model id (Anthropic's SDK) routes the same way.
    let a = post(
        &mock,
        &format!("/model/{HAIKU}/invoke-with-response-stream"),
        &[("x-mock-chunks", "2")],
        invoke_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let events: Vec<Value> = event_frames(&a.bytes)
        .into_iter()
        .map(|(h, p)| {
            assert_eq!(h[":event-type"], "chunk");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p["bytes"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0]["message"]["model"], HAIKU);
    assert_eq!(
        events[6]["amazon-bedrock-invocationMetrics"]["inputTokenCount"],
        5
    );
    assert_eq!(
        events[6]["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
        2
    );
}

#[tokio::test]
async fn bedrock_errors_name_the_exception() {
    let mock = start(MockOptions::default()).await;
    let path = format!("{HAIKU_PATH}/converse");
    for (status, kind) in [
        ("429", "ThrottlingException"),
        ("403", "AccessDeniedException"),
        ("400", "ValidationException"),
        ("500", "InternalServerException"),
    ] {
        let a = post(&mock, &path, &[("x-mock-status", status)], converse_body()).await;
        assert_eq!(a.status.as_str(), status);
        assert_eq!(a.headers["x-amzn-errortype"], kind);
        assert!(a.json()["message"].as_str().unwrap().contains(status));
    }
    let a = call(&mock, "POST", &path, &[], "{oops").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["x-amzn-errortype"], "ValidationException");
    let a = call(&mock, "GET", &path, &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = call(
        &mock,
        "POST",
        &format!("{HAIKU_PATH}/count-tokens"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

// ---- Gemini ---------------------------------------------------------------------

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

#[tokio::test]
async fn gemini_generate_plain_and_streams() {
    let mock = start(MockOptions::default()).await;
    let base = "/v1beta/models/gemini-2.0-flash";
    let v = post(
        &mock,
        &format!("{base}:generateContent?key=k"),
        &[],
        gemini_body(),
    )
    .await
    .json();
    assert_eq!(v["candidates"][0]["content"]["role"], "model");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply to: Explain sluices"
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert_eq!(
        (
            &v["usageMetadata"]["promptTokenCount"],
            &v["usageMetadata"]["candidatesTokenCount"],
            &v["usageMetadata"]["totalTokenCount"]
        ),
        (&json!(2 + 2 + 1 + 2), &json!(8), &json!(15))
    );

    let a = post(
        &mock,
        &format!("{base}:streamGenerateContent?alt=sse"),
        &[("x-mock-chunks", "3")],
        gemini_body(),
    )
    .await;
    assert_streamed(&a);
    assert!(a.text.ends_with("\r\n\r\n"));
    let (chunks, done) = sse_data(&a.text);
    assert!(!done);
    assert_eq!(chunks.len(), 3);
    let text: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: Explain sluices");
    assert!(chunks[..2].iter().all(|c| c.get("usageMetadata").is_none()));
    assert!(chunks[..2]
        .iter()
        .all(|c| c["candidates"][0].get("finishReason").is_none()));
    assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(chunks[2]["usageMetadata"]["candidatesTokenCount"], 3);

    let a = post(
        &mock,
        &format!("{base}:streamGenerateContent"),
        &[("x-mock-chunks", "3")],
        gemini_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("content-length").is_none());
    assert!(a.text.starts_with("[{") && a.text.contains("},\r\n{") && a.text.ends_with("}]"));
    let array: Vec<Value> = serde_json::from_str(&a.text).unwrap();
    assert_eq!(array.len(), 3);
    let text: String = array
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: Explain sluices");
    assert_eq!(array[2]["usageMetadata"], chunks[2]["usageMetadata"]);
}

// ---- controls and errors --------------------------------------------------------

#[tokio::test]
async fn error_shapes() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[("x-mock-status", "429")], chat_body(false)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let v = a.json();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("429"));

    let a = post(&mock, CHAT, &[("x-mock-status", "500")], chat_body(true)).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.json()["error"]["type"], "server_error");

    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-status", "529")],
        anthropic_body(true),
    )
    .await;
    assert_eq!(a.status.as_u16(), 529);
    let v = a.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(v["error"]["message"].is_string());

    let path = "/v1beta/models/gemini-2.0-flash:generateContent";
    let a = post(&mock, path, &[("x-mock-status", "429")], gemini_body()).await;
    assert_eq!(
        a.json()["error"],
        json!({"code": 429, "message": reply::status_message(StatusCode::TOO_MANY_REQUESTS), "status": "RESOURCE_EXHAUSTED"})
    );

    let a = call(&mock, "POST", "/v1/messages", &[], "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert_eq!(a.json()["type"], "error");
    let a = call(&mock, "POST", path, &[], "[1,2]").await;
    assert_eq!(
        (a.status, a.json()["error"]["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    let a = call(&mock, "POST", CHAT, &[], "").await;
    assert_eq!(
        (a.status, a.json()["error"]["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request_error"))
    );

    let a = call(&mock, "POST", "/v2/nothing", &[], "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json()["error"]["message"],
        "Invalid URL (POST /v2/nothing)"
    );
    let a = call(&mock, "GET", CHAT, &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn content_usage_and_padding_controls() {
    let mock = start(MockOptions::default()).await;
    let secret = "AKIAIOSFODNN7EXAMPLE is the key";
    let a = post(
        &mock,
        CHAT,
        &[
            ("x-mock-content", secret),
            ("x-mock-no-usage", "1"),
            ("x-mock-chunks", "6"),
        ],
        chat_body(true),
    )
    .await;
    let (chunks, done) = sse_data(&a.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 6 + 1);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, secret);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-no-usage", "1")],
        anthropic_body(true),
    )
    .await;
    assert!(sse_events(&a.text)
        .iter()
        .all(|(_, d)| d.get("usage").is_none() && d["message"].get("usage").is_none()));
    let a = post(
        &mock,
        "/v1beta/models/g:generateContent",
        &[("x-mock-no-usage", "1")],
        gemini_body(),
    )
    .await;
    assert!(a.json().get("usageMetadata").is_none());

    let a = post(
        &mock,
        CHAT,
        &[("x-mock-body-bytes", "100000")],
        chat_body(false),
    )
    .await;
    let content = a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(content.len(), 100_000);
    assert!(content.starts_with("Mock reply to: And two in Asia? lorem ipsum"));
}

// ---- streaming, recording, big bodies -------------------------------------------

/// With a delay, every event leaves in its own write: no read holds two events.
#[tokio::test]
async fn delayed_chunks_arrive_separately() {
    let mock = start(MockOptions::default()).await;
    let body = chat_body(true).to_string();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-mock-chunks: 4\r\nx-mock-delay-ms: 100\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut reads = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        reads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let events: Vec<usize> = reads.iter().map(|r| r.matches("data: ").count()).collect();
    // role + 4 content + finish + usage + [DONE]
    assert_eq!(events.iter().sum::<usize>(), 8, "{reads:?}");
    assert!(events.iter().all(|&n| n <= 1), "{events:?}");
    assert!(reads[0].contains("transfer-encoding: chunked"));
}

#[tokio::test]
async fn records_requests() {
    let mock = start(MockOptions {
        max_recorded_body: 16,
        ..MockOptions::default()
    })
    .await;
    let body = chat_body(false).to_string();
    post(
        &mock,
        CHAT,
        &[("authorization", "Bearer sk-test")],
        chat_body(false),
    )
    .await;
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", CHAT));
    assert_eq!(r.host.as_deref(), Some("api.example.test"));
    assert_eq!(r.http_version, "HTTP/1.1");
    assert!(r
        .headers
        .contains(&("authorization".into(), "Bearer sk-test".into())));
    assert_eq!(r.body_len, body.len() as u64);
    assert_eq!(r.body_sha256, hex::encode(Sha256::digest(body.as_bytes())));
    assert_eq!(r.body, body[..16]);

    // Over HTTP too, and inspection requests are not recorded.
    let listed = call(&mock, "GET", "/__mock/requests", &[], "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["body_sha256"], json!(r.body_sha256));
    assert_eq!(listed[0]["headers"][0].as_array().unwrap().len(), 2);
    let a = call(&mock, "DELETE", "/__mock/requests", &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(mock.requests().is_empty());
    assert_eq!(
        call(&mock, "GET", "/__mock/health", &[], "").await.text,
        "ok"
    );
    post(&mock, CHAT, &[], chat_body(false)).await;
    mock.clear();
    assert!(mock.requests().is_empty());
}

#[test]
fn recorded_list_is_bounded() {
    let seen = |body: &str| SeenRequest {
        method: "POST".into(),
        path: "/".into(),
        host: None,
        headers: Vec::new(),
        body_len: body.len() as u64,
        body_sha256: String::new(),
        body: body.into(),
        http_version: "HTTP/1.1".into(),
    };
    let mut recorded = Recorded::new(3, 10);
    for body in ["a", "b", "c", "d"] {
        recorded.push(seen(body));
    }
    let bodies = |r: &Recorded| r.list.iter().map(|s| s.body.clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&recorded), ["b", "c", "d"]);
    recorded.push(seen("123456789"));
    assert_eq!(bodies(&recorded), ["d", "123456789"]);
    assert_eq!(recorded.body_bytes, 10);
    recorded.push(seen("much longer than the budget"));
    assert_eq!(bodies(&recorded), ["much longer than the budget"]);
    recorded.clear();
    assert_eq!((recorded.list.len(), recorded.body_bytes), (0, 0));
}

/// Peak resident memory of this process, where the platform tells it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// A 50 MB body is hashed whole, recorded to the limit, still answered from its
/// top-level members, and never held in memory.
#[tokio::test]
async fn large_body_is_streamed_and_hashed() {
    const SIZE: usize = 50 << 20;
    let mock = start(MockOptions::default()).await;
    let head = br#"{"messages":[{"role":"user","content":""#;
    let tail = br#""}],"model":"gpt-4o","stream":false}"#;
    let filler = Bytes::from(vec![b'a'; 1 << 16]);
    let mut pieces = VecDeque::from([Bytes::from_static(head)]);
    let mut sha = Sha256::new();
    sha.update(head);
    let mut len = head.len() + tail.len();
    while len + filler.len() <= SIZE {
        pieces.push_back(filler.clone());
        sha.update(&filler);
        len += filler.len();
    }
    pieces.push_back(Bytes::from_static(tail));
    sha.update(tail);

    let before = peak_rss();
    let mut sender = Sender::plain(mock.local_addr()).await;
    let a = answer(
        sender
            .send(request("POST", CHAT, &[], Pieces(pieces)))
            .await,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["usage"]["prompt_tokens"], (len / 4) as u64);

    let seen = mock.requests();
    assert_eq!(seen[0].body_len, len as u64);
    assert_eq!(seen[0].body_sha256, hex::encode(sha.finalize()));
    assert_eq!(seen[0].body.len(), MockOptions::default().max_recorded_body);
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        // The parse buffer (8 MiB) and hyper's buffers, never the 50 MB body.
        assert!(
            after.saturating_sub(before) < 40 << 20,
            "peak grew by {} bytes",
            after - before
        );
    }
}

// ---- TLS and HTTP/2 -------------------------------------------------------------

/// The process's crypto provider, installing ring's when none is.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        return provider.clone();
    }
    // Another test may win the race to install; either way one is installed after this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .unwrap()
        .clone()
}

/// A mock serving TLS for `localhost` and a client config trusting it.
async fn start_tls() -> (MockHandle, rustls::ClientConfig) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = crypto_provider();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    server.alpn_protocols = alpn_protocols();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock =
        MockProvider::start(listener, Some(Arc::new(server)), MockOptions::default()).unwrap();
    (mock, client)
}

/// Connect over TLS offering `alpn`; returns the sender and the protocol agreed.
async fn connect_tls(
    mock: &MockHandle,
    mut client: rustls::ClientConfig,
    alpn: &[&[u8]],
) -> (Sender, Option<Vec<u8>>) {
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let sender = Sender::handshake(tls, agreed.as_deref() == Some(b"h2")).await;
    (sender, agreed)
}

#[tokio::test]
async fn tls_http1_and_http2_by_alpn() {
    let (mock, client) = start_tls().await;

    let (mut h1, agreed) = connect_tls(&mock, client.clone(), &[b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    let a = answer(
        h1.send(request(
            "POST",
            CHAT,
            &[],
            Pieces::one(chat_body(false).to_string()),
        ))
        .await,
    )
    .await;
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "Mock reply to: And two in Asia?"
    );

    let (mut h2, agreed) = connect_tls(&mock, client, &[b"h2", b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    let req = Request::builder()
        .method("POST")
        .uri("https://api.anthropic.com/v1/messages")
        .header("x-mock-chunks", "3")
        .body(Pieces::one(anthropic_body(true).to_string()))
        .unwrap();
    let response = h2.send(req).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    // Frames come one event each.
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    let text: String = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
    assert_eq!(sse_events(&text).len(), 3 + 3 + 3);

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].http_version, "HTTP/1.1");
    assert_eq!(seen[1].http_version, "HTTP/2.0");
    assert_eq!(seen[1].host.as_deref(), Some("api.anthropic.com"));
    assert_eq!(seen[1].path, "/v1/messages");
    mock.shutdown().await;
}

#[tokio::test]
async fn plain_http2_prior_knowledge() {
    let mock = start(MockOptions::default()).await;
    let tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    let mut h2 = Sender::handshake(tcp, true).await;
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}{CHAT}", mock.local_addr()))
        .body(Pieces::one(chat_body(false).to_string()))
        .unwrap();
    let a = answer(h2.send(req).await).await;
    assert_eq!(a.json()["object"], "chat.completion");
    assert_eq!(mock.requests()[0].http_version, "HTTP/2.0");
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let mock = start(MockOptions::default()).await;
    let addr = mock.local_addr();
    assert_eq!(
        call(&mock, "GET", "/__mock/health", &[], "").await.status,
        StatusCode::OK
    );
    mock.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
