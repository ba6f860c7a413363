//! The Anthropic messages API.

use super::*;

#[tokio::test]
async fn anthropic_messages_plain() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        anthropic_body(false),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("request-id").is_some());
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert_eq!(v["model"], "claude-sonnet-4-20250514");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Mock reply to: What is a sluice gate?"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 3 + 5);
    assert_eq!(v["usage"]["output_tokens"], 8);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

    let v = post(
        &mock,
        "/v1/messages/count_tokens",
        &[],
        anthropic_body(false),
    )
    .await
    .json();
    assert_eq!(v, json!({"input_tokens": 8}));
}

#[tokio::test]
async fn anthropic_messages_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-chunks", "4")],
        anthropic_body(true),
    )
    .await;
    assert_streamed(&a);
    let events = sse_events(&a.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(events
        .iter()
        .all(|(name, data)| data["type"] == json!(name)));
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "claude-sonnet-4-20250514");
    assert_eq!(start["usage"]["input_tokens"], 8);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 0);
    let text: String = events[3..7]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "Mock reply to: What is a sluice gate?");
    assert_eq!(events[8].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[8].1["usage"]["output_tokens"], 4);
}

// ---- Gemini ---------------------------------------------------------------------
