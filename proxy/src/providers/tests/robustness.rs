//! Malformed, truncated and random input: an error is set, nothing panics.

use super::*;

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
