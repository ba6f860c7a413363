//! Tamper evidence: every kind of edit to a ledger is caught by verify.

use super::*;

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

/// Every column reports and filters read is held to the hashed record: a cost, a token
/// count, a time or the identity changed in the index alone is an edit of that record,
/// named by column.
#[test]
fn every_column_reports_read_is_verified() {
    for (edit, column) in [
        ("UPDATE records SET cost_usd = 999 WHERE seq = 3", "cost_usd"),
        ("UPDATE records SET input_tokens = 1 WHERE seq = 3", "input_tokens"),
        ("UPDATE records SET output_tokens = 1 WHERE seq = 3", "output_tokens"),
        ("UPDATE records SET ts_ms = 0 WHERE seq = 3", "ts_ms"),
        ("UPDATE records SET identity_id = NULL WHERE seq = 3", "identity_id"),
        (
            "UPDATE identities SET json = '{\"pid\":1}' WHERE id = (SELECT identity_id FROM records WHERE seq = 3)",
            "identity_id",
        ),
    ] {
        let t = TempDir::new("editnum");
        fill(&t.ledger(), 5);
        rw(&t.ledger()).execute(edit, []).unwrap();
        let r = check(&t.ledger());
        let e = r.first_error.unwrap_or_else(|| panic!("{edit}: not caught"));
        assert_eq!((e.seq, e.kind), (3, VerifyErrorKind::Edited), "{edit}: {e:?}");
        assert!(e.detail.contains(&format!("`{column}`")), "{edit}: {}", e.detail);
    }
}

/// The answer text of a record edited in its write-ahead copy only (the record is also
/// indexed) is an edit.
#[test]
fn an_answer_edited_in_the_wal_copy_alone_is_detected() {
    let t = TempDir::new("walcontent");
    fill(&t.ledger(), 5);
    let seg = segments(&t.ledger())
        .into_iter()
        .find(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains("Revenue grew")))
        .expect("a segment still holds the records");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("Revenue grew", "Revenue fell", 1)).unwrap();
    let e = first(&t.ledger());
    assert_eq!(e.kind, VerifyErrorKind::Edited, "{e:?}");
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
    // The chain hash beside the note is not what is signed: the chain check names it.
    let e = first(&dir);
    assert_eq!((e.seq, e.kind), (20, VerifyErrorKind::Edited), "{e:?}");
    let h20: String = c
        .query_row("SELECT hash FROM records WHERE seq = 20", [], |r| r.get(0))
        .unwrap();
    c.execute("UPDATE checkpoints SET hash = ?1 WHERE seq = 20", [&h20])
        .unwrap();
    assert!(check(&dir).ok);
    // The note re-signed with another key under the same origin.
    let note: String = c
        .query_row("SELECT note FROM checkpoints WHERE seq = 10", [], |r| {
            r.get(0)
        })
        .unwrap();
    let parsed = crate::tlog::note::Note::parse(&note).unwrap();
    let origin = crate::tlog::note::CheckpointText::parse(&parsed.text)
        .unwrap()
        .origin;
    let other = crate::tlog::note::NoteSigner {
        name: origin,
        key: ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]),
    };
    let forged = crate::tlog::note::Note {
        signatures: vec![other.sign(&parsed.text)],
        text: parsed.text,
    };
    c.execute(
        "UPDATE checkpoints SET note = ?1 WHERE seq = 10",
        [&forged.render()],
    )
    .unwrap();
    // …and without a valid checkpoint at 10, records 1..=20 lack one too.
    let r = check(&dir);
    let kinds: Vec<_> = r.errors.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, VerifyErrorKind::MissingCheckpoint),
            (10, VerifyErrorKind::BadCheckpointSignature)
        ],
        "{r:?}"
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
    let admin = admins(&dir);
    assert_eq!(admin[0]["details"]["event"], "torn_tail_removed");
    l.close().unwrap();
    let r = check(&dir);
    assert!(r.ok && r.incomplete_tail.is_none(), "{r:?}");
}

#[test]
fn deleted_checkpoints_are_missing_not_silently_fewer() {
    let t = TempDir::new("cp-gone");
    let dir = t.ledger();
    fill(&dir, 35);
    let c = rw(&dir);
    for s in segments(&dir) {
        std::fs::remove_file(s).unwrap();
    }
    assert!(check(&dir).ok, "{:?}", check(&dir));
    // The newest checkpoint alone: its records are out of the WAL, so one covered them.
    c.execute("DELETE FROM checkpoints WHERE seq = 35", [])
        .unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (31, VerifyErrorKind::UncoveredHead),
        "{e:?}"
    );
    // One in the middle: more records between two than the cadence allows.
    c.execute("DELETE FROM checkpoints WHERE seq = 20", [])
        .unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (11, VerifyErrorKind::MissingCheckpoint),
        "{e:?}"
    );
    // All of them.
    c.execute("DELETE FROM checkpoints", []).unwrap();
    let e = first(&dir);
    assert_eq!(
        (e.seq, e.kind),
        (1, VerifyErrorKind::MissingCheckpoint),
        "{e:?}"
    );
}

#[test]
fn an_uncovered_head_is_a_failure_once_older_than_the_interval() {
    let t = TempDir::new("cp-late");
    let dir = t.ledger();
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..13 {
        l.append(&interaction(i)).unwrap();
    }
    l.flush();
    // Records 11..=13 wait for their checkpoint: fine within the interval…
    assert!(check(&dir).ok, "{:?}", check(&dir));
    let later = SystemTime::now() + Duration::from_secs(3600 + 60);
    let opts = VerifyOptions {
        now: Some(later),
        cadence: Some((10, Duration::from_secs(3600))),
        ..VerifyOptions::default()
    };
    let r = verify(&dir, &opts).unwrap();
    let e = r.first_error.unwrap();
    assert_eq!(
        (e.seq, e.kind),
        (11, VerifyErrorKind::UncoveredHead),
        "{e:?}"
    );
    // …and the final checkpoint at close covers them.
    l.close().unwrap();
    assert!(verify(&dir, &opts).unwrap().ok);
}

#[test]
fn records_rewritten_under_a_checkpoint_do_not_match_its_tree_head() {
    let t = TempDir::new("cp-root");
    let dir = t.ledger();
    fill(&dir, 20);
    let c = rw(&dir);
    for s in segments(&dir) {
        std::fs::remove_file(s).unwrap();
    }
    // Record 4 re-hashed with the chain re-linked up to the checkpoint's own record:
    // what a rewrite holding the HMAC key but not the signing key leaves.
    c.execute(
        "UPDATE checkpoints SET hash = (SELECT hash FROM records WHERE seq = 10) WHERE seq = 10",
        [],
    )
    .unwrap();
    c.execute(
        "UPDATE records SET hash = '00' || substr(hash, 3) WHERE seq = 4",
        [],
    )
    .unwrap();
    let r = check(&dir);
    assert!(
        r.errors
            .iter()
            .any(|e| e.seq == 10 && e.kind == VerifyErrorKind::TreeHeadMismatch),
        "{r:?}"
    );
}

/// The writer continues the Merkle tree from the newest checkpoint's stored frontier,
/// which no signature covers. A node user's edit of that row must not steer the heads
/// the node signs next: a frontier that does not give the signed root is passed over.
#[test]
fn an_edited_frontier_row_does_not_steer_the_next_signed_heads() {
    let t = TempDir::new("frontier");
    let dir = t.ledger();
    fill(&dir, 25);
    // Three roots, as 25 records have: well-formed, only the signed root can tell.
    let forged = serde_json::to_string(&vec!["ab".repeat(32); 3]).unwrap();
    let c = rw(&dir);
    c.execute(
        "UPDATE checkpoints SET frontier = ?1 WHERE seq = (SELECT max(seq) FROM checkpoints)",
        [&forged],
    )
    .unwrap();
    drop(c);
    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..7 {
        l.append(&interaction(100 + i)).unwrap();
    }
    l.close().unwrap();
    let r = check(&dir);
    assert!(r.ok, "{r:?}");
    assert!(
        r.tree_heads_checked >= 4,
        "the heads signed after the edit match the records: {r:?}"
    );
    assert_eq!(r.head_seq, Some(32));
}
