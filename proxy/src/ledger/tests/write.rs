//! Appending, chaining, keys and queries.

use super::*;

#[test]
fn appended_records_chain_and_verify() {
    let t = TempDir::new("chain");
    let l = Ledger::open(&cfg(&t.ledger())).unwrap();
    let mut last = None;
    for i in 0..25 {
        let a = l.append(&interaction(i)).unwrap();
        assert_eq!(a.seq, i + 1);
        last = Some(a);
    }
    l.flush();
    let recs = newest(&t.ledger(), 100);
    assert_eq!(recs.len(), 25);
    assert_eq!(recs[0]["seq"], 25, "newest first");
    assert_eq!(recs[0]["hash"], last.unwrap().hash);
    for pair in recs.windows(2) {
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }
    assert_eq!(recs[24]["prev_hash"], hex::encode(GENESIS));
    // The hash is SHA-256(prev_hash bytes ‖ canonical metadata), documented.
    let conn = rw(&t.ledger());
    let (meta, _) = texts(&conn, 1);
    let hash: String = conn
        .query_row("SELECT hash FROM records WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hex::encode(chain::chain_hash(&GENESIS, &meta)), hash);
    let v: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(chain::canonical(&v), meta, "stored metadata is canonical");
    assert!(
        v.get("request").unwrap().get("messages").is_none(),
        "content is not in the metadata"
    );
    assert_eq!(
        recs[0]["request"]["messages"][0]["role"], "system",
        "content is merged back for display"
    );
    assert!(recs[0]["content_sha256"].is_string());
    l.close().unwrap();
    let r = check(&t.ledger());
    assert!(r.ok, "{r:?}");
    assert_eq!(r.records, 25);
    assert!(r.checkpoints >= 3, "{r:?}");
    assert!(r.hmac_checked && r.signatures_checked);
}

#[test]
fn keys_are_generated_private_and_public_key_exported() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("keys");
    let l = Ledger::open(&cfg(&t.ledger())).unwrap();
    for f in [keys::HMAC_KEY_FILE, keys::SIGNING_KEY_FILE] {
        let mode = std::fs::metadata(t.ledger().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(l.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    l.append(&interaction(1)).unwrap();
    let pem = l.public_key_pem();
    l.close().unwrap();
    // An auditor with only the public key: signatures checked, HMACs not.
    std::fs::rename(
        t.ledger().join(keys::HMAC_KEY_FILE),
        t.path().join("elsewhere.key"),
    )
    .unwrap();
    let r = verify(
        &t.ledger(),
        &VerifyOptions {
            public_key_pem: Some(pem),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(r.ok && !r.hmac_checked && r.signatures_checked, "{r:?}");
}

#[test]
fn rotated_hmac_keys_verify_with_a_key_map() {
    let t = TempDir::new("rotate");
    let dir = t.ledger();
    fill(&dir, 3);
    std::fs::rename(dir.join(keys::HMAC_KEY_FILE), dir.join("hmac-old.key")).unwrap();
    fill(&dir, 3); // a new key is generated
    let r = check(&dir);
    assert!(r.ok, "{r:?}");
    let keys = load_hmac_keys(&dir, None).unwrap();
    assert_eq!(keys.len(), 2);
    // Only the new key: the old records are reported.
    let new_only: HashMap<_, _> =
        load_hmac_keys(&dir, Some(Secret::File(&dir.join(keys::HMAC_KEY_FILE)))).unwrap();
    let mut just_new = HashMap::new();
    let current = keys::current_hmac_key(&dir, None, false).unwrap().unwrap();
    just_new.insert(current.0.clone(), current.1.clone());
    assert_eq!(new_only.len(), 2);
    let r = verify(
        &dir,
        &VerifyOptions {
            hmac_keys: just_new,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.first_error.unwrap().kind, VerifyErrorKind::BadHmac);
}

#[test]
fn filtered_queries_and_tail() {
    let t = TempDir::new("query");
    let l = Ledger::open(&cfg(&t.ledger())).unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..30u64 {
        l.append(&with(interaction(i), |x| {
            if i % 3 == 0 {
                x.provider = "anthropic".into();
                x.model = Some("claude-sonnet".into());
            }
            if i % 5 == 0 {
                x.decision = "block";
            }
            if i < 10 {
                x.ts = rfc3339(old);
            }
            x.identity.process = Some(if i % 2 == 0 { "python3" } else { "node" }.into());
        }))
        .unwrap();
    }
    l.flush();
    let dir = t.ledger();
    let q = |f: Filter| query(&dir, &f).unwrap();
    assert_eq!(
        q(Filter {
            provider: Some("anthropic".into()),
            ..Filter::default()
        })
        .len(),
        10
    );
    assert_eq!(
        q(Filter {
            provider: Some("anthropic".into()),
            model: Some("claude-sonnet".into()),
            decision: Some("block".into()),
            ..Filter::default()
        })
        .len(),
        2 // i = 0, 15
    );
    assert_eq!(
        q(Filter {
            identity: Some("\"node\"".into()),
            ..Filter::default()
        })
        .len(),
        15
    );
    assert_eq!(
        q(Filter {
            kind: Some("admin".into()),
            ..Filter::default()
        })
        .len(),
        0
    );
    let recent = q(Filter {
        since: Some(SystemTime::now() - Duration::from_secs(60)),
        ..Filter::default()
    });
    assert_eq!(recent.len(), 20);
    assert_eq!(
        q(Filter {
            until: Some(SystemTime::now() - Duration::from_secs(60)),
            ..Filter::default()
        })
        .len(),
        10
    );
    assert_eq!(
        q(Filter {
            limit: 3,
            ..Filter::default()
        })
        .len(),
        3
    );
    let tail = tail_after(&dir, 27).unwrap();
    assert_eq!(
        tail.iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![28, 29, 30]
    );
    l.close().unwrap();
}

#[test]
fn keys_kept_outside_the_directory_are_used_and_loose_ones_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("custody");
    let dir = t.ledger();
    let vault = t.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let hmac_hex = "1f".repeat(32);
    let seed = [5u8; 32];
    let signing = vault.join("checkpoint.key");
    std::fs::write(&signing, hex::encode(seed)).unwrap();
    std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let custody = LedgerConfig {
        hmac_key_command: Some(vec!["sh".into(), "-c".into(), format!("echo {hmac_hex}")]),
        signing_key_file: Some(signing.clone()),
        ..cfg(&dir)
    };
    // A key file others can read is refused, with what to do.
    let e = Ledger::open(&custody).unwrap_err().to_string();
    assert!(
        e.contains("readable by others (mode 0644): chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&signing, std::fs::Permissions::from_mode(0o400)).unwrap();
    let l = Ledger::open(&custody).unwrap();
    l.append(&interaction(1)).unwrap();
    l.close().unwrap();
    // Neither key was written into the directory; the public key there is the vault's.
    assert!(!dir.join(keys::HMAC_KEY_FILE).exists());
    assert!(!dir.join(keys::SIGNING_KEY_FILE).exists());
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let pem = std::fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(
        keys::parse_public_pem(&pem, &dir).unwrap(),
        public,
        "checkpoint.pub.pem follows the configured key"
    );
    let rec = &newest(&dir, 1)[0];
    assert_eq!(
        rec["hmac_key_id"],
        Value::String(chain::hmac_key_id(&hex::decode(&hmac_hex).unwrap()))
    );
    // An auditor with the public key only: everything but the HMACs verifies.
    let r = verify(
        &dir,
        &VerifyOptions {
            public_key_pem: Some(pem),
            cadence: Some((10, Duration::from_secs(3600))),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(r.ok && !r.hmac_checked && r.signatures_checked, "{r:?}");
    // A key command that fails says how.
    let broken = LedgerConfig {
        hmac_key_command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo denied >&2; exit 3".into(),
        ]),
        ..custody.clone()
    };
    let e = Ledger::open(&broken).unwrap_err().to_string();
    assert!(e.contains("exited with") && e.contains("denied"), "{e}");
}
