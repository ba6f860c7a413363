//! SSE and JSON-array framing, token estimates, content types.

use super::*;

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
