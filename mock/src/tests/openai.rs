//! The OpenAI format: chat completions, Responses, legacy endpoints, prefixes and Azure routes.

use super::*;

#[tokio::test]
async fn openai_chat_plain() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[], chat_body(false)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(a.headers.get("x-request-id").is_some());
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock reply to: And two in Asia?"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], CHAT_WORDS);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], CHAT_WORDS + 8);
    mock.shutdown().await;
}

#[tokio::test]
async fn openai_chat_stream() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[("x-mock-chunks", "5")], chat_body(true)).await;
    assert_streamed(&a);
    let (chunks, done) = sse_data(&a.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 5 + 1 + 1);
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o-mini"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: And two in Asia?");
    assert!(chunks[..6]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["usage"], Value::Null);
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["prompt_tokens"], CHAT_WORDS);
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 5);

    // Without include_usage there is no usage chunk.
    let mut body = chat_body(true);
    body.as_object_mut().unwrap().remove("stream_options");
    let (chunks, done) = sse_data(&post(&mock, CHAT, &[], body).await.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 8 + 1);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn openai_prefixes_and_azure() {
    let mock = start(MockOptions::default()).await;
    for path in [
        "/openai/v1/chat/completions",
        "/v1beta/openai/chat/completions",
        "/api/v1/chat/completions",
    ] {
        let v = post(&mock, path, &[], chat_body(false)).await.json();
        assert_eq!(v["model"], "gpt-4o-mini", "{path}");
    }
    let mut body = chat_body(false);
    body.as_object_mut().unwrap().remove("model");
    let a = post(
        &mock,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        &[],
        body,
    )
    .await;
    assert_eq!(a.json()["model"], "prod-gpt4o");
    assert_eq!(
        mock.requests().last().unwrap().path,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn openai_responses() {
    let mock = start(MockOptions::default()).await;
    let body = json!({"model": "gpt-4.1", "instructions": "Be brief.", "input": "Tell me a joke"});
    let v = post(&mock, "/v1/responses", &[], body.clone()).await.json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert_eq!(v["model"], "gpt-4.1");
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Mock reply to: Tell me a joke"
    );
    assert_eq!(v["usage"]["input_tokens"], 2 + 4);
    assert_eq!(v["usage"]["output_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 14);

    let mut body = body;
    body["stream"] = json!(true);
    body["input"] =
        json!([{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}]);
    let a = post(&mock, "/v1/responses", &[("x-mock-chunks", "3")], body).await;
    assert_streamed(&a);
    let events = sse_events(&a.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(
            (&data["type"], data["sequence_number"].as_u64()),
            (&json!(name), Some(i as u64))
        );
    }
    let deltas: String = events[4..7]
        .iter()
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Mock reply to: Hi there");
    assert_eq!(events[7].1["text"], "Mock reply to: Hi there");
    let completed = &events[10].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "Mock reply to: Hi there"
    );
    assert_eq!(completed["usage"]["input_tokens"], 2 + 2);
    assert_eq!(completed["usage"]["output_tokens"], 3);
    assert_eq!(events[0].1["response"]["usage"], Value::Null);
}

#[tokio::test]
async fn openai_completions_embeddings_models() {
    let mock = start(MockOptions::default()).await;
    let v = post(
        &mock,
        "/v1/completions",
        &[],
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
    )
    .await
    .json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Mock reply to: Say hi");
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": true});
    let (chunks, done) = sse_data(
        &post(&mock, "/v1/completions", &[("x-mock-chunks", "2")], body)
            .await
            .text,
    );
    assert!(done);
    assert_eq!(chunks.len(), 3);
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: Say hi");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");

    let body = json!({"model": "text-embedding-3-small", "input": ["one two", "three"], "encoding_format": "float"});
    let v = post(&mock, "/v1/embeddings", &[], body).await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let floats: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), 8);
    assert!(floats.iter().all(|f| (-1.0..=1.0).contains(f)));
    assert_eq!(
        (data[1]["index"].as_u64(), data[1]["object"].as_str()),
        (Some(1), Some("embedding"))
    );

    // The SDK's default base64 encoding carries the same vector as little-endian f32s.
    let body =
        json!({"model": "text-embedding-3-small", "input": "one two", "encoding_format": "base64"});
    let v = post(&mock, "/v1/embeddings", &[], body).await.json();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        decoded,
        floats.iter().map(|f| *f as f32).collect::<Vec<_>>()
    );
    // Four decimals, as the float encoding shows them.
    assert!(floats
        .iter()
        .all(|f| ((f * 10_000.0).round() - f * 10_000.0).abs() < 1e-6));

    let a = call(&mock, "GET", "/v1/models", &[], "").await;
    let v = a.json();
    assert_eq!(v["object"], "list");
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "gpt-4o-mini"));
    let v = call(
        &mock,
        "GET",
        "/v1/models",
        &[("anthropic-version", "2023-06-01")],
        "",
    )
    .await
    .json();
    assert_eq!(v["data"][0]["type"], "model");
}

// ---- Anthropic ------------------------------------------------------------------
