//! Unit tests of the adapters over captured-shape fixtures
//! (`tests/fixtures/providers/`), of the stream framing and of the failure paths.

use base64::Engine as _;
use serde_json::{json, Value};

use super::sse::{JsonArrayDecoder, SseDecoder, MAX_LINE};
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/providers/",
            $name
        ))
        .as_slice()
    };
}

fn host(h: &str) -> &'static dyn Adapter {
    adapter_for_host(h).unwrap_or_else(|| panic!("no adapter for {h}"))
}

fn post(adapter: &dyn Adapter, path: &str) -> Endpoint {
    adapter
        .endpoint("POST", path)
        .unwrap_or_else(|| panic!("{} does not parse {path}", adapter.name()))
}

/// Deterministic pseudo-random numbers (no dependency, reproducible failures).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn run(adapter: &dyn Adapter, ep: &Endpoint, chunks: &[&[u8]]) -> ParsedResponse {
    let mut p = adapter.stream_parser(ep);
    for c in chunks {
        p.feed(c);
    }
    p.finish()
}

fn snapshot(r: &ParsedResponse) -> Value {
    serde_json::to_value(r).expect("ParsedResponse serialises")
}

/// Streams `body` whole, byte by byte and in several pseudo-random splits, checks
/// that every way gives the same result, and returns it.
fn stream_every_way(adapter: &dyn Adapter, ep: &Endpoint, body: &[u8]) -> ParsedResponse {
    let whole = run(adapter, ep, &[body]);
    let expected = snapshot(&whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        snapshot(&run(adapter, ep, &bytes)),
        expected,
        "byte by byte"
    );
    let mut rng = Lcg(7);
    for round in 0..8 {
        let mut chunks = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = (1 + rng.below(64)).min(rest.len());
            let (head, tail) = rest.split_at(n);
            chunks.push(head);
            rest = tail;
        }
        assert_eq!(
            snapshot(&run(adapter, ep, &chunks)),
            expected,
            "split round {round}"
        );
    }
    whole
}

fn sse_event_count(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.matches("\n\n").count() as u64
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

// ---------------------------------------------------------------------------------
// Host table, names, endpoints.

// The tests, by topic (after the macro above, which they use).
mod anthropic;
mod bedrock;
mod framing;
mod gemini;
mod openai;
mod registry;
mod robustness;

/// The provider's response id and answering model, from plain bodies and streams of each
/// format that carries them.
#[test]
fn response_ids_and_models() {
    let openai = host("api.openai.com");
    let chat = post(openai, "/v1/chat/completions");
    let body = br#"{"id":"chatcmpl-1","model":"gpt-4o-2024-08-06","choices":[]}"#;
    let r = openai.parse_response(&chat, body);
    assert_eq!(
        (r.id.as_deref(), r.model.as_deref()),
        (Some("chatcmpl-1"), Some("gpt-4o-2024-08-06"))
    );
    let sse = b"data: {\"id\":\"chatcmpl-2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"chatcmpl-2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    assert_eq!(
        stream_every_way(openai, &chat, sse).id.as_deref(),
        Some("chatcmpl-2")
    );
    let responses = post(openai, "/v1/responses");
    let sse = b"data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\"}}\n\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[]}}\n\n";
    let r = stream_every_way(openai, &responses, sse);
    assert_eq!(
        (r.id.as_deref(), r.model.as_deref()),
        (Some("resp_1"), Some("gpt-4.1-2025-04-14"))
    );

    let anthropic = host("api.anthropic.com");
    let messages = post(anthropic, "/v1/messages");
    let body = br#"{"id":"msg_1","type":"message","model":"claude-haiku-4-5","content":[],"stop_reason":"end_turn"}"#;
    assert_eq!(
        anthropic.parse_response(&messages, body).id.as_deref(),
        Some("msg_1")
    );
    let sse = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":3}}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert_eq!(
        stream_every_way(anthropic, &messages, sse).id.as_deref(),
        Some("msg_2")
    );

    let gemini = host("generativelanguage.googleapis.com");
    let generate = post(gemini, "/v1beta/models/gemini-2.0-flash:generateContent");
    let body = br#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"modelVersion":"gemini-2.0-flash-001","responseId":"g-1"}"#;
    let r = gemini.parse_response(&generate, body);
    assert_eq!(
        (r.id.as_deref(), r.model.as_deref()),
        (Some("g-1"), Some("gemini-2.0-flash-001"))
    );
}
