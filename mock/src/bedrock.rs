//! AWS Bedrock Runtime-shaped answers under `POST /model/{modelId}/{operation}`:
//! `converse` (JSON with usage), `converse-stream` (AWS event-stream frames),
//! `invoke` (an Anthropic message plus Bedrock's token-count headers) and
//! `invoke-with-response-stream` (`chunk` events carrying base64 Anthropic stream
//! events, the last with `amazon-bedrock-invocationMetrics`), and errors with
//! `x-amzn-ErrorType` so that boto3 raises the modelled exception.
//!
//! The model is the percent-decoded path label. Event payloads carry a padding `p`
//! field like the real service's, of a length fixed by the event's position, so answers
//! stay deterministic. Not here: SigV4 verification, `count-tokens`, other models'
//! native bodies (every `invoke` answers in Anthropic's shape).

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::anthropic;
use super::body::{self, MockBody};
use super::reply::{random_id, Controls, Reply};
use super::JsonBody;

/// The event-stream content type of both streaming operations.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// Padding the real service adds to event payloads (`"p"`), cut to varying lengths.
const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The four operations answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
}

impl Operation {
    /// The operation named by a path's last segment.
    pub(crate) fn from_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "converse" => Self::Converse,
            "converse-stream" => Self::ConverseStream,
            "invoke" => Self::Invoke,
            "invoke-with-response-stream" => Self::InvokeStream,
            _ => return None,
        })
    }
}

/// A Bedrock error: `x-amzn-ErrorType` names the exception, the body is `{"message"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let kind = match status.as_u16() {
        403 | 401 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ if status.is_client_error() => "ValidationException",
        _ => "InternalServerException",
    };
    let response = body::json(status, &json!({ "message": message }));
    let response = body::with_header(response, "x-amzn-ErrorType", kind);
    body::with_header(response, "x-amzn-RequestId", &request_id())
}

fn request_id() -> String {
    let id = random_id(32).to_ascii_lowercase();
    format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// Decodes `%XX` escapes of a path label (boto3 sends `…-v1%3A0`); an invalid escape or
/// a non-UTF-8 result leaves the label as sent.
pub(crate) fn percent_decoded(label: &str) -> String {
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| char::from(*b).to_digit(16))
                .map(|d| d as u8)
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| label.to_owned())
}

/// The answer to `operation` on `model`.
pub(crate) fn respond(
    model: &str,
    operation: Operation,
    body: &JsonBody,
    controls: &Controls,
) -> Response<MockBody> {
    // Converse's `system` and `messages` (text blocks) read as Anthropic's do.
    let reply = Reply::new(model.to_owned(), &anthropic::prompt(body), body, controls);
    let id = || format!("msg_bdrk_01{}", random_id(22));
    let response = match operation {
        Operation::Converse => converse(&reply),
        Operation::ConverseStream => converse_stream(&reply),
        Operation::Invoke => invoke(&reply, &id()),
        Operation::InvokeStream => invoke_stream(&reply, &id()),
    };
    body::with_header(response, "x-amzn-RequestId", &request_id())
}

/// Converse's `usage`.
fn token_usage(reply: &Reply) -> Value {
    json!({
        "inputTokens": reply.input_tokens,
        "outputTokens": reply.output_tokens,
        "totalTokens": reply.total_tokens()
    })
}

/// `converse`.
fn converse(reply: &Reply) -> Response<MockBody> {
    let mut answer = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
        "stopReason": "end_turn",
        "metrics": {"latencyMs": 0}
    });
    if reply.usage {
        answer["usage"] = token_usage(reply);
    }
    body::json(StatusCode::OK, &answer)
}

/// `converse-stream`: `messageStart`, a `contentBlockDelta` per chunk,
/// `contentBlockStop`, `messageStop`, `metadata`.
fn converse_stream(reply: &Reply) -> Response<MockBody> {
    let mut events = vec![("messageStart", json!({"role": "assistant"}))];
    for text in &reply.chunks {
        events.push((
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": text}}),
        ));
    }
    events.push(("contentBlockStop", json!({"contentBlockIndex": 0})));
    events.push(("messageStop", json!({"stopReason": "end_turn"})));
    let mut metadata = json!({"metrics": {"latencyMs": 0}});
    if reply.usage {
        metadata["usage"] = token_usage(reply);
    }
    events.push(("metadata", metadata));
    let frames = events
        .into_iter()
        .enumerate()
        .map(|(i, (name, payload))| event(name, padded(payload, i)))
        .collect();
    body::stream(EVENT_STREAM, frames, reply.delay)
}

/// `invoke`: an Anthropic message, token counts also in headers.
fn invoke(reply: &Reply, id: &str) -> Response<MockBody> {
    let mut response = body::json(StatusCode::OK, &anthropic::message(reply, id));
    if reply.usage {
        for (name, n) in [
            ("X-Amzn-Bedrock-Input-Token-Count", reply.input_tokens),
            ("X-Amzn-Bedrock-Output-Token-Count", reply.output_tokens),
        ] {
            response = body::with_header(response, name, &n.to_string());
        }
    }
    body::with_header(response, "X-Amzn-Bedrock-Invocation-Latency", "0")
}

/// `invoke-with-response-stream`: one `chunk` per Anthropic stream event (Bedrock sends
/// no `ping`), the last one with the invocation metrics.
fn invoke_stream(reply: &Reply, id: &str) -> Response<MockBody> {
    let frames = anthropic::stream_events(reply, id)
        .into_iter()
        .filter(|(name, _)| *name != "ping")
        .enumerate()
        .map(|(i, (name, mut data))| {
            if name == "message_stop" && reply.usage {
                data["amazon-bedrock-invocationMetrics"] = json!({
                    "inputTokenCount": reply.input_tokens,
                    "outputTokenCount": reply.output_tokens,
                    "invocationLatency": 0,
                    "firstByteLatency": 0
                });
            }
            let bytes = base64::engine::general_purpose::STANDARD.encode(data.to_string());
            event("chunk", padded(json!({ "bytes": bytes }), i))
        })
        .collect();
    let response = body::stream(EVENT_STREAM, frames, reply.delay);
    body::with_header(response, "X-Amzn-Bedrock-Content-Type", "application/json")
}

/// `payload` with the padding field of event number `i`.
fn padded(mut payload: Value, i: usize) -> Value {
    payload["p"] = Value::from(&PAD[..(i * 7) % PAD.len() + 1]);
    payload
}

/// One `event` message named `name` with a JSON payload.
fn event(name: &str, payload: Value) -> Bytes {
    // Serialising a `Value` cannot fail: its keys are strings and it holds no NaN.
    let payload = serde_json::to_vec(&payload).unwrap_or_default();
    Bytes::from(encode(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        &payload,
    ))
}

/// One AWS event-stream message with string headers:
/// `total_len | headers_len | prelude_crc | headers | payload | message_crc`, big-endian,
/// CRC-32 (IEEE) of the first 8 bytes and of everything before the last 4.
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        // Names and values here are the constants above and short strings.
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(7); // string
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    let total = 16 + block.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}
