//! AWS Bedrock Runtime: Converse, InvokeModel, their event streams, errors and prices.

use super::*;

const BEDROCK_HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

#[test]
fn bedrock_endpoints_name_the_model_from_the_raw_path() {
    let a = host(BEDROCK_HOST);
    for (op, streams) in [
        ("converse", false),
        ("converse-stream", true),
        ("invoke", false),
        ("invoke-with-response-stream", true),
    ] {
        let ep = post(a, &format!("/model/{}/{op}", HAIKU.replace(':', "%3A")));
        assert_eq!(
            ep,
            Endpoint {
                name: op,
                streaming_hint: streams,
                model_from_path: Some(HAIKU.into())
            }
        );
    }
    // Anthropic's SDK leaves `:` literal; ARNs arrive with `%2F`, which must not split.
    let ep = post(a, &format!("/model/{HAIKU}/invoke"));
    assert_eq!(ep.model_from_path.as_deref(), Some(HAIKU));
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0";
    let ep = post(
        a,
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0/converse",
    );
    assert_eq!(ep.model_from_path.as_deref(), Some(arn));
    for other in [
        "/model//converse",
        "/model/m/count-tokens",
        "/model/m/converse/extra",
        "/model/m",
        "/guardrail/g/version/1/apply",
        "/v1/messages",
    ] {
        assert!(a.endpoint("POST", other).is_none(), "{other}");
    }
    assert!(a.endpoint("GET", "/model/m/converse").is_none());
}

#[test]
fn bedrock_converse_request() {
    let a = host(BEDROCK_HOST);
    let ep = post(
        a,
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse",
    );
    let r = a.parse_request(&ep, fixture!("bedrock_converse_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(
        r.model.as_deref(),
        Some("anthropic.claude-sonnet-4-5-20250929-v1:0")
    );
    assert!(!r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "You are a weather bot."),
            msg("user", "What's the weather in Paris?\n[image]"),
            msg(
                "assistant",
                "Let me check.\n[tool_call get_weather({\"city\":\"Paris\"})]"
            ),
            msg("user", "{\"temp_c\":18}\ncloudy\nThanks. Anything else?"),
        ]
    );
    assert_eq!(r.params["inferenceConfig"]["temperature"], json!(0.2));
    assert_eq!(r.params["toolConfig"]["toolChoice"], json!({"auto": {}}));
    assert_eq!(r.params["requestMetadata"]["team"], "search");
    assert!(!r.params.contains_key("messages") && !r.params.contains_key("system"));
    assert_eq!(a.max_output_tokens(&r), Some(512));

    let stream = post(a, "/model/m/converse-stream");
    let r = a.parse_request(&stream, br#"{"messages":[{"role":"user","content":[{"text":"hi"},{"document":{"name":"d","format":"pdf","source":{"bytes":""}}}]}]}"#);
    assert!(r.stream);
    assert_eq!(r.messages, vec![msg("user", "hi\n[document]")]);
    assert_eq!(a.max_output_tokens(&r), None);
}

#[test]
fn bedrock_converse_response() {
    let a = host(BEDROCK_HOST);
    let ep = post(a, "/model/m/converse");
    let r = a.parse_response(&ep, fixture!("bedrock_converse_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.output, "It is 18 °C and cloudy in Paris.");
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": "tooluse_2rV0Sx1qS0y3bW3fGk2p9A", "name": "get_forecast", "arguments": "{\"city\":\"Paris\",\"days\":2}"})
        ]
    );
    assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
    // Cache writes are input; cache reads stay apart, as Bedrock reports them.
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(121),
            output_tokens: Some(57),
            cached_tokens: Some(1200),
            reasoning_tokens: None,
            estimated: false
        }
    );
    assert!(!a.cached_within_input());
}

#[test]
fn bedrock_converse_stream() {
    let a = host(BEDROCK_HOST);
    let ep = post(a, "/model/m/converse-stream");
    let body = fixture!("bedrock_converse_stream.bin");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.output, "Paris is 18 °C.");
    assert_eq!(
        r.tool_calls,
        vec![
            json!({"id": "tooluse_2rV0Sx1qS0y3bW3fGk2p9A", "name": "get_forecast", "arguments": "{\"city\": \"Paris\", \"days\": 2}"})
        ]
    );
    assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.cached_tokens
        ),
        (Some(25), Some(31), Some(400))
    );
    assert_eq!(r.events, 10);

    // The fixture is exactly what the encoder writes for the messages it holds.
    let mut dec = eventstream::Decoder::new();
    let mut again = Vec::new();
    dec.feed(body, &mut |m| {
        let headers: Vec<(&str, &str)> = m
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        again.extend(eventstream::encode(&headers, &m.payload));
    });
    assert_eq!(again, body);

    // Cut before `messageStop`: what was seen, and why it is incomplete.
    let r = run(a, &ep, &[&body[..body.len() / 2]]);
    assert_eq!(r.output, "Paris is 18 °C.");
    let e = r.error.unwrap();
    assert!(e.contains("before `messageStop`"), "{e}");
}

/// The first `n` event-stream messages of `body`.
fn first_messages(body: &[u8], n: usize) -> &[u8] {
    let mut end = 0;
    for _ in 0..n {
        let len: [u8; 4] = body[end..end + 4].try_into().unwrap();
        end += u32::from_be_bytes(len) as usize;
    }
    &body[..end]
}

#[test]
fn bedrock_stream_exceptions_become_errors() {
    let a = host(BEDROCK_HOST);
    let ep = post(a, "/model/m/converse-stream");
    let body = fixture!("bedrock_converse_stream.bin");
    let exception = eventstream::encode(
        &[
            (":message-type", "exception"),
            (":exception-type", "modelStreamErrorException"),
            (":content-type", "application/json"),
        ],
        br#"{"message":"Model stream error","originalStatusCode":500,"p":"abc"}"#,
    );
    let r = run(a, &ep, &[first_messages(body, 3), &exception]);
    assert_eq!(
        r.error.as_deref(),
        Some("modelStreamErrorException: Model stream error")
    );
    // Sluice's own in-stream error is what botocore raises `EventStreamError` from.
    let own = a.stream_error(429, "budget exhausted");
    let mut dec = eventstream::Decoder::new();
    let mut seen = Vec::new();
    dec.feed(&own, &mut |m| seen.push(m));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header(":message-type"), Some("exception"));
    assert_eq!(
        seen[0].header(":exception-type"),
        Some("throttlingException")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].payload).unwrap(),
        json!({"message": "budget exhausted"})
    );
    // A JSON error body answered on a streaming endpoint is read as such.
    let r = run(
        a,
        &ep,
        &[br#"{"message":"Too many requests, please wait before trying again."}"#],
    );
    assert_eq!(
        r.error.as_deref(),
        Some("Too many requests, please wait before trying again.")
    );
}

#[test]
fn bedrock_invoke_anthropic_body() {
    let a = host(BEDROCK_HOST);
    let ep = post(a, &format!("/model/{HAIKU}/invoke"));
    let r = a.parse_request(&ep, fixture!("bedrock_invoke_request.json"));
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some(HAIKU));
    assert!(!r.stream);
    assert_eq!(
        r.messages,
        vec![
            msg("system", "Answer in one sentence."),
            msg("user", "What is a sluice gate?")
        ]
    );
    assert_eq!(r.params["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(a.max_output_tokens(&r), Some(300));

    let r = a.parse_response(&ep, fixture!("bedrock_invoke_response.json"));
    assert_eq!(r.error, None);
    assert_eq!(
        r.output,
        "A sluice gate is a movable barrier that controls the flow of water in a channel."
    );
    assert_eq!(r.model.as_deref(), Some("claude-3-5-haiku-20241022"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(19), Some(18))
    );
    // Another model's native body: parameters and its prompt.
    let r = a.parse_request(
        &ep,
        br#"{"inputText":"Hello Titan","textGenerationConfig":{"maxTokenCount":50}}"#,
    );
    assert_eq!(r.messages, vec![msg("user", "Hello Titan")]);
    assert!(r.params.contains_key("textGenerationConfig"));
}

#[test]
fn bedrock_invoke_stream_feeds_anthropic_events() {
    let a = host(BEDROCK_HOST);
    let ep = post(a, &format!("/model/{HAIKU}/invoke-with-response-stream"));
    let body = fixture!("bedrock_invoke_stream.bin");
    let r = stream_every_way(a, &ep, body);
    assert_eq!(r.error, None);
    assert_eq!(r.output, "A sluice gate controls water.");
    assert_eq!(r.model.as_deref(), Some("claude-3-5-haiku-20241022"));
    assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(19), Some(6))
    );
    assert_eq!(r.events, 7);

    // Usage from the invocation metrics when the events carry none.
    let chunk = |inner: Value| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner.to_string());
        eventstream::encode(
            &[(":event-type", "chunk"), (":message-type", "event")],
            json!({"bytes": b64, "p": "abc"}).to_string().as_bytes(),
        )
    };
    let stream = [
        chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})),
        chunk(json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 11, "outputTokenCount": 2, "cacheReadInputTokenCount": 5}})),
    ]
    .concat();
    let r = run(a, &ep, &[&stream]);
    assert_eq!(r.output, "Hi");
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.cached_tokens
        ),
        (Some(11), Some(2), Some(5))
    );
    // A chunk that is not base64 is noted, not fatal.
    let bad = eventstream::encode(
        &[(":event-type", "chunk"), (":message-type", "event")],
        br#"{"bytes":"%%%"}"#,
    );
    let r = run(a, &ep, &[&bad, &stream]);
    assert_eq!(r.output, "Hi");
    assert!(r.error.unwrap().contains("not base64"));
}

#[test]
fn bedrock_error_replies_name_the_aws_exception() {
    let a = host(BEDROCK_HOST);
    for (status, kind) in [
        (400, "ValidationException"),
        (401, "AccessDeniedException"),
        (403, "AccessDeniedException"),
        (408, "ModelTimeoutException"),
        (413, "ValidationException"),
        (429, "ThrottlingException"),
        (503, "ServiceUnavailableException"),
        (500, "InternalServerException"),
        (421, "InternalServerException"),
    ] {
        let reply = a.error_reply(status, "refused");
        assert_eq!(reply.headers, vec![("x-amzn-ErrorType", kind.to_owned())]);
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.body).unwrap(),
            json!({"message": "refused"})
        );
    }
    let ep = post(a, "/model/m/invoke");
    let r = a.parse_response(
        &ep,
        br#"{"__type":"com.amazon.coral.service#ThrottlingException","message":"slow down"}"#,
    );
    assert_eq!(r.error.as_deref(), Some("ThrottlingException: slow down"));
}

#[test]
fn bedrock_inference_profiles_are_priced_as_their_model() {
    let a = host(BEDROCK_HOST);
    assert_eq!(a.price_model(HAIKU), HAIKU);
    assert_eq!(
        a.price_model("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        "anthropic.claude-sonnet-4-5-20250929-v1:0"
    );
    assert_eq!(
        a.price_model("global.anthropic.claude-haiku-4-5-20251001-v1:0"),
        "anthropic.claude-haiku-4-5-20251001-v1:0"
    );
    assert_eq!(
        a.price_model("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0"),
        "anthropic.claude-3-haiku-20240307-v1:0"
    );
    // Not a profile prefix, or nothing after it.
    assert_eq!(a.price_model("meta.llama3-70b"), "meta.llama3-70b");
    assert_eq!(a.price_model("us.x"), "us.x");
    assert_eq!(host("api.openai.com").price_model("us.gpt"), "us.gpt");
}
