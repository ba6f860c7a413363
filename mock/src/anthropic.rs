//! Anthropic-shaped answers: messages (plain and streamed), token counting, models and
//! errors.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::body::{self, MockBody};
use super::reply::{model_of, random_id, wants_stream, Controls, Prompt, Reply};
use super::JsonBody;

/// An Anthropic error: `{"type": "error", "error": {"type", "message"}, "request_id"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ if status.is_client_error() => "invalid_request_error",
        _ => "api_error",
    };
    let request_id = request_id();
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id
    });
    let response = body::with_header(body::json(status, &body), "request-id", &request_id);
    // Tell the SDKs not to retry, so that one call is one request.
    body::with_header(response, "x-should-retry", "false")
}

fn request_id() -> String {
    format!("req_011C{}", random_id(20))
}

/// The system prompt and messages of a request (also Bedrock Converse's, whose text
/// blocks read the same).
pub(crate) fn prompt(body: &JsonBody) -> Prompt {
    let mut prompt = Prompt::default();
    if let Some(system) = body.value.get("system") {
        prompt.message(system, false);
    }
    prompt.messages(&body.value);
    prompt
}

/// `POST /v1/messages`.
pub(crate) fn messages(body: &JsonBody, controls: &Controls) -> Response<MockBody> {
    let reply = Reply::new(model_of(body, None), &prompt(body), body, controls);
    let id = format!("msg_01{}", random_id(22));
    let response = if !wants_stream(body) {
        body::json(StatusCode::OK, &message(&reply, &id))
    } else {
        let frames = stream_events(&reply, &id)
            .iter()
            .map(|(name, data)| body::sse_event(name, data))
            .collect();
        body::stream("text/event-stream", frames, reply.delay)
    };
    body::with_header(response, "request-id", &request_id())
}

/// The whole answer message (also Bedrock's InvokeModel answer).
pub(crate) fn message(reply: &Reply, id: &str) -> Value {
    message_with(
        reply,
        id,
        json!([{"type": "text", "text": reply.text}]),
        Value::from("end_turn"),
        reply.output_tokens,
    )
}

fn message_with(
    reply: &Reply,
    id: &str,
    content: Value,
    stop_reason: Value,
    output_tokens: u64,
) -> Value {
    let mut message = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null
    });
    if reply.usage {
        message["usage"] = json!({
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard"
        });
    }
    message
}

/// The streamed answer as `(event name, data)` pairs (also the payloads of Bedrock's
/// `invoke-with-response-stream` chunks).
pub(crate) fn stream_events(reply: &Reply, id: &str) -> Vec<(&'static str, Value)> {
    let mut events = Vec::with_capacity(reply.chunks.len() + 6);
    // Like the real API, `message_start` counts one output token so far and
    // `message_delta` carries the cumulative total.
    events.push((
        "message_start",
        json!({"type": "message_start", "message": message_with(reply, id, json!([]), Value::Null, 1)}),
    ));
    events.push((
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(("ping", json!({"type": "ping"})));
    for text in &reply.chunks {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}
    });
    if reply.usage {
        delta["usage"] = json!({"output_tokens": reply.output_tokens});
    }
    events.push(("message_delta", delta));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(body: &JsonBody) -> Response<MockBody> {
    let tokens = body.estimated_tokens.unwrap_or(prompt(body).words).max(1);
    body::json(StatusCode::OK, &json!({"input_tokens": tokens}))
}

/// `GET /v1/models` with an `anthropic-version` header.
pub(crate) fn models() -> Response<MockBody> {
    let data: Vec<Value> = [
        ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
        ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    ]
    .iter()
    .map(|(id, name, created)| json!({"type": "model", "id": id, "display_name": name, "created_at": created}))
    .collect();
    let answer = json!({
        "data": data,
        "has_more": false,
        "first_id": "claude-sonnet-4-20250514",
        "last_id": "claude-3-5-haiku-20241022"
    });
    body::json(StatusCode::OK, &answer)
}
