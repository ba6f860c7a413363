//! Gemini-shaped answers: `generateContent`, `streamGenerateContent` (SSE with
//! `alt=sse`, else a streamed JSON array), models and errors.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::body::{self, MockBody};
use super::reply::{random_id, Controls, Prompt, Reply};
use super::JsonBody;

/// A Gemini error: `{"error": {"code", "message", "status"}}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if status.is_client_error() => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    };
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    body::json(status, &body)
}

/// `…/models/{model}:generateContent` and `:streamGenerateContent`.
pub(crate) fn generate(
    model: &str,
    stream: bool,
    sse: bool,
    body: &JsonBody,
    controls: &Controls,
) -> Response<MockBody> {
    let mut prompt = Prompt::default();
    for key in ["systemInstruction", "system_instruction"] {
        if let Some(parts) = body.value.get(key).and_then(|s| s.get("parts")) {
            prompt.message(parts, false);
        }
    }
    for content in body
        .value
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = content
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        prompt.message(content.get("parts").unwrap_or(&Value::Null), role == "user");
    }
    let reply = Reply::new(model.to_owned(), &prompt, body, controls);
    let response_id = random_id(22);
    let usage = || {
        json!({
            "promptTokenCount": reply.input_tokens,
            "candidatesTokenCount": reply.output_tokens,
            "totalTokenCount": reply.total_tokens(),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.input_tokens}]
        })
    };
    let chunk = |text: &str, last: bool| {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        let mut chunk = json!({});
        if last {
            candidate["finishReason"] = Value::from("STOP");
        }
        chunk["candidates"] = json!([candidate]);
        if last && reply.usage {
            chunk["usageMetadata"] = usage();
        }
        chunk["modelVersion"] = Value::from(reply.model.as_str());
        chunk["responseId"] = Value::from(response_id.as_str());
        chunk
    };

    if !stream {
        return body::json(StatusCode::OK, &chunk(&reply.text, true));
    }
    let last = reply.chunks.len().saturating_sub(1);
    let chunks = reply
        .chunks
        .iter()
        .enumerate()
        .map(|(i, text)| chunk(text, i == last));
    if sse {
        // Gemini ends each SSE event with CRLF CRLF.
        let frames = chunks
            .map(|c| {
                let mut out = b"data: ".to_vec();
                serde_json::to_writer(&mut out, &c).unwrap_or_default();
                out.extend_from_slice(b"\r\n\r\n");
                Bytes::from(out)
            })
            .collect();
        body::stream("text/event-stream", frames, reply.delay)
    } else {
        // A JSON array sent element by element, as the real API does.
        let mut frames: Vec<Bytes> = chunks
            .enumerate()
            .map(|(i, c)| {
                let mut out = if i == 0 {
                    b"[".to_vec()
                } else {
                    b",\r\n".to_vec()
                };
                serde_json::to_writer(&mut out, &c).unwrap_or_default();
                Bytes::from(out)
            })
            .collect();
        frames.push(Bytes::from_static(b"]"));
        body::stream("application/json; charset=UTF-8", frames, reply.delay)
    }
}

/// `GET /v1beta/models`.
pub(crate) fn models() -> Response<MockBody> {
    let models: Vec<Value> = [
        ("gemini-2.0-flash", "Gemini 2.0 Flash"),
        ("gemini-2.5-pro", "Gemini 2.5 Pro"),
    ]
    .iter()
    .map(|(id, name)| {
        json!({
            "name": format!("models/{id}"),
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["generateContent", "countTokens"]
        })
    })
    .collect();
    body::json(StatusCode::OK, &json!({"models": models}))
}
