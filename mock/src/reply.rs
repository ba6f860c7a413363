//! What every provider shares: routing, the `x-mock-*` controls, the deterministic reply
//! and its usage, ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::Value;

use super::body::MockBody;
use super::{anthropic, bedrock, gemini, openai, JsonBody, MockOptions};

/// Most content chunks `x-mock-chunks` may ask for.
const MAX_CHUNKS: usize = 100_000;
/// Longest pause `x-mock-delay-ms` may ask for.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest reply `x-mock-body-bytes` may ask for.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Characters of the last user message quoted in the default reply.
const QUOTED_CHARS: usize = 64;
/// Text appended to reach `x-mock-body-bytes`.
const FILLER: &str =
    " lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor";

/// The API family a route belongs to, which decides the shape of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Provider {
    /// An error answer in this provider's JSON shape.
    pub(crate) fn error(self, status: StatusCode, message: &str) -> Response<MockBody> {
        match self {
            Self::OpenAi => openai::error(status, message),
            Self::Anthropic => anthropic::error(status, message),
            Self::Gemini => gemini::error(status, message),
            Self::Bedrock => bedrock::error(status, message),
        }
    }
}

/// An endpoint the mock answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    /// `GET …/models`: OpenAI's list, or Anthropic's when `anthropic-version` is sent.
    Models,
    Messages,
    CountTokens,
    /// `…/models/{model}:generateContent` or `:streamGenerateContent`.
    Gemini {
        model: String,
        stream: bool,
        sse: bool,
    },
    /// `GET /v1beta/models`.
    GeminiModels,
    /// `/model/{modelId}/{operation}` (Bedrock Runtime), the model percent-decoded.
    Bedrock {
        model: String,
        operation: bedrock::Operation,
    },
}

/// A matched request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub endpoint: Endpoint,
    /// The Azure deployment, the model when the body names none.
    pub deployment: Option<String>,
}

impl Route {
    /// The one method the endpoint accepts.
    pub(crate) fn method(&self) -> Method {
        match self.endpoint {
            Endpoint::Models | Endpoint::GeminiModels => Method::GET,
            _ => Method::POST,
        }
    }

    /// Whose error shape this route answers with.
    pub(crate) fn provider(&self, headers: &HeaderMap) -> Provider {
        match self.endpoint {
            Endpoint::Messages | Endpoint::CountTokens => Provider::Anthropic,
            Endpoint::Models if headers.contains_key("anthropic-version") => Provider::Anthropic,
            Endpoint::Gemini { .. } | Endpoint::GeminiModels => Provider::Gemini,
            Endpoint::Bedrock { .. } => Provider::Bedrock,
            _ => Provider::OpenAi,
        }
    }

    /// The successful answer to a request on this route.
    pub(crate) fn respond(
        &self,
        body: &JsonBody,
        controls: &Controls,
        headers: &HeaderMap,
    ) -> Response<MockBody> {
        let deployment = self.deployment.as_deref();
        match &self.endpoint {
            Endpoint::ChatCompletions => openai::chat_completions(body, controls, deployment),
            Endpoint::Responses => openai::responses(body, controls, deployment),
            Endpoint::Completions => openai::completions(body, controls, deployment),
            Endpoint::Embeddings => openai::embeddings(body, controls, deployment),
            Endpoint::Models if self.provider(headers) == Provider::Anthropic => {
                anthropic::models()
            }
            Endpoint::Models => openai::models(),
            Endpoint::Messages => anthropic::messages(body, controls),
            Endpoint::CountTokens => anthropic::count_tokens(body),
            Endpoint::Gemini { model, stream, sse } => {
                gemini::generate(model, *stream, *sse, body, controls)
            }
            Endpoint::GeminiModels => gemini::models(),
            Endpoint::Bedrock { model, operation } => {
                bedrock::respond(model, *operation, body, controls)
            }
        }
    }
}

/// Match a request path (without its query) to an endpoint.
///
/// Bedrock's `/model/{modelId}/{operation}` is matched first, on the raw path (its model
/// id may hold an escaped `/` or a literal `:`). Other known prefixes are stripped (`/v1`, Groq's `/openai/v1`, OpenRouter's `/api/v1`,
/// Gemini's OpenAI-compatible `/v1beta/openai`, Azure's `/openai/deployments/{d}`) and
/// the rest matched; Gemini's `…/models/{model}:action` is matched wherever it sits, so
/// Vertex paths work too.
pub(crate) fn route(path: &str, query: Option<&str>) -> Option<Route> {
    let path = path.trim_end_matches('/');
    if let Some(rest) = path.strip_prefix("/model/") {
        let (label, op) = rest.split_once('/')?;
        let operation = bedrock::Operation::from_segment(op)?;
        return (!label.is_empty()).then(|| Route {
            endpoint: Endpoint::Bedrock {
                model: bedrock::percent_decoded(label),
                operation,
            },
            deployment: None,
        });
    }
    if let Some((before, action)) = path.rsplit_once(':') {
        let stream = match action {
            "generateContent" => false,
            "streamGenerateContent" => true,
            _ => return None,
        };
        let (_, model) = before.rsplit_once("/models/")?;
        if model.is_empty() || model.contains('/') {
            return None;
        }
        let sse = query
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.eq_ignore_ascii_case("alt=sse"));
        return Some(Route {
            endpoint: Endpoint::Gemini {
                model: model.to_owned(),
                stream,
                sse,
            },
            deployment: None,
        });
    }
    if path == "/v1beta/models" {
        return Some(Route {
            endpoint: Endpoint::GeminiModels,
            deployment: None,
        });
    }
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, suffix) = rest.split_once('/')?;
        return openai_suffix(&format!("/{suffix}")).map(|endpoint| Route {
            endpoint,
            deployment: (!deployment.is_empty()).then(|| deployment.to_owned()),
        });
    }
    [
        "/openai/v1",
        "/v1beta/openai",
        "/api/v1",
        "/v1",
        "/openai",
        "",
    ]
    .iter()
    .filter_map(|prefix| path.strip_prefix(prefix))
    .find_map(openai_suffix)
    .map(|endpoint| Route {
        endpoint,
        deployment: None,
    })
}

fn openai_suffix(suffix: &str) -> Option<Endpoint> {
    Some(match suffix {
        "/chat/completions" => Endpoint::ChatCompletions,
        "/responses" => Endpoint::Responses,
        "/completions" => Endpoint::Completions,
        "/embeddings" => Endpoint::Embeddings,
        "/models" => Endpoint::Models,
        "/messages" => Endpoint::Messages,
        "/messages/count_tokens" => Endpoint::CountTokens,
        _ => return None,
    })
}

/// The per-request controls, from `x-mock-*` headers over [`MockOptions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Controls {
    /// Content chunks, at least 1.
    pub chunks: usize,
    /// Pause between streamed frames.
    pub delay: Duration,
    /// An error status to answer with instead.
    pub status: Option<StatusCode>,
    /// Whether usage is reported.
    pub usage: bool,
    /// The reply text, replacing the default one.
    pub content: Option<String>,
    /// The reply text's length after padding.
    pub body_bytes: Option<usize>,
}

impl Controls {
    /// Read the controls; malformed values are ignored (and logged at debug level).
    pub(crate) fn from_headers(headers: &HeaderMap, opts: &MockOptions) -> Self {
        let number = |name: &str| -> Option<u64> {
            let value = headers.get(name)?;
            let parsed = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if parsed.is_none() {
                tracing::debug!(header = name, ?value, "ignoring a malformed mock control");
            }
            parsed
        };
        let clamp = |n: u64, max: usize| usize::try_from(n).unwrap_or(usize::MAX).min(max);
        let chunks = number("x-mock-chunks").map_or(opts.default_chunks, |n| clamp(n, MAX_CHUNKS));
        let delay = number("x-mock-delay-ms").map_or(opts.chunk_delay, |ms| {
            Duration::from_millis(ms).min(MAX_DELAY)
        });
        let status = number("x-mock-status")
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (400..=599).contains(s))
            .and_then(|s| StatusCode::from_u16(s).ok());
        let no_usage = headers
            .get("x-mock-no-usage")
            .is_some_and(|v| !matches!(v.as_bytes(), b"0" | b"false" | b""));
        Self {
            chunks: chunks.clamp(1, MAX_CHUNKS),
            delay,
            status,
            usage: !no_usage,
            content: headers
                .get("x-mock-content")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body_bytes: number("x-mock-body-bytes").map(|n| clamp(n, MAX_BODY_BYTES)),
        }
    }
}

/// The human-readable message of an `x-mock-status` error.
pub(crate) fn status_message(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!(
            "Mock error {} {reason} (requested with x-mock-status).",
            status.as_u16()
        ),
        None => format!(
            "Mock error {} (requested with x-mock-status).",
            status.as_u16()
        ),
    }
}

/// What the request said, as far as the reply depends on it.
#[derive(Debug, Default)]
pub(crate) struct Prompt {
    /// Text of the last user message.
    pub last_user: String,
    /// Whitespace-separated words across every input message.
    pub words: u64,
}

impl Prompt {
    /// Take in one message: its content (a string, or an array of strings or parts with a
    /// `text`), and whether the user sent it.
    pub(crate) fn message(&mut self, content: &Value, from_user: bool) {
        let texts = texts(content);
        self.words += texts
            .iter()
            .map(|t| t.split_whitespace().count() as u64)
            .sum::<u64>();
        if from_user {
            self.last_user = texts.join(" ");
        }
    }

    /// Take in every message of a chat body's `messages` array (OpenAI, Anthropic): a
    /// `role: user` one is the user's.
    pub(crate) fn messages(&mut self, body: &Value) {
        for message in body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let from_user = message.get("role").and_then(Value::as_str) == Some("user");
            self.message(message.get("content").unwrap_or(&Value::Null), from_user);
        }
    }
}

/// The text pieces of a content value: a string, or an array of strings and of objects
/// with a string `text` (OpenAI parts, Anthropic blocks, Gemini parts).
fn texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The reply: its text, chunks and usage.
#[derive(Debug)]
pub(crate) struct Reply {
    pub model: String,
    pub text: String,
    /// The text split into the requested number of chunks.
    pub chunks: Vec<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Whether usage is reported.
    pub usage: bool,
    /// Pause between streamed frames.
    pub delay: Duration,
}

impl Reply {
    pub(crate) fn new(
        model: String,
        prompt: &Prompt,
        body: &JsonBody,
        controls: &Controls,
    ) -> Self {
        let mut text = controls.content.clone().unwrap_or_else(|| {
            let quoted: String = prompt.last_user.chars().take(QUOTED_CHARS).collect();
            format!("Mock reply to: {quoted}")
        });
        if let Some(target) = controls.body_bytes {
            pad(&mut text, target);
        }
        let chunks = split_chunks(&text, controls.chunks);
        Self {
            model,
            input_tokens: body.estimated_tokens.unwrap_or(prompt.words).max(1),
            output_tokens: chunks.len() as u64,
            text,
            chunks,
            usage: controls.usage,
            delay: controls.delay,
        }
    }

    pub(crate) fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Split `text` on character boundaries into exactly `n` (at least 1) chunks of as even a
/// length in characters as possible; they concatenate to `text`. When `text` has fewer
/// characters than `n`, some chunks are empty.
pub(crate) fn split_chunks(text: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    let starts: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = starts.len() - 1;
    (0..n)
        .map(|i| text[starts[i * chars / n]..starts[(i + 1) * chars / n]].to_owned())
        .collect()
}

/// Pad `text` with filler words to exactly `target` bytes; a longer text is left alone.
fn pad(text: &mut String, target: usize) {
    if text.len() >= target {
        return;
    }
    text.reserve(target - text.len());
    while text.len() < target {
        let room = target - text.len();
        // The filler is ASCII, so any prefix of it is whole characters.
        text.push_str(&FILLER[..room.min(FILLER.len())]);
    }
}

/// The model named in the body, else the deployment, else a placeholder.
pub(crate) fn model_of(body: &JsonBody, deployment: Option<&str>) -> String {
    body.value
        .get("model")
        .and_then(Value::as_str)
        .or(deployment)
        .unwrap_or("mock-model")
        .to_owned()
}

/// Whether the body asks for a stream (`"stream": true`).
pub(crate) fn wants_stream(body: &JsonBody) -> bool {
    body.value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random-looking alphanumeric id of `len` characters, unique within the process.
pub(crate) fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    let mut state = seed
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(len);
    let mut bits = 0u64;
    for i in 0..len {
        if i % 10 == 0 {
            bits = splitmix64(&mut state);
        }
        out.push(char::from(ALPHABET[(bits % 62) as usize]));
        bits /= 62;
    }
    out
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_chunks_is_exact_and_even() {
        let text = "héllo wörld, ünïcode ✓";
        for n in 1..40 {
            let chunks = split_chunks(text, n);
            assert_eq!(chunks.len(), n);
            assert_eq!(chunks.concat(), text);
            let lens: Vec<usize> = chunks.iter().map(|c| c.chars().count()).collect();
            let (min, max) = (lens.iter().min().copied(), lens.iter().max().copied());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{lens:?}"
            );
        }
        assert_eq!(split_chunks("", 3), vec!["", "", ""]);
        assert_eq!(split_chunks("abc", 0), vec!["abc"]);
    }

    #[test]
    fn pad_reaches_the_exact_length() {
        let mut text = String::from("Mock reply to: hi");
        pad(&mut text, 1000);
        assert_eq!(text.len(), 1000);
        assert!(text.starts_with("Mock reply to: hi lorem ipsum"));
        let mut short = String::from("already long enough");
        pad(&mut short, 5);
        assert_eq!(short, "already long enough");
    }

    #[test]
    fn routes() {
        let r = |p: &str, q: Option<&str>| route(p, q).map(|r| (r.endpoint, r.deployment));
        assert_eq!(
            r("/v1/chat/completions", None),
            Some((Endpoint::ChatCompletions, None))
        );
        assert_eq!(
            r("/openai/v1/chat/completions", None),
            Some((Endpoint::ChatCompletions, None))
        );
        assert_eq!(
            r("/api/v1/chat/completions", None),
            Some((Endpoint::ChatCompletions, None))
        );
        assert_eq!(
            r("/chat/completions", None),
            Some((Endpoint::ChatCompletions, None))
        );
        assert_eq!(
            r(
                "/openai/deployments/my-gpt/chat/completions",
                Some("api-version=2024-10-21")
            ),
            Some((Endpoint::ChatCompletions, Some("my-gpt".into())))
        );
        assert_eq!(r("/v1/responses", None), Some((Endpoint::Responses, None)));
        assert_eq!(
            r("/v1/completions", None),
            Some((Endpoint::Completions, None))
        );
        assert_eq!(
            r("/v1/embeddings", None),
            Some((Endpoint::Embeddings, None))
        );
        assert_eq!(r("/v1/models", None), Some((Endpoint::Models, None)));
        assert_eq!(r("/v1/messages", None), Some((Endpoint::Messages, None)));
        assert_eq!(
            r("/v1/messages/count_tokens", None),
            Some((Endpoint::CountTokens, None))
        );
        assert_eq!(
            r(
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                Some("alt=sse&key=k")
            ),
            Some((
                Endpoint::Gemini {
                    model: "gemini-2.0-flash".into(),
                    stream: true,
                    sse: true
                },
                None
            ))
        );
        assert_eq!(
            r(
                "/v1/projects/p/locations/us/publishers/google/models/gemini-pro:generateContent",
                None
            ),
            Some((
                Endpoint::Gemini {
                    model: "gemini-pro".into(),
                    stream: false,
                    sse: false
                },
                None
            ))
        );
        assert_eq!(r("/v1beta/models/x:countTokens", None), None);
        assert_eq!(r("/v1/unknown", None), None);
        assert_eq!(r("/", None), None);
    }

    #[test]
    fn controls_from_headers() {
        let opts = MockOptions::default();
        let mut headers = HeaderMap::new();
        assert_eq!(
            Controls::from_headers(&headers, &opts),
            Controls {
                chunks: 8,
                delay: Duration::ZERO,
                status: None,
                usage: true,
                content: None,
                body_bytes: None
            }
        );
        headers.insert("x-mock-chunks", "3".parse().unwrap());
        headers.insert("x-mock-delay-ms", "25".parse().unwrap());
        headers.insert("x-mock-status", "429".parse().unwrap());
        headers.insert("x-mock-no-usage", "1".parse().unwrap());
        headers.insert("x-mock-content", "secret sk-123".parse().unwrap());
        headers.insert("x-mock-body-bytes", "4096".parse().unwrap());
        let c = Controls::from_headers(&headers, &opts);
        assert_eq!(c.chunks, 3);
        assert_eq!(c.delay, Duration::from_millis(25));
        assert_eq!(c.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(!c.usage);
        assert_eq!(c.content.as_deref(), Some("secret sk-123"));
        assert_eq!(c.body_bytes, Some(4096));
        headers.insert("x-mock-chunks", "0".parse().unwrap());
        headers.insert("x-mock-status", "200".parse().unwrap());
        headers.insert("x-mock-delay-ms", "soon".parse().unwrap());
        let c = Controls::from_headers(&headers, &opts);
        assert_eq!((c.chunks, c.status, c.delay), (1, None, Duration::ZERO));
    }

    #[test]
    fn ids_are_alphanumeric_and_distinct() {
        let a = random_id(24);
        let b = random_id(24);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
