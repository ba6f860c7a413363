//! The Anthropic messages API.

use super::*;

#[test]
fn anthropic_request() {
    let a = host("api.anthropic.com");
    let ep = post(a, "/v1/messages");
    let r = a.parse_request(&ep, fixture!("anthropic_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert!(r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "You are a weather bot.\nBe brief."),
            msg("user", "What's the weather in San Francisco?"),
            msg(
                "assistant",
                "Let me check.\n[tool_call get_weather({\"location\":\"San Francisco, CA\"})]"
            ),
            msg("user", "15C, foggy\n[image]\nAlso, what is in this photo?"),
        ]
    );
    let mut keys: Vec<&str> = r.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "max_tokens",
            "metadata",
            "temperature",
            "tool_choice",
            "tools"
        ]
    );
    let r = a.parse_request(
        &ep,
        br#"{"model":"claude-3-5-haiku-latest","system":"Be kind.","messages":[{"role":"user","content":"Hi"}],"max_tokens":5}"#,
    );
    assert_eq!(
        r.messages,
        vec![msg("system", "Be kind."), msg("user", "Hi")]
    );
    assert!(!r.stream);
}

#[test]
fn anthropic_response() {
    let a = host("api.anthropic.com");
    let ep = post(a, "/v1/messages");
    let r = a.parse_response(&ep, fixture!("anthropic_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(r.output, "I'll check the weather.");
    assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        r.tool_calls,
        vec![json!({
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"
        })]
    );
    // input = input_tokens + cache_creation_input_tokens; cache reads apart.
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(572),
            output_tokens: Some(89),
            cached_tokens: Some(2048),
            reasoning_tokens: None,
            estimated: false
        }
    );
}

#[test]
fn anthropic_stream_with_tool_use() {
    let a = host("api.anthropic.com");
    let ep = post(a, "/v1/messages");
    let body = fixture!("anthropic_stream.sse");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(r.output, "Okay, let's check the weather — ☀️");
    assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        r.tool_calls,
        vec![json!({
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "arguments": "{\"location\": \"San Francisco, CA\"}"
        })]
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(472),
            output_tokens: Some(89),
            cached_tokens: Some(1024),
            reasoning_tokens: None,
            estimated: false
        }
    );
    assert_eq!(r.events, sse_event_count(body));
}

#[test]
fn anthropic_errors() {
    let a = host("api.anthropic.com");
    let ep = post(a, "/v1/messages");
    let r = a.parse_response(&ep, fixture!("anthropic_error.json"));
    assert_eq!(r.error.as_deref(), Some("overloaded_error: Overloaded"));
    let r = stream_every_way(a, &ep, fixture!("anthropic_stream_error.sse"));
    assert_eq!(r.output, "Partial");
    assert_eq!(r.finish_reason, None);
    assert_eq!(r.error.as_deref(), Some("overloaded_error: Overloaded"));
    assert_eq!(r.usage.input_tokens, Some(12));
}

#[test]
fn anthropic_stream_usage_is_cumulative() {
    let a = host("api.anthropic.com");
    let ep = post(a, "/v1/messages");
    let body = br#"event: message_start
data: {"type":"message_start","message":{"model":"claude-opus-4-1-20250805","usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":1}}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":10,"output_tokens":3}}

event: message_stop
data: {"type":"message_stop"}

"#;
    let r = run(a, &ep, &[body]);
    assert_eq!(r.error, None);
    assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(15),
            output_tokens: Some(3),
            cached_tokens: Some(7),
            reasoning_tokens: None,
            estimated: false
        }
    );
}

// ---------------------------------------------------------------------------------
// Gemini.
