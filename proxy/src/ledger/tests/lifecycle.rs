//! Crash safety, retention and content modes.

use super::*;

#[test]
fn crash_before_indexing_loses_nothing_and_duplicates_nothing() {
    let t = TempDir::new("crash");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..40 {
        l.append(&interaction(i)).unwrap();
    }
    l.flush();
    l.pause_indexer(true);
    for i in 40..95 {
        l.append(&interaction(i)).unwrap();
    }
    l.crash(); // killed: 55 records only in the WAL
    let indexed: i64 = rw(&dir)
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexed, 40);
    let r = check(&dir);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.records, 95, "index rows plus WAL records not yet indexed");

    let l = Ledger::open(&cfg(&dir)).unwrap();
    l.append(&interaction(95)).unwrap();
    l.flush();
    let seqs: Vec<i64> = rw(&dir)
        .prepare("SELECT seq FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, (1..=96).collect::<Vec<_>>());
    l.close().unwrap();
    let r = check(&dir);
    assert!(r.ok && r.records == 96, "{r:?}");
    // Segments fully indexed and checkpointed were deleted at the second open.
    assert_eq!(segments(&dir).len(), 1, "{:?}", segments(&dir));
}

#[test]
fn forgotten_ledger_reopens_after_lock_release() {
    let t = TempDir::new("lock");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    let err = Ledger::open(&cfg(&dir)).unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    l.close().unwrap();
    Ledger::open(&cfg(&dir)).unwrap().close().unwrap();
}

// === retention ===

#[test]
fn retention_prunes_with_an_anchor_and_the_chain_still_verifies() {
    let t = TempDir::new("retention");
    let dir = t.ledger();
    let now = SystemTime::now();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..15u64 {
        let age = if i < 10 { 100 } else { 1 };
        l.append(&with(interaction(i), |x| {
            x.ts = rfc3339(now - Duration::from_secs(age * 86_400))
        }))
        .unwrap();
    }
    let r = l.run_retention(now).unwrap();
    assert_eq!((r.pruned, r.anchor_seq), (10, Some(10)));
    l.flush();
    let v = check(&dir);
    assert!(v.ok, "{v:?}");
    assert_eq!(v.anchor_seq, Some(10));
    assert_eq!(v.records, 6, "5 kept + the anchor record");
    // Time moves on: everything is older than 90 days now.
    let later = now + Duration::from_secs(200 * 86_400);
    let r = l.run_retention(later).unwrap();
    assert_eq!(r.anchor_seq, Some(16));
    l.close().unwrap();
    let v = check(&dir);
    assert!(v.ok && v.anchor_seq == Some(16), "{v:?}");
    // Reopen: replay does not bring pruned records back; appending continues the chain.
    let l = Ledger::open(&cfg(&dir)).unwrap();
    l.append(&interaction(99)).unwrap();
    l.close().unwrap();
    let v = check(&dir);
    assert!(v.ok, "{v:?}");
    let change = report(&dir, ReportKind::Change, None, None, &Default::default()).unwrap();
    assert_eq!(
        change["rows"].as_array().unwrap().len(),
        1,
        "older anchor record pruned too"
    );
    // Deleting the anchor (to hide the pruning) is detected.
    rw(&dir).execute("DELETE FROM anchors", []).unwrap();
    assert_eq!(first(&dir).kind, VerifyErrorKind::Deleted);
}

#[test]
fn content_retention_keeps_metadata_and_hashes() {
    let t = TempDir::new("content");
    let dir = t.ledger();
    let now = SystemTime::now();
    let l = Ledger::open(&LedgerConfig {
        content_retention_days: Some(30),
        ..cfg(&dir)
    })
    .unwrap();
    for i in 0..6u64 {
        let age = if i < 4 { 40 } else { 0 };
        l.append(&with(interaction(i), |x| {
            x.ts = rfc3339(now - Duration::from_secs(age * 86_400))
        }))
        .unwrap();
    }
    let r = l.run_retention(now).unwrap();
    assert_eq!((r.pruned, r.content_removed), (0, 4));
    l.close().unwrap();
    let recs = query(
        &dir,
        &Filter {
            kind: Some("interaction".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    let old = recs.iter().find(|r| r["seq"] == 1).unwrap();
    assert_eq!(old["content_removed"], true);
    assert!(old["request"].get("messages").is_none() && old["response"].get("output").is_none());
    assert_eq!(old["model"], "gpt-4o-mini");
    assert!(old["content_sha256"].is_string());
    let new = recs.iter().find(|r| r["seq"] == 6).unwrap();
    assert!(new["request"]["messages"].is_array());
    let v = check(&dir);
    assert!(v.ok, "{v:?}");
    let change = report(&dir, ReportKind::Change, None, None, &Default::default()).unwrap();
    assert_eq!(
        change["rows"][0]["details"]["event"],
        "retention_content_removed"
    );
}

// === content modes ===

#[test]
fn metadata_mode_stores_digests_not_text() {
    let t = TempDir::new("metadata");
    let dir = t.ledger();
    let l = Ledger::open(&LedgerConfig {
        content_mode: ContentMode::Metadata,
        ..cfg(&dir)
    })
    .unwrap();
    let rec = with(interaction(7), |x| {
        x.request
            .params
            .insert("system".into(), "secret system prompt".into());
        x.response.tool_calls = vec![
            serde_json::json!({"id": "c1", "name": "lookup", "arguments": "{\"q\":\"secret arg\"}"}),
        ];
    });
    l.append(&rec).unwrap();
    l.flush();
    let Record::Interaction(x) = &rec else {
        unreachable!()
    };
    let user_text = x.request.messages[1].content.clone();
    let output = x.response.output.clone();
    let mut stored = std::fs::read_to_string(&segments(&dir)[0]).unwrap();
    let c = rw(&dir);
    let (meta, content) = texts(&c, 1);
    stored.push_str(&meta);
    stored.push_str(&content.unwrap());
    for secret in [
        &user_text[..20],
        &output[..20],
        "secret system prompt",
        "secret arg",
    ] {
        assert!(!stored.contains(secret), "{secret} stored");
    }
    let r = &query(&dir, &Filter::default()).unwrap()[0];
    assert_eq!(r["content_mode"], "metadata");
    assert_eq!(
        r["request"]["messages"][1]["content_sha256"],
        chain::sha256_hex(user_text.as_bytes())
    );
    assert_eq!(
        r["response"]["output_sha256"],
        chain::sha256_hex(output.as_bytes())
    );
    assert_eq!(
        r["request"]["params"]["system"]["sha256"],
        chain::sha256_hex(b"secret system prompt")
    );
    assert_eq!(
        r["request"]["params"]["temperature"], 0.2,
        "numbers are not text"
    );
    assert_eq!(r["response"]["tool_calls"][0]["name"], "lookup");
    l.close().unwrap();
    assert!(check(&dir).ok);
}
