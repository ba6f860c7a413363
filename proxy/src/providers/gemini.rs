//! The Gemini API: `POST …/models/{model}:generateContent` and
//! `:streamGenerateContent`, plain and streamed.
//!
//! The model comes from the path (`/v1beta/models/gemini-2.0-flash:generateContent`
//! names `gemini-2.0-flash`); any path whose last segments are
//! `models/{model}:{method}` is understood, so Vertex AI publisher paths work when an
//! operator names this adapter for them. `streamGenerateContent` streams either as
//! SSE (`?alt=sse`) or, by default, as one JSON array sent in pieces: the stream
//! parser detects which from the first byte. Roles `model`/`function` are normalised
//! to `assistant`/`tool`; `systemInstruction` becomes the `system` message and the
//! fields of `generationConfig` are lifted into `params`.
//!
//! Usage: `input_tokens` is `promptTokenCount` (which includes
//! `cachedContentTokenCount`) plus `toolUsePromptTokenCount`; `output_tokens` is
//! `candidatesTokenCount + thoughtsTokenCount`, so that reasoning is counted as
//! output as OpenAI counts it.
//!
//! Not here: `countTokens`, `embedContent`, the Live (WebSocket) API, file upload and
//! cached-content management are not parsed.

use serde_json::{Map, Value};

use super::{
    arguments_text, count, path_only, provider_error, push_line, request_object, response_json,
    str_field, take_string, tool_call, tool_call_summary, Adapter, Choices, Endpoint, ErrorReply,
    Framed, LaneEnd, Message, ParsedRequest, ParsedResponse, StreamHandler, StreamParser, Usage,
    MAX_CHOICES,
};

/// The Gemini adapter.
#[derive(Debug)]
pub(crate) struct Gemini;

pub(crate) static GEMINI: Gemini = Gemini;

/// Fields accepted in both camelCase (the documented JSON form) and snake_case (the
/// proto form, which the REST API also accepts).
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

impl Adapter for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn error_reply(&self, status: u16, message: &str) -> ErrorReply {
        let kind = match status {
            400 | 413 | 421 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            408 => "DEADLINE_EXCEEDED",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        ErrorReply::json(
            status,
            serde_json::json!({"error": {"code": status, "message": message, "status": kind}}),
        )
    }

    fn max_output_tokens(&self, req: &ParsedRequest) -> Option<u64> {
        // `generationConfig` is lifted into the parameters by `parse_request`.
        req.params.get("maxOutputTokens").and_then(Value::as_u64)
    }

    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let path = path_only(path);
        let (parent, last) = path.rsplit_once('/')?;
        let (model, action) = match last.rsplit_once(':') {
            Some(split) => split,
            None => {
                // `:` percent-encoded by some clients.
                let at = last.to_ascii_lowercase().rfind("%3a")?;
                (&last[..at], &last[at + 3..])
            }
        };
        let name = match action {
            "generateContent" => "generateContent",
            "streamGenerateContent" => "streamGenerateContent",
            _ => return None,
        };
        let collection = parent.rsplit('/').next().unwrap_or_default();
        let model_from_path = match collection {
            "models" if !model.is_empty() => Some(model.to_owned()),
            "tunedModels" if !model.is_empty() => Some(format!("tunedModels/{model}")),
            _ => None,
        };
        Some(Endpoint {
            name,
            streaming_hint: name == "streamGenerateContent",
            model_from_path,
        })
    }

    fn parse_request(&self, ep: &Endpoint, body: &[u8]) -> ParsedRequest {
        let mut map = match request_object(body) {
            Ok(map) => map,
            Err(failed) => return failed,
        };
        let model = take_string(&mut map, "model")
            .map(|m| m.strip_prefix("models/").map(str::to_owned).unwrap_or(m));
        let mut messages = Vec::new();
        let mut error = None;
        let system = map
            .remove("systemInstruction")
            .or_else(|| map.remove("system_instruction"));
        if let Some(system) = system {
            let mut content = String::new();
            match &system {
                Value::String(s) => content.push_str(s),
                other => render_parts(other.get("parts"), &mut content),
            }
            messages.push(Message {
                role: "system".into(),
                content,
            });
        }
        match map.remove("contents") {
            Some(Value::Array(items)) => messages.extend(items.iter().map(content_message)),
            Some(item @ Value::Object(_)) => messages.push(content_message(&item)),
            Some(Value::String(s)) => messages.push(Message {
                role: "user".into(),
                content: s,
            }),
            Some(other) => {
                error = Some("`contents` is not an array".to_owned());
                map.insert("contents".into(), other);
            }
            None => {}
        }
        let config = map
            .remove("generationConfig")
            .or_else(|| map.remove("generation_config"));
        match config {
            Some(Value::Object(cfg)) => lift(cfg, &mut map),
            Some(other) => {
                map.insert("generationConfig".into(), other);
            }
            None => {}
        }
        ParsedRequest {
            model,
            stream: ep.streaming_hint,
            params: map,
            messages,
            error,
        }
    }

    fn parse_response(&self, _ep: &Endpoint, body: &[u8]) -> ParsedResponse {
        parse_response_body(body)
    }

    fn stream_parser(&self, _ep: &Endpoint) -> Box<dyn StreamParser> {
        Framed::boxed(GeminiStream::default())
    }

    /// `candidates[i].content.parts[j].text`; the lane is the candidate's `index`.
    fn stream_deltas<'v>(
        &self,
        _ep: &Endpoint,
        _event: &str,
        data: &'v mut Value,
    ) -> Vec<(u32, &'v mut String)> {
        let mut out = Vec::new();
        let Some(Value::Array(cands)) = data.get_mut("candidates") else {
            return out;
        };
        for (pos, c) in cands.iter_mut().enumerate() {
            let lane = count(c.get("index")).map_or(pos as u64, |i| i).min(1 << 20) as u32;
            let Some(Value::Array(parts)) = c.pointer_mut("/content/parts") else {
                continue;
            };
            for part in parts {
                if let Some(Value::String(t)) = part.get_mut("text") {
                    out.push((lane, t));
                }
            }
        }
        out
    }

    /// A `finishReason` on any candidate closes the text.
    fn stream_lane_end(&self, _ep: &Endpoint, _event: &str, data: &Value) -> LaneEnd {
        let finished = data
            .get("candidates")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| str_field(c, "finishReason").is_some()));
        if finished {
            LaneEnd::All
        } else {
            LaneEnd::None
        }
    }
}

/// Moves the generation config fields into `params` (a top-level field of the same
/// name, which Gemini does not have, would win).
fn lift(cfg: Map<String, Value>, params: &mut Map<String, Value>) {
    for (k, v) in cfg {
        params.entry(k).or_insert(v);
    }
}

fn content_message(c: &Value) -> Message {
    let parts = c.get("parts");
    let role = match str_field(c, "role") {
        Some("model") => "assistant",
        Some("function") => "tool",
        Some(r) if r != "user" => r,
        // A user turn made only of function responses is a tool turn.
        _ if parts.and_then(Value::as_array).is_some_and(|p| {
            !p.is_empty()
                && p.iter()
                    .all(|p| field(p, "functionResponse", "function_response").is_some())
        }) =>
        {
            "tool"
        }
        _ => "user",
    };
    let mut content = String::new();
    render_parts(parts, &mut content);
    Message {
        role: role.to_owned(),
        content,
    }
}

/// Renders request parts: text joined with `\n`, other parts summarised.
fn render_parts(parts: Option<&Value>, out: &mut String) {
    let parts = match parts {
        Some(Value::Array(parts)) => parts.as_slice(),
        Some(single @ Value::Object(_)) => std::slice::from_ref(single),
        _ => return,
    };
    for p in parts {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = str_field(p, "text") {
            push_line(out, t);
        } else if let Some(d) =
            field(p, "inlineData", "inline_data").or_else(|| field(p, "fileData", "file_data"))
        {
            let mime = field(d, "mimeType", "mime_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            push_line(out, media_summary(mime));
        } else if let Some(f) = field(p, "functionCall", "function_call") {
            let name = str_field(f, "name").unwrap_or("?");
            push_line(
                out,
                &tool_call_summary(name, &arguments_text(f.get("args"))),
            );
        } else if let Some(f) = field(p, "functionResponse", "function_response") {
            push_line(out, &arguments_text(f.get("response")));
        } else if let Some(code) = field(p, "executableCode", "executable_code") {
            push_line(out, str_field(code, "code").unwrap_or("[executable_code]"));
        } else if let Some(res) = field(p, "codeExecutionResult", "code_execution_result") {
            push_line(
                out,
                str_field(res, "output").unwrap_or("[code_execution_result]"),
            );
        }
    }
}

fn media_summary(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or_default() {
        "image" => "[image]",
        "audio" => "[audio]",
        "video" => "[video]",
        _ => "[file]",
    }
}

/// Gemini `usageMetadata`, as documented in the module.
fn usage(u: &Value) -> Usage {
    let prompt = count(u.get("promptTokenCount"));
    let tool_prompt = count(u.get("toolUsePromptTokenCount"));
    let candidates = count(u.get("candidatesTokenCount"));
    let thoughts = count(u.get("thoughtsTokenCount"));
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    Usage {
        input_tokens: sum(prompt, tool_prompt),
        output_tokens: sum(candidates, thoughts),
        cached_tokens: count(u.get("cachedContentTokenCount")),
        reasoning_tokens: thoughts,
        estimated: false,
    }
}

/// Parses a plain body: one response object, or a whole streamed JSON array (as an
/// error answer to `streamGenerateContent` is sent).
pub(super) fn parse_response_body(body: &[u8]) -> ParsedResponse {
    let v = match response_json(body) {
        Ok(v) => v,
        Err(failed) => return failed,
    };
    let mut acc = GeminiStream::default();
    match &v {
        Value::Array(chunks) => {
            for c in chunks {
                acc.on_json("message", c);
            }
        }
        other => acc.on_json("message", other),
    }
    acc.complete_body = true;
    acc.finish()
}

/// Accumulates `GenerateContentResponse` chunks (also used for a single plain body).
#[derive(Debug, Default)]
struct GeminiStream {
    model: Option<String>,
    id: Option<String>,
    text: Choices,
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    usage: Usage,
    errors: Vec<String>,
    /// Parsing a whole body: no end-of-stream check.
    complete_body: bool,
}

impl StreamHandler for GeminiStream {
    fn on_json(&mut self, _event: &str, v: &Value) {
        if let Some(e) = provider_error(v) {
            self.errors.push(e);
        }
        if let Some(m) = str_field(v, "modelVersion") {
            self.model = Some(m.strip_prefix("models/").unwrap_or(m).to_owned());
        }
        if self.id.is_none() {
            self.id = str_field(v, "responseId").map(str::to_owned);
        }
        if let Some(Value::Array(candidates)) = v.get("candidates") {
            for (pos, c) in candidates.iter().enumerate() {
                let index = count(c.get("index")).map_or(pos, |i| i as usize);
                if index >= MAX_CHOICES {
                    continue;
                }
                if let Some(Value::Array(parts)) = c.pointer("/content/parts") {
                    for p in parts {
                        if p.get("thought").and_then(Value::as_bool) == Some(true) {
                            continue;
                        }
                        if let Some(t) = str_field(p, "text") {
                            self.text.push(index, t);
                        } else if let Some(f) = field(p, "functionCall", "function_call") {
                            self.tool_calls.push(tool_call(
                                str_field(f, "id"),
                                str_field(f, "name"),
                                arguments_text(f.get("args")),
                            ));
                        }
                    }
                }
                if let Some(reason) = str_field(c, "finishReason") {
                    if self.finish_reason.is_none() || index == 0 {
                        self.finish_reason = Some(reason.to_owned());
                    }
                }
            }
        }
        if self.finish_reason.is_none() {
            if let Some(block) = v
                .pointer("/promptFeedback/blockReason")
                .and_then(Value::as_str)
            {
                self.finish_reason = Some(block.to_owned());
            }
        }
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = usage(u);
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let mut errors = std::mem::take(&mut self.errors);
        if !self.complete_body && self.finish_reason.is_none() && errors.is_empty() {
            errors.push("the stream ended before a `finishReason`".to_owned());
        }
        errors.extend(self.text.cut_note());
        ParsedResponse {
            model: self.model.take(),
            id: self.id.take(),
            output: self.text.joined(),
            tool_calls: std::mem::take(&mut self.tool_calls),
            finish_reason: self.finish_reason.take(),
            usage: std::mem::take(&mut self.usage),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            events: 0,
        }
    }

    fn whole_body(&self, body: &[u8]) -> ParsedResponse {
        parse_response_body(body)
    }
}
