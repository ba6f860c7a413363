//! Ledger tests: real files in a temporary directory, real SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::*;
use crate::record::{rfc3339, Connection as ConnRecord, Outcome, Upstream};
use crate::testing::sample_interaction;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-ledger-{name}-{}-{}",
            std::process::id(),
            crate::record::new_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn ledger(&self) -> PathBuf {
        self.0.join("ledger")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg(dir: &Path) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_path_buf(),
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        retention_days: 90,
        ..LedgerConfig::default()
    }
}

fn interaction(i: u64) -> Record {
    sample_interaction(i)
}

fn with(mut r: Record, f: impl FnOnce(&mut crate::record::Interaction)) -> Record {
    if let Record::Interaction(x) = &mut r {
        f(x);
    }
    r
}

fn fill(dir: &Path, n: u64) {
    let l = Ledger::open(&cfg(dir)).unwrap();
    for i in 0..n {
        l.append(&interaction(i)).unwrap();
    }
    l.close().unwrap();
}

fn rw(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(index::db_path(dir)).unwrap()
}

/// The `meta` and `content` texts of row `seq`, decompressed.
fn texts(c: &rusqlite::Connection, seq: u64) -> (String, Option<String>) {
    let mut u = index::Unpacker::new(c).unwrap();
    c.query_row(
        "SELECT meta, content FROM records WHERE seq = ?1",
        [seq as i64],
        |r| Ok((u.text(r, 0)?.unwrap(), u.text(r, 1)?)),
    )
    .unwrap()
}

/// Tamper with row `seq`: replace `from` by `to` in its `column` (`meta` or
/// `content`), compressed again the way the indexer stores it.
fn edit_text(c: &rusqlite::Connection, seq: u64, column: &str, from: &str, to: &str) {
    let (meta, content) = texts(c, seq);
    let text = if column == "meta" {
        meta
    } else {
        content.unwrap()
    };
    assert!(text.contains(from), "{from} not in {column} of seq {seq}");
    let mut packed = Vec::new();
    index::Packer::new(c)
        .unwrap()
        .pack_into(&text.replace(from, to), &mut packed)
        .unwrap();
    c.execute(
        &format!("UPDATE records SET {column} = ?1 WHERE seq = ?2"),
        rusqlite::params![packed, seq as i64],
    )
    .unwrap();
}

/// The newest `limit` records, unfiltered.
fn newest(dir: &Path, limit: usize) -> Vec<Value> {
    query(
        dir,
        &Filter {
            limit,
            ..Filter::default()
        },
    )
    .unwrap()
}

fn check(dir: &Path) -> VerifyReport {
    verify(dir, &VerifyOptions::default()).unwrap()
}

fn first(dir: &Path) -> VerifyError {
    let r = check(dir);
    assert!(!r.ok, "verify should fail: {r:?}");
    r.first_error.unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    wal::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

// === write path, chain, query ===

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
        t.0.join("elsewhere.key"),
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
        load_hmac_keys(&dir, Some(&dir.join(keys::HMAC_KEY_FILE))).unwrap();
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

// === tamper evidence ===

#[test]
fn edited_field_is_detected() {
    let t = TempDir::new("edit");
    fill(&t.ledger(), 12);
    edit_text(
        &rw(&t.ledger()),
        7,
        "meta",
        "\"status\":200",
        "\"status\":201",
    );
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (7, VerifyErrorKind::Edited), "{e:?}");
}

#[test]
fn rows_are_compressed_with_a_dictionary_the_index_holds_and_text_rows_still_read() {
    let t = TempDir::new("zrows");
    fill(&t.ledger(), 6);
    let c = rw(&t.ledger());
    let kinds: Vec<String> = c
        .prepare("SELECT DISTINCT typeof(meta) || '/' || typeof(content) FROM records")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, ["blob/blob"]);
    // Self-describing: the BLOB is the dictionary's id, then a plain zstd frame that
    // zstd decodes with the dictionary stored beside it.
    let blob: Vec<u8> = c
        .query_row("SELECT meta FROM records WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    let dict: Vec<u8> = c
        .query_row(
            "SELECT bytes FROM dictionaries WHERE id = ?1",
            [blob[0]],
            |r| r.get(0),
        )
        .unwrap();
    let plain = zstd::bulk::Decompressor::with_dictionary(&dict)
        .unwrap()
        .decompress(&blob[1..], 1 << 20)
        .unwrap();
    let (meta, content) = texts(&c, 2);
    assert_eq!(String::from_utf8(plain).unwrap(), meta);
    assert!(
        blob.len() * 2 < meta.len(),
        "{} bytes stored for {} of metadata",
        blob.len(),
        meta.len()
    );
    let before = newest(&t.ledger(), 10);
    // A row written before compression holds TEXT: it reads and verifies the same.
    c.execute(
        "UPDATE records SET meta = ?1, content = ?2 WHERE seq = 2",
        rusqlite::params![meta, content],
    )
    .unwrap();
    assert_eq!(
        c.query_row("SELECT typeof(meta) FROM records WHERE seq = 2", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap(),
        "text"
    );
    assert!(check(&t.ledger()).ok, "{:?}", check(&t.ledger()));
    let after = newest(&t.ledger(), 10);
    assert_eq!(before, after);
}

#[test]
fn undecodable_rows_are_reported_as_edited() {
    let t = TempDir::new("zbad");
    fill(&t.ledger(), 6);
    let c = rw(&t.ledger());
    // A frame cut short, then a frame naming a dictionary not held. (A changed byte
    // inside the frame may still decode, to other text: frames carry no checksum, and
    // the record's hash is what catches that.)
    c.execute(
        "UPDATE records SET meta = CAST(substr(meta, 1, length(meta) - 4) AS BLOB) WHERE seq = 5",
        [],
    )
    .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (5, VerifyErrorKind::Edited), "{e:?}");
    assert!(e.detail.contains("decompress"), "{e:?}");
    c.execute(
        "UPDATE records SET content = CAST(x'09' || substr(content, 2) AS BLOB) WHERE seq = 3",
        [],
    )
    .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (3, VerifyErrorKind::Edited), "{e:?}");
    assert!(e.detail.contains("dictionary 9"), "{e:?}");
    // Readers fail with the reason rather than show a wrong record.
    let err = query(
        &t.ledger(),
        &Filter {
            limit: 10,
            ..Filter::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not decompress"), "{err}");
}

#[test]
fn edited_index_column_and_content_are_detected() {
    let t = TempDir::new("editcol");
    fill(&t.ledger(), 5);
    let c = rw(&t.ledger());
    c.execute("UPDATE records SET model = 'other' WHERE seq = 2", [])
        .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (2, VerifyErrorKind::Edited), "{e:?}");
    c.execute("UPDATE records SET model = 'gpt-4o-mini' WHERE seq = 2", [])
        .unwrap();
    edit_text(&c, 4, "content", "quarterly", "annual");
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (4, VerifyErrorKind::Edited), "{e:?}");
}

#[test]
fn deleted_record_is_detected() {
    let t = TempDir::new("delete");
    fill(&t.ledger(), 12);
    rw(&t.ledger())
        .execute("DELETE FROM records WHERE seq = 5", [])
        .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (5, VerifyErrorKind::Deleted), "{e:?}");
    // Also once the WAL segments are gone (only the index remains).
    for s in segments(&t.ledger()) {
        std::fs::remove_file(s).unwrap();
    }
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (5, VerifyErrorKind::Deleted), "{e:?}");
}

#[test]
fn deleting_the_newest_records_is_caught_by_the_last_checkpoint() {
    let t = TempDir::new("tailcut");
    let dir = t.ledger();
    fill(&dir, 25); // close checkpoints seq 25
    for s in segments(&dir) {
        std::fs::remove_file(s).unwrap();
    }
    rw(&dir)
        .execute("DELETE FROM records WHERE seq >= 24", [])
        .unwrap();
    let e = first(&dir);
    assert_eq!((e.seq, e.kind), (24, VerifyErrorKind::Deleted), "{e:?}");
}

#[test]
fn verify_reads_a_wal_without_index_and_reports_progress() {
    let t = TempDir::new("walonly");
    let dir = t.ledger();
    fill(&dir, 12);
    for f in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let calls = std::cell::Cell::new(0u64);
    let progress = |done: u64, total: u64| {
        assert!(done <= total);
        calls.set(calls.get() + 1);
    };
    let r = verify(
        &dir,
        &VerifyOptions {
            progress: Some(&progress),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(r.ok && r.records == 12 && r.checkpoints == 2, "{r:?}");
    assert!(calls.get() > 0);
}

#[test]
fn swapped_records_are_detected() {
    let t = TempDir::new("swap");
    fill(&t.ledger(), 12);
    let c = rw(&t.ledger());
    c.execute_batch(
        "UPDATE records SET seq = -1 WHERE seq = 5;
         UPDATE records SET seq = 5 WHERE seq = 6;
         UPDATE records SET seq = 6 WHERE seq = -1;",
    )
    .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (5, VerifyErrorKind::Reordered), "{e:?}");
}

#[test]
fn swapped_unindexed_wal_lines_are_detected() {
    let t = TempDir::new("walswap");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    l.pause_indexer(true);
    for i in 0..8 {
        l.append(&interaction(i)).unwrap();
    }
    l.crash();
    let seg = segments(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let i5 = lines.iter().position(|l| l.contains("\"seq\":5,")).unwrap();
    lines.swap(i5, i5 + 1);
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let e = first(&dir);
    assert_eq!((e.seq, e.kind), (5, VerifyErrorKind::Reordered), "{e:?}");
}

#[test]
fn wrong_hmac_is_detected() {
    let t = TempDir::new("hmac");
    fill(&t.ledger(), 6);
    rw(&t.ledger())
        .execute(
            "UPDATE records SET hmac = ?1 WHERE seq = 3",
            ["ab".repeat(32)],
        )
        .unwrap();
    let e = first(&t.ledger());
    assert_eq!((e.seq, e.kind), (3, VerifyErrorKind::BadHmac), "{e:?}");
}

#[test]
fn forged_checkpoints_are_detected() {
    let t = TempDir::new("forge");
    let dir = t.ledger();
    fill(&dir, 25); // checkpoints at 10, 20, 25
    for s in segments(&dir) {
        std::fs::remove_file(s).unwrap(); // only the index copy of the checkpoints
    }
    assert!(check(&dir).ok);
    let c = rw(&dir);
    // Altered hash, old signature.
    let h21: String = c
        .query_row("SELECT hash FROM records WHERE seq = 21", [], |r| r.get(0))
        .unwrap();
    c.execute("UPDATE checkpoints SET hash = ?1 WHERE seq = 20", [&h21])
        .unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (20, VerifyErrorKind::BadCheckpointSignature),
        "{e:?}"
    );
    // Re-signed with another key.
    let h20: String = c
        .query_row("SELECT hash FROM records WHERE seq = 20", [], |r| r.get(0))
        .unwrap();
    c.execute("UPDATE checkpoints SET hash = ?1 WHERE seq = 20", [&h20])
        .unwrap();
    assert!(check(&dir).ok);
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let ts: String = c
        .query_row("SELECT ts FROM checkpoints WHERE seq = 10", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = chain::sign_checkpoint(&other, 10, &h21, ts);
    c.execute(
        "UPDATE checkpoints SET hash = ?1, signature = ?2 WHERE seq = 10",
        [&forged.hash, &forged.signature],
    )
    .unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (10, VerifyErrorKind::BadCheckpointSignature),
        "{e:?}"
    );
}

#[test]
fn truncated_wal_is_detected_and_a_torn_tail_is_not_tampering() {
    let t = TempDir::new("trunc");
    let dir = t.ledger();
    fill(&dir, 20);
    // Cut inside record 10 of an indexed segment: the index shows it existed.
    let seg = segments(&dir).pop().unwrap();
    let text = std::fs::read(&seg).unwrap();
    let pos = text.windows(9).position(|w| w == b"\"seq\":10,").unwrap();
    std::fs::write(&seg, &text[..pos]).unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (10, VerifyErrorKind::TruncatedWal),
        "{e:?}"
    );

    // A crash mid-write of a record never indexed: an incomplete tail, reported only.
    let t = TempDir::new("torn");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..3 {
        l.append(&interaction(i)).unwrap();
    }
    l.flush();
    l.pause_indexer(true);
    for i in 3..5 {
        l.append(&interaction(i)).unwrap();
    }
    l.crash();
    let seg = segments(&dir).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    let r = check(&dir);
    assert!(r.ok, "{r:?}");
    assert!(
        r.incomplete_tail
            .as_deref()
            .unwrap_or("")
            .contains("incomplete"),
        "{r:?}"
    );
    assert_eq!(r.head_seq, Some(4));
    // The next start cuts the tail off and says so in an admin record.
    let l = Ledger::open(&cfg(&dir)).unwrap();
    l.flush();
    let admin = query(
        &dir,
        &Filter {
            kind: Some("admin".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(admin[0]["details"]["event"], "torn_tail_removed");
    l.close().unwrap();
    let r = check(&dir);
    assert!(r.ok && r.incomplete_tail.is_none(), "{r:?}");
}

// === crash safety ===

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
    let change = report(&dir, ReportKind::Change, None, None).unwrap();
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
    let change = report(&dir, ReportKind::Change, None, None).unwrap();
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

// === export ===

/// A strict RFC 5424 parser: `(pri, timestamp, msgid, sd params, msg)`.
type Parsed = (u8, String, String, Vec<(String, String)>, String);

fn parse_rfc5424(line: &str) -> Result<Parsed, String> {
    let b = line.as_bytes();
    if b.iter().any(|&c| c == b'\n' || c == b'\r') {
        return Err("line break inside a record".into());
    }
    let rest = line.strip_prefix('<').ok_or("no PRI")?;
    let close = rest.find('>').ok_or("PRI not closed")?;
    let pri: u8 = rest[..close].parse().map_err(|_| "PRI not a number")?;
    if close == 0 || close > 3 || pri > 191 {
        return Err("bad PRI".into());
    }
    let rest = rest[close + 1..]
        .strip_prefix("1 ")
        .ok_or("VERSION is not 1")?;
    let mut parts = rest.splitn(6, ' ');
    let ts = parts.next().ok_or("no TIMESTAMP")?.to_owned();
    if ts != "-" {
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("TIMESTAMP {ts}: {e}"))?;
    }
    let field = |s: Option<&str>, max: usize, what: &str| -> Result<String, String> {
        let s = s.ok_or(format!("no {what}"))?;
        if s.is_empty() || s.len() > max || !s.bytes().all(|c| (33..=126).contains(&c)) {
            return Err(format!("bad {what}: {s:?}"));
        }
        Ok(s.to_owned())
    };
    field(parts.next(), 255, "HOSTNAME")?;
    field(parts.next(), 48, "APP-NAME")?;
    field(parts.next(), 128, "PROCID")?;
    let msgid = field(parts.next(), 32, "MSGID")?;
    let sd = parts.next().ok_or("no STRUCTURED-DATA")?;
    // SD-ELEMENT: "[" SD-ID *(SP PARAM-NAME "=" %d34 PARAM-VALUE %d34) "]"
    let mut chars = sd.char_indices().peekable();
    let mut params = Vec::new();
    if chars.next().map(|c| c.1) != Some('[') {
        return Err("STRUCTURED-DATA does not start with [".into());
    }
    let name_char = |c: char| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"');
    let mut id = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if !name_char(c) {
            break;
        }
        id.push(c);
        chars.next();
    }
    if id != "sluice@32473" {
        return Err(format!("SD-ID {id}"));
    }
    let end;
    loop {
        match chars.next() {
            Some((i, ']')) => {
                end = i + 1;
                break;
            }
            Some((_, ' ')) => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) if name_char(c) => name.push(c),
                        other => return Err(format!("bad PARAM-NAME char {other:?}")),
                    }
                }
                if name.is_empty() || name.len() > 32 {
                    return Err(format!("PARAM-NAME {name:?}"));
                }
                if chars.next().map(|c| c.1) != Some('"') {
                    return Err("PARAM-VALUE not quoted".into());
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\' | ']'))) => value.push(c),
                            Some((_, c)) => {
                                value.push('\\');
                                value.push(c);
                            }
                            None => return Err("dangling backslash".into()),
                        },
                        Some((_, '"')) => break,
                        Some((_, ']')) => return Err("unescaped ] in PARAM-VALUE".into()),
                        Some((_, c)) => value.push(c),
                        None => return Err("PARAM-VALUE not closed".into()),
                    }
                }
                params.push((name, value));
            }
            other => return Err(format!("unexpected {other:?} in SD-ELEMENT")),
        }
    }
    let msg = sd[end..]
        .strip_prefix(' ')
        .ok_or("no SP before MSG")?
        .to_owned();
    Ok((pri, ts, msgid, params, msg))
}

#[test]
fn syslog_escapes_and_every_line_parses() {
    let t = TempDir::new("syslog");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    let nasty = "a]b\"c\\d\ne\rf";
    l.append(&with(interaction(1), |x| {
        x.decision = "block";
        x.reason_codes = vec![nasty.into()];
        x.identity.process = Some(nasty.into());
        x.request.messages[1].content = nasty.into();
    }))
    .unwrap();
    l.append(&interaction(2)).unwrap();
    l.append(&Record::Connection(Box::new(ConnRecord {
        id: crate::record::new_id(),
        ts: rfc3339(SystemTime::now()),
        kind: "connection",
        outcome: Outcome::Refused,
        reason: "loop".into(),
        sni: Some("x]y".into()),
        identity: Default::default(),
        upstream: Upstream::default(),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0.5,
        error: None,
    })))
    .unwrap();
    let mut out = Vec::new();
    let n = export_with_audit(
        &l,
        Initiator {
            id: "alice".into(),
            role: "auditor".into(),
            ip: Some("10.1.1.1".into()),
        },
        ExportFormat::Syslog,
        None,
        None,
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 3);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let parsed: Vec<Parsed> = lines
        .iter()
        .map(|l| parse_rfc5424(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(parsed[0].0, 16 * 8 + 4, "a block is a warning");
    assert_eq!(parsed[1].0, 16 * 8 + 6, "an allowed success is info");
    assert_eq!(parsed[2].0, 16 * 8 + 4, "a refused connection is a warning");
    assert_eq!(parsed[0].2, "interaction");
    let param = |p: &Parsed, k: &str| p.3.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // `]`, `"` and `\` round-trip; newlines are written as `\n` / `\r`.
    assert_eq!(
        param(&parsed[0], "identity.process").unwrap(),
        "a]b\"c\\d\\ne\\rf"
    );
    assert_eq!(param(&parsed[2], "sni").unwrap(), "x]y");
    assert_eq!(param(&parsed[0], "seq").unwrap(), "1");
    let msg: Value = serde_json::from_str(&parsed[0].4).unwrap();
    assert_eq!(msg["request"]["messages"][1]["content"], nasty);
    // The export itself is on record.
    l.flush();
    let admin = query(
        &dir,
        &Filter {
            kind: Some("admin".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(admin[0]["action"], "export");
    assert_eq!(admin[0]["initiator"]["id"], "alice");
    assert_eq!(admin[0]["details"]["records"], 3);
    l.close().unwrap();
}

#[test]
fn json_and_jsonl_exports_hold_every_record_in_the_window() {
    let t = TempDir::new("export");
    let dir = t.ledger();
    fill(&dir, 4);
    let mut out = Vec::new();
    assert_eq!(
        export(&dir, ExportFormat::Json, None, None, &mut out).unwrap(),
        4
    );
    let arr: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["seq"], 1);
    let mut out = Vec::new();
    let future = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(
        export(&dir, ExportFormat::Jsonl, Some(future), None, &mut out).unwrap(),
        0
    );
    let mut out = Vec::new();
    export(&dir, ExportFormat::Jsonl, None, Some(future), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 4);
}

// === reports ===

#[test]
fn reports_group_and_render() {
    let t = TempDir::new("report");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..6u64 {
        l.append(&with(interaction(i), |x| {
            x.identity.process = Some(if i < 4 { "python3" } else { "curl" }.into());
            x.identity.client_addr = None;
            if i == 5 {
                x.decision = "redact";
                x.reason_codes = vec!["pii.email".into()];
            }
        }))
        .unwrap();
    }
    l.append(&Record::Admin(Box::new(crate::record::Admin::new(
        AdminAction::Reload,
        AdminOutcome::Success,
        Initiator {
            id: "ops".into(),
            role: "admin".into(),
            ip: None,
        },
        Target {
            kind: "policy".into(),
            id: "default".into(),
        },
        serde_json::json!({"version": 2}),
    ))))
    .unwrap();
    l.close().unwrap();
    let access = report(&dir, ReportKind::Access, None, None).unwrap();
    let rows = access["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["requests"], 4);
    assert_eq!(rows[0]["input_tokens"], 4 * 58);
    assert!(rows[0]["identity"]
        .as_str()
        .unwrap()
        .contains("process=python3"));
    let usage = report(&dir, ReportKind::Usage, None, None).unwrap();
    assert_eq!(usage["rows"][1]["requests"], 2);
    assert!(usage["rows"][0]["first_seen"].is_string());
    let security = report(&dir, ReportKind::Security, None, None).unwrap();
    assert_eq!(security["rows"].as_array().unwrap().len(), 1);
    assert_eq!(security["rows"][0]["reason"], "pii.email");
    let change = report(&dir, ReportKind::Change, None, None).unwrap();
    assert_eq!(change["rows"][0]["action"], "reload");
    let text = render_report_text(&access);
    assert!(text.starts_with("access report"), "{text}");
    assert!(
        text.contains("IDENTITY") && text.contains("gpt-4o-mini"),
        "{text}"
    );
    assert!(render_report_text(&change).contains("policy:default"));
}

// === failure, sink, config ===

#[test]
fn full_disk_is_a_clear_error_and_counted() {
    let t = TempDir::new("full");
    let l = Ledger::open(&cfg(&t.ledger())).unwrap();
    l.append(&interaction(0)).unwrap();
    let before = APPEND_ERRORS_TOTAL.get();
    l.redirect_wal(Path::new("/dev/full"));
    let err = l.append(&interaction(1)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/dev/full") && msg.contains("disk is full"),
        "{msg}"
    );
    assert!(APPEND_ERRORS_TOTAL.get() > before);
    let err = Ledger::open(&cfg(Path::new("/proc/sluice-ledger-test"))).unwrap_err();
    assert!(
        err.to_string().contains("/proc/sluice-ledger-test"),
        "{err}"
    );
    l.crash();
}

#[tokio::test]
async fn ledger_sink_feeds_the_writer_thread() {
    let t = TempDir::new("sink");
    let dir = t.ledger();
    let ledger = Arc::new(Ledger::open(&cfg(&dir)).unwrap());
    let (rec, handle) =
        crate::sink::spawn_writer(Box::new(LedgerSink::new(ledger.clone())), 16).unwrap();
    for i in 0..50 {
        rec.submit(interaction(i)).await;
    }
    rec.flush().await;
    drop(rec);
    handle.join().unwrap();
    ledger.flush();
    assert_eq!(tail_after(&dir, 0).unwrap().len(), 50);
    drop(ledger);
    assert!(check(&dir).ok);
}

#[test]
fn sink_retry_does_not_duplicate() {
    let t = TempDir::new("sinkretry");
    let ledger = Arc::new(Ledger::open(&cfg(&t.ledger())).unwrap());
    let mut sink = LedgerSink::new(ledger.clone());
    let batch: Vec<Record> = (0..3).map(interaction).collect();
    sink.resume = Some((record_id(&batch[0]).to_owned(), 2));
    sink.write_batch(&batch).unwrap();
    ledger.flush();
    assert_eq!(
        tail_after(&t.ledger(), 0).unwrap().len(),
        1,
        "records already appended are skipped"
    );
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_keys() {
    let c: LedgerConfig = serde_yaml_ng::from_str(
        "dir: /var/lib/sluice/ledger\nfsync: always\ncheckpoint_interval: 500ms\ncontent_mode: metadata\ncontent_retention_days: 30\n",
    )
    .unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Always);
    assert_eq!(c.checkpoint_interval, Duration::from_millis(500));
    assert_eq!(c.checkpoint_every, 1000);
    assert_eq!(c.retention_days, 90);
    assert_eq!(c.content_mode, ContentMode::Metadata);
    let c: LedgerConfig =
        serde_yaml_ng::from_str("fsync: 250ms\ncheckpoint_interval: 3\n").unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(250)));
    assert_eq!(c.checkpoint_interval, Duration::from_secs(3));
    let e = serde_yaml_ng::from_str::<LedgerConfig>("fsnyc: always\n").unwrap_err();
    assert!(e.to_string().contains("fsnyc"), "{e}");
    let e = serde_yaml_ng::from_str::<LedgerConfig>("fsync: sometimes\n").unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
}

#[test]
fn fsync_always_and_timed_checkpoints() {
    let t = TempDir::new("always");
    let dir = t.ledger();
    let l = Ledger::open(&LedgerConfig {
        fsync: FsyncPolicy::Always,
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_millis(50),
        ..cfg(&dir)
    })
    .unwrap();
    l.append(&interaction(0)).unwrap();
    // The maintenance thread checkpoints within a few ticks; wait on the index, not time.
    let mut n = 0;
    for _ in 0..100 {
        n = rw(&dir)
            .query_row("SELECT count(*) FROM checkpoints", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        if n > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(n, 1);
    l.close().unwrap();
}

// === scale (run with --ignored, in release) ===

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

#[test]
fn sqlite_wal_stays_bounded_under_steady_load() {
    let t = TempDir::new("walbound");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    // Outputs that barely compress (a xorshift over 62 letters and digits), so SQLite's
    // WAL sees about 60 MiB of rows: without the indexer's own checkpoints it only grows.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let n = 1200u64;
    for i in 0..n {
        let output: String = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % 62) as usize] as char
            })
            .collect();
        l.append(&with(interaction(i), |r| r.response.output = output))
            .unwrap();
    }
    l.flush();
    let stored: i64 = rw(&dir)
        .query_row("SELECT sum(length(content)) FROM records", [], |r| r.get(0))
        .unwrap();
    assert!(stored > 45 << 20, "only {stored} bytes of content stored");
    // The WAL file keeps its largest size: it never held much more than FINISH_BYTES
    // (16 MiB).
    let wal = std::fs::metadata(dir.join("ledger.sqlite-wal"))
        .unwrap()
        .len();
    assert!(
        wal < 40 << 20,
        "SQLite's WAL reached {wal} bytes for {stored} bytes of rows"
    );
    l.close().unwrap();
    assert!(check(&dir).ok);
}

/// A segment that fills up is closed at the next checkpoint, synced off the writer lock
/// and deleted by the collector while the ledger keeps running, once its records are
/// indexed and SQLite has checkpointed them; nothing is lost on the way.
#[test]
fn full_segments_are_closed_and_collected_while_running() {
    let t = TempDir::new("collect");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    let big = "x".repeat(64 * 1024);
    let n = SEGMENT_BYTES / (64 * 1024) + 30;
    for i in 0..n {
        l.append(&with(interaction(i), |x| {
            x.response.output = big.clone();
        }))
        .unwrap();
    }
    l.flush();
    // Rotation happened: the first segment is closed and queued to be synced and deleted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let segs = segments(&dir);
        if segs.len() == 1 && !segs[0].ends_with(wal::segment_name(1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed segment was not collected: {segs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The maintenance thread synced the closed segment on its next turn (100 ms).
    while !l.inner.writer.lock().unsynced.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "closed segment never synced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let indexed: i64 = rw(&dir)
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(indexed as u64, n);
    l.close().unwrap();
    let r = check(&dir);
    assert!(r.ok && r.records == n, "{r:?}");
}
