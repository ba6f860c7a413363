//! Error shapes, the x-mock-* controls, request recording and large bodies.

use super::*;

#[tokio::test]
async fn error_shapes() {
    let mock = start(MockOptions::default()).await;
    let a = post(&mock, CHAT, &[("x-mock-status", "429")], chat_body(false)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let v = a.json();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("429"));

    let a = post(&mock, CHAT, &[("x-mock-status", "500")], chat_body(true)).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.json()["error"]["type"], "server_error");

    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-status", "529")],
        anthropic_body(true),
    )
    .await;
    assert_eq!(a.status.as_u16(), 529);
    let v = a.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(v["error"]["message"].is_string());

    let path = "/v1beta/models/gemini-2.0-flash:generateContent";
    let a = post(&mock, path, &[("x-mock-status", "429")], gemini_body()).await;
    assert_eq!(
        a.json()["error"],
        json!({"code": 429, "message": reply::status_message(StatusCode::TOO_MANY_REQUESTS), "status": "RESOURCE_EXHAUSTED"})
    );

    let a = call(&mock, "POST", "/v1/messages", &[], "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert_eq!(a.json()["type"], "error");
    let a = call(&mock, "POST", path, &[], "[1,2]").await;
    assert_eq!(
        (a.status, a.json()["error"]["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    let a = call(&mock, "POST", CHAT, &[], "").await;
    assert_eq!(
        (a.status, a.json()["error"]["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request_error"))
    );

    let a = call(&mock, "POST", "/v2/nothing", &[], "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json()["error"]["message"],
        "Invalid URL (POST /v2/nothing)"
    );
    let a = call(&mock, "GET", CHAT, &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn content_usage_and_padding_controls() {
    let mock = start(MockOptions::default()).await;
    let secret = "AKIAIOSFODNN7EXAMPLE is the key";
    let a = post(
        &mock,
        CHAT,
        &[
            ("x-mock-content", secret),
            ("x-mock-no-usage", "1"),
            ("x-mock-chunks", "6"),
        ],
        chat_body(true),
    )
    .await;
    let (chunks, done) = sse_data(&a.text);
    assert!(done);
    assert_eq!(chunks.len(), 1 + 6 + 1);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, secret);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    let a = post(
        &mock,
        "/v1/messages",
        &[("x-mock-no-usage", "1")],
        anthropic_body(true),
    )
    .await;
    assert!(sse_events(&a.text)
        .iter()
        .all(|(_, d)| d.get("usage").is_none() && d["message"].get("usage").is_none()));
    let a = post(
        &mock,
        "/v1beta/models/g:generateContent",
        &[("x-mock-no-usage", "1")],
        gemini_body(),
    )
    .await;
    assert!(a.json().get("usageMetadata").is_none());

    let a = post(
        &mock,
        CHAT,
        &[("x-mock-body-bytes", "100000")],
        chat_body(false),
    )
    .await;
    let content = a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(content.len(), 100_000);
    assert!(content.starts_with("Mock reply to: And two in Asia? lorem ipsum"));
}

// ---- streaming, recording, big bodies -------------------------------------------

/// With a delay, every event leaves in its own write: no read holds two events.
#[tokio::test]
async fn delayed_chunks_arrive_separately() {
    let mock = start(MockOptions::default()).await;
    let body = chat_body(true).to_string();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-mock-chunks: 4\r\nx-mock-delay-ms: 100\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut reads = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        reads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let events: Vec<usize> = reads.iter().map(|r| r.matches("data: ").count()).collect();
    // role + 4 content + finish + usage + [DONE]
    assert_eq!(events.iter().sum::<usize>(), 8, "{reads:?}");
    assert!(events.iter().all(|&n| n <= 1), "{events:?}");
    assert!(reads[0].contains("transfer-encoding: chunked"));
}

#[tokio::test]
async fn records_requests() {
    let mock = start(MockOptions {
        max_recorded_body: 16,
        ..MockOptions::default()
    })
    .await;
    let body = chat_body(false).to_string();
    post(
        &mock,
        CHAT,
        &[("authorization", "Bearer sk-test")],
        chat_body(false),
    )
    .await;
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", CHAT));
    assert_eq!(r.host.as_deref(), Some("api.example.test"));
    assert_eq!(r.http_version, "HTTP/1.1");
    assert!(r
        .headers
        .contains(&("authorization".into(), "Bearer sk-test".into())));
    assert_eq!(r.body_len, body.len() as u64);
    assert_eq!(r.body_sha256, hex::encode(Sha256::digest(body.as_bytes())));
    assert_eq!(r.body, body[..16]);

    // Over HTTP too, and inspection requests are not recorded.
    let listed = call(&mock, "GET", "/__mock/requests", &[], "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["body_sha256"], json!(r.body_sha256));
    assert_eq!(listed[0]["headers"][0].as_array().unwrap().len(), 2);
    let a = call(&mock, "DELETE", "/__mock/requests", &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(mock.requests().is_empty());
    assert_eq!(
        call(&mock, "GET", "/__mock/health", &[], "").await.text,
        "ok"
    );
    post(&mock, CHAT, &[], chat_body(false)).await;
    mock.clear();
    assert!(mock.requests().is_empty());
}

#[test]
fn recorded_list_is_bounded() {
    let seen = |body: &str| SeenRequest {
        method: "POST".into(),
        path: "/".into(),
        host: None,
        headers: Vec::new(),
        body_len: body.len() as u64,
        body_sha256: String::new(),
        body: body.into(),
        http_version: "HTTP/1.1".into(),
    };
    let mut recorded = Recorded::new(3, 10);
    for body in ["a", "b", "c", "d"] {
        recorded.push(seen(body));
    }
    let bodies = |r: &Recorded| r.list.iter().map(|s| s.body.clone()).collect::<Vec<_>>();
    assert_eq!(bodies(&recorded), ["b", "c", "d"]);
    recorded.push(seen("123456789"));
    assert_eq!(bodies(&recorded), ["d", "123456789"]);
    assert_eq!(recorded.body_bytes, 10);
    recorded.push(seen("much longer than the budget"));
    assert_eq!(bodies(&recorded), ["much longer than the budget"]);
    recorded.clear();
    assert_eq!((recorded.list.len(), recorded.body_bytes), (0, 0));
}

/// Peak resident memory of this process, where the platform tells it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// A 50 MB body is hashed whole, recorded to the limit, still answered from its
/// top-level members, and never held in memory.
#[tokio::test]
async fn large_body_is_streamed_and_hashed() {
    const SIZE: usize = 50 << 20;
    let mock = start(MockOptions::default()).await;
    let head = br#"{"messages":[{"role":"user","content":""#;
    let tail = br#""}],"model":"gpt-4o","stream":false}"#;
    let filler = Bytes::from(vec![b'a'; 1 << 16]);
    let mut pieces = VecDeque::from([Bytes::from_static(head)]);
    let mut sha = Sha256::new();
    sha.update(head);
    let mut len = head.len() + tail.len();
    while len + filler.len() <= SIZE {
        pieces.push_back(filler.clone());
        sha.update(&filler);
        len += filler.len();
    }
    pieces.push_back(Bytes::from_static(tail));
    sha.update(tail);

    let before = peak_rss();
    let mut sender = Sender::plain(mock.local_addr()).await;
    let a = answer(
        sender
            .send(request("POST", CHAT, &[], Pieces(pieces)))
            .await,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["usage"]["prompt_tokens"], (len / 4) as u64);

    let seen = mock.requests();
    assert_eq!(seen[0].body_len, len as u64);
    assert_eq!(seen[0].body_sha256, hex::encode(sha.finalize()));
    assert_eq!(seen[0].body.len(), MockOptions::default().max_recorded_body);
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        // The parse buffer (8 MiB) and hyper's buffers, never the 50 MB body.
        assert!(
            after.saturating_sub(before) < 40 << 20,
            "peak grew by {} bytes",
            after - before
        );
    }
}

// ---- TLS and HTTP/2 -------------------------------------------------------------
