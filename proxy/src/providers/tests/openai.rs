//! The OpenAI format (chat completions, Responses, legacy endpoints; Azure, Groq) and the error replies of every adapter.

use super::*;

#[test]
fn openai_chat_request() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let r = a.parse_request(&ep, fixture!("openai_chat_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4o"));
    assert!(r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "You are a terse assistant."),
            msg("user", "What is in this picture?\n[image]"),
            msg("assistant", "[tool_call get_weather({\"city\":\"Paris\"})]"),
            msg("tool", "18C, clear"),
        ]
    );
    let mut keys: Vec<&str> = r.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "max_completion_tokens",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools"
        ]
    );
    assert_eq!(r.params["temperature"], json!(0.2));
    assert_eq!(
        r.params["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
}

#[test]
fn openai_chat_response() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let r = a.parse_response(&ep, fixture!("openai_chat_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(r.output, "It is 18C and clear in Paris.");
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.events, 0);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(1117),
            output_tokens: Some(46),
            cached_tokens: Some(1024),
            reasoning_tokens: Some(12),
            estimated: false
        }
    );

    let r = a.parse_response(&ep, fixture!("openai_chat_tool_response.json"));
    assert_eq!(r.output, "");
    assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": "call_abc123", "name": "get_weather", "arguments": "{\n\"city\": \"Boston\"\n}"}),
            json!({"id": "call_def456", "name": "get_time", "arguments": "{\"tz\":\"EST\"}"}),
        ]
    );
    assert_eq!(r.usage.cached_tokens, None);
    assert_eq!(r.usage.input_tokens, Some(82));
}

#[test]
fn openai_chat_stream() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let body = fixture!("openai_chat_stream.sse");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(r.output, "Hello, wörld — café 😀!");
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(r.usage.input_tokens, Some(19));
    assert_eq!(r.usage.output_tokens, Some(10));
    assert_eq!(r.events, sse_event_count(body));
    assert_eq!(r.events, 9);
}

#[test]
fn openai_chat_stream_tool_calls() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let r = stream_every_way(a, &ep, fixture!("openai_chat_stream_tools.sse"));
    assert_eq!(r.error, None);
    assert_eq!(r.output, "");
    assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}),
            json!({"id": "call_2", "name": "get_time", "arguments": "{\"tz\":\"CET\"}"}),
        ]
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(80),
            output_tokens: Some(31),
            cached_tokens: Some(64),
            reasoning_tokens: Some(0),
            estimated: false
        }
    );
}

#[test]
fn azure_chat_stream() {
    let a = host("contoso.openai.azure.com");
    let ep = post(
        a,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
    );
    let r = stream_every_way(a, &ep, fixture!("azure_chat_stream.sse"));
    assert_eq!(r.error, None);
    // The first chunk's empty model is not taken for the model.
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(r.output, "Bonjour !");
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(11), Some(3))
    );
}

#[test]
fn groq_chat_stream_with_crlf_and_x_groq_usage() {
    let a = host("api.groq.com");
    let ep = post(a, "/openai/v1/chat/completions");
    let body = fixture!("groq_chat_stream.sse");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("llama-3.3-70b-versatile"));
    assert_eq!(r.output, "Fast answer.");
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(18), Some(4))
    );
    assert_eq!(r.events, 5);
}

/// What Sluice answers itself, in each provider's format, is read back by that provider's
/// own parser as an error carrying the message: plain and inside a stream.
#[test]
fn error_replies_round_trip_through_each_adapter() {
    for (host_name, path) in [
        ("api.openai.com", "/v1/chat/completions"),
        ("api.anthropic.com", "/v1/messages"),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            "res.openai.azure.com",
            "/openai/deployments/d/chat/completions",
        ),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream",
        ),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
        ),
    ] {
        let a = host(host_name);
        let ep = post(a, path);
        for status in [400, 401, 403, 408, 413, 421, 429, 500, 503] {
            let reply = a.error_reply(status, "refused by policy p@v1");
            assert_eq!(reply.status, status);
            assert_eq!(reply.content_type, "application/json");
            let r = a.parse_response(&ep, &reply.body);
            let e = r.error.unwrap_or_default();
            assert!(
                e.contains("refused by policy p@v1"),
                "{host_name} {status}: {e}"
            );
            let r = run(a, &ep, &[&a.stream_error(status, "cut mid-stream")]);
            let e = r.error.unwrap_or_default();
            assert!(
                e.contains("cut mid-stream"),
                "{host_name} {status} stream: {e}"
            );
        }
    }
}

#[test]
fn openai_error_body() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let r = a.parse_response(&ep, fixture!("openai_error.json"));
    let e = r.error.unwrap();
    assert!(
        e.starts_with("invalid_request_error: Incorrect API key provided"),
        "{e}"
    );
    // The same body answered on a streaming request (no SSE framing) is recognised.
    let r = run(a, &ep, &[fixture!("openai_error.json")]);
    assert!(r.error.unwrap().starts_with("invalid_request_error:"));
    assert_eq!(r.events, 0);
    // Mistral / vLLM shape.
    let body = br#"{"object":"error","message":"Invalid model: x","type":"invalid_request_error","param":null,"code":null}"#;
    let r = a.parse_response(&ep, body);
    assert_eq!(
        r.error.as_deref(),
        Some("invalid_request_error: Invalid model: x")
    );
    // An error event inside a stream.
    let body =
        b"data: {\"error\":{\"message\":\"server overloaded\",\"type\":\"server_error\"}}\n\n";
    let r = run(a, &ep, &[body]);
    assert_eq!(r.error.as_deref(), Some("server_error: server overloaded"));
}

#[test]
fn openai_legacy_completions_and_embeddings() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/completions");
    let r = a.parse_request(
        &ep,
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":["Say this","And that"],"max_tokens":7}"#,
    );
    assert_eq!(
        r.messages,
        vec![msg("user", "Say this"), msg("user", "And that")]
    );
    assert_eq!(r.params["max_tokens"], json!(7));
    let r = a.parse_response(
        &ep,
        br#"{"model":"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nThis is a test.","index":0,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
    );
    assert_eq!(r.output, "\n\nThis is a test.");
    assert_eq!(r.finish_reason.as_deref(), Some("length"));

    let ep = post(a, "/v1/embeddings");
    let r = a.parse_request(
        &ep,
        br#"{"model":"text-embedding-3-small","input":"The food was delicious","encoding_format":"float"}"#,
    );
    assert_eq!(r.messages, vec![msg("user", "The food was delicious")]);
    assert_eq!(r.params["encoding_format"], json!("float"));
    let r = a.parse_response(
        &ep,
        br#"{"object":"list","data":[{"object":"embedding","embedding":[0.1,0.2],"index":0}],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#,
    );
    assert_eq!(r.error, None);
    assert_eq!(r.output, "");
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(5), Some(0))
    );
}

// ---------------------------------------------------------------------------------
// OpenAI responses.

#[test]
fn openai_responses_request() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/responses");
    let r = a.parse_request(&ep, fixture!("openai_responses_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4.1"));
    assert!(!r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "Answer in one sentence."),
            msg("user", "What's the weather in Paris?\n[image]"),
            msg("assistant", "[tool_call get_weather({\"city\":\"Paris\"})]"),
            msg("tool", "18C, clear"),
            msg("assistant", "It is 18C."),
            msg("user", "And tomorrow?"),
        ]
    );
    let mut keys: Vec<&str> = r.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["max_output_tokens", "reasoning", "store", "tools"]);

    let r = a.parse_request(&ep, br#"{"model":"gpt-5","input":"Tell me a joke"}"#);
    assert_eq!(r.messages, vec![msg("user", "Tell me a joke")]);
}

#[test]
fn openai_responses_response() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/responses");
    let r = a.parse_response(&ep, fixture!("openai_responses_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(r.output, "Tomorrow will be sunny in Paris.");
    assert_eq!(r.finish_reason.as_deref(), Some("completed"));
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": "call_2", "name": "get_weather", "arguments": "{\"city\":\"Paris\",\"day\":\"tomorrow\"}"})
        ]
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(12033),
            output_tokens: Some(44),
            cached_tokens: Some(11904),
            reasoning_tokens: Some(16),
            estimated: false
        }
    );
    let r = a.parse_response(
        &ep,
        br#"{"model":"o3","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[],"error":null}"#,
    );
    assert_eq!(r.finish_reason.as_deref(), Some("max_output_tokens"));
    assert_eq!(r.error, None);
}

#[test]
fn openai_responses_stream() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/responses");
    let body = fixture!("openai_responses_stream.sse");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(r.output, "Hi there, résumé ✓");
    assert_eq!(r.finish_reason.as_deref(), Some("completed"));
    assert_eq!(
        r.tool_calls,
        vec![json!({"id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})]
    );
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(37), Some(11))
    );
    assert_eq!(r.events, sse_event_count(body));
}

#[test]
fn openai_responses_stream_cut_keeps_deltas() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/responses");
    let r = stream_every_way(a, &ep, fixture!("openai_responses_stream_cut.sse"));
    assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(r.output, "Hi there, résumé ✓");
    assert_eq!(
        r.tool_calls,
        vec![json!({"id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})]
    );
    assert_eq!(r.finish_reason, None);
    assert_eq!(r.usage, Usage::default());
    assert!(r.error.unwrap().contains("response.completed"));
}

#[test]
fn openai_responses_stream_failure_events() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/responses");
    let body = b"event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down\",\"param\":null}\n\n";
    let r = run(a, &ep, &[body]);
    assert_eq!(r.error.as_deref(), Some("rate_limit_exceeded: Slow down"));
    let body = b"data: {\"type\":\"response.failed\",\"response\":{\"model\":\"gpt-5\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"},\"output\":[]}}\n\n";
    let r = run(a, &ep, &[body]);
    assert_eq!(r.model.as_deref(), Some("gpt-5"));
    assert_eq!(r.finish_reason.as_deref(), Some("failed"));
    assert_eq!(r.error.as_deref(), Some("server_error: boom"));
}

// ---------------------------------------------------------------------------------
// Anthropic.
