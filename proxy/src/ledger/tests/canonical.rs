//! The canonical serialiser: byte-identical to serde_json and to the `Value` path.

use super::*;

/// The canonical form writes strings exactly as serde_json does (it is hashed).
#[test]
fn canonical_strings_match_serde_json() {
    let samples = [
        "",
        "plain ascii",
        "quote \" and backslash \\",
        "tab\t newline\n cr\r bell\u{7} nul\u{0} esc\u{1b} del\u{7f}",
        "unicode é 漢字 🦀 \u{2028}",
        "/slash/",
    ];
    for s in samples {
        assert_eq!(
            chain::canonical(&Value::String(s.into())),
            serde_json::to_string(s).unwrap()
        );
    }
    let v = serde_json::json!({"b": [1, 2.5, {"z": null, "a": "x\ny"}], "a": true, "é": "e"});
    assert_eq!(
        chain::canonical(&v),
        r#"{"a":true,"b":[1,2.5,{"a":"x\ny","z":null}],"é":"e"}"#
    );
}

/// Every ASCII byte at every place of strings 1 to 40 bytes long (both scans the
/// escaping check uses, and their borders), plus non-ASCII text: escaped exactly as
/// serde_json escapes.
#[test]
fn string_escaping_is_found_wherever_it_is() {
    for len in 1..=40 {
        for at in 0..len {
            for b in 0..0x80u8 {
                let mut s = vec![b'a'; len];
                s[at] = b;
                let s = String::from_utf8(s).unwrap();
                assert_eq!(
                    chain::canonical(&Value::String(s.clone())),
                    serde_json::to_string(&s).unwrap(),
                    "{s:?}"
                );
            }
            // Two-byte characters: the quote lands at every even offset up to 80.
            let mut s = "é".repeat(len);
            s.insert(2 * at, '"');
            assert_eq!(
                chain::canonical(&Value::String(s.clone())),
                serde_json::to_string(&s).unwrap()
            );
        }
    }
}

// === canonical fast path ===

/// `canon::prepare` against the `Value` path: same metadata text (holes filled), content
/// text and index columns, or it gives up (and the `Value` path is used).
fn assert_same_prepare(rec: &Record, mode: ContentMode) {
    let reference = prepare_value(rec, mode, "0123456789abcdef").unwrap();
    let fast = canon::prepare(rec, mode, "0123456789abcdef")
        .unwrap_or_else(|| panic!("fast path gave up on {rec:?}"));
    let prev = [0xa5u8; 32];
    assert_eq!(
        fast.pre.finish(&prev, 12345),
        reference.pre.finish(&prev, 12345)
    );
    assert_eq!(fast.content, reference.content);
    assert_eq!(fast.cols, reference.cols);
    if let Some(c) = &fast.cols.cost_usd {
        assert_eq!(
            c.to_bits(),
            reference.cols.cost_usd.unwrap().to_bits(),
            "cost_usd bits"
        );
    }
}

#[test]
fn canonical_fast_path_matches_value_path() {
    let odd = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} \
               é ü 日本語 🦀 \u{2028} </script>";
    let base = interaction(7);
    for mode in [ContentMode::Full, ContentMode::Redacted] {
        assert_same_prepare(&base, mode);
        // Escapes, non-ASCII, floats of every kind, integers at the edges, tool calls,
        // nested parameters with unsorted and escaped keys.
        let rec = with(base.clone(), |x| {
            x.provider = odd.into();
            x.model = None;
            x.endpoint = Some(odd.chars().rev().collect());
            x.reason_codes = vec!["pii:email".into(), odd.into(), String::new()];
            x.triggered_categories = vec!["secret:aws_key".into()];
            x.policy_mode = Some("shadow");
            x.identity.exe = Some("/usr/bin/😀".into());
            x.identity.cgroup_id = Some(u64::MAX);
            x.identity.user = Some(odd.into());
            x.request.params.insert("zeta".into(), Value::from(-0.0));
            x.request
                .params
                .insert("alpha".into(), Value::from(i64::MIN));
            x.request.params.insert("Beta".into(), Value::from(1e300));
            x.request.params.insert("é".into(), Value::from(1.5e-7));
            x.request.params.insert("a\"b".into(), Value::from(0.1));
            x.request.params.insert("a\nb".into(), Value::from(100.0));
            x.request.params.insert(
                "nested".into(),
                serde_json::json!({"z": [1, 2.5, {"y": null, "x": true}], "a": {"k\\": "v"}, "": []}),
            );
            x.request.messages.push(crate::providers::Message {
                role: "tool".into(),
                content: odd.into(),
            });
            x.request.parse_error = Some(odd.into());
            x.response.output = odd.into();
            x.response.tool_calls = vec![
                serde_json::json!({"name": "get_weather", "id": "call_1", "arguments": "{\"city\":\"Zürich\"}"}),
                serde_json::json!({"name": odd, "arguments": {"b": 1, "a": [0.30000000000000004]}}),
            ];
            x.response.error = Some(odd.into());
            x.usage.input_tokens = Some(u64::MAX);
            x.usage.output_tokens = None;
            x.usage.reasoning_tokens = Some(0);
            x.usage.estimated = true;
            x.cost_usd = Some(123456789.00000012);
            x.latency_ms = 1e-9;
            x.ttft_ms = Some(f64::NAN);
            x.error = Some(odd.into());
        });
        assert_same_prepare(&rec, mode);
        for f in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e16,
            1e21,
            1e22,
            -1e-7,
            2.5e-5,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            assert_same_prepare(
                &with(base.clone(), |x| {
                    x.cost_usd = Some(f);
                    x.latency_ms = f;
                    x.ttft_ms = Some(-f);
                }),
                mode,
            );
        }
        assert_same_prepare(
            &with(base.clone(), |x| {
                x.cost_usd = None;
                x.ttft_ms = None;
                x.usage = crate::providers::Usage::default();
            }),
            mode,
        );
    }

    // Connections.
    for outcome in [Outcome::Passthrough, Outcome::Refused] {
        let conn = Record::Connection(Box::new(ConnRecord {
            id: crate::record::new_id(),
            ts: rfc3339(SystemTime::now()),
            kind: "connection",
            outcome,
            reason: odd.into(),
            sni: Some("api.openai.com".into()),
            identity: crate::record::Identity {
                client_addr: Some("[::1]:4000".into()),
                pid: Some(1),
                process: Some("curl".into()),
                cgroup: Some("/kubepods/pod-ü".into()),
                ..Default::default()
            },
            upstream: Upstream {
                addr: Some("198.18.0.10:443".into()),
                sni: None,
            },
            bytes_up: 12,
            bytes_down: u64::MAX,
            duration_ms: 0.5,
            error: Some(odd.into()),
        }));
        assert_same_prepare(&conn, ContentMode::Full);
    }

    // Admin records, with free-form details.
    for details in [
        serde_json::json!({"reason": odd, "count": 3, "ratio": 0.25, "list": [odd, null, -1]}),
        serde_json::json!(null),
        serde_json::json!("just a string"),
        serde_json::json!([1, 2, 3]),
    ] {
        let admin = Record::Admin(Box::new(crate::record::Admin::new(
            AdminAction::Export,
            AdminOutcome::Failure,
            Initiator {
                id: odd.into(),
                role: "auditor".into(),
                ip: Some("10.1.2.3".into()),
            },
            Target {
                kind: "ledger".into(),
                id: "ü".into(),
            },
            details,
        )));
        assert_same_prepare(&admin, ContentMode::Full);
    }
    for action in [
        AdminAction::Create,
        AdminAction::Update,
        AdminAction::Delete,
        AdminAction::Authenticate,
        AdminAction::Authorize,
        AdminAction::Import,
        AdminAction::Reload,
    ] {
        let admin = self_admin(
            action,
            AdminOutcome::Success,
            "config",
            "sluice.yaml",
            serde_json::json!({}),
            SystemTime::now(),
        );
        assert_same_prepare(&admin, ContentMode::Full);
    }

    // Every interaction outcome.
    for outcome in [
        Outcome::Success,
        Outcome::UpstreamError,
        Outcome::Cancelled,
        Outcome::Failed,
        Outcome::Refused,
        Outcome::Passthrough,
        Outcome::Cut,
    ] {
        assert_same_prepare(
            &with(base.clone(), |x| x.outcome = outcome),
            ContentMode::Full,
        );
    }
}

#[test]
fn canonical_fast_path_gives_up_when_unsure() {
    let base = interaction(1);
    // Metadata mode digests content: the `Value` path does it.
    assert!(canon::prepare(&base, ContentMode::Metadata, "k").is_none());
    // A kind that does not match the variant changes what is split.
    let odd_kind = with(base.clone(), |x| x.kind = "connection");
    assert!(canon::prepare(&odd_kind, ContentMode::Full, "k").is_none());
    // Through `Inner::prepare` both end up the same as the `Value` path: checked by
    // opening a ledger in metadata mode and appending (the existing metadata-mode tests).
}
