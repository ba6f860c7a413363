//! Gemini generateContent and streamGenerateContent.

use super::*;

#[test]
fn gemini_request() {
    let a = host("generativelanguage.googleapis.com");
    let ep = post(
        a,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    );
    let r = a.parse_request(&ep, fixture!("gemini_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model, None);
    assert!(r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "You are terse."),
            msg("user", "What is in this image?\n[image]"),
            msg(
                "assistant",
                "A cat.\n[tool_call get_weather({\"city\":\"Paris\"})]"
            ),
            msg("tool", "{\"temp\":18}"),
            msg("user", "Thanks."),
        ]
    );
    let mut keys: Vec<&str> = r.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "maxOutputTokens",
            "safetySettings",
            "temperature",
            "thinkingConfig",
            "tools"
        ]
    );
    assert_eq!(r.params["maxOutputTokens"], json!(256));
    let plain = post(a, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert!(!a.parse_request(&plain, b"{\"contents\":[]}").stream);
}

#[test]
fn gemini_response() {
    let a = host("generativelanguage.googleapis.com");
    let ep = post(a, "/v1beta/models/gemini-2.5-flash:generateContent");
    let r = a.parse_response(&ep, fixture!("gemini_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(r.output, "The image shows a sleeping cat.");
    assert_eq!(r.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(1290),
            output_tokens: Some(54),
            cached_tokens: Some(1024),
            reasoning_tokens: Some(45),
            estimated: false
        }
    );
}

#[test]
fn gemini_sse_stream() {
    let a = host("generativelanguage.googleapis.com");
    let ep = post(
        a,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    );
    let r = stream_every_way(a, &ep, fixture!("gemini_stream.sse"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(r.output, "The sky is blue — ça va.");
    assert_eq!(r.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(8), Some(12))
    );
    assert_eq!(r.events, 3);
}

#[test]
fn gemini_json_array_stream() {
    let a = host("generativelanguage.googleapis.com");
    let ep = post(a, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    let body = fixture!("gemini_stream.json");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(r.output, "Paris: 18°C \\ clear");
    assert_eq!(r.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": null, "name": "get_forecast", "arguments": "{\"city\":\"Paris\",\"days\":[1,2]}"})
        ]
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(30),
            output_tokens: Some(60),
            cached_tokens: Some(16),
            reasoning_tokens: Some(40),
            estimated: false
        }
    );
    assert_eq!(r.events, 3);
    // The same array as a whole body (parse_response) gives the same content.
    let whole = a.parse_response(&ep, body);
    assert_eq!(whole.output, r.output);
    assert_eq!(whole.usage, r.usage);
    assert_eq!(whole.error, None);
    // Cut before the closing bracket: what was seen, and an error.
    let cut = &body[..body.len() - 1];
    let r = run(a, &ep, &[cut]);
    assert_eq!(r.output, "Paris: 18°C \\ clear");
    assert_eq!(r.error.as_deref(), Some("the stream ended mid-event"));
    // Cut inside the last element: the first two remain.
    let r = run(a, &ep, &[&body[..body.len() / 2 + 200]]);
    assert_eq!(r.output, "Paris: ");
    assert!(r.error.unwrap().contains("finishReason"));
}

#[test]
fn gemini_errors() {
    let a = host("generativelanguage.googleapis.com");
    let ep = post(a, "/v1beta/models/gemini-2.0-flash:streamGenerateContent");
    let expected = "INVALID_ARGUMENT: API key not valid. Please pass a valid API key.";
    let r = a.parse_response(&ep, fixture!("gemini_error.json"));
    assert_eq!(r.error.as_deref(), Some(expected));
    // Streamed error answers come as a one-element array.
    let mut array = b"[".to_vec();
    array.extend_from_slice(fixture!("gemini_error.json"));
    array.extend_from_slice(b"]");
    assert_eq!(
        a.parse_response(&ep, &array).error.as_deref(),
        Some(expected)
    );
    assert_eq!(run(a, &ep, &[&array]).error.as_deref(), Some(expected));
    assert_eq!(
        run(a, &ep, &[fixture!("gemini_error.json")])
            .error
            .as_deref(),
        Some(expected)
    );
    // A blocked prompt has no candidates but a block reason.
    let r = a.parse_response(
        &ep,
        br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":7}}"#,
    );
    assert_eq!(r.finish_reason.as_deref(), Some("SAFETY"));
    assert_eq!(r.usage.input_tokens, Some(7));
}

// ---------------------------------------------------------------------------------
// Garbage in: never a panic, always an explanation.
