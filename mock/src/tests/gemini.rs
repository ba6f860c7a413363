//! Gemini generateContent and streams.

use super::*;

#[tokio::test]
async fn gemini_generate_plain_and_streams() {
    let mock = start(MockOptions::default()).await;
    let base = "/v1beta/models/gemini-2.0-flash";
    let v = post(
        &mock,
        &format!("{base}:generateContent?key=k"),
        &[],
        gemini_body(),
    )
    .await
    .json();
    assert_eq!(v["candidates"][0]["content"]["role"], "model");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply to: Explain sluices"
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert_eq!(
        (
            &v["usageMetadata"]["promptTokenCount"],
            &v["usageMetadata"]["candidatesTokenCount"],
            &v["usageMetadata"]["totalTokenCount"]
        ),
        (&json!(2 + 2 + 1 + 2), &json!(8), &json!(15))
    );

    let a = post(
        &mock,
        &format!("{base}:streamGenerateContent?alt=sse"),
        &[("x-mock-chunks", "3")],
        gemini_body(),
    )
    .await;
    assert_streamed(&a);
    assert!(a.text.ends_with("\r\n\r\n"));
    let (chunks, done) = sse_data(&a.text);
    assert!(!done);
    assert_eq!(chunks.len(), 3);
    let text: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: Explain sluices");
    assert!(chunks[..2].iter().all(|c| c.get("usageMetadata").is_none()));
    assert!(chunks[..2]
        .iter()
        .all(|c| c["candidates"][0].get("finishReason").is_none()));
    assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(chunks[2]["usageMetadata"]["candidatesTokenCount"], 3);

    let a = post(
        &mock,
        &format!("{base}:streamGenerateContent"),
        &[("x-mock-chunks", "3")],
        gemini_body(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("content-length").is_none());
    assert!(a.text.starts_with("[{") && a.text.contains("},\r\n{") && a.text.ends_with("}]"));
    let array: Vec<Value> = serde_json::from_str(&a.text).unwrap();
    assert_eq!(array.len(), 3);
    let text: String = array
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: Explain sluices");
    assert_eq!(array[2]["usageMetadata"], chunks[2]["usageMetadata"]);
}

// ---- controls and errors --------------------------------------------------------
