//! Bedrock Runtime: Converse, InvokeModel and their event streams.

use std::collections::HashMap;

use super::*;

const HAIKU_PATH: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0";
const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

fn converse_body() -> Value {
    json!({
        "system": [{"text": "Answer in French."}],
        "messages": [{"role": "user", "content": [{"text": "What is a sluice gate?"}]}],
        "inferenceConfig": {"maxTokens": 100}
    })
}

fn invoke_body() -> Value {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is a sluice gate?"}]
    })
}

/// The `(string headers, JSON payload)` of every event-stream message, both CRCs checked.
fn event_frames(mut b: &[u8]) -> Vec<(HashMap<String, String>, Value)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let u32_at = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let total = u32_at(b, 0) as usize;
        let headers_len = u32_at(b, 4) as usize;
        assert_eq!(u32_at(b, 8), crc32fast::hash(&b[..8]), "prelude CRC");
        assert_eq!(
            u32_at(b, total - 4),
            crc32fast::hash(&b[..total - 4]),
            "message CRC"
        );
        let mut h = &b[12..12 + headers_len];
        let mut headers = HashMap::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8(h[1..1 + n].to_vec()).unwrap();
            assert_eq!(h[1 + n], 7, "string header");
            let len = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8(h[4 + n..4 + n + len].to_vec()).unwrap();
            headers.insert(name, value);
            h = &h[4 + n + len..];
        }
        let payload = serde_json::from_slice(&b[12 + headers_len..total - 4]).unwrap();
        out.push((headers, payload));
        b = &b[total..];
    }
    out
}

#[tokio::test]
async fn bedrock_converse_plain_and_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        &format!("{HAIKU_PATH}/converse"),
        &[],
        converse_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("x-amzn-requestid").is_some());
    let v = a.json();
    assert_eq!(
        v["output"]["message"],
        json!({"role": "assistant", "content": [{"text": "Mock reply to: What is a sluice gate?"}]})
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": 8, "outputTokens": 8, "totalTokens": 16})
    );

    let a = post(
        &mock,
        &format!("{HAIKU_PATH}/converse-stream"),
        &[("x-mock-chunks", "3")],
        converse_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let frames = event_frames(&a.bytes);
    let names: Vec<&str> = frames
        .iter()
        .map(|(h, _)| {
            assert_eq!(h[":message-type"], "event");
            assert_eq!(h[":content-type"], "application/json");
            h[":event-type"].as_str()
        })
        .collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert!(frames.iter().all(|(_, p)| p["p"].is_string()));
    let text: String = frames[1..4]
        .iter()
        .map(|(_, p)| p["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "Mock reply to: What is a sluice gate?");
    assert_eq!(frames[5].1["stopReason"], "end_turn");
    assert_eq!(frames[6].1["usage"]["inputTokens"], 8);
    assert_eq!(frames[6].1["usage"]["outputTokens"], 3);
}

#[tokio::test]
async fn bedrock_invoke_plain_and_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, &format!("{HAIKU_PATH}/invoke"), &[], invoke_body()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-amzn-bedrock-input-token-count"], "5");
    assert_eq!(a.headers["x-amzn-bedrock-output-token-count"], "8");
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_bdrk_"));
    assert_eq!(v["model"], HAIKU);
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Mock reply to: What is a sluice gate?"}])
    );
    assert_eq!(v["usage"]["input_tokens"], 5);

    // A literal `:` in the model id (Anthropic's SDK) routes the same way.
    let a = post(
        &mock,
        &format!("/model/{HAIKU}/invoke-with-response-stream"),
        &[("x-mock-chunks", "2")],
        invoke_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let events: Vec<Value> = event_frames(&a.bytes)
        .into_iter()
        .map(|(h, p)| {
            assert_eq!(h[":event-type"], "chunk");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p["bytes"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0]["message"]["model"], HAIKU);
    assert_eq!(
        events[6]["amazon-bedrock-invocationMetrics"]["inputTokenCount"],
        5
    );
    assert_eq!(
        events[6]["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
        2
    );
}

#[tokio::test]
async fn bedrock_errors_name_the_exception() {
    let mock = start(MockOptions::default()).await;
    let path = format!("{HAIKU_PATH}/converse");
    for (status, kind) in [
        ("429", "ThrottlingException"),
        ("403", "AccessDeniedException"),
        ("400", "ValidationException"),
        ("500", "InternalServerException"),
    ] {
        let a = post(&mock, &path, &[("x-mock-status", status)], converse_body()).await;
        assert_eq!(a.status.as_str(), status);
        assert_eq!(a.headers["x-amzn-errortype"], kind);
        assert!(a.json()["message"].as_str().unwrap().contains(status));
    }
    let a = call(&mock, "POST", &path, &[], "{oops").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["x-amzn-errortype"], "ValidationException");
    let a = call(&mock, "GET", &path, &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = call(
        &mock,
        "POST",
        &format!("{HAIKU_PATH}/count-tokens"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}
