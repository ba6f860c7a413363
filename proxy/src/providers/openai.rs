//! The OpenAI wire format: `/chat/completions`, `/responses`, legacy
//! `/completions` and `/embeddings`, plain and streamed.
//!
//! One [`OpenAi`] type serves every provider that speaks this format; instances
//! differ only in their label and the path prefixes they accept (`/v1` for OpenAI,
//! `/openai/v1` for Groq, any prefix for
//! `openai_compatible`). Provider-specific extras are read where they matter to the
//! record (DeepSeek's `prompt_cache_hit_tokens`) and otherwise ignored.
//!
//! Not here: other OpenAI endpoints (images, audio, files, assistants, realtime
//! WebSockets) are not parsed; `endpoint` returns `None` for them.

use serde_json::Value;

use super::{
    arguments_text, count, owned_text, path_only, pending, provider_error, push_capped, push_line,
    request_object, response_json, str_field, take_bool, take_field, take_string, tool_call,
    tool_call_summary, Adapter, Choices, Endpoint, Framed, LaneEnd, Message, ParsedRequest,
    ParsedResponse, PendingCall, StreamHandler, StreamParser, Usage, MAX_CHOICES, MAX_TEXT,
};

/// Which request paths an OpenAI-format provider serves.
#[derive(Debug)]
pub(crate) enum Paths {
    /// `{prefix}/chat/completions` etc. for one of these prefixes.
    Prefixes(&'static [&'static str]),
    /// Any path ending in a known endpoint (self-hosted servers mount anywhere).
    Any,
}

/// An OpenAI-format provider.
#[derive(Debug)]
pub(crate) struct OpenAi {
    label: &'static str,
    paths: Paths,
}

impl OpenAi {
    /// The OpenAI format under another label, on any path ending in a known endpoint
    /// (for adapters that route paths themselves, like Azure's deployments).
    pub(crate) const fn any_path(label: &'static str) -> OpenAi {
        OpenAi {
            label,
            paths: Paths::Any,
        }
    }
}

pub(crate) static OPENAI: OpenAi = OpenAi {
    label: "openai",
    paths: Paths::Prefixes(&["/v1"]),
};
pub(crate) static MISTRAL: OpenAi = OpenAi {
    label: "mistral",
    paths: Paths::Prefixes(&["/v1"]),
};
pub(crate) static GROQ: OpenAi = OpenAi {
    label: "groq",
    paths: Paths::Prefixes(&["/openai/v1"]),
};
pub(crate) static DEEPSEEK: OpenAi = OpenAi {
    label: "deepseek",
    paths: Paths::Prefixes(&["", "/v1", "/beta"]),
};
pub(crate) static XAI: OpenAi = OpenAi {
    label: "xai",
    paths: Paths::Prefixes(&["/v1"]),
};
pub(crate) static OPENROUTER: OpenAi = OpenAi {
    label: "openrouter",
    paths: Paths::Prefixes(&["/api/v1"]),
};
pub(crate) static TOGETHER: OpenAi = OpenAi {
    label: "together",
    paths: Paths::Prefixes(&["/v1"]),
};
pub(crate) static FIREWORKS: OpenAi = OpenAi {
    label: "fireworks",
    paths: Paths::Prefixes(&["/inference/v1"]),
};
pub(crate) static OPENAI_COMPATIBLE: OpenAi = OpenAi {
    label: "openai_compatible",
    paths: Paths::Any,
};

/// Endpoint suffixes; `/chat/completions` must be tried before `/completions`.
const ENDPOINTS: &[(&str, &str)] = &[
    ("/chat/completions", "chat.completions"),
    ("/responses", "responses"),
    ("/completions", "completions"),
    ("/embeddings", "embeddings"),
];

pub(crate) fn exact_endpoint(rest: &str) -> Option<&'static str> {
    ENDPOINTS
        .iter()
        .find_map(|&(suffix, name)| (rest == suffix).then_some(name))
}

fn suffix_endpoint(path: &str) -> Option<&'static str> {
    ENDPOINTS
        .iter()
        .find_map(|&(suffix, name)| path.ends_with(suffix).then_some(name))
}

pub(crate) fn plain(name: &'static str) -> Endpoint {
    Endpoint {
        name,
        streaming_hint: false,
        model_from_path: None,
    }
}

impl Adapter for OpenAi {
    fn name(&self) -> &'static str {
        self.label
    }

    fn price_fallback(&self) -> Option<&'static str> {
        // A model this provider serves without a price of its own costs what OpenAI's
        // model of the same name does (OpenAI-compatible gateways, hosted copies).
        (self.label != "openai").then_some("openai")
    }

    fn endpoint(&self, method: &str, path: &str) -> Option<Endpoint> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let path = path_only(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        match &self.paths {
            Paths::Prefixes(prefixes) => prefixes.iter().find_map(|p| {
                let rest = path.strip_prefix(p)?;
                exact_endpoint(rest).map(plain)
            }),
            Paths::Any => suffix_endpoint(path).map(plain),
        }
    }

    fn parse_request(&self, ep: &Endpoint, body: &[u8]) -> ParsedRequest {
        let mut map = match request_object(body) {
            Ok(map) => map,
            Err(failed) => return failed,
        };
        let model = take_string(&mut map, "model");
        let stream = take_bool(&mut map, "stream");
        let mut messages = Vec::new();
        let mut error = None;
        match ep.name {
            "responses" => {
                if let Some(s) = take_string(&mut map, "instructions") {
                    messages.push(Message {
                        role: "system".into(),
                        content: s,
                    });
                }
                if let Some(input) = map.remove("input") {
                    responses_input(input, &mut messages);
                }
            }
            "completions" => {
                if let Some(prompt) = map.remove("prompt") {
                    string_inputs(prompt, &mut messages);
                }
            }
            "embeddings" => {
                if let Some(input) = map.remove("input") {
                    string_inputs(input, &mut messages);
                }
            }
            _ => match map.remove("messages") {
                Some(Value::Array(items)) => {
                    messages.extend(items.into_iter().map(chat_message));
                }
                Some(other) => {
                    error = Some("`messages` is not an array".to_owned());
                    map.insert("messages".into(), other);
                }
                None => {}
            },
        }
        ParsedRequest {
            model,
            stream,
            params: map,
            messages,
            error,
        }
    }

    fn parse_response(&self, ep: &Endpoint, body: &[u8]) -> ParsedResponse {
        parse_response_body(ep.name, body)
    }

    fn stream_parser(&self, ep: &Endpoint) -> Box<dyn StreamParser> {
        if ep.name == "responses" {
            Framed::boxed(ResponsesStream::default())
        } else {
            Framed::boxed(ChatStream {
                endpoint: ep.name,
                ..ChatStream::default()
            })
        }
    }

    /// Chat and legacy completions: `choices[i].delta.content`, `choices[i].text` and
    /// each streamed tool call's `function.arguments` (lane = choice × 256 + slot).
    /// Responses: the `delta` of `response.output_text.delta` and
    /// `response.function_call_arguments.delta` (lane = output index × 256 + content index).
    fn stream_deltas<'v>(
        &self,
        ep: &Endpoint,
        _event: &str,
        data: &'v mut Value,
    ) -> Vec<(u32, &'v mut String)> {
        let mut out = Vec::new();
        if ep.name == "responses" {
            let kind = str_field(data, "type").unwrap_or("");
            if !matches!(
                kind,
                "response.output_text.delta" | "response.function_call_arguments.delta"
            ) {
                return out;
            }
            let lane = |k: &str| count(data.get(k)).unwrap_or(0).min(255) as u32;
            let id = lane("output_index") * 256 + lane("content_index");
            if let Some(Value::String(t)) = data.get_mut("delta") {
                out.push((id, t));
            }
            return out;
        }
        let Some(Value::Array(choices)) = data.get_mut("choices") else {
            return out;
        };
        for (pos, c) in choices.iter_mut().enumerate() {
            let choice = count(c.get("index")).map_or(pos as u64, |i| i).min(1 << 20) as u32;
            let Value::Object(c) = c else { continue };
            if !c.contains_key("delta") {
                if let Some(Value::String(t)) = c.get_mut("text") {
                    out.push((choice * 256, t));
                }
            } else if let Some(Value::Object(delta)) = c.get_mut("delta") {
                let mut calls = None;
                for (k, v) in delta.iter_mut() {
                    match (k.as_str(), v) {
                        ("content", Value::String(t)) => out.push((choice * 256, t)),
                        ("tool_calls", Value::Array(a)) => calls = Some(a),
                        _ => {}
                    }
                }
                for (ti, call) in calls.into_iter().flatten().enumerate() {
                    let slot = count(call.get("index")).map_or(ti as u64, |i| i).min(254) as u32;
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        out.push((choice * 256 + 1 + slot, args));
                    }
                }
            }
        }
        out
    }

    /// A `finish_reason` on any choice, or the end of an output item, closes the text.
    fn stream_lane_end(&self, ep: &Endpoint, _event: &str, data: &Value) -> LaneEnd {
        if ep.name == "responses" {
            let kind = str_field(data, "type").unwrap_or("");
            return if kind.ends_with(".done")
                || matches!(
                    kind,
                    "response.completed" | "response.incomplete" | "response.failed"
                ) {
                LaneEnd::All
            } else {
                LaneEnd::None
            };
        }
        let finished = data
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| str_field(c, "finish_reason").is_some()));
        if finished {
            LaneEnd::All
        } else {
            LaneEnd::None
        }
    }
}

// ---------------------------------------------------------------------------------
// Requests.

/// Renders OpenAI message content (a string, or an array of typed parts) into `out`.
fn render_content(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => push_line(out, s),
        Value::Array(parts) => {
            for p in parts {
                render_part(p, out);
            }
        }
        Value::Null => {}
        other => push_line(out, &other.to_string()),
    }
}

fn render_part(p: &Value, out: &mut String) {
    let Some(kind) = str_field(p, "type") else {
        if let Value::String(s) = p {
            push_line(out, s);
        }
        return;
    };
    match kind {
        "text" | "input_text" | "output_text" => {
            push_line(out, str_field(p, "text").unwrap_or_default())
        }
        "refusal" => push_line(out, str_field(p, "refusal").unwrap_or_default()),
        "image_url" | "input_image" | "image" => push_line(out, "[image]"),
        "input_audio" | "audio" => push_line(out, "[audio]"),
        "file" | "input_file" => push_line(out, "[file]"),
        other => push_line(out, &format!("[{other}]")),
    }
}

fn chat_message(mut m: Value) -> Message {
    let role = str_field(&m, "role").unwrap_or("unknown").to_owned();
    let mut content = owned_text(take_field(&mut m, "content"), render_content);
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for c in calls {
            let f = c.get("function").unwrap_or(c);
            let name = str_field(f, "name").unwrap_or("?");
            push_line(
                &mut content,
                &tool_call_summary(name, &arguments_text(f.get("arguments"))),
            );
        }
    }
    if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
        let name = str_field(f, "name").unwrap_or("?");
        push_line(
            &mut content,
            &tool_call_summary(name, &arguments_text(f.get("arguments"))),
        );
    }
    Message { role, content }
}

/// A prompt or embedding input: a string, a list of strings, or token arrays.
fn string_inputs(v: Value, out: &mut Vec<Message>) {
    let user = |content: String| Message {
        role: "user".into(),
        content,
    };
    match v {
        Value::String(s) => out.push(user(s)),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            out.push(user("[tokens]".into()))
        }
        Value::Array(items) => {
            for i in items {
                out.push(user(match i {
                    Value::String(s) => s,
                    Value::Array(_) => "[tokens]".into(),
                    other => other.to_string(),
                }));
            }
        }
        Value::Null => {}
        other => out.push(user(other.to_string())),
    }
}

/// The Responses API `input`: a string or a list of items.
fn responses_input(v: Value, out: &mut Vec<Message>) {
    let items = match v {
        Value::Array(items) => items,
        Value::Null => return,
        Value::String(s) => {
            out.push(Message {
                role: "user".into(),
                content: s,
            });
            return;
        }
        other => {
            out.push(Message {
                role: "user".into(),
                content: other.to_string(),
            });
            return;
        }
    };
    for mut item in items {
        let message = match str_field(&item, "type") {
            // Opaque reasoning items and references carry no readable content.
            Some("reasoning") | Some("item_reference") => continue,
            None | Some("message") if item.get("role").is_some() || item.is_string() => {
                let role = str_field(&item, "role").unwrap_or("user").to_owned();
                let content = match item {
                    Value::String(s) => s,
                    mut item => owned_text(take_field(&mut item, "content"), render_content),
                };
                Message { role, content }
            }
            Some(k) if k.ends_with("_output") || item.get("output").is_some() => Message {
                role: "tool".into(),
                content: owned_text(take_field(&mut item, "output"), render_content),
            },
            kind => {
                let content = match str_field(&item, "name") {
                    Some(name) => {
                        let args = item.get("arguments").or_else(|| item.get("input"));
                        tool_call_summary(name, &arguments_text(args))
                    }
                    None => format!("[{}]", kind.unwrap_or("item")),
                };
                Message {
                    role: "assistant".into(),
                    content,
                }
            }
        };
        out.push(message);
    }
}

// ---------------------------------------------------------------------------------
// Responses.

/// Parses a non-streamed body of endpoint `name` (also used for a "stream" that was a
/// plain JSON body).
pub(super) fn parse_response_body(name: &str, body: &[u8]) -> ParsedResponse {
    let v = match response_json(body) {
        Ok(v) => v,
        Err(failed) => return failed,
    };
    let mut r = ParsedResponse {
        model: str_field(&v, "model").map(str::to_owned),
        id: str_field(&v, "id").map(str::to_owned),
        error: provider_error(&v),
        ..ParsedResponse::default()
    };
    match name {
        "responses" => responses_body(&v, &mut r),
        _ => {
            chat_body(&v, &mut r);
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                r.usage = chat_usage(u);
            }
            if name == "embeddings" && r.usage.input_tokens.is_some() {
                r.usage.output_tokens.get_or_insert(0);
            }
        }
    }
    r
}

/// Chat-completions (and legacy completions) usage; DeepSeek reports cache hits
/// at the top level, some servers use Responses-style names.
fn chat_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u.get("prompt_tokens")).or_else(|| count(u.get("input_tokens"))),
        output_tokens: count(u.get("completion_tokens")).or_else(|| count(u.get("output_tokens"))),
        cached_tokens: count(u.pointer("/prompt_tokens_details/cached_tokens"))
            .or_else(|| count(u.get("prompt_cache_hit_tokens")))
            .or_else(|| count(u.pointer("/input_tokens_details/cached_tokens"))),
        reasoning_tokens: count(u.pointer("/completion_tokens_details/reasoning_tokens"))
            .or_else(|| count(u.pointer("/output_tokens_details/reasoning_tokens"))),
        estimated: false,
    }
}

/// Responses-API usage.
fn responses_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: count(u.get("input_tokens")),
        output_tokens: count(u.get("output_tokens")),
        cached_tokens: count(u.pointer("/input_tokens_details/cached_tokens")),
        reasoning_tokens: count(u.pointer("/output_tokens_details/reasoning_tokens")),
        estimated: false,
    }
}

fn chat_body(v: &Value, r: &mut ParsedResponse) {
    let Some(Value::Array(choices)) = v.get("choices") else {
        return;
    };
    let mut out = Choices::default();
    for (pos, c) in choices.iter().enumerate() {
        let index = count(c.get("index")).map_or(pos, |i| i as usize);
        if let Some(m) = c.get("message") {
            let mut text = String::new();
            if let Some(content) = m.get("content") {
                render_content(content, &mut text);
            }
            if text.is_empty() {
                if let Some(refusal) = str_field(m, "refusal") {
                    text.push_str(refusal);
                }
            }
            out.push(index, &text);
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                for call in calls {
                    let f = call.get("function").unwrap_or(call);
                    r.tool_calls.push(tool_call(
                        str_field(call, "id"),
                        str_field(f, "name"),
                        arguments_text(f.get("arguments")),
                    ));
                }
            }
        } else if let Some(text) = str_field(c, "text") {
            out.push(index, text);
        }
        if r.finish_reason.is_none() {
            r.finish_reason = str_field(c, "finish_reason").map(str::to_owned);
        }
    }
    r.output = out.joined();
}

fn responses_body(v: &Value, r: &mut ParsedResponse) {
    if let Some(Value::Array(items)) = v.get("output") {
        for item in items {
            match str_field(item, "type") {
                Some("message") => {
                    if let Some(Value::Array(parts)) = item.get("content") {
                        for p in parts {
                            match str_field(p, "type") {
                                Some("output_text") => {
                                    r.output.push_str(str_field(p, "text").unwrap_or_default())
                                }
                                Some("refusal") => r
                                    .output
                                    .push_str(str_field(p, "refusal").unwrap_or_default()),
                                _ => {}
                            }
                        }
                    }
                }
                Some("function_call") | Some("custom_tool_call") => {
                    let args = item.get("arguments").or_else(|| item.get("input"));
                    r.tool_calls.push(tool_call(
                        str_field(item, "call_id").or_else(|| str_field(item, "id")),
                        str_field(item, "name"),
                        arguments_text(args),
                    ));
                }
                _ => {}
            }
        }
    }
    r.finish_reason = match (
        str_field(v, "status"),
        v.pointer("/incomplete_details/reason")
            .and_then(Value::as_str),
    ) {
        (_, Some(reason)) => Some(reason.to_owned()),
        (status, None) => status.map(str::to_owned),
    };
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        r.usage = responses_usage(u);
    }
}

/// Streamed chat completions and legacy completions (`data: {chunk}` … `data: [DONE]`).
#[derive(Debug, Default)]
struct ChatStream {
    endpoint: &'static str,
    model: Option<String>,
    id: Option<String>,
    text: Choices,
    calls: Vec<PendingCall>,
    calls_cut: bool,
    finish_reason: Option<String>,
    usage: Usage,
    errors: Vec<String>,
    done: bool,
}

impl StreamHandler for ChatStream {
    fn on_json(&mut self, _event: &str, v: &Value) {
        if let Some(e) = provider_error(v) {
            self.errors.push(e);
        }
        if self.model.is_none() {
            // Azure's first chunk (prompt filter results only) has `"model": ""`.
            self.model = str_field(v, "model")
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
        }
        if self.id.is_none() {
            self.id = str_field(v, "id")
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
        }
        if let Some(Value::Array(choices)) = v.get("choices") {
            for (pos, c) in choices.iter().enumerate() {
                let index = count(c.get("index")).map_or(pos, |i| i as usize);
                if index >= MAX_CHOICES {
                    continue;
                }
                match c.get("delta") {
                    Some(delta) => self.on_delta(index, delta),
                    None => {
                        if let Some(t) = str_field(c, "text") {
                            self.text.push(index, t);
                        }
                    }
                }
                if let Some(reason) = str_field(c, "finish_reason") {
                    if self.finish_reason.is_none() || index == 0 {
                        self.finish_reason = Some(reason.to_owned());
                    }
                }
            }
        }
        // Groq reports streamed usage in `x_groq.usage` on the last chunk.
        let usage = v.get("usage").or_else(|| v.pointer("/x_groq/usage"));
        if let Some(u) = usage.filter(|u| u.is_object()) {
            self.usage = chat_usage(u);
        }
    }

    fn on_text(&mut self, _event: &str, data: &str) -> bool {
        if data == "[DONE]" {
            self.done = true;
            return true;
        }
        false
    }

    fn finish(&mut self) -> ParsedResponse {
        let incomplete = (!self.done && self.errors.is_empty())
            .then(|| "the stream ended before `data: [DONE]`".to_owned());
        let calls_cut = self
            .calls_cut
            .then(|| format!("tool call arguments over {MAX_TEXT} bytes were cut"));
        let mut errors = std::mem::take(&mut self.errors);
        errors.extend(incomplete);
        errors.extend(self.text.cut_note());
        errors.extend(calls_cut);
        ParsedResponse {
            model: self.model.take(),
            id: self.id.take(),
            output: self.text.joined(),
            tool_calls: self.calls.drain(..).map(PendingCall::into_value).collect(),
            finish_reason: self.finish_reason.take(),
            usage: std::mem::take(&mut self.usage),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            events: 0,
        }
    }

    fn whole_body(&self, body: &[u8]) -> ParsedResponse {
        parse_response_body(self.endpoint, body)
    }
}

impl ChatStream {
    fn on_delta(&mut self, index: usize, delta: &Value) {
        match delta.get("content") {
            Some(Value::String(s)) => self.text.push(index, s),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    render_part(p, &mut s);
                }
                self.text.push(index, &s);
            }
            _ => {}
        }
        if let Some(s) = str_field(delta, "refusal") {
            self.text.push(index, s);
        }
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for (pos, c) in calls.iter().enumerate() {
                let tc_index = count(c.get("index")).unwrap_or(pos as u64);
                // `index` is below MAX_CHOICES, so this never collides.
                let key = (index as u64) << 32 | (tc_index & 0xFFFF_FFFF);
                let call = pending(&mut self.calls, key);
                if let Some(id) = str_field(c, "id") {
                    call.id = Some(id.to_owned());
                }
                if let Some(f) = c.get("function") {
                    if let Some(name) = str_field(f, "name") {
                        call.name = Some(name.to_owned());
                    }
                    if let Some(a) = str_field(f, "arguments") {
                        if !push_capped(&mut call.arguments, a) {
                            self.calls_cut = true;
                        }
                    }
                }
            }
        }
    }
}

/// Streamed Responses API (`response.*` events).
#[derive(Debug, Default)]
struct ResponsesStream {
    model: Option<String>,
    id: Option<String>,
    text: String,
    text_cut: bool,
    calls: Vec<PendingCall>,
    calls_cut: bool,
    /// The response object of the terminal event, parsed.
    terminal: Option<ParsedResponse>,
    errors: Vec<String>,
}

impl StreamHandler for ResponsesStream {
    fn on_json(&mut self, _event: &str, v: &Value) {
        let kind = str_field(v, "type").unwrap_or_default();
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(m) = v.pointer("/response/model").and_then(Value::as_str) {
                    self.model = Some(m.to_owned());
                }
                if let Some(id) = v.pointer("/response/id").and_then(Value::as_str) {
                    self.id = Some(id.to_owned());
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = str_field(v, "delta") {
                    if !push_capped(&mut self.text, d) {
                        self.text_cut = true;
                    }
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let Some(item) = v.get("item") else { return };
                if !matches!(
                    str_field(item, "type"),
                    Some("function_call") | Some("custom_tool_call")
                ) {
                    return;
                }
                let key = call_key(v);
                let call = pending(&mut self.calls, key);
                if let Some(id) = str_field(item, "call_id") {
                    call.id = Some(id.to_owned());
                }
                if let Some(name) = str_field(item, "name") {
                    call.name = Some(name.to_owned());
                }
                let args = str_field(item, "arguments").or_else(|| str_field(item, "input"));
                if let Some(a) = args.filter(|a| !a.is_empty()) {
                    call.arguments = a.to_owned();
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let key = call_key(v);
                if let Some(d) = str_field(v, "delta") {
                    if !push_capped(&mut pending(&mut self.calls, key).arguments, d) {
                        self.calls_cut = true;
                    }
                }
            }
            "response.function_call_arguments.done" => {
                let key = call_key(v);
                if let Some(a) = str_field(v, "arguments") {
                    pending(&mut self.calls, key).arguments = a.to_owned();
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let mut r = ParsedResponse::default();
                if let Some(resp) = v.get("response") {
                    r.model = str_field(resp, "model").map(str::to_owned);
                    r.id = str_field(resp, "id").map(str::to_owned);
                    r.error = provider_error(resp);
                    responses_body(resp, &mut r);
                }
                self.terminal = Some(r);
            }
            "error" => self
                .errors
                .push(provider_error(v).unwrap_or_else(|| v.to_string())),
            _ => {
                if let Some(e) = provider_error(v) {
                    self.errors.push(e);
                }
            }
        }
    }

    fn finish(&mut self) -> ParsedResponse {
        let mut r = ParsedResponse {
            model: self.model.take(),
            id: self.id.take(),
            ..ParsedResponse::default()
        };
        let mut errors = std::mem::take(&mut self.errors);
        match self.terminal.take() {
            Some(t) => {
                r.model = t.model.or(r.model);
                r.id = t.id.or(r.id);
                r.finish_reason = t.finish_reason;
                r.usage = t.usage;
                errors.extend(t.error);
                // The terminal event carries the whole response: prefer it.
                r.output = if t.output.is_empty() {
                    std::mem::take(&mut self.text)
                } else {
                    t.output
                };
                r.tool_calls = if t.tool_calls.is_empty() {
                    self.calls.drain(..).map(PendingCall::into_value).collect()
                } else {
                    t.tool_calls
                };
            }
            None => {
                r.output = std::mem::take(&mut self.text);
                r.tool_calls = self.calls.drain(..).map(PendingCall::into_value).collect();
                if errors.is_empty() {
                    errors.push("the stream ended before `response.completed`".to_owned());
                }
            }
        }
        if self.text_cut {
            errors.push(format!(
                "output over {MAX_TEXT} bytes; the record keeps its start"
            ));
        }
        if self.calls_cut {
            errors.push(format!(
                "tool call arguments over {MAX_TEXT} bytes were cut"
            ));
        }
        r.error = (!errors.is_empty()).then(|| errors.join("; "));
        r
    }

    fn whole_body(&self, body: &[u8]) -> ParsedResponse {
        parse_response_body("responses", body)
    }
}

/// The key tying `response.output_item.*` and `response.function_call_arguments.*`
/// events to one output item: its output index, which every such event carries.
fn call_key(event: &Value) -> u64 {
    count(event.get("output_index")).unwrap_or(u64::MAX)
}
