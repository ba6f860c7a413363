//! Background upkeep: SQLite's WAL stays bounded, full segments are closed and collected.

use super::*;

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
