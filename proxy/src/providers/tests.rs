//! Unit tests of the adapters over captured-shape fixtures
//! (`tests/fixtures/providers/`), of the stream framing and of the failure paths.

use base64::Engine as _;
use serde_json::{json, Value};

use super::sse::{JsonArrayDecoder, SseDecoder, MAX_LINE};
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/providers/",
            $name
        ))
        .as_slice()
    };
}

fn host(h: &str) -> &'static dyn Adapter {
    adapter_for_host(h).unwrap_or_else(|| panic!("no adapter for {h}"))
}

fn post(adapter: &dyn Adapter, path: &str) -> Endpoint {
    adapter
        .endpoint("POST", path)
        .unwrap_or_else(|| panic!("{} does not parse {path}", adapter.name()))
}

/// Deterministic pseudo-random numbers (no dependency, reproducible failures).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn run(adapter: &dyn Adapter, ep: &Endpoint, chunks: &[&[u8]]) -> ParsedResponse {
    let mut p = adapter.stream_parser(ep);
    for c in chunks {
        p.feed(c);
    }
    p.finish()
}

fn snapshot(r: &ParsedResponse) -> Value {
    serde_json::to_value(r).expect("ParsedResponse serialises")
}

/// Streams `body` whole, byte by byte and in several pseudo-random splits, checks
/// that every way gives the same result, and returns it.
fn stream_every_way(adapter: &dyn Adapter, ep: &Endpoint, body: &[u8]) -> ParsedResponse {
    let whole = run(adapter, ep, &[body]);
    let expected = snapshot(&whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        snapshot(&run(adapter, ep, &bytes)),
        expected,
        "byte by byte"
    );
    let mut rng = Lcg(7);
    for round in 0..8 {
        let mut chunks = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = (1 + rng.below(64)).min(rest.len());
            let (head, tail) = rest.split_at(n);
            chunks.push(head);
            rest = tail;
        }
        assert_eq!(
            snapshot(&run(adapter, ep, &chunks)),
            expected,
            "split round {round}"
        );
    }
    whole
}

fn sse_event_count(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.matches("\n\n").count() as u64
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

// ---------------------------------------------------------------------------------
// Host table, names, endpoints.

#[test]
fn host_table() {
    for (h, name) in [
        ("api.openai.com", "openai"),
        ("API.OpenAI.com.", "openai"),
        ("api.openai.com:443", "openai"),
        (" api.anthropic.com ", "anthropic"),
        ("generativelanguage.googleapis.com", "gemini"),
        ("my-resource.openai.azure.com", "azure_openai"),
        ("My-Resource.OpenAI.Azure.com:443", "azure_openai"),
        ("*.openai.azure.com", "azure_openai"),
        ("api.mistral.ai", "mistral"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "xai"),
        ("openrouter.ai", "openrouter"),
        ("api.together.xyz", "together"),
        ("api.fireworks.ai", "fireworks"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
        ("Bedrock-Runtime.EU-West-3.amazonaws.com:443", "bedrock"),
        (
            "bedrock-runtime-fips.us-gov-west-1.amazonaws.com",
            "bedrock",
        ),
    ] {
        assert_eq!(host(h).name(), name, "{h}");
    }
    for h in [
        "",
        "openai.azure.com",
        "evil-openai.azure.com",
        "api.openai.com.evil.example",
        "xapi.openai.com",
        "[::1]:443",
        "localhost",
        "bedrock-runtime.amazonaws.com",
        "bedrock.us-east-1.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com.evil.example",
    ] {
        assert!(adapter_for_host(h).is_none(), "{h}");
    }
}

#[test]
fn adapters_by_name() {
    for name in [
        "openai",
        "anthropic",
        "gemini",
        "azure_openai",
        "mistral",
        "groq",
        "deepseek",
        "xai",
        "openrouter",
        "together",
        "fireworks",
        "openai_compatible",
        "bedrock",
    ] {
        assert_eq!(adapter_by_name(name).map(|a| a.name()), Some(name));
    }
    assert_eq!(adapter_by_name("OpenAI").map(|a| a.name()), Some("openai"));
    assert!(adapter_by_name("vllm").is_none());
    let fallback = |n: &str| adapter_by_name(n).and_then(|a| a.price_fallback());
    assert_eq!(fallback("azure_openai"), Some("openai"));
    assert_eq!(fallback("openai_compatible"), Some("openai"));
    assert_eq!(fallback("openai"), None);
    assert_eq!(fallback("anthropic"), None);
    assert_eq!(fallback("gemini"), None);
}

#[test]
fn openai_format_endpoints() {
    let openai = host("api.openai.com");
    for (path, name) in [
        ("/v1/chat/completions", "chat.completions"),
        ("/v1/chat/completions?x=1", "chat.completions"),
        ("/v1/chat/completions/", "chat.completions"),
        ("/v1/responses", "responses"),
        ("/v1/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
    ] {
        assert_eq!(
            post(openai, path),
            Endpoint {
                name,
                streaming_hint: false,
                model_from_path: None
            }
        );
    }
    assert!(openai.endpoint("GET", "/v1/chat/completions").is_none());
    assert!(openai.endpoint("POST", "/v1/models").is_none());
    assert!(openai
        .endpoint("POST", "/v1/responses/resp_1/cancel")
        .is_none());
    assert!(openai.endpoint("POST", "/chat/completions").is_none());

    let groq = host("api.groq.com");
    assert_eq!(
        post(groq, "/openai/v1/chat/completions").name,
        "chat.completions"
    );
    assert!(groq.endpoint("POST", "/v1/chat/completions").is_none());
    assert_eq!(
        post(host("openrouter.ai"), "/api/v1/chat/completions").name,
        "chat.completions"
    );
    assert_eq!(
        post(host("api.fireworks.ai"), "/inference/v1/completions").name,
        "completions"
    );
    let deepseek = host("api.deepseek.com");
    assert_eq!(post(deepseek, "/chat/completions").name, "chat.completions");
    assert_eq!(
        post(deepseek, "/v1/chat/completions").name,
        "chat.completions"
    );
    assert_eq!(post(deepseek, "/beta/completions").name, "completions");

    let any = adapter_by_name("openai_compatible").unwrap();
    assert_eq!(post(any, "/v1/chat/completions").name, "chat.completions");
    assert_eq!(post(any, "/gateway/llm/v1/embeddings").name, "embeddings");
    assert!(any.endpoint("POST", "/api/generate").is_none());
}

#[test]
fn azure_deployment_paths() {
    let azure = host("contoso.openai.azure.com");
    let ep = post(
        azure,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
    );
    assert_eq!(ep.name, "chat.completions");
    assert_eq!(ep.model_from_path.as_deref(), Some("gpt4o-prod"));
    let ep = post(
        azure,
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
    );
    assert_eq!(
        (ep.name, ep.model_from_path.as_deref()),
        ("embeddings", Some("emb"))
    );
    assert_eq!(post(azure, "/openai/v1/responses").name, "responses");
    assert_eq!(
        post(azure, "/openai/responses?api-version=2025-04-01-preview").name,
        "responses"
    );
    assert!(azure
        .endpoint("POST", "/openai/deployments//chat/completions")
        .is_none());
    assert!(azure
        .endpoint("POST", "/openai/deployments/x/images/generations")
        .is_none());
}

#[test]
fn anthropic_and_gemini_endpoints() {
    let anthropic = host("api.anthropic.com");
    assert_eq!(post(anthropic, "/v1/messages?beta=true").name, "messages");
    assert!(anthropic
        .endpoint("POST", "/v1/messages/count_tokens")
        .is_none());
    assert!(anthropic.endpoint("GET", "/v1/messages").is_none());

    let gemini = host("generativelanguage.googleapis.com");
    assert_eq!(
        post(gemini, "/v1beta/models/gemini-2.0-flash:generateContent"),
        Endpoint {
            name: "generateContent",
            streaming_hint: false,
            model_from_path: Some("gemini-2.0-flash".into())
        }
    );
    assert_eq!(
        post(
            gemini,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=k"
        ),
        Endpoint {
            name: "streamGenerateContent",
            streaming_hint: true,
            model_from_path: Some("gemini-2.5-flash".into())
        }
    );
    let vertex = post(
        gemini,
        "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
    );
    assert_eq!(vertex.model_from_path.as_deref(), Some("gemini-2.5-pro"));
    let encoded = post(gemini, "/v1beta/models/gemini-2.0-flash%3AgenerateContent");
    assert_eq!(encoded.model_from_path.as_deref(), Some("gemini-2.0-flash"));
    assert!(gemini
        .endpoint("POST", "/v1beta/models/gemini-2.0-flash:countTokens")
        .is_none());
    assert!(gemini.endpoint("POST", "/v1beta/models").is_none());
    assert!(gemini
        .endpoint("GET", "/v1beta/models/gemini-2.0-flash:generateContent")
        .is_none());
}

// ---------------------------------------------------------------------------------
// OpenAI chat completions.

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
// AWS Bedrock Runtime.

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

// ---------------------------------------------------------------------------------
// Garbage in: never a panic, always an explanation.

fn all_endpoints() -> Vec<(&'static dyn Adapter, Endpoint)> {
    let openai = host("api.openai.com");
    let gemini = host("generativelanguage.googleapis.com");
    let anthropic = host("api.anthropic.com");
    let bedrock = host("bedrock-runtime.us-east-1.amazonaws.com");
    vec![
        (openai, post(openai, "/v1/chat/completions")),
        (openai, post(openai, "/v1/responses")),
        (openai, post(openai, "/v1/completions")),
        (openai, post(openai, "/v1/embeddings")),
        (anthropic, post(anthropic, "/v1/messages")),
        (gemini, post(gemini, "/v1beta/models/m:generateContent")),
        (
            gemini,
            post(gemini, "/v1beta/models/m:streamGenerateContent"),
        ),
        (bedrock, post(bedrock, "/model/m/converse")),
        (bedrock, post(bedrock, "/model/m/converse-stream")),
        (bedrock, post(bedrock, "/model/m/invoke")),
        (
            bedrock,
            post(bedrock, "/model/m/invoke-with-response-stream"),
        ),
    ]
}

#[test]
fn malformed_requests_set_error() {
    for (a, ep) in all_endpoints() {
        let r = a.parse_request(&ep, b"{\"model\": \"gpt-4o\", \"messages\": [");
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .starts_with("request body is not valid JSON"),
            "{}",
            a.name()
        );
        // A model named by the path is known whatever the body says.
        assert!(r.messages.is_empty() && (r.model.is_none() || r.model == ep.model_from_path));
        assert_eq!(
            a.parse_request(&ep, b"[1, 2]").error.as_deref(),
            Some("request body is a JSON array, not an object")
        );
        assert_eq!(
            a.parse_request(&ep, b"  ").error.as_deref(),
            Some("request body is empty")
        );
        assert_eq!(
            a.parse_request(&ep, &[0x1f, 0x8b, 8, 0, 1, 2])
                .error
                .as_deref(),
            Some("request body is gzip-compressed and was not decoded")
        );
        assert!(a
            .parse_request(&ep, &[0xff, 0xfe, 0x00, 0x80])
            .error
            .is_some());
    }
    let a = host("api.openai.com");
    let r = a.parse_request(
        &post(a, "/v1/chat/completions"),
        br#"{"model":"x","messages":"hi","stream":"yes"}"#,
    );
    assert_eq!(r.error.as_deref(), Some("`messages` is not an array"));
    assert!(!r.stream);
    assert_eq!(r.params["stream"], json!("yes"));
}

#[test]
fn malformed_responses_set_error() {
    for (a, ep) in all_endpoints() {
        let truncated = &fixture!("openai_chat_response.json")[..300];
        let r = a.parse_response(&ep, truncated);
        assert!(
            r.error.as_deref().unwrap().contains("not valid JSON"),
            "{}",
            a.name()
        );
        assert!(a.parse_response(&ep, b"").error.is_some());
        assert!(a
            .parse_response(&ep, b"\x00\x01\x02garbage\xff")
            .error
            .is_some());
        // Valid JSON of an unexpected shape: no panic, nothing invented.
        for body in [
            &b"42"[..],
            b"null",
            b"[]",
            b"{\"choices\": 7, \"usage\": \"x\"}",
        ] {
            let r = a.parse_response(&ep, body);
            assert_eq!(r.output, "");
            assert!(r.tool_calls.is_empty());
        }
    }
}

#[test]
fn truncated_and_garbage_streams_set_error() {
    let a = host("api.openai.com");
    let ep = post(a, "/v1/chat/completions");
    let body = fixture!("openai_chat_stream.sse");
    // Cut mid-line inside the third event.
    let at = body
        .windows(4)
        .position(|w| w == " wö".as_bytes())
        .expect("fixture has the third delta")
        + 3;
    let r = run(a, &ep, &[&body[..at]]);
    assert_eq!(r.output, "Hello,");
    let e = r.error.unwrap();
    assert!(e.contains("[DONE]"), "{e}");
    assert!(e.contains("not valid JSON"), "{e}");

    // Binary garbage.
    let mut rng = Lcg(42);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    for (a, ep) in all_endpoints() {
        let r = run(a, &ep, &[&garbage]);
        assert!(r.error.is_some(), "{}", a.name());
        assert_eq!(r.output, "");
    }
    // Nothing at all.
    let r = run(a, &ep, &[]);
    assert_eq!(r.error.as_deref(), Some("the stream carried no data"));
    // SSE that is not JSON.
    let r = run(a, &ep, &[b"data: hello\n\ndata: {oops\n\ndata: [DONE]\n\n"]);
    let e = r.error.unwrap();
    assert!(
        e.contains("SSE event 1: data is not JSON") && e.contains("SSE event 2"),
        "{e}"
    );
    assert_eq!(r.events, 3);
}

#[test]
fn fuzzed_inputs_never_panic() {
    let fixtures: [&[u8]; 10] = [
        fixture!("openai_chat_stream.sse"),
        fixture!("openai_chat_stream_tools.sse"),
        fixture!("openai_responses_stream.sse"),
        fixture!("anthropic_stream.sse"),
        fixture!("gemini_stream.sse"),
        fixture!("gemini_stream.json"),
        fixture!("anthropic_request.json"),
        fixture!("openai_responses_response.json"),
        fixture!("bedrock_converse_stream.bin"),
        fixture!("bedrock_invoke_stream.bin"),
    ];
    let alphabet = b"{}[]\":,\\ \r\n\tdata:event:[DONE]0123456789abc\xc3\xa9\xff";
    let mut rng = Lcg(1);
    for round in 0..150 {
        // Mutate a fixture, or make noise from a JSON/SSE-ish alphabet.
        let body: Vec<u8> = if round % 2 == 0 {
            let mut b = fixtures[rng.below(fixtures.len())].to_vec();
            for _ in 0..1 + rng.below(20) {
                let i = rng.below(b.len());
                b[i] = alphabet[rng.below(alphabet.len())];
            }
            b.truncate(rng.below(b.len() + 1));
            b
        } else {
            (0..rng.below(600))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        for (a, ep) in all_endpoints() {
            let _ = a.parse_request(&ep, &body);
            let _ = a.parse_response(&ep, &body);
            let mut p = a.stream_parser(&ep);
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let n = (1 + rng.below(40)).min(rest.len());
                p.feed(&rest[..n]);
                rest = &rest[n..];
            }
            let _ = p.finish();
        }
    }
}

// ---------------------------------------------------------------------------------
// Framing.

fn sse_events(chunks: &[&[u8]]) -> (Vec<(String, String)>, bool, Option<String>) {
    let mut dec = SseDecoder::new();
    let mut out = Vec::new();
    let mut push = |e: &str, d: &str| out.push((e.to_owned(), d.to_owned()));
    for c in chunks {
        dec.feed(c, &mut push);
    }
    let cut = dec.finish(&mut push);
    (out, cut, dec.problems.render())
}

fn ev(e: &str, d: &str) -> (String, String) {
    (e.to_owned(), d.to_owned())
}

#[test]
fn sse_framing_rules() {
    let (events, cut, problems) = sse_events(&[
        b"\xEF\xBB\xBFdata: a\ndata:b\ndata:  c\n\n: keep-alive\n\nevent: delta\ndata: x\nid: 7\nretry: 10\n\nevent: ignored-no-data\n\ndata\n\n",
    ]);
    assert_eq!(
        events,
        vec![
            ev("message", "a\nb\n c"),
            ev("delta", "x"),
            ev("message", "")
        ]
    );
    assert!(!cut);
    assert_eq!(problems, None);

    // `\r\n` split across chunks, and lone `\r`.
    let (events, _, _) = sse_events(&[b"data: x\r", b"\n\r", b"\ndata: y\r\rdata: z\r", b"\r"]);
    assert_eq!(
        events,
        vec![ev("message", "x"), ev("message", "y"), ev("message", "z")]
    );

    // A UTF-8 character split across chunks.
    let (events, _, _) = sse_events(&[b"data: caf\xC3", b"\xA9\n\n"]);
    assert_eq!(events, vec![ev("message", "café")]);

    // A pending event at the end is delivered and reported as cut.
    let (events, cut, _) = sse_events(&[b"data: 1\n\ndata: 2"]);
    assert_eq!(events, vec![ev("message", "1"), ev("message", "2")]);
    assert!(cut);
}

#[test]
fn sse_overlong_line_is_dropped() {
    let big = vec![b'a'; MAX_LINE + 10];
    let mut body = b"data: ".to_vec();
    body.extend_from_slice(&big);
    body.extend_from_slice(b"\n\ndata: ok\n\n");
    // Whole, and in 64 KiB pieces (the line then spans many chunks).
    for size in [body.len(), 64 * 1024] {
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        let (events, _, problems) = sse_events(&chunks);
        assert_eq!(events, vec![ev("message", "ok")], "chunk size {size}");
        assert!(problems.unwrap().contains("SSE line over"));
    }
}

#[test]
fn json_array_framing() {
    let body = br#" [ {"a":"]}\"[","n":[1,{"b":2}]} ,
{"c":"\\"}
]"#;
    let expected = vec![
        r#"{"a":"]}\"[","n":[1,{"b":2}]}"#.to_owned(),
        r#"{"c":"\\"}"#.to_owned(),
    ];
    for split in 0..=body.len() {
        let mut dec = JsonArrayDecoder::new();
        let mut got = Vec::new();
        let mut push = |b: &[u8]| got.push(String::from_utf8_lossy(b).into_owned());
        dec.feed(&body[..split], &mut push);
        dec.feed(&body[split..], &mut push);
        assert!(!dec.finish(), "split {split}");
        assert_eq!(got, expected, "split {split}");
        assert_eq!(dec.problems.render(), None);
    }
    let mut dec = JsonArrayDecoder::new();
    dec.feed(b"[{\"a\":1}, nonsense {\"b\"", &mut |_| {});
    assert!(dec.finish());
    assert!(dec.problems.render().unwrap().contains("unexpected bytes"));
}

// ---------------------------------------------------------------------------------
// Helpers with public faces.

#[test]
fn estimate_tokens_uses_o200k() {
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("hello world"), 2);
    assert_eq!(estimate_tokens("Hello, world!"), 4);
    // Slicing long text changes the count negligibly.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(2000);
    let n = estimate_tokens(&text);
    assert!((19_900..=20_100).contains(&n), "{n}");
    // Pathological input (one huge run of letters, of spaces, of multi-byte characters)
    // is encoded in short slices, which keeps BPE's quadratic merging linear overall, and
    // counts sanely.
    for blob in [
        "a".repeat(300_000),
        " ".repeat(300_000),
        "é".repeat(150_000),
    ] {
        let slices: Vec<&str> = super::token_slices(&blob).collect();
        assert_eq!(slices.concat(), blob);
        assert!(
            slices.iter().all(|s| s.len() <= 258),
            "{}",
            slices.iter().map(|s| s.len()).max().unwrap_or(0)
        );
        let n = estimate_tokens(&blob);
        assert!(n > 0 && n < 300_000, "{n}");
    }
    // Ordinary text: slices of about 8 KiB, cut at whitespace.
    let slices: Vec<&str> = super::token_slices(&text).collect();
    assert_eq!(slices.concat(), text);
    assert!(slices.len() > 5 && slices.iter().all(|s| s.len() <= 8 * 1024 + 64));
    assert!(slices[1..].iter().all(|s| s.starts_with(' ')));
}

#[test]
fn event_stream_content_types() {
    assert!(looks_like_event_stream("text/event-stream"));
    assert!(looks_like_event_stream("text/event-stream; charset=utf-8"));
    assert!(looks_like_event_stream(" Text/Event-Stream ;charset=UTF-8"));
    assert!(!looks_like_event_stream("application/json"));
    assert!(!looks_like_event_stream("text/event-streams"));
    assert!(!looks_like_event_stream(""));
}
