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
