//! The Anthropic messages API: `POST /v1/messages`, plain and streamed.
//!
//! `system` (a string or text blocks) becomes the first message with role `system`;
//! content blocks are flattened (`text` as is, `tool_use` as a tool-call summary,
//! `tool_result` as its text, images and documents as `[image]`/`[document]`).
//! Usage follows Anthropic's accounting: `cache_creation_input_tokens` is added to
//! `input_tokens`, `cache_read_input_tokens` becomes `cached_tokens` and is *not*
//! part of `input_tokens` (see [`Usage`]).
//!
//! Not here: `/v1/messages/count_tokens`, the legacy `/v1/complete`, batches and
//! files are not parsed; thinking blocks are left out of the recorded output.

use serde_json::Value;

use super::{
    arguments_text, count, owned_text, path_only, pending, provider_error, push_capped, push_line,
    request_object, response_json, sse_frame, str_field, take_bool, take_field, take_string,
    tool_call, tool_call_summary, Adapter, Endpoint, ErrorReply, Framed, LaneEnd, Message,
    ParsedRequest, ParsedResponse, PendingCall, StreamHandler, StreamParser, Usage, MAX_TEXT,
};

/// The Anthropic adapter.
#[derive(Debug)]
pub(crate) struct Anthropic;

pub(crate) static ANTHROPIC: Anthropic = Anthropic;

impl Adapter for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn error_reply(&self, status: u16, message: &str) -> ErrorReply {
        let kind = match status {
            400 | 413 | 421 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            408 => "timeout_error",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        ErrorReply::json(
            status,
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }

    fn stream_error(&self, status: u16, message: &str) -> Vec<u8> {
        sse_frame(Some("error"), &self.error_reply(status, message).body)
    }

    fn cached_within_input(&self) -> bool {
        false
    }

    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint> {
        let path = path_only(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        (method.eq_ignore_ascii_case("POST") && path == "/v1/messages").then_some(Endpoint {
            name: "messages",
            streaming_hint: false,
            model_from_path: None,
        })
    }

    fn parse_request(&self, _ep: &Endpoint, body: &[u8]) -> ParsedRequest {
        let mut map = match request_object(body) {
            Ok(map) => map,
            Err(failed) => return failed,
        };
        let model = take_string(&mut map, "model");
        let stream = take_bool(&mut map, "stream");
        let mut messages = Vec::new();
        let mut error = None;
        if let Some(system) = map.remove("system") {
            messages.push(Message {
                role: "system".into(),
                content: owned_text(Some(system), render_content),
            });
        }
        match map.remove("messages") {
            Some(Value::Array(items)) => {
                for mut m in items {
                    messages.push(Message {
                        role: str_field(&m, "role").unwrap_or("unknown").to_owned(),
                        content: owned_text(take_field(&mut m, "content"), render_content),
                    });
                }
            }
            Some(other) => {
                error = Some("`messages` is not an array".to_owned());
                map.insert("messages".into(), other);
            }
            None => {}
        }
        ParsedRequest {
            model,
            stream,
            params: map,
            messages,
            error,
        }
    }

    fn parse_response(&self, _ep: &Endpoint, body: &[u8]) -> ParsedResponse {
        parse_response_body(body)
    }

    fn stream_parser(&self, _ep: &Endpoint) -> Box<dyn StreamParser> {
        Framed::boxed(MessagesStream::default())
    }

    /// `content_block_delta`: `delta.text`, `delta.partial_json` (tool input) or
    /// `delta.thinking`; the lane is the content block's `index`.
    fn stream_deltas<'v>(
        &self,
        _ep: &Endpoint,
        _event: &str,
        data: &'v mut Value,
    ) -> Vec<(u32, &'v mut String)> {
        if str_field(data, "type") != Some("content_block_delta") {
            return Vec::new();
        }
        let lane = count(data.get("index"))
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32;
        let Some(Value::Object(delta)) = data.get_mut("delta") else {
            return Vec::new();
        };
        delta
            .iter_mut()
            .filter_map(|(k, v)| match (k.as_str(), v) {
                ("text" | "partial_json" | "thinking", Value::String(t)) => Some((lane, t)),
                _ => None,
            })
            .collect()
    }

    /// `content_block_stop` closes its block; `message_delta` (the stop reason) and
    /// `message_stop` close everything.
    fn stream_lane_end(&self, _ep: &Endpoint, _event: &str, data: &Value) -> LaneEnd {
        match str_field(data, "type") {
            Some("content_block_stop") => LaneEnd::Lane(
                count(data.get("index"))
                    .unwrap_or(0)
                    .min(u64::from(u32::MAX)) as u32,
            ),
            Some("message_delta" | "message_stop") => LaneEnd::All,
            _ => LaneEnd::None,
        }
    }
}

/// Renders message content (a string or content blocks) into `out`.
fn render_content(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => push_line(out, s),
        Value::Array(blocks) => {
            for b in blocks {
                render_block(b, out);
            }
        }
        Value::Null => {}
        other => push_line(out, &other.to_string()),
    }
}

fn render_block(b: &Value, out: &mut String) {
    match str_field(b, "type").unwrap_or_default() {
        "text" => push_line(out, str_field(b, "text").unwrap_or_default()),
        "image" => push_line(out, "[image]"),
        "document" => push_line(out, "[document]"),
        "tool_use" => push_line(
            out,
            &tool_call_summary(
                str_field(b, "name").unwrap_or("?"),
                &arguments_text(b.get("input")),
            ),
        ),
        "tool_result" => {
            if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                push_line(out, "[tool_error]");
            }
            if let Some(c) = b.get("content") {
                render_content(c, out);
            }
        }
        // Prior reasoning handed back to the model: opaque, not conversation text.
        "thinking" | "redacted_thinking" => {}
        "" => {}
        other => push_line(out, &format!("[{other}]")),
    }
}

/// Anthropic's usage counts as reported. Streams report them in pieces
/// (`message_start`, then cumulative `message_delta` values that may carry only some
/// fields), so they are kept apart until the end.
#[derive(Debug, Default)]
struct Counts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
}

impl Counts {
    /// Overwrites the counts `u` carries.
    fn merge(&mut self, u: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ];
        for (key, slot) in fields {
            if let Some(n) = count(u.get(key)) {
                *slot = Some(n);
            }
        }
    }

    /// The normalised usage: cache writes are input, cache reads stay apart (see
    /// [`Usage`]).
    fn usage(&self) -> Usage {
        let input = match (self.input, self.cache_creation) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        Usage {
            input_tokens: input,
            output_tokens: self.output,
            cached_tokens: self.cache_read,
            reasoning_tokens: None,
            estimated: false,
        }
    }
}

pub(super) fn parse_response_body(body: &[u8]) -> ParsedResponse {
    let v = match response_json(body) {
        Ok(v) => v,
        Err(failed) => return failed,
    };
    let mut r = ParsedResponse {
        model: str_field(&v, "model").map(str::to_owned),
        id: str_field(&v, "id").map(str::to_owned),
        finish_reason: str_field(&v, "stop_reason").map(str::to_owned),
        error: provider_error(&v),
        ..ParsedResponse::default()
    };
    if let Some(Value::Array(blocks)) = v.get("content") {
        for b in blocks {
            match str_field(b, "type") {
                Some("text") => push_line(&mut r.output, str_field(b, "text").unwrap_or_default()),
                Some("tool_use") => r.tool_calls.push(tool_call(
                    str_field(b, "id"),
                    str_field(b, "name"),
                    arguments_text(b.get("input")),
                )),
                _ => {}
            }
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let mut counts = Counts::default();
        counts.merge(u);
        r.usage = counts.usage();
    }
    r
}

/// Streamed messages: `message_start`, `content_block_*`, `message_delta`,
/// `message_stop`, `ping`, `error`.
#[derive(Debug, Default)]
pub(super) struct MessagesStream {
    model: Option<String>,
    id: Option<String>,
    text: String,
    cut: bool,
    calls: Vec<PendingCall>,
    /// `input` of each `tool_use` block start, used when no `input_json_delta` follows.
    initial_inputs: Vec<(u64, String)>,
    stop_reason: Option<String>,
    counts: Counts,
    errors: Vec<String>,
    stopped: bool,
}

impl StreamHandler for MessagesStream {
    fn on_json(&mut self, _event: &str, v: &Value) {
        // The payload's own `type` names the event; the SSE `event:` line repeats it.
        match str_field(v, "type").unwrap_or_default() {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    if let Some(model) = str_field(m, "model") {
                        self.model = Some(model.to_owned());
                    }
                    if let Some(id) = str_field(m, "id") {
                        self.id = Some(id.to_owned());
                    }
                    if let Some(u) = m.get("usage").filter(|u| u.is_object()) {
                        self.counts.merge(u);
                    }
                }
            }
            "content_block_start" => {
                let key = block_key(v);
                let Some(block) = v.get("content_block") else {
                    return;
                };
                match str_field(block, "type") {
                    Some("text") => {
                        if !self.text.is_empty() {
                            self.push_text("\n");
                        }
                        self.push_text(str_field(block, "text").unwrap_or_default());
                    }
                    Some("tool_use") => {
                        let call = pending(&mut self.calls, key);
                        call.id = str_field(block, "id").map(str::to_owned);
                        call.name = str_field(block, "name").map(str::to_owned);
                        self.initial_inputs
                            .push((key, arguments_text(block.get("input"))));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(delta) = v.get("delta") else { return };
                match str_field(delta, "type") {
                    Some("text_delta") => {
                        self.push_text(str_field(delta, "text").unwrap_or_default())
                    }
                    Some("input_json_delta") => {
                        let key = block_key(v);
                        let part = str_field(delta, "partial_json").unwrap_or_default();
                        // Deltas for a block that never started are still kept.
                        if !push_capped(&mut pending(&mut self.calls, key).arguments, part) {
                            self.cut = true;
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.counts.merge(u);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => self
                .errors
                .push(provider_error(v).unwrap_or_else(|| v.to_string())),
            _ => {}
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let mut errors = std::mem::take(&mut self.errors);
        if !self.stopped && errors.is_empty() {
            errors.push("the stream ended before `message_stop`".to_owned());
        }
        if self.cut {
            errors.push(format!(
                "output or tool input over {MAX_TEXT} bytes; the record keeps its start"
            ));
        }
        let initial = std::mem::take(&mut self.initial_inputs);
        let tool_calls = self
            .calls
            .drain(..)
            .map(|mut c| {
                if c.arguments.is_empty() {
                    if let Some((_, input)) = initial.iter().find(|(k, _)| *k == c.key) {
                        c.arguments = input.clone();
                    }
                }
                c.into_value()
            })
            .collect();
        ParsedResponse {
            model: self.model.take(),
            id: self.id.take(),
            output: std::mem::take(&mut self.text),
            tool_calls,
            finish_reason: self.stop_reason.take(),
            usage: self.counts.usage(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            events: 0,
        }
    }

    fn whole_body(&self, body: &[u8]) -> ParsedResponse {
        parse_response_body(body)
    }
}

impl MessagesStream {
    fn push_text(&mut self, s: &str) {
        if !push_capped(&mut self.text, s) {
            self.cut = true;
        }
    }
}

fn block_key(v: &Value) -> u64 {
    count(v.get("index")).unwrap_or(0)
}
