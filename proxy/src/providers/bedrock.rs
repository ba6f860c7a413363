//! AWS Bedrock Runtime: `bedrock-runtime.{region}.amazonaws.com` (and `-fips`).
//!
//! Four endpoints, all `POST /model/{modelId}/{operation}`:
//! - `converse` and `converse-stream`: Bedrock's own Converse format (`messages` of
//!   content blocks, `system` blocks, `inferenceConfig`, `toolConfig`);
//! - `invoke` and `invoke-with-response-stream`: the model's native body. Anthropic
//!   models (`anthropic_version: bedrock-2023-05-31`) are parsed as Anthropic messages;
//!   other models' bodies are kept as parameters with their `prompt`/`inputText`.
//!
//! The **path names the model**: the raw path is split on `/` first and only the model
//! id is percent-decoded (boto3 sends `anthropic.claude-…-v1%3A0`, Anthropic's SDK a
//! literal `:`; ARNs arrive with `%2F`). The forwarded path is never touched: it is
//! signed. Streamed answers use AWS event-stream framing (`eventstream.rs`), not SSE:
//! `converse-stream` events are the bare members of `ConverseStreamOutput` named by
//! `:event-type`; `invoke-with-response-stream` sends `chunk` events whose `bytes` are
//! base64 of the model's own stream events (Anthropic's, parsed by Anthropic's stream
//! handling, with `amazon-bedrock-invocationMetrics` as a usage fallback). Exception
//! frames become the record's `error`. Unknown keys (AWS pads payloads with a random
//! `p`) are ignored.
//!
//! Usage: Converse reports `inputTokens` apart from `cacheReadInputTokens` and
//! `cacheWriteInputTokens` (as Anthropic does), so cache writes are added to
//! `input_tokens` and cache reads stay apart in `cached_tokens` (see
//! [`Adapter::cached_within_input`] below for the source).
//!
//! Sluice's own refusals answer with `x-amzn-ErrorType` and `{"message"}`, which botocore
//! turns into the modelled exception (`AccessDeniedException`, `ThrottlingException`, …);
//! mid-stream, an event-stream `exception` frame.
//!
//! Credentials: requests are signed with SigV4 (`Authorization: AWS4-HMAC-SHA256 …`,
//! `X-Amz-Security-Token`) or carry a Bedrock API key as a bearer token. This adapter
//! never sees headers and records nothing of them.
//!
//! Not here (known limitations):
//! - response guardrail redaction and the budget's mid-stream cut work on SSE streams
//!   only, so Bedrock event-stream answers are recorded but neither rewritten nor cut;
//! - `count-tokens`, `invoke-with-bidirectional-stream`, guardrail `apply`, async
//!   invocations and the Anthropic-native `/anthropic/v1/messages` route are not parsed
//!   (they are still recorded as unparsed exchanges);
//! - non-Anthropic `invoke` answers (Titan, Llama, Mistral, Nova native bodies) yield
//!   no output text, only what the invocation metrics say.

use base64::Engine as _;
use serde_json::Value;

use super::anthropic::{self, MessagesStream, ANTHROPIC};
use super::azure::percent_decoded;
use super::eventstream::{self, Decoder};
use super::sse::{Problems, MAX_EVENT};
use super::{
    arguments_text, count, join_errors, path_only, pending, push_capped, push_line, request_object,
    response_json, str_field, take_field, tool_call, tool_call_summary, Adapter, Endpoint,
    ErrorReply, Message, ParsedRequest, ParsedResponse, PendingCall, StreamHandler, StreamParser,
    Usage, MAX_TEXT,
};

/// The Bedrock Runtime adapter.
#[derive(Debug)]
pub(crate) struct Bedrock;

pub(crate) static BEDROCK: Bedrock = Bedrock;

/// The operations parsed, by their path segment (also the endpoint label).
const OPERATIONS: [&str; 4] = [
    "converse",
    "converse-stream",
    "invoke",
    "invoke-with-response-stream",
];

/// Cross-region inference-profile prefixes of model ids (`us.anthropic.…`); the model
/// behind a profile costs what the foundation model does.
const PROFILE_PREFIXES: [&str; 8] = ["global", "us", "us-gov", "eu", "apac", "jp", "au", "ca"];

impl Adapter for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        // Split the raw path first: an escaped `/` (`%2F`) inside an ARN stays in the id.
        let mut parts = path_only(path).split('/');
        let (Some(""), Some("model"), Some(id), Some(op), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let name = OPERATIONS.into_iter().find(|o| *o == op)?;
        if id.is_empty() {
            return None;
        }
        Some(Endpoint {
            name,
            streaming_hint: name.ends_with("stream"),
            model_from_path: Some(percent_decoded(id)),
        })
    }

    fn parse_request(&self, ep: &Endpoint, body: &[u8]) -> ParsedRequest {
        let mut req = if is_converse(ep) {
            converse_request(body)
        } else {
            invoke_request(ep, body)
        };
        // Neither body names the model or asks for a stream: the path does.
        if let Some(sent) = req.model.take() {
            req.params.insert("model".into(), Value::String(sent));
        }
        req.model = ep.model_from_path.clone();
        req.stream = ep.streaming_hint;
        req
    }

    fn parse_response(&self, ep: &Endpoint, body: &[u8]) -> ParsedResponse {
        if is_converse(ep) {
            return converse_response(body);
        }
        let mut r = anthropic::parse_response_body(body);
        if r.error.is_none() {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                r.error = aws_error(&v);
            }
        }
        r
    }

    fn stream_parser(&self, ep: &Endpoint) -> Box<dyn StreamParser> {
        let events = if is_converse(ep) {
            Events::Converse(ConverseStream::default())
        } else {
            Events::Invoke(Box::default())
        };
        Box::new(BedrockStream {
            ep: ep.clone(),
            framing: Framing::Sniff,
            events,
            problems: Problems::default(),
        })
    }

    fn error_reply(&self, status: u16, message: &str) -> ErrorReply {
        let kind = error_type(status);
        let mut reply = ErrorReply::json(status, serde_json::json!({ "message": message }));
        reply.headers.push(("x-amzn-ErrorType", kind.to_owned()));
        reply
    }

    /// An `exception` frame named by the lowerCamel member name, as Bedrock sends them
    /// (`throttlingException`), which botocore raises as `EventStreamError`.
    fn stream_error(&self, status: u16, message: &str) -> Vec<u8> {
        let kind = error_type(status);
        let mut member = kind.to_owned();
        if let Some(first) = member.get_mut(..1) {
            first.make_ascii_lowercase();
        }
        let payload = serde_json::json!({ "message": message }).to_string();
        eventstream::encode(
            &[
                (":message-type", "exception"),
                (":exception-type", &member),
                (":content-type", "application/json"),
            ],
            payload.as_bytes(),
        )
    }

    /// Converse: `inferenceConfig.maxTokens`; InvokeModel (Anthropic): `max_tokens`.
    fn max_output_tokens(&self, req: &ParsedRequest) -> Option<u64> {
        req.params
            .get("inferenceConfig")
            .and_then(|c| c.get("maxTokens"))
            .and_then(Value::as_u64)
            .or_else(|| req.params.get("max_tokens").and_then(Value::as_u64))
    }

    /// `false`: Bedrock reports cache reads apart from `inputTokens`. The API reference
    /// (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html)
    /// defines `inputTokens`, `cacheReadInputTokens` and `cacheWriteInputTokens` as
    /// separate counts without saying outright that one includes another; clients that
    /// reconcile them with the bill treat `inputTokens` as the uncached part (e.g.
    /// anomalyco/opencode#38427: "AWS reports inputTokens separately from cache reads
    /// and writes"), which is Anthropic's own convention, and InvokeModel answers are
    /// Anthropic's. Revisit if AWS documents otherwise.
    fn cached_within_input(&self) -> bool {
        false
    }

    /// Inference profiles cost what their foundation model does: `us.anthropic.…`,
    /// `global.anthropic.…` and profile ARNs (`arn:…:inference-profile/us.anthropic.…`)
    /// are priced as `anthropic.…`. (AWS charges a 10% premium on regional profiles of
    /// recent Claude models; that is not modelled.)
    fn price_model<'m>(&self, model: &'m str) -> &'m str {
        let model = match model.strip_prefix("arn:") {
            Some(arn) => arn.rsplit_once('/').map_or(model, |(_, id)| id),
            None => model,
        };
        match model.split_once('.') {
            Some((prefix, rest))
                if rest.contains('.')
                    && PROFILE_PREFIXES
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(prefix)) =>
            {
                rest
            }
            _ => model,
        }
    }
}

fn is_converse(ep: &Endpoint) -> bool {
    ep.name.starts_with("converse")
}

/// The AWS error code botocore maps to a modelled exception for `status`.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// An AWS error body: `{"message": …}` (or `Message`), with `__type` when sent.
fn aws_error(v: &Value) -> Option<String> {
    let message = str_field(v, "message").or_else(|| str_field(v, "Message"))?;
    Some(match str_field(v, "__type") {
        // `com.amazon.coral#ThrottlingException` or `ThrottlingException:http://…`.
        Some(t) => {
            let t = t.split(':').next().unwrap_or(t);
            let t = t.rsplit('#').next().unwrap_or(t);
            format!("{t}: {message}")
        }
        None => message.to_owned(),
    })
}

// === Converse ===

fn converse_request(body: &[u8]) -> ParsedRequest {
    let mut map = match request_object(body) {
        Ok(map) => map,
        Err(failed) => return failed,
    };
    let mut messages = Vec::new();
    let mut error = None;
    match map.remove("system") {
        Some(Value::Array(blocks)) => {
            let mut content = String::new();
            for b in &blocks {
                render_block(b, &mut content);
            }
            messages.push(Message {
                role: "system".into(),
                content,
            });
        }
        Some(other) => {
            error = Some("`system` is not an array of blocks".to_owned());
            map.insert("system".into(), other);
        }
        None => {}
    }
    match map.remove("messages") {
        Some(Value::Array(items)) => {
            for mut m in items {
                let mut content = String::new();
                match take_field(&mut m, "content") {
                    Some(Value::Array(blocks)) => {
                        for b in &blocks {
                            render_block(b, &mut content);
                        }
                    }
                    Some(Value::String(s)) => content = s,
                    _ => {}
                }
                messages.push(Message {
                    role: str_field(&m, "role").unwrap_or("unknown").to_owned(),
                    content,
                });
            }
        }
        Some(other) => {
            error = join_errors([error, Some("`messages` is not an array".to_owned())]);
            map.insert("messages".into(), other);
        }
        None => {}
    }
    ParsedRequest {
        model: None,
        stream: false,
        params: map,
        messages,
        error,
    }
}

/// Renders one Converse content block (a union: exactly one key is set) into `out`.
fn render_block(b: &Value, out: &mut String) {
    let Some(block) = b.as_object() else {
        if let Some(s) = b.as_str() {
            push_line(out, s);
        }
        return;
    };
    for (key, v) in block {
        match key.as_str() {
            "text" => push_line(out, v.as_str().unwrap_or_default()),
            "toolUse" => push_line(
                out,
                &tool_call_summary(
                    str_field(v, "name").unwrap_or("?"),
                    &arguments_text(v.get("input")),
                ),
            ),
            "toolResult" => {
                if str_field(v, "status") == Some("error") {
                    push_line(out, "[tool_error]");
                }
                for part in v
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match part.as_object().and_then(|p| p.iter().next()) {
                        Some((k, Value::String(s))) if k == "text" => push_line(out, s),
                        Some((k, json)) if k == "json" => push_line(out, &json.to_string()),
                        Some((k, _)) => push_line(out, &format!("[{k}]")),
                        None => {}
                    }
                }
            }
            "guardContent" => match v.pointer("/text/text").and_then(Value::as_str) {
                Some(t) => push_line(out, t),
                None => push_line(out, "[guardContent]"),
            },
            // Cache markers and prior reasoning are not conversation text.
            "cachePoint" | "reasoningContent" => {}
            other => push_line(out, &format!("[{other}]")),
        }
    }
}

/// Converse usage: cache writes are input, cache reads stay apart (see the module docs).
fn converse_usage(u: &Value) -> Usage {
    let input = count(u.get("inputTokens"));
    let write = count(u.get("cacheWriteInputTokens"));
    Usage {
        input_tokens: match (input, write) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        },
        output_tokens: count(u.get("outputTokens")),
        cached_tokens: count(u.get("cacheReadInputTokens")),
        reasoning_tokens: None,
        estimated: false,
    }
}

fn converse_response(body: &[u8]) -> ParsedResponse {
    let v = match response_json(body) {
        Ok(v) => v,
        Err(failed) => return failed,
    };
    let mut r = ParsedResponse {
        finish_reason: str_field(&v, "stopReason").map(str::to_owned),
        error: aws_error(&v),
        ..ParsedResponse::default()
    };
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array);
    for b in blocks.into_iter().flatten() {
        if let Some(text) = str_field(b, "text") {
            push_line(&mut r.output, text);
        } else if let Some(t) = b.get("toolUse") {
            r.tool_calls.push(tool_call(
                str_field(t, "toolUseId"),
                str_field(t, "name"),
                arguments_text(t.get("input")),
            ));
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        r.usage = converse_usage(u);
    }
    r
}

// === InvokeModel ===

fn invoke_request(ep: &Endpoint, body: &[u8]) -> ParsedRequest {
    let map = match request_object(body) {
        Ok(map) => map,
        Err(failed) => return failed,
    };
    if map.contains_key("anthropic_version") || map.contains_key("messages") {
        return ANTHROPIC.parse_request(ep, body);
    }
    // Another model's native body: keep it all as parameters, its prompt as the message.
    let prompt = ["prompt", "inputText"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))
        .map(|p| Message {
            role: "user".into(),
            content: p.to_owned(),
        });
    let mut params = map;
    for k in ["prompt", "inputText"] {
        params.remove(k);
    }
    ParsedRequest {
        params,
        messages: prompt.into_iter().collect(),
        ..ParsedRequest::default()
    }
}

// === Streams ===

/// How the streamed body turned out to be framed.
enum Framing {
    /// Nothing seen yet.
    Sniff,
    /// Event-stream messages.
    Events(Decoder),
    /// A plain JSON body (an error answered on a streaming endpoint), bounded.
    Body(Vec<u8>, bool),
}

/// What the events mean, per operation.
enum Events {
    Converse(ConverseStream),
    Invoke(Box<InvokeStream>),
}

/// The [`StreamParser`] of both Bedrock streaming endpoints.
struct BedrockStream {
    ep: Endpoint,
    framing: Framing,
    events: Events,
    problems: Problems,
}

impl StreamParser for BedrockStream {
    fn feed(&mut self, chunk: &[u8]) {
        let BedrockStream {
            framing,
            events,
            problems,
            ..
        } = self;
        if let Framing::Sniff = framing {
            let Some(&first) = chunk.first() else { return };
            // A message starts with its big-endian length (< 16 MiB): a zero byte.
            *framing = if first == b'{' {
                Framing::Body(Vec::new(), false)
            } else {
                Framing::Events(Decoder::new())
            };
        }
        match framing {
            Framing::Sniff => {}
            Framing::Events(dec) => dec.feed(chunk, &mut |m| on_message(events, problems, m)),
            Framing::Body(buf, over) => {
                let room = MAX_EVENT.saturating_sub(buf.len());
                *over |= chunk.len() > room;
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        match std::mem::replace(&mut self.framing, Framing::Sniff) {
            Framing::Sniff => ParsedResponse {
                error: Some("the stream carried no data".to_owned()),
                ..ParsedResponse::default()
            },
            Framing::Body(buf, over) => {
                let mut r = BEDROCK.parse_response(&self.ep, &buf);
                if over {
                    r.error = join_errors([
                        Some(format!(
                            "response body over {MAX_EVENT} bytes; only its start was parsed"
                        )),
                        r.error.take(),
                    ]);
                }
                r
            }
            Framing::Events(mut dec) => {
                let cut = dec.finish();
                let mut r = match &mut self.events {
                    Events::Converse(s) => s.finish(),
                    Events::Invoke(s) => s.finish(),
                };
                r.events = dec.messages;
                let cut_note =
                    (cut && r.error.is_none()).then(|| "the stream ended mid-message".to_owned());
                r.error = join_errors([
                    r.error.take(),
                    cut_note,
                    dec.problems.render(),
                    self.problems.render(),
                ]);
                r
            }
        }
    }
}

/// Dispatches one event-stream message.
fn on_message(events: &mut Events, problems: &mut Problems, m: eventstream::Message) {
    let payload: Option<Value> = if m.payload.is_empty() {
        None
    } else {
        match serde_json::from_slice(&m.payload) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("an event-stream payload is not valid JSON: {e}"));
                None
            }
        }
    };
    let errors = match events {
        Events::Converse(s) => &mut s.errors,
        Events::Invoke(s) => &mut s.errors,
    };
    match m.header(":message-type").unwrap_or("event") {
        "exception" => {
            let kind = m.header(":exception-type").unwrap_or("exception");
            let text = payload
                .as_ref()
                .and_then(|v| str_field(v, "message").or_else(|| str_field(v, "Message")))
                .map_or_else(|| kind.to_owned(), |msg| format!("{kind}: {msg}"));
            errors.push(text);
        }
        "error" => {
            let code = m.header(":error-code").unwrap_or("error");
            let text = m.header(":error-message").unwrap_or_default();
            errors.push(format!("{code}: {text}"));
        }
        _ => {
            let Some(v) = payload else { return };
            let event = m.header(":event-type").unwrap_or_default();
            match events {
                Events::Converse(s) => s.on_event(event, &v),
                Events::Invoke(s) => s.on_event(event, &v, problems),
            }
        }
    }
}

/// `converse-stream` events.
#[derive(Debug, Default)]
struct ConverseStream {
    text: String,
    /// The content block the last text came from (blocks are joined with `\n`).
    text_block: Option<u64>,
    cut: bool,
    calls: Vec<PendingCall>,
    stop_reason: Option<String>,
    usage: Usage,
    errors: Vec<String>,
    stopped: bool,
}

impl ConverseStream {
    fn on_event(&mut self, event: &str, v: &Value) {
        let index = count(v.get("contentBlockIndex")).unwrap_or(0);
        match event {
            "contentBlockStart" => {
                if let Some(t) = v.pointer("/start/toolUse") {
                    let call = pending(&mut self.calls, index);
                    call.id = str_field(t, "toolUseId").map(str::to_owned);
                    call.name = str_field(t, "name").map(str::to_owned);
                }
            }
            "contentBlockDelta" => {
                let Some(delta) = v.get("delta") else { return };
                if let Some(text) = str_field(delta, "text") {
                    if self.text_block.is_some_and(|b| b != index) && !self.text.is_empty() {
                        self.push_text("\n");
                    }
                    self.text_block = Some(index);
                    self.push_text(text);
                } else if let Some(part) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    if !push_capped(&mut pending(&mut self.calls, index).arguments, part) {
                        self.cut = true;
                    }
                }
            }
            "messageStop" => {
                self.stopped = true;
                if let Some(reason) = str_field(v, "stopReason") {
                    self.stop_reason = Some(reason.to_owned());
                }
            }
            "metadata" => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = converse_usage(u);
                }
            }
            // `messageStart` (the role) and `contentBlockStop` carry nothing recorded.
            _ => {}
        }
    }

    fn push_text(&mut self, s: &str) {
        if !push_capped(&mut self.text, s) {
            self.cut = true;
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let mut errors = std::mem::take(&mut self.errors);
        if !self.stopped && errors.is_empty() {
            errors.push("the stream ended before `messageStop`".to_owned());
        }
        if self.cut {
            errors.push(format!(
                "output or tool input over {MAX_TEXT} bytes; the record keeps its start"
            ));
        }
        ParsedResponse {
            model: None,
            id: None,
            output: std::mem::take(&mut self.text),
            tool_calls: self.calls.drain(..).map(PendingCall::into_value).collect(),
            finish_reason: self.stop_reason.take(),
            usage: std::mem::take(&mut self.usage),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            events: 0,
        }
    }
}

/// `invoke-with-response-stream` events: `chunk`s carrying the model's own events.
#[derive(Default)]
struct InvokeStream {
    anthropic: MessagesStream,
    /// Chunks that were Anthropic stream events.
    anthropic_events: u64,
    /// `amazon-bedrock-invocationMetrics` of the last chunk that carried them.
    metrics: Option<Value>,
    errors: Vec<String>,
}

impl InvokeStream {
    fn on_event(&mut self, event: &str, v: &Value, problems: &mut Problems) {
        if event != "chunk" {
            return;
        }
        let Some(b64) = str_field(v, "bytes") else {
            problems.push("a `chunk` event has no `bytes`");
            return;
        };
        let inner = match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(format!("a `chunk` event's `bytes` is not base64: {e}"));
                return;
            }
        };
        let inner: Value = match serde_json::from_slice(&inner) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("a `chunk` event's bytes are not JSON: {e}"));
                return;
            }
        };
        if let Some(m) = inner.get("amazon-bedrock-invocationMetrics") {
            self.metrics = Some(m.clone());
        }
        if str_field(&inner, "type").is_some() {
            self.anthropic_events += 1;
            self.anthropic.on_json("message", &inner);
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let mut r = if self.anthropic_events > 0 {
            self.anthropic.finish()
        } else {
            ParsedResponse {
                error: (self.errors.is_empty() && self.metrics.is_none())
                    .then(|| "no `chunk` event carried an Anthropic stream event".to_owned()),
                ..ParsedResponse::default()
            }
        };
        if let Some(m) = &self.metrics {
            let u = &mut r.usage;
            if u.input_tokens.is_none() {
                let input = count(m.get("inputTokenCount"));
                let write = count(m.get("cacheWriteInputTokenCount"));
                u.input_tokens = input.map(|i| i.saturating_add(write.unwrap_or(0)));
            }
            u.output_tokens = u.output_tokens.or(count(m.get("outputTokenCount")));
            u.cached_tokens = u.cached_tokens.or(count(m.get("cacheReadInputTokenCount")));
        }
        // Exceptions first: they say why the model's own stream stopped short.
        let errors = std::mem::take(&mut self.errors);
        if !errors.is_empty() {
            r.error = join_errors([Some(errors.join("; ")), r.error.take()]);
        }
        r
    }
}
