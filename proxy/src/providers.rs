//! Provider API formats behind one [`Adapter`] trait.
//!
//! An adapter turns the bytes of one LLM API exchange into the normalised pieces an
//! interaction record needs: which endpoint was called ([`Endpoint`]), what was asked
//! ([`ParsedRequest`]: model, parameters, messages) and what came back
//! ([`ParsedResponse`]: text, tool calls, finish reason, token [`Usage`]), for plain
//! JSON bodies and for streams fed chunk by chunk through a [`StreamParser`].
//!
//! Four wire formats are understood: OpenAI's (chat completions, responses, legacy
//! completions, embeddings; also spoken by Azure OpenAI, Mistral, Groq, DeepSeek, xAI,
//! OpenRouter, Together, Fireworks and self-hosted servers), Anthropic's messages API,
//! Gemini's `generateContent`/`streamGenerateContent` and AWS Bedrock Runtime's
//! Converse/InvokeModel (streamed in AWS event-stream framing, not SSE). The
//! [`registry`] maps the built-in provider hosts to adapters and owns host
//! normalisation and matching.
//!
//! What this module is not: it does no I/O, holds no connection state, makes no
//! policy decision and never alters traffic. Parsing is lenient by design (JSON is
//! navigated as [`serde_json::Value`], unknown fields are ignored) and total: any
//! input, including truncated or binary garbage, yields a best-effort result with
//! `error` describing what could not be understood, never a panic.
//!
//! Conventions shared by every adapter:
//! - `Message::role` is normalised to `system`, `user`, `assistant` or `tool`
//!   (Gemini's `model` becomes `assistant`); other roles pass through as sent.
//! - `finish_reason` is the provider's own value (`stop`, `end_turn`, `STOP`, …).
//! - A tool call is `{"id", "name", "arguments"}` with `arguments` always a string
//!   (the JSON text the model produced, as OpenAI sends it).
//! - [`Usage`] token conventions are documented on the type.

use std::sync::OnceLock;

use serde_json::{Map, Value};

mod anthropic;
mod azure;
mod bedrock;
mod eventstream;
mod gemini;
mod openai;
pub mod registry;
mod sse;
mod stream;
#[cfg(test)]
mod tests;

pub use registry::{
    adapter_by_name, adapter_for_host, default_adapter, normalize_host, HostPattern,
};
pub(crate) use sse::SseDecoder;
use stream::{Framed, StreamHandler};

/// The API endpoint a request addressed, as far as the adapter understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint label used in records: `chat.completions`, `responses`,
    /// `completions`, `embeddings`, `messages`, `generateContent`,
    /// `streamGenerateContent`, `converse`, `converse-stream`, `invoke`,
    /// `invoke-with-response-stream`.
    pub name: &'static str,
    /// The path itself says the response streams (Gemini `streamGenerateContent`),
    /// whatever the body or the response content type say.
    pub streaming_hint: bool,
    /// A model named by the path rather than the body: Gemini
    /// `/v1beta/models/{model}:generateContent` (without the `models/` prefix), the
    /// Azure OpenAI deployment in `/openai/deployments/{deployment}/…` or the Bedrock
    /// model id in `/model/{modelId}/…` (percent-decoded).
    pub model_from_path: Option<String>,
}

/// Token counts of one interaction.
///
/// - `input_tokens`: prompt tokens as the provider bills them. For OpenAI-format
///   providers and Gemini this *includes* `cached_tokens`; for Anthropic it is
///   `input_tokens + cache_creation_input_tokens` and does *not* include
///   `cached_tokens` (cache reads), because that is how Anthropic reports them.
/// - `output_tokens`: generated tokens, reasoning included (Gemini's
///   `thoughtsTokenCount` is added to `candidatesTokenCount` to match OpenAI).
/// - `cached_tokens`: prompt tokens served from the provider's prompt cache.
/// - `reasoning_tokens`: the part of `output_tokens` spent on hidden reasoning.
/// - `estimated`: some count was computed locally with a tokenizer
///   ([`estimate_tokens`]) because the provider reported none.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct Usage {
    /// Prompt tokens (see the type's documentation for cache conventions).
    pub input_tokens: Option<u64>,
    /// Generated tokens, reasoning included.
    pub output_tokens: Option<u64>,
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: Option<u64>,
    /// Hidden reasoning tokens, a part of `output_tokens`.
    pub reasoning_tokens: Option<u64>,
    /// A count was estimated locally rather than reported by the provider.
    pub estimated: bool,
}

/// What a request asked for.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ParsedRequest {
    /// The model named in the body, if any.
    pub model: Option<String>,
    /// The client asked for a streamed response.
    pub stream: bool,
    /// Every other top-level field of the body (temperature, max tokens, tools,
    /// tool choice, stop, response format, …) as sent; for Gemini the fields of
    /// `generationConfig` are lifted to the top level.
    pub params: Map<String, Value>,
    /// The conversation sent, system prompt first when there is one.
    pub messages: Vec<Message>,
    /// Why the body could not be (fully) understood, if it could not.
    pub error: Option<String>,
}

/// One message of a conversation, flattened to text.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, or the provider's own role.
    pub role: String,
    /// Text parts joined with `\n`; non-text parts summarised as `[image]`,
    /// `[audio]`, `[file]`, tool calls as `[tool_call name(arguments)]`.
    pub content: String,
}

/// What a response said.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ParsedResponse {
    /// The model the provider says answered (may be a dated version).
    pub model: Option<String>,
    /// The provider's id of this response: OpenAI's `chatcmpl-…`/`resp_…`, Anthropic's
    /// `msg_…`, Gemini's `responseId` (Bedrock's bodies carry none).
    pub id: Option<String>,
    /// Assistant text; several choices/candidates are joined with `\n`.
    pub output: String,
    /// Tool calls, each `{"id", "name", "arguments"}` (`arguments` a JSON string).
    pub tool_calls: Vec<Value>,
    /// The provider's finish/stop reason.
    pub finish_reason: Option<String>,
    /// Token counts reported by the provider.
    pub usage: Usage,
    /// Why the body could not be (fully) understood, or the provider's own error
    /// message when the body is an error.
    pub error: Option<String>,
    /// Stream events seen (SSE events or JSON array elements); 0 for plain bodies.
    pub events: u64,
}

/// Incremental parser of one streamed response body.
pub trait StreamParser: Send + Sync {
    /// Feeds raw bytes exactly as they arrive off the wire; chunk boundaries are
    /// arbitrary (mid-line, mid-UTF-8, mid-event). Never panics.
    fn feed(&mut self, chunk: &[u8]);
    /// Finishes (the stream ended or was cut) and returns what was seen so far.
    fn finish(&mut self) -> ParsedResponse;
}

/// One provider API format.
pub trait Adapter: Send + Sync {
    /// Provider label in records: `openai`, `anthropic`, `gemini`, `azure_openai`,
    /// `bedrock`, `mistral`, `groq`, `deepseek`, `xai`, `openrouter`, `together`,
    /// `fireworks`, `openai_compatible`.
    fn name(&self) -> &'static str;
    /// The endpoint a request addresses; `path` may carry a query string. `None`
    /// means not an LLM endpoint this adapter parses (the caller still records it).
    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint>;
    /// Parses a request body.
    fn parse_request(&self, ep: &Endpoint, body: &[u8]) -> ParsedRequest;
    /// Parses a non-streamed response body (which may be an error body).
    fn parse_response(&self, ep: &Endpoint, body: &[u8]) -> ParsedResponse;
    /// A parser for a streamed response body (SSE, Gemini's chunked JSON array, or
    /// Bedrock's AWS event stream).
    fn stream_parser(&self, ep: &Endpoint) -> Box<dyn StreamParser>;
    /// The pieces of generated text carried by one decoded SSE event (its `data` parsed
    /// as JSON), each with its *lane*: one independent run of text (an OpenAI choice or
    /// tool call, an Anthropic content block, a Gemini candidate). Guardrails rewrite
    /// these strings in place while the stream flows; budgets count them. The order is
    /// stable: calling twice on the same event yields the same lanes in the same order.
    /// Default: none (the event is treated as carrying no generated text).
    fn stream_deltas<'v>(
        &self,
        _ep: &Endpoint,
        _event: &str,
        _data: &'v mut Value,
    ) -> Vec<(u32, &'v mut String)> {
        Vec::new()
    }
    /// Which lanes this event closes (their text is complete once it has passed).
    fn stream_lane_end(&self, _ep: &Endpoint, _event: &str, _data: &Value) -> LaneEnd {
        LaneEnd::None
    }
    /// A refusal Sluice answers itself, in this provider's own error format, so SDKs
    /// raise their usual exception (`PermissionDeniedError`, `RateLimitError`, …) with
    /// `message`. `status` picks the error type: 400 invalid request, 401 authentication,
    /// 403 permission, 408 timeout, 413 too large, 421 misdirected, 429 rate limit, 503
    /// unavailable, anything else a generic API error. Default: OpenAI's shape.
    fn error_reply(&self, status: u16, message: &str) -> ErrorReply {
        ErrorReply::json(status, openai_error_body(status, message))
    }
    /// A complete in-stream error in this provider's stream framing, so an SDK iterating
    /// the stream raises its usual error with `message`. Default: one SSE `data:` frame
    /// carrying [`Adapter::error_reply`]'s body (OpenAI and Gemini).
    fn stream_error(&self, status: u16, message: &str) -> Vec<u8> {
        sse_frame(None, &self.error_reply(status, message).body)
    }
    /// The most output tokens the request asks for, when it says (for a budget's worst
    /// case). Default: OpenAI's `max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens` (Responses API), whichever is present.
    fn max_output_tokens(&self, req: &ParsedRequest) -> Option<u64> {
        ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| req.params.get(*k).and_then(Value::as_u64))
    }
    /// Whether [`Usage::input_tokens`] includes [`Usage::cached_tokens`] (true for every
    /// provider but Anthropic, which reports cache reads apart), for pricing.
    fn cached_within_input(&self) -> bool {
        true
    }
    /// Another provider whose price list applies to a model this provider has no price
    /// for (an Azure deployment of `gpt-4o` costs what OpenAI's does). Default: none.
    fn price_fallback(&self) -> Option<&'static str> {
        None
    }
    /// The name `model` is priced under, when this provider's model names carry more
    /// than the model (Bedrock's cross-region inference profiles `us.anthropic.…`).
    /// Default: the name as sent.
    fn price_model<'m>(&self, model: &'m str) -> &'m str {
        model
    }
}

/// A response Sluice writes itself in a provider's format: status, extra headers (the
/// content type is always set) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Headers an SDK reads to pick its exception (e.g. AWS's `x-amzn-ErrorType`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ErrorReply {
    /// A JSON body with no extra headers.
    pub fn json(status: u16, body: Value) -> ErrorReply {
        ErrorReply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

/// OpenAI's error object, which most OpenAI-format providers and SDKs share.
pub(crate) fn openai_error_body(status: u16, message: &str) -> Value {
    let (kind, code) = match status {
        400 | 413 | 421 => ("invalid_request_error", "sluice_invalid_request"),
        401 => ("authentication_error", "sluice_invalid_key"),
        403 => ("permission_denied", "sluice_policy"),
        408 => ("timeout", "sluice_timeout"),
        429 => ("rate_limit_exceeded", "sluice_rate_limit"),
        503 => ("service_unavailable", "sluice_unavailable"),
        _ => ("api_error", "sluice_error"),
    };
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// One SSE frame: an optional `event:` line, then `data: {body}`.
pub(crate) fn sse_frame(event: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// Which text lanes of a stream an event closes; see [`Adapter::stream_deltas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEnd {
    /// None.
    None,
    /// This one.
    Lane(u32),
    /// Every lane: the generated text is complete.
    All,
}

/// Counts the tokens of `text` with the o200k_base tokenizer (GPT-4o and later).
///
/// Used when a response carries no usage; the caller marks the usage `estimated`.
/// The tokenizer is built once, on first use. BPE merging is quadratic in the
/// length of a run of letters (or of whitespace), so text is encoded in slices cut
/// at whitespace every few KiB and inside any run longer than 256 bytes (base64,
/// hashes): work stays linear and a cut changes the count by at most one token.
pub fn estimate_tokens(text: &str) -> u64 {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    let Some(bpe) = BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()) else {
        // The vocabulary is compiled in, so this cannot really happen; be safe.
        return text.len().div_ceil(4) as u64;
    };
    token_slices(text)
        .map(|s| bpe.encode_ordinary(s).len() as u64)
        .sum()
}

/// The slices [`estimate_tokens`] encodes one by one: cut at whitespace once a slice
/// reaches `SLICE` bytes, and inside any run (of whitespace or of anything else) every
/// `RUN` bytes, so no slice holds a run longer than `RUN` bytes (+ one character).
fn token_slices(text: &str) -> impl Iterator<Item = &str> {
    const SLICE: usize = 8 * 1024;
    const RUN: usize = 256;
    let mut cuts = Vec::new();
    let mut start = 0; // of the slice being gathered
    let mut run_start = 0; // of the current run of whitespace or non-whitespace
    let mut run_is_space = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if space != run_is_space {
            run_is_space = space;
            run_start = i;
            if space && i - start >= SLICE {
                cuts.push(i);
                start = i;
            }
        } else if i - run_start >= RUN {
            cuts.push(i);
            start = i;
            run_start = i;
        }
    }
    cuts.push(text.len());
    let mut from = 0;
    cuts.into_iter().map(move |to| {
        let s = &text[from..to];
        from = to;
        s
    })
}

/// Whether a `Content-Type` value is `text/event-stream` (parameters ignored).
pub fn looks_like_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

// ---------------------------------------------------------------------------------
// Shared helpers for the adapters.

/// Output text and tool-call arguments accumulated from one response are capped at
/// this many bytes; past it the record keeps the start and notes the cut.
const MAX_TEXT: usize = 16 << 20;
/// Choices/candidates beyond this index are ignored (they are never this many;
/// an index from garbage must not size an allocation).
const MAX_CHOICES: usize = 16;

/// `path` without its query string or fragment.
fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// Parses a whole body as JSON, describing failure in words an operator can act on.
fn parse_body(body: &[u8], what: &str) -> Result<Value, String> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(format!("{what} body is empty"));
    }
    if body.starts_with(&[0x1f, 0x8b]) {
        return Err(format!(
            "{what} body is gzip-compressed and was not decoded"
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("{what} body is not valid JSON: {e}"))
}

/// Parses a response body as JSON, or a `ParsedResponse` carrying the reason it could
/// not (every adapter's first step on a plain answer).
#[expect(
    clippy::result_large_err,
    reason = "the error is the caller's return value, handed straight back; boxing would add an allocation to every failed parse"
)]
fn response_json(body: &[u8]) -> Result<Value, ParsedResponse> {
    parse_body(body, "response").map_err(|e| ParsedResponse {
        error: Some(e),
        ..ParsedResponse::default()
    })
}

/// Parses a request body into its top-level object, or a `ParsedRequest` carrying
/// the reason it could not.
fn request_object(body: &[u8]) -> Result<Map<String, Value>, ParsedRequest> {
    let fail = |error: String| ParsedRequest {
        error: Some(error),
        ..ParsedRequest::default()
    };
    match parse_body(body, "request") {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(fail(format!(
            "request body is a JSON {}, not an object",
            json_kind(&other)
        ))),
        Err(e) => Err(fail(e)),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Removes `key` from `map` and returns it when it is a string.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            // Not ours to interpret: keep it visible as a parameter.
            map.insert(key.to_owned(), other);
            None
        }
        None => None,
    }
}

/// Removes `key` from `map` and returns it when it is a boolean (`false` when
/// absent; any other value stays in `map` as a parameter).
fn take_bool(map: &mut Map<String, Value>, key: &str) -> bool {
    match map.get(key) {
        Some(Value::Bool(b)) => {
            let b = *b;
            map.remove(key);
            b
        }
        _ => false,
    }
}

/// Message text from an owned content value: a plain string is moved, not copied;
/// anything else goes through `render`.
fn owned_text(v: Option<Value>, render: fn(&Value, &mut String)) -> String {
    match v {
        Some(Value::String(s)) => s,
        Some(other) => {
            let mut out = String::new();
            render(&other, &mut out);
            out
        }
        None => String::new(),
    }
}

/// Takes field `key` out of a JSON object (leaving `null`) so its strings can move.
fn take_field(v: &mut Value, key: &str) -> Option<Value> {
    v.get_mut(key).map(Value::take)
}

/// A string field of a JSON object.
fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A token count: a non-negative integer, or a float with an integral value (some
/// OpenAI-compatible servers send `12.0`).
fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1e18)
            .map(|f| f as u64)
    })
}

/// Appends `s` to `out` as a new line (no separator before the first).
fn push_line(out: &mut String, s: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

/// Appends `s` to accumulated stream text, up to [`MAX_TEXT`]. Returns `false` when
/// something was cut.
fn push_capped(out: &mut String, s: &str) -> bool {
    let room = MAX_TEXT.saturating_sub(out.len());
    if s.len() <= room {
        out.push_str(s);
        return true;
    }
    let mut end = room;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&s[..end]);
    false
}

/// Tool-call arguments as a string: strings as sent, anything else as JSON text.
fn arguments_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The normalised tool-call record.
fn tool_call(id: Option<&str>, name: Option<&str>, arguments: String) -> Value {
    let mut m = Map::with_capacity(3);
    m.insert(
        "id".into(),
        id.map_or(Value::Null, |s| Value::String(s.into())),
    );
    m.insert(
        "name".into(),
        name.map_or(Value::Null, |s| Value::String(s.into())),
    );
    m.insert("arguments".into(), Value::String(arguments));
    Value::Object(m)
}

/// `[tool_call name(arguments)]`, the summary of a tool call inside message text.
fn tool_call_summary(name: &str, arguments: &str) -> String {
    format!("[tool_call {name}({arguments})]")
}

/// The provider's error message when `v` is an error body or error event, in any of
/// the shapes providers use:
/// `{"error": {"message", "type"|"status"|"code"}}` (OpenAI, Gemini, Anthropic inside
/// `{"type": "error"}`), `{"error": "text"}`, `{"object": "error", "message"}`
/// (Mistral, vLLM) and `{"detail": "text"}` (FastAPI-based servers).
fn provider_error(v: &Value) -> Option<String> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Some(match e {
            Value::String(s) => s.clone(),
            Value::Object(_) => describe_error_object(e),
            other => other.to_string(),
        });
    }
    if str_field(v, "object") == Some("error") || str_field(v, "type") == Some("error") {
        return Some(describe_error_object(v));
    }
    if let Some(Value::String(detail)) = v.get("detail") {
        if v.as_object().is_some_and(|m| m.len() == 1) {
            return Some(detail.clone());
        }
    }
    None
}

fn describe_error_object(e: &Value) -> String {
    let kind = ["type", "status", "code"]
        .iter()
        .find_map(|k| match e.get(*k) {
            Some(Value::String(s)) if s != "error" => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
    match (kind, str_field(e, "message")) {
        (Some(k), Some(m)) => format!("{k}: {m}"),
        (None, Some(m)) => m.to_owned(),
        (Some(k), None) => k,
        (None, None) => e.to_string(),
    }
}

/// Joins error notes into one `error` value.
fn join_errors(parts: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Per-choice text accumulation for responses that may carry several choices.
#[derive(Debug, Default)]
struct Choices {
    texts: Vec<String>,
    cut: bool,
}

impl Choices {
    /// Appends `s` to choice `index` (indices past [`MAX_CHOICES`] are ignored).
    fn push(&mut self, index: usize, s: &str) {
        if index >= MAX_CHOICES || s.is_empty() {
            return;
        }
        if self.texts.len() <= index {
            self.texts.resize_with(index + 1, String::new);
        }
        if !push_capped(&mut self.texts[index], s) {
            self.cut = true;
        }
    }

    /// All choices' text, joined with `\n`.
    fn joined(&mut self) -> String {
        if self.texts.len() == 1 {
            return std::mem::take(&mut self.texts[0]);
        }
        let mut out = String::new();
        for t in self.texts.iter().filter(|t| !t.is_empty()) {
            push_line(&mut out, t);
        }
        out
    }

    fn cut_note(&self) -> Option<String> {
        self.cut
            .then(|| format!("output over {MAX_TEXT} bytes; the record keeps its start"))
    }
}

/// A tool call being assembled from stream fragments.
#[derive(Debug, Default)]
struct PendingCall {
    /// Stream-local key: content block index, output index, or choice and index.
    key: u64,
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

impl PendingCall {
    fn into_value(self) -> Value {
        tool_call(self.id.as_deref(), self.name.as_deref(), self.arguments)
    }
}

/// Finds or creates the pending call with `key`.
fn pending(calls: &mut Vec<PendingCall>, key: u64) -> &mut PendingCall {
    let i = match calls.iter().position(|c| c.key == key) {
        Some(i) => i,
        None => {
            calls.push(PendingCall {
                key,
                ..PendingCall::default()
            });
            calls.len() - 1
        }
    };
    &mut calls[i]
}
