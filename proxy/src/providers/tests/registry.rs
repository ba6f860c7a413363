//! Host table, adapter names and each adapter's endpoints.

use super::*;

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
