//! OpenAI-shaped answers: chat completions, responses, completions, embeddings, models
//! and errors (also used for Azure, Groq and other OpenAI-compatible paths).

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::{self, MockBody};
use super::reply::{model_of, random_id, unix_now, wants_stream, Controls, Prompt, Reply};
use super::JsonBody;

/// Dimensions of a mock embedding.
const EMBEDDING_DIMENSIONS: usize = 8;
const SYSTEM_FINGERPRINT: &str = "fp_m0ck5l1ce0";
const EVENT_STREAM: &str = "text/event-stream";

/// An OpenAI error: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Value::from("invalid_api_key")),
        403 => (
            "invalid_request_error",
            Value::from("unsupported_country_region_territory"),
        ),
        429 => ("requests", Value::from("rate_limit_exceeded")),
        _ if status.is_client_error() => ("invalid_request_error", Value::Null),
        _ => ("server_error", Value::Null),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    // Tell the SDKs not to retry, so that one call is one request.
    body::with_header(
        decorate(body::json(status, &body)),
        "x-should-retry",
        "false",
    )
}

/// The headers OpenAI puts on every answer.
fn decorate(response: Response<MockBody>) -> Response<MockBody> {
    let response = body::with_header(response, "x-request-id", &format!("req_{}", random_id(32)));
    let response = body::with_header(response, "openai-processing-ms", "1");
    body::with_header(response, "openai-version", "2020-10-01")
}

fn chat_usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// Whether a stream ends with a usage chunk (`stream_options.include_usage`).
fn include_usage(body: &JsonBody, reply: &Reply) -> bool {
    reply.usage
        && body
            .value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(
    body: &JsonBody,
    controls: &Controls,
    deployment: Option<&str>,
) -> Response<MockBody> {
    let mut prompt = Prompt::default();
    prompt.messages(&body.value);
    let reply = Reply::new(model_of(body, deployment), &prompt, body, controls);
    let id = format!("chatcmpl-{}", random_id(29));
    let created = unix_now();

    if !wants_stream(body) {
        let mut answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": reply.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT
        });
        if reply.usage {
            answer["usage"] = chat_usage(&reply);
        }
        return decorate(body::json(StatusCode::OK, &answer));
    }

    let with_usage = include_usage(body, &reply);
    let chunk = |delta: Value, finish_reason: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
        });
        if with_usage {
            chunk["usage"] = Value::Null;
        }
        body::sse_data(&chunk)
    };
    let mut frames = Vec::with_capacity(reply.chunks.len() + 4);
    frames.push(chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ));
    for text in &reply.chunks {
        frames.push(chunk(json!({"content": text}), Value::Null));
    }
    frames.push(chunk(json!({}), Value::from("stop")));
    if with_usage {
        frames.push(body::sse_data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": chat_usage(&reply)
        })));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    decorate(body::stream(EVENT_STREAM, frames, reply.delay))
}

/// `POST /v1/responses`.
pub(crate) fn responses(
    body: &JsonBody,
    controls: &Controls,
    deployment: Option<&str>,
) -> Response<MockBody> {
    let mut prompt = Prompt::default();
    if let Some(instructions) = body.value.get("instructions") {
        prompt.message(instructions, false);
    }
    match body.value.get("input") {
        Some(text @ Value::String(_)) => prompt.message(text, true),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                if let Some(content) = item.get("content") {
                    prompt.message(content, role == "user");
                }
            }
        }
        _ => {}
    }
    let reply = Reply::new(model_of(body, deployment), &prompt, body, controls);
    let id = format!("resp_{}", random_id(48));
    let msg_id = format!("msg_{}", random_id(48));
    let created = unix_now();
    let usage = reply.usage.then(|| {
        json!({
            "input_tokens": reply.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.total_tokens()
        })
    });
    let part = |text: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    let message = |status: &str, content: Vec<Value>| json!({"id": msg_id, "type": "message", "status": status, "content": content, "role": "assistant"});
    let request = &body.value;
    let response = |status: &str, output: Vec<Value>, usage: Option<&Value>| {
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": reply.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": request.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": request.get("store").cloned().unwrap_or(Value::Bool(true)),
            "temperature": request.get("temperature").cloned().unwrap_or(Value::from(1.0)),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": request.get("top_p").cloned().unwrap_or(Value::from(1.0)),
            "truncation": "disabled",
            "usage": usage.cloned().unwrap_or(Value::Null),
            "user": null,
            "metadata": request.get("metadata").cloned().unwrap_or_else(|| json!({}))
        })
    };
    let done_message = message("completed", vec![part(&reply.text)]);

    if !wants_stream(body) {
        let answer = response("completed", vec![done_message], usage.as_ref());
        return decorate(body::json(StatusCode::OK, &answer));
    }

    let mut sequence = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = Value::from(name);
        data["sequence_number"] = Value::from(sequence);
        sequence += 1;
        body::sse_event(name, &data)
    };
    let mut frames = Vec::with_capacity(reply.chunks.len() + 8);
    frames.push(event(
        "response.created",
        json!({"response": response("in_progress", vec![], None)}),
    ));
    frames.push(event(
        "response.in_progress",
        json!({"response": response("in_progress", vec![], None)}),
    ));
    frames.push(event(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", vec![])}),
    ));
    frames.push(event(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part("")}),
    ));
    for text in &reply.chunks {
        frames.push(event(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        ));
    }
    frames.push(event(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": reply.text, "logprobs": []}),
    ));
    frames.push(event(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part(&reply.text)}),
    ));
    frames.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_message.clone()}),
    ));
    frames.push(event(
        "response.completed",
        json!({"response": response("completed", vec![done_message], usage.as_ref())}),
    ));
    decorate(body::stream(EVENT_STREAM, frames, reply.delay))
}

/// `POST /v1/completions` (the legacy API).
pub(crate) fn completions(
    body: &JsonBody,
    controls: &Controls,
    deployment: Option<&str>,
) -> Response<MockBody> {
    let mut prompt = Prompt::default();
    match body.value.get("prompt") {
        Some(text @ Value::String(_)) => prompt.message(text, true),
        Some(Value::Array(items)) => {
            for item in items.iter().filter(|i| i.is_string()) {
                prompt.message(item, true);
            }
        }
        _ => {}
    }
    let reply = Reply::new(model_of(body, deployment), &prompt, body, controls);
    let id = format!("cmpl-{}", random_id(29));
    let created = unix_now();
    let usage = || {
        json!({
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.total_tokens()
        })
    };
    let answer = |text: &str, finish_reason: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": reply.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}]
        })
    };

    if !wants_stream(body) {
        let mut whole = answer(&reply.text, Value::from("stop"));
        if reply.usage {
            whole["usage"] = usage();
        }
        return decorate(body::json(StatusCode::OK, &whole));
    }

    let with_usage = include_usage(body, &reply);
    let mut frames: Vec<Bytes> = reply
        .chunks
        .iter()
        .map(|text| body::sse_data(&answer(text, Value::Null)))
        .collect();
    frames.push(body::sse_data(&answer("", Value::from("stop"))));
    if with_usage {
        let mut last = answer("", Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage();
        frames.push(body::sse_data(&last));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    decorate(body::stream(EVENT_STREAM, frames, reply.delay))
}

/// A deterministic vector for an input, components in [-1, 1] with 4 decimals.
fn embedding(input: &Value) -> [f64; EMBEDDING_DIMENSIONS] {
    let digest = Sha256::digest(input.to_string().as_bytes());
    let mut out = [0f64; EMBEDDING_DIMENSIONS];
    for (value, bytes) in out.iter_mut().zip(digest.chunks_exact(4)) {
        let n = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        *value = ((f64::from(n) / f64::from(u32::MAX) * 2.0 - 1.0) * 10_000.0).round() / 10_000.0;
    }
    out
}

/// `POST /v1/embeddings`: one vector of 8 floats per input, as floats or (when
/// `encoding_format` is `base64`, the OpenAI SDK's default) little-endian `f32` bytes.
pub(crate) fn embeddings(
    body: &JsonBody,
    controls: &Controls,
    deployment: Option<&str>,
) -> Response<MockBody> {
    let inputs: Vec<&Value> = match body.value.get("input") {
        // An array of token ids is one input.
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![&body.value["input"]]
        }
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    };
    let tokens: u64 = inputs
        .iter()
        .map(|input| match input {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(ids) => ids.len() as u64,
            _ => 0,
        })
        .sum();
    let tokens = body.estimated_tokens.unwrap_or(tokens).max(1);
    let base64 = body.value.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(input);
            let encoded = if base64 {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|f| (*f as f32).to_le_bytes())
                    .collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(vector.to_vec())
            };
            json!({"object": "embedding", "index": index, "embedding": encoded})
        })
        .collect();
    let mut answer = json!({"object": "list", "data": data, "model": model_of(body, deployment)});
    if controls.usage {
        answer["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    decorate(body::json(StatusCode::OK, &answer))
}

/// `GET /v1/models`.
pub(crate) fn models() -> Response<MockBody> {
    let data: Vec<Value> = [
        ("gpt-4o", 1_715_367_049u64),
        ("gpt-4o-mini", 1_721_172_741),
        ("gpt-4.1", 1_744_316_542),
        ("o3-mini", 1_737_146_383),
        ("text-embedding-3-small", 1_705_948_997),
    ]
    .iter()
    .map(|(id, created)| json!({"id": id, "object": "model", "created": created, "owned_by": "system"}))
    .collect();
    decorate(body::json(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}
