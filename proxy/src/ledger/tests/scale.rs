//! Query plans and large ledgers (the million-row test runs with --ignored).

use super::*;

/// Insert `n` chained rows straight into the index in one transaction (bulk path).
fn bulk_fill(dir: &Path, n: u64) {
    let mut conn = index::open_rw(dir).unwrap();
    let tx = conn.transaction().unwrap();
    let mut ins = index::Inserter::new(&tx).unwrap();
    let hmac = chain::hmac_for(&[1u8; 32]);
    let mut prev = GENESIS;
    let base = SystemTime::now() - Duration::from_secs(n);
    for i in 0..n {
        let rec = with(interaction(i), |x| {
            x.ts = rfc3339(base + Duration::from_secs(i));
            x.provider = ["openai", "anthropic", "gemini"][(i % 3) as usize].into();
            x.model = Some(format!("model-{}", i % 7));
            x.decision = if i % 97 == 0 { "block" } else { "allow" };
            x.identity.pid = Some((i % 500) as u32);
        });
        let Value::Object(mut m) = serde_json::to_value(&rec).unwrap() else {
            unreachable!()
        };
        let content = chain::split_content(&mut m, ContentMode::Full).map(|c| chain::canonical(&c));
        m.insert("hmac_key_id".into(), "bulk".into());
        let meta = chain::PreMeta::new(&m).finish(&prev, i + 1);
        let hash = chain::chain_hash(&prev, &meta);
        ins.record(
            &tx,
            &IndexRow {
                seq: i + 1,
                cols: Columns::from_meta(&m),
                rec: StoredRecord {
                    meta,
                    content,
                    hash: hex::encode(hash),
                    hmac: chain::hmac_hex(&hmac, &hash),
                },
            },
        )
        .unwrap();
        prev = hash;
    }
    tx.commit().unwrap();
}

#[test]
fn filtered_query_uses_indexes() {
    let t = TempDir::new("bulk");
    let dir = t.ledger();
    std::fs::create_dir_all(&dir).unwrap();
    bulk_fill(&dir, 2_000);
    let f = Filter {
        provider: Some("anthropic".into()),
        model: Some("model-3".into()),
        decision: Some("block".into()),
        limit: 50,
        ..Filter::default()
    };
    let r = query(&dir, &f).unwrap();
    assert!(
        !r.is_empty()
            && r.iter()
                .all(|x| x["provider"] == "anthropic" && x["decision"] == "block")
    );
    let conn = index::open_ro(&dir).unwrap();
    let plan_of = |f: &Filter| -> Vec<String> {
        let (w, params) = query::where_clause(f);
        conn.prepare(&format!(
            "EXPLAIN QUERY PLAN SELECT meta FROM records {w} ORDER BY seq DESC LIMIT 50"
        ))
        .unwrap()
        .query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let plan = plan_of(&f);
    assert!(plan.iter().any(|p| p.contains("USING INDEX")), "{plan:?}");
    // The kinds other than interactions have partial indexes, used for a kind filter.
    for kind in ["admin", "connection"] {
        let plan = plan_of(&Filter {
            kind: Some(kind.into()),
            ..Filter::default()
        });
        assert!(
            plan.iter().any(|p| p.contains(&format!("records_{kind}"))),
            "{kind}: {plan:?}"
        );
    }
}

/// One million rows; every filtered query finds its rows, and prints how long it took
/// (a figure to read, not an assertion: timings belong to benchmarks).
#[test]
#[ignore = "scale test; run with --release -- --ignored --nocapture"]
fn million_rows_filtered_query() {
    let t = TempDir::new("million");
    let dir = t.ledger();
    std::fs::create_dir_all(&dir).unwrap();
    let start = std::time::Instant::now();
    bulk_fill(&dir, 1_000_000);
    println!("bulk insert of 1M rows: {:?}", start.elapsed());
    let filters = [
        Filter {
            provider: Some("anthropic".into()),
            model: Some("model-3".into()),
            ..Filter::default()
        },
        Filter {
            decision: Some("block".into()),
            ..Filter::default()
        },
        Filter {
            identity: Some("\"pid\":123,".into()),
            ..Filter::default()
        },
        Filter {
            since: Some(SystemTime::now() - Duration::from_secs(500_000)),
            until: Some(SystemTime::now() - Duration::from_secs(400_000)),
            ..Filter::default()
        },
        Filter {
            decision: Some("block".into()),
            identity: Some("\"pid\":291,".into()),
            ..Filter::default()
        },
    ];
    for f in filters {
        let start = std::time::Instant::now();
        let r = query(&dir, &f).unwrap();
        let took = start.elapsed();
        println!(
            "{:?} -> {} rows in {took:?}",
            (&f.provider, &f.decision, &f.identity, f.since.is_some()),
            r.len()
        );
        assert!(!r.is_empty());
    }
}
