//! The indexer thread: takes appended records and checkpoints off the queue in order and
//! inserts them into SQLite in transactions, finishing SQLite checkpoints itself so its
//! WAL stays bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::error::LedgerError;
use super::index;
use super::maintenance::checkpoint_index;
use super::writer::{Inner, Item, MAX_QUEUE};

/// Items indexed per SQLite transaction at most.
pub(super) const INDEX_BATCH: usize = 4096;
/// At low rates the indexer gathers records for up to this long before it commits:
/// every commit rewrites whole pages (the newest leaf of the table and of each index),
/// about 100 KB, which one record a commit paid in full (123 KB a record at a few
/// records a second). Records are durable in the ledger's own WAL from `append` on;
/// queries see them this much later at most. `flush` (and a stop) commits at once.
pub(super) const GATHER: Duration = Duration::from_secs(1);
/// A batch this large is committed without waiting to gather more.
pub(super) const GATHER_ENOUGH: usize = 256;
/// Bytes the indexer writes to SQLite's WAL (estimated) before it checkpoints it
/// itself, between two transactions, so the WAL starts over.
pub(super) const FINISH_BYTES: u64 = 16 << 20;
/// Pages every commit rewrites whole, over and above the rows: the newest leaf of the
/// table and of each index, and their parents (an estimate for `FINISH_BYTES`).
pub(super) const PAGES_PER_COMMIT: u64 = 10;

/// Insert queued records into SQLite in batches; delete segments once covered.
pub(super) fn indexer(inner: Arc<Inner>, mut conn: rusqlite::Connection, mut ins: index::Inserter) {
    let db = index::db_path(&inner.cfg.dir);
    let mut batch: Vec<Item> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    // SQLite's WAL written since the indexer's own last complete checkpoint.
    let mut wal_bytes = 0u64;
    let page_size: u64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap_or(16_384);
    loop {
        if inner.crashed.load(Ordering::SeqCst) {
            return;
        }
        if batch.is_empty() {
            let mut q = inner.queue.lock();
            while (q.is_empty() || inner.paused.load(Ordering::SeqCst))
                && !inner.stop.load(Ordering::SeqCst)
            {
                // Idle: the next record wakes us.
                inner.wake_at.store(1, Ordering::Relaxed);
                inner.queue_cv.wait_for(&mut q, Duration::from_millis(200));
                if inner.crashed.load(Ordering::SeqCst) {
                    return;
                }
            }
            if q.is_empty() || inner.paused.load(Ordering::SeqCst) {
                return; // stopping, and everything is indexed (or paused for a test)
            }
            let full = q.len() >= MAX_QUEUE;
            let n = q.len().min(INDEX_BATCH);
            batch.extend(q.drain(..n));
            // Few records: gather more for a while rather than commit pages for each. They
            // stay queued meanwhile; the append that makes the batch whole wakes us
            // (`wake_at`), not every append.
            let until = std::time::Instant::now() + GATHER;
            while batch.len() + q.len() < GATHER_ENOUGH
                && inner.flushing.load(Ordering::SeqCst) == 0
                && !inner.stop.load(Ordering::SeqCst)
                && !inner.crashed.load(Ordering::SeqCst)
            {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                inner
                    .wake_at
                    .store(GATHER_ENOUGH - batch.len(), Ordering::Relaxed);
                inner
                    .queue_cv
                    .wait_for(&mut q, left.min(Duration::from_millis(100)));
            }
            // Busy from here: an append finding the queue empty may wake us (no futex
            // call while nobody waits).
            inner.wake_at.store(1, Ordering::Relaxed);
            let more = q.len().min(INDEX_BATCH - batch.len());
            batch.extend(q.drain(..more));
            drop(q);
            if full {
                // Appenders wait for room (`wait_for_room`): there is some now.
                let _p = inner.progress.lock();
                inner.progress_cv.notify_all();
            }
        }
        let result = (|| -> rusqlite::Result<u64> {
            let tx = conn.transaction()?;
            let mut max_seq = 0;
            for item in &batch {
                match item {
                    Item::Record(row) => {
                        ins.record(&tx, row)?;
                        max_seq = row.seq;
                    }
                    Item::Checkpoint(cp) => index::insert_checkpoint(&tx, cp)?,
                    Item::SegmentClosed { .. } => {}
                }
            }
            tx.commit()?;
            Ok(max_seq)
        })();
        match result {
            Ok(max_seq) => {
                backoff = Duration::from_millis(50);
                wal_bytes += ins.take_written() + PAGES_PER_COMMIT * page_size;
                if wal_bytes >= FINISH_BYTES {
                    // The collector has copied and synced most of the WAL already; this
                    // copies the rest, with no transaction of ours in the way.
                    if checkpoint_index(&inner, &conn, &db, "PASSIVE") == Some(true) {
                        wal_bytes = 0;
                    }
                }
                let mut closed = Vec::new();
                for item in batch.drain(..) {
                    if let Item::SegmentClosed { path, last_seq } = item {
                        closed.push((path, last_seq));
                    }
                }
                if !closed.is_empty() {
                    inner.closed.lock().append(&mut closed);
                }
                let w = inner.writer.lock();
                let queued = inner.queue.lock().len() as u64;
                let mut p = inner.progress.lock();
                p.indexed_seq = p.indexed_seq.max(max_seq);
                // Everything pushed and no longer queued has been committed.
                p.done = w.pushed - queued;
                let next = w.next_seq;
                drop(w);
                crate::metrics::LEDGER_INDEX_LAG.set(next.saturating_sub(1 + p.indexed_seq) as i64);
                inner.progress_cv.notify_all();
            }
            Err(err) => {
                let err = LedgerError::Sqlite {
                    path: db.clone(),
                    source: err,
                };
                tracing::error!(error = %err, pending = batch.len(), "ledger: indexing failed; retrying (records are safe in the WAL)");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}
