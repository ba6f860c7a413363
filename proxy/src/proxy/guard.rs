//! Acting on the answer while it flows: response guardrails and mid-stream budget cuts.
//!
//! [`StreamGuard`] sits between the provider's SSE stream and the client. It re-frames
//! the stream into whole events (a provider flushes whole events, so this adds no wait),
//! and for each event:
//!
//! - the generated text the adapter points at ([`Adapter::stream_deltas`]) goes through
//!   one [`StreamRedactor`] per lane, which holds back a bounded window (256 bytes) so a
//!   secret split across any number of events is still caught; the event carries the
//!   released, redacted text instead (possibly empty: the SDKs append nothing);
//! - every other text in the event (the full text a Responses API `*.done` event
//!   repeats, say) is redacted whole;
//! - when a lane closes ([`Adapter::stream_lane_end`]) or the stream ends, the held text
//!   is released: into the closing event's own delta when it has one, else into a copy of
//!   the lane's last delta event placed just before it;
//! - output tokens are counted as they pass; when the prompt's cost plus the output's
//!   would spend past the tightest budget ([`StreamBudget`]) the guard emits the
//!   provider's own in-stream error event and drops everything after it.
//!
//! Events that carry nothing to change are forwarded byte for byte as they were
//! re-framed (`event:`/`data:` lines; SSE comments and `id:` lines are dropped).
//! [`BodyGuard`] does the same for a plain JSON answer: buffered (up to the inspection
//! limit), every text leaf redacted, sent whole.

use std::sync::Arc;

use serde_json::Value;

use crate::guardrails::{Category, Scanner, StreamRedactor, DEFAULT_WINDOW};
use crate::policy::{self, StreamBudget};
use crate::providers::{self, Adapter, Endpoint, LaneEnd, SseDecoder};

/// Why a stream was cut.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    /// The budget's policy, `id@vN`.
    pub policy_id: String,
    /// What the guard counted as spent when it cut, USD.
    pub spent_usd: f64,
}

struct Lane {
    id: u32,
    redactor: StreamRedactor,
    /// The lane's last delta event (name, JSON), to carry text released at its end.
    template: Option<(String, Value)>,
}

/// See the module documentation.
pub(crate) struct StreamGuard {
    adapter: &'static dyn Adapter,
    ep: Endpoint,
    decoder: SseDecoder,
    redact: Option<Arc<Scanner>>,
    lanes: Vec<Lane>,
    budget: Option<StreamBudget>,
    /// Output tokens counted, and the text since (counted in whole runs of words, so
    /// the count matches the tokenizer over the whole text closely).
    output_tokens: u64,
    uncounted: String,
    cut: Option<Cut>,
    found: Vec<Category>,
}

impl StreamGuard {
    /// A guard redacting what `redact` finds and cutting at `budget`; `None` when there
    /// is nothing to do.
    pub(crate) fn new(
        adapter: &'static dyn Adapter,
        ep: Endpoint,
        redact: Option<Arc<Scanner>>,
        budget: Option<StreamBudget>,
    ) -> Option<StreamGuard> {
        if redact.is_none() && budget.is_none() {
            return None;
        }
        Some(StreamGuard {
            adapter,
            ep,
            decoder: SseDecoder::new(),
            redact,
            lanes: Vec::new(),
            budget,
            output_tokens: 0,
            uncounted: String::new(),
            cut: None,
            found: Vec::new(),
        })
    }

    /// Bytes from the provider in, bytes for the client out (whole events only).
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.feed(chunk, &mut |event, data| self.on_event(event, data, out));
        self.decoder = decoder;
    }

    /// The stream ended: a pending event, then whatever the lanes still hold.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.finish(&mut |event, data| self.on_event(event, data, out));
        self.decoder = decoder;
        if self.cut.is_none() {
            self.flush_lanes(out);
        }
    }

    /// Set once the budget ran out; nothing is forwarded after the error event.
    pub(crate) fn cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }

    /// Categories redacted so far, in stream order, without duplicates.
    pub(crate) fn findings(&self) -> &[Category] {
        &self.found
    }

    fn on_event(&mut self, event: &str, data: &str, out: &mut Vec<u8>) {
        if self.cut.is_some() {
            return;
        }
        let Ok(mut json) = serde_json::from_str::<Value>(data) else {
            // `[DONE]` and other non-JSON data: everything held goes out before it.
            self.flush_lanes(out);
            write_event(out, event, data);
            return;
        };
        let end = self.adapter.stream_lane_end(&self.ep, event, &json);
        // Take the generated text out, so the whole-event scan below skips it.
        let mut pieces: Vec<(u32, String)> = self
            .adapter
            .stream_deltas(&self.ep, event, &mut json)
            .into_iter()
            .map(|(lane, text)| (lane, std::mem::take(text)))
            .collect();
        if self.budget.is_some() {
            for (_, text) in &pieces {
                self.count(text);
            }
        }
        let mut changed = false;
        if let Some(scanner) = self.redact.clone() {
            for (lane, text) in &mut pieces {
                let released = self.lane(*lane, &scanner).redactor.push(text);
                changed |= released != *text;
                *text = released;
            }
            let before = self.found.len();
            policy::redact_body(&mut json, &scanner, &mut self.found);
            changed |= self.found.len() > before;
            // Remember the event (text emptied) as the shape for text released later.
            if !pieces.is_empty() {
                let template = (event.to_owned(), json);
                for (lane, _) in &pieces {
                    self.lane(*lane, &scanner).template = Some(template.clone());
                }
                json = template.1;
            }
            changed |= self.close_lanes(end, &mut pieces, out);
            self.collect_findings();
        }
        if changed {
            let mut slots = self.adapter.stream_deltas(&self.ep, event, &mut json);
            for ((_, text), (_, slot)) in pieces.into_iter().zip(slots.iter_mut()) {
                **slot = text;
            }
            drop(slots);
            let data = serde_json::to_string(&json).unwrap_or_default();
            write_event(out, event, &data);
        } else {
            write_event(out, event, data);
        }
        self.check_budget(out);
    }

    fn lane(&mut self, id: u32, scanner: &Arc<Scanner>) -> &mut Lane {
        let i = match self.lanes.iter().position(|l| l.id == id) {
            Some(i) => i,
            None => {
                self.lanes.push(Lane {
                    id,
                    redactor: StreamRedactor::new(scanner.clone(), DEFAULT_WINDOW),
                    template: None,
                });
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[i]
    }

    /// Release every lane's held text, each as its own event.
    fn flush_lanes(&mut self, out: &mut Vec<u8>) {
        self.close_lanes(LaneEnd::All, &mut [], out);
        self.collect_findings();
    }

    /// Release the held text of the lanes `end` closes: into the closing event's own
    /// delta for that lane when it has one (`pieces`), else as a copy of the lane's last
    /// delta event placed before it. Whether any text was released.
    fn close_lanes(
        &mut self,
        end: LaneEnd,
        pieces: &mut [(u32, String)],
        out: &mut Vec<u8>,
    ) -> bool {
        let closing: Vec<u32> = match end {
            LaneEnd::None => return false,
            LaneEnd::Lane(id) => vec![id],
            LaneEnd::All => self.lanes.iter().map(|l| l.id).collect(),
        };
        let mut released = false;
        for id in closing {
            let rest = match self.lanes.iter_mut().find(|l| l.id == id) {
                Some(l) => l.redactor.finish(),
                None => continue,
            };
            if rest.is_empty() {
                continue;
            }
            released = true;
            match pieces.iter_mut().rev().find(|(l, _)| *l == id) {
                Some((_, text)) => text.push_str(&rest),
                None => self.emit_from_template(id, &rest, out),
            }
        }
        released
    }

    /// An event shaped like the lane's last delta, carrying `text` for that lane only.
    fn emit_from_template(&mut self, id: u32, text: &str, out: &mut Vec<u8>) {
        let Some((event, mut json)) = self
            .lanes
            .iter()
            .find(|l| l.id == id)
            .and_then(|l| l.template.clone())
        else {
            return;
        };
        let mut placed = false;
        for (lane, slot) in self.adapter.stream_deltas(&self.ep, &event, &mut json) {
            if lane == id && !placed {
                *slot = text.to_owned();
                placed = true;
            } else {
                slot.clear();
            }
        }
        if placed {
            let data = serde_json::to_string(&json).unwrap_or_default();
            write_event(out, &event, &data);
        }
    }

    fn collect_findings(&mut self) {
        for l in &self.lanes {
            for c in l.redactor.findings() {
                if !self.found.contains(c) {
                    self.found.push(*c);
                }
            }
        }
    }

    /// Counts `text` as output: whole runs up to the last space are tokenized once; the
    /// tail waits for the next piece (a word split across events is one token).
    fn count(&mut self, text: &str) {
        self.uncounted.push_str(text);
        if self.uncounted.len() < 256 {
            return;
        }
        if let Some(cut) = self.uncounted.rfind(' ').filter(|&i| i > 0) {
            self.output_tokens += providers::estimate_tokens(&self.uncounted[..cut]);
            self.uncounted.drain(..cut);
        }
    }

    fn check_budget(&mut self, out: &mut Vec<u8>) {
        let Some(b) = &self.budget else { return };
        let tokens = self.output_tokens + providers::estimate_tokens(&self.uncounted);
        if !b.exceeded(tokens) {
            return;
        }
        let spent = b.input_usd + tokens as f64 * b.output_usd_per_token;
        let message = format!(
            "Stream stopped by Sluice policy {}: budget exhausted mid-stream (${:.6} left before this request, about ${spent:.6} spent by it so far).",
            b.policy_id, b.headroom_usd
        );
        out.extend_from_slice(&self.adapter.stream_error(429, &message));
        self.cut = Some(Cut {
            policy_id: b.policy_id.clone(),
            spent_usd: spent,
        });
    }
}

/// One SSE event: an `event:` line unless it is the default `message`, one `data:` line
/// per line of data, a blank line.
fn write_event(out: &mut Vec<u8>, event: &str, data: &str) {
    if event != "message" {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Redaction of a plain (non-streamed) JSON answer: buffered up to a limit, then every
/// text leaf redacted at once.
pub(crate) struct BodyGuard {
    scanner: Arc<Scanner>,
    buf: Vec<u8>,
    limit: usize,
    /// Over the limit: everything passes untouched from then on.
    overflowed: bool,
    found: Vec<Category>,
}

impl BodyGuard {
    pub(crate) fn new(scanner: Arc<Scanner>, limit: usize) -> BodyGuard {
        BodyGuard {
            scanner,
            buf: Vec::new(),
            limit,
            overflowed: false,
            found: Vec::new(),
        }
    }

    /// Buffers `chunk`; returns what may go out now (nothing until the end, unless the
    /// answer is too large to inspect).
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if self.overflowed {
            return Some(chunk.to_vec());
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.limit {
            self.overflowed = true;
            return Some(std::mem::take(&mut self.buf));
        }
        None
    }

    /// The whole answer, redacted (unchanged when it is not JSON).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.buf);
        let Ok(mut json) = serde_json::from_slice::<Value>(&buf) else {
            return buf;
        };
        policy::redact_body(&mut json, &self.scanner, &mut self.found);
        if self.found.is_empty() {
            return buf;
        }
        serde_json::to_vec(&json).unwrap_or(buf)
    }

    /// The answer was too large to inspect and went out as it was.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn findings(&self) -> &[Category] {
        &self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails::{redact, Group};

    fn secrets() -> Arc<Scanner> {
        let cats: Vec<Category> = Category::ALL
            .iter()
            .copied()
            .filter(|c| c.group() == Group::Secret)
            .collect();
        Arc::new(Scanner::new(&cats))
    }

    const TEXT: &str = "Sure. The deploy key is AKIAZ3MQ4XJ2B7RTKPLW and the token \
        ghp_R8x2Lq9ZkT4mW7vN1pY6sD3fH5jC0bA8eG2u, keep them safe. Anything else?";

    fn guard(provider: &str, path: &str, budget: Option<StreamBudget>) -> StreamGuard {
        let adapter = providers::adapter_by_name(provider).expect("adapter");
        let ep = adapter.endpoint("POST", path).expect("endpoint");
        let redact = budget.is_none().then(secrets);
        StreamGuard::new(adapter, ep, redact, budget).expect("guard")
    }

    /// Runs `stream` through the guard in pieces of `step` bytes.
    fn run(g: &mut StreamGuard, stream: &[u8], step: usize) -> String {
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            g.feed(piece, &mut out);
        }
        g.finish(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// (event, data as JSON or text) of every event in `sse`.
    fn events(sse: &str) -> Vec<(String, String)> {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        dec.feed(sse.as_bytes(), &mut |e, d| {
            out.push((e.to_owned(), d.to_owned()))
        });
        dec.finish(&mut |e, d| out.push((e.to_owned(), d.to_owned())));
        out
    }

    fn openai_stream(text: &str, piece: usize) -> String {
        let mut s = String::new();
        let chars: Vec<char> = text.chars().collect();
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        for part in chars.chunks(piece) {
            let t: String = part.iter().collect();
            let ev = serde_json::json!({"id":"c1","object":"chat.completion.chunk",
                "choices":[{"index":0,"delta":{"content":t},"finish_reason":null}]});
            s.push_str(&format!("data: {ev}\n\n"));
        }
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn expected() -> String {
        redact(TEXT, &secrets().scan(TEXT))
    }

    #[test]
    fn openai_secret_split_across_events_is_redacted() {
        assert!(expected().contains("[REDACTED"), "the fixture has secrets");
        for (piece, step) in [(1, 1), (3, 7), (5, 64), (40, 4096)] {
            let mut g = guard("openai", "/v1/chat/completions", None);
            let out = run(&mut g, openai_stream(TEXT, piece).as_bytes(), step);
            let evs = events(&out);
            let mut text = String::new();
            for (_, d) in &evs {
                if let Ok(v) = serde_json::from_str::<Value>(d) {
                    if let Some(t) = v
                        .pointer("/choices/0/delta/content")
                        .and_then(Value::as_str)
                    {
                        text.push_str(t);
                    }
                }
            }
            assert_eq!(text, expected(), "piece {piece}, step {step}");
            assert!(!out.contains("AKIAZ3MQ4XJ2B7RTKPLW") && !out.contains("ghp_R8x2"));
            // Order kept: the finish chunk then [DONE] close the stream.
            assert_eq!(evs.last().map(|e| e.1.as_str()), Some("[DONE]"));
            let finish = &evs[evs.len() - 2].1;
            assert!(finish.contains("\"finish_reason\":\"stop\""), "{finish}");
            assert_eq!(g.findings().len(), 2, "{:?}", g.findings());
        }
    }

    #[test]
    fn anthropic_and_gemini_streams_are_redacted_per_lane() {
        // Anthropic: text released at content_block_stop.
        let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        let chars: Vec<char> = TEXT.chars().collect();
        for part in chars.chunks(4) {
            let t: String = part.iter().collect();
            let ev = serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}});
            s.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let mut g = guard("anthropic", "/v1/messages", None);
        let out = run(&mut g, s.as_bytes(), 13);
        let evs = events(&out);
        let text: String = evs
            .iter()
            .filter(|(e, _)| e == "content_block_delta")
            .filter_map(|(_, d)| {
                let v: Value = serde_json::from_str(d).ok()?;
                v.pointer("/delta/text")?.as_str().map(str::to_owned)
            })
            .collect();
        assert_eq!(text, expected());
        let stop = evs
            .iter()
            .position(|(e, _)| e == "content_block_stop")
            .unwrap();
        let last_delta = evs
            .iter()
            .rposition(|(e, _)| e == "content_block_delta")
            .unwrap();
        assert!(
            last_delta < stop,
            "held text goes out before the block closes"
        );

        // Gemini: the final event carries text and finishReason together.
        let mut s = String::new();
        let n = chars.len();
        for (i, part) in chars.chunks(6).enumerate() {
            let t: String = part.iter().collect();
            let mut cand =
                serde_json::json!({"content":{"role":"model","parts":[{"text":t}]},"index":0});
            if (i + 1) * 6 >= n {
                cand["finishReason"] = "STOP".into();
            }
            s.push_str(&format!(
                "data: {}\n\n",
                serde_json::json!({"candidates":[cand]})
            ));
        }
        let mut g = guard(
            "gemini",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            None,
        );
        let out = run(&mut g, s.as_bytes(), 9);
        let text: String = events(&out)
            .iter()
            .filter_map(|(_, d)| {
                let v: Value = serde_json::from_str(d).ok()?;
                v.pointer("/candidates/0/content/parts/0/text")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, expected());
    }

    #[test]
    fn budget_cuts_the_stream_with_the_providers_error_event() {
        let long = "word ".repeat(400);
        let budget = StreamBudget {
            policy_id: "team-cap@v3".into(),
            headroom_usd: 0.0005,
            input_usd: 0.0001,
            output_usd_per_token: 0.000_002,
        };
        let mut g = guard("openai", "/v1/chat/completions", Some(budget));
        let out = run(&mut g, openai_stream(&long, 5).as_bytes(), 100);
        let cut = g.cut().expect("cut").clone();
        assert_eq!(cut.policy_id, "team-cap@v3");
        assert!(
            cut.spent_usd > 0.0005 && cut.spent_usd < 0.0006,
            "{}",
            cut.spent_usd
        );
        let evs = events(&out);
        let last: Value = serde_json::from_str(&evs.last().unwrap().1).unwrap();
        let msg = last
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap();
        assert!(
            msg.contains("team-cap@v3") && msg.contains("budget"),
            "{msg}"
        );
        assert!(!out.contains("[DONE]"), "nothing after the cut");
        // About 200 tokens were allowed: (0.0005 - 0.0001) / 0.000002.
        let words = out.matches("word").count();
        assert!((150..=260).contains(&words), "{words} words went out");
    }

    #[test]
    fn body_guard_redacts_a_json_answer_and_passes_oversized_ones() {
        let body = serde_json::json!({"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":TEXT}}]});
        let raw = serde_json::to_vec(&body).unwrap();
        let mut g = BodyGuard::new(secrets(), 1 << 20);
        assert!(g.feed(&raw[..10]).is_none() && g.feed(&raw[10..]).is_none());
        let out: Value = serde_json::from_slice(&g.finish()).unwrap();
        assert_eq!(
            out.pointer("/choices/0/message/content")
                .and_then(Value::as_str),
            Some(expected().as_str())
        );
        assert_eq!(g.findings().len(), 2);
        let mut small = BodyGuard::new(secrets(), 16);
        let passed = small.feed(&raw).expect("too large: passes");
        assert_eq!(passed, raw);
        assert!(small.overflowed() && small.finish().is_empty());
    }
}
