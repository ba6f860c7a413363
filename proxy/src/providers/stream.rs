//! The stream driver shared by every adapter: it detects a streamed body's framing from
//! its first bytes (SSE, a JSON array of chunks, or one plain JSON body), decodes it and
//! hands each payload to the provider's [`StreamHandler`], which gives it meaning.

use serde_json::Value;

use super::sse::{self, JsonArrayDecoder, Problems, SseDecoder};
use super::{join_errors, ParsedResponse, StreamParser};

/// What a provider contributes to stream parsing: the meaning of each payload.
pub(super) trait StreamHandler: Send + Sync {
    /// One JSON payload: an SSE event's data, or one element of a JSON array stream.
    /// `event` is the SSE event name (`message` when unnamed or for array elements).
    fn on_json(&mut self, event: &str, v: &Value);
    /// A non-JSON SSE payload (OpenAI's `[DONE]`). Returns whether it was understood.
    fn on_text(&mut self, _event: &str, _data: &str) -> bool {
        false
    }
    /// The result so far; `error` set when the stream did not end as it should.
    fn finish(&mut self) -> ParsedResponse;
    /// Parses a stream that turned out to be one plain JSON body (an error answered
    /// with a streaming content type, or a server that ignored `stream: true`).
    fn whole_body(&self, body: &[u8]) -> ParsedResponse;
}

enum Framing {
    /// Nothing but whitespace seen yet.
    Sniff,
    Sse(SseDecoder),
    Array(JsonArrayDecoder),
    /// A plain JSON object, buffered (bounded) for [`StreamHandler::whole_body`].
    Body(Vec<u8>),
}

/// A [`StreamParser`] that detects the framing from the first bytes (SSE, a JSON
/// array of chunks, or a plain JSON body), decodes it and hands payloads to a
/// provider's [`StreamHandler`].
pub(super) struct Framed<H> {
    handler: H,
    framing: Framing,
    events: u64,
    problems: Problems,
    body_overflow: bool,
}

impl<H: StreamHandler + 'static> Framed<H> {
    pub(super) fn boxed(handler: H) -> Box<dyn StreamParser> {
        Box::new(Framed {
            handler,
            framing: Framing::Sniff,
            events: 0,
            problems: Problems::default(),
            body_overflow: false,
        })
    }
}

/// Delivers one SSE event's data to the handler.
fn deliver_sse(
    handler: &mut dyn StreamHandler,
    events: &mut u64,
    problems: &mut Problems,
    name: &str,
    data: &str,
) {
    *events += 1;
    let data = data.trim();
    if data.is_empty() {
        return;
    }
    if data.starts_with(['{', '[']) {
        match serde_json::from_str::<Value>(data) {
            Ok(v) => handler.on_json(name, &v),
            // `[DONE]` looks like the start of an array.
            Err(_) if handler.on_text(name, data) => {}
            Err(e) => problems.push(format!("SSE event {events}: data is not valid JSON: {e}")),
        }
    } else if !handler.on_text(name, data) {
        problems.push(format!("SSE event {events}: data is not JSON"));
    }
}

/// Delivers one JSON array stream element to the handler.
fn deliver_element(
    handler: &mut dyn StreamHandler,
    events: &mut u64,
    problems: &mut Problems,
    bytes: &[u8],
) {
    *events += 1;
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => handler.on_json("message", &v),
        Err(e) => problems.push(format!("stream element {events}: not valid JSON: {e}")),
    }
}

impl<H: StreamHandler> StreamParser for Framed<H> {
    fn feed(&mut self, chunk: &[u8]) {
        let Framed {
            handler,
            framing,
            events,
            problems,
            body_overflow,
        } = self;
        let mut chunk = chunk;
        if let Framing::Sniff = framing {
            let start = chunk
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF));
            let Some(start) = start else { return };
            chunk = &chunk[start..];
            *framing = match chunk[0] {
                b'[' => Framing::Array(JsonArrayDecoder::new()),
                b'{' => Framing::Body(Vec::new()),
                _ => Framing::Sse(SseDecoder::new()),
            };
        }
        match framing {
            Framing::Sniff => {}
            Framing::Sse(dec) => dec.feed(chunk, &mut |name, data| {
                deliver_sse(handler, events, problems, name, data)
            }),
            Framing::Array(dec) => dec.feed(chunk, &mut |bytes| {
                deliver_element(handler, events, problems, bytes)
            }),
            Framing::Body(buf) => {
                let room = sse::MAX_EVENT.saturating_sub(buf.len());
                if chunk.len() > room {
                    *body_overflow = true;
                }
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let Framed {
            handler,
            framing,
            events,
            problems,
            body_overflow,
        } = self;
        let (cut, framing_problems) = match std::mem::replace(framing, Framing::Sniff) {
            Framing::Sniff => {
                let mut r = handler.finish();
                r.error = Some("the stream carried no data".to_owned());
                return r;
            }
            Framing::Body(buf) => {
                let mut r = handler.whole_body(&buf);
                if *body_overflow {
                    r.error = join_errors([
                        Some(format!(
                            "response body over {} bytes; only its start was parsed",
                            sse::MAX_EVENT
                        )),
                        r.error.take(),
                    ]);
                }
                return r;
            }
            Framing::Sse(mut dec) => {
                let cut = dec
                    .finish(&mut |name, data| deliver_sse(handler, events, problems, name, data));
                (cut, dec.problems)
            }
            Framing::Array(mut dec) => {
                let cut = dec.finish();
                (cut, dec.problems)
            }
        };
        let mut r = handler.finish();
        r.events = *events;
        let cut_note = (cut && r.error.is_none()).then(|| "the stream ended mid-event".to_owned());
        r.error = join_errors([
            r.error.take(),
            cut_note,
            framing_problems.render(),
            problems.render(),
        ]);
        r
    }
}
