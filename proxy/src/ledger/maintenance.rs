//! The ledger's background upkeep: syncing segments (`fsync: interval`), closing old
//! segments, hourly retention, and the collector that checkpoints SQLite's WAL and
//! deletes segments once a synced checkpoint covers them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::config::FsyncPolicy;
use super::index;
use super::writer::{Inner, SEGMENT_AGE};

/// How often the collector checkpoints SQLite's WAL and deletes covered segments.
pub(super) const COLLECT_EVERY: Duration = Duration::from_millis(100);
/// Records indexed between two checkpoints of SQLite's WAL (about 10 MiB of it)…
pub(super) const CHECKPOINT_ROWS: u64 = 16 * 1024;
/// …or how long a closed segment waits for one.
pub(super) const SEGMENT_WAIT: Duration = Duration::from_secs(1);
/// How often the ledger applies retention by itself.
pub(super) const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Checkpoint SQLite's WAL and delete the WAL segments the indexer is done with, on a
/// thread of its own: a segment goes only after SQLite has checkpointed (and so synced)
/// the rows it holds. Checkpoints' syncs and the unlinking of 16 MiB files had the
/// indexer waiting on the disk about half its time when it did them itself.
/// [`Ledger::close`] makes a last pass once the indexer has stopped.
pub(super) fn collector(inner: Arc<Inner>) {
    let mut state = Collector::default();
    loop {
        std::thread::park_timeout(COLLECT_EVERY);
        if inner.stop.load(Ordering::SeqCst) || inner.crashed.load(Ordering::SeqCst) {
            return;
        }
        collect(&inner, &mut state, false);
    }
}

/// The collector's connection and where its last complete checkpoint left off.
#[derive(Default)]
pub(super) struct Collector {
    conn: Option<rusqlite::Connection>,
    /// Records indexed when the last complete checkpoint was taken.
    checkpointed_seq: u64,
    last: Option<Instant>,
}

/// One pass: checkpoint SQLite's WAL into the database, then delete the segments
/// handed over so far whose records that checkpoint covered; the others stay for the
/// next pass.
pub(super) fn collect(inner: &Inner, state: &mut Collector, last_pass: bool) {
    // Checkpoint when the WAL has grown or a closed segment waits, not every pass: each
    // checkpoint copies the pages every commit rewrites (the newest leaf of the table
    // and of each index) once more.
    let indexed = inner.progress.lock().indexed_seq;
    let waiting = !inner.closed.lock().is_empty();
    let since = state.last.map_or(Duration::MAX, |t| t.elapsed());
    let due = last_pass
        || indexed >= state.checkpointed_seq + CHECKPOINT_ROWS
        || (waiting && since >= SEGMENT_WAIT);
    if !due {
        return;
    }
    if state.conn.is_none() {
        match index::open_rw(&inner.cfg.dir) {
            Ok(c) => state.conn = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "ledger: cannot open the index to checkpoint it; keeping WAL segments");
                return;
            }
        }
    }
    let Some(c) = &state.conn else { return };
    let db = index::db_path(&inner.cfg.dir);
    state.last = Some(Instant::now());
    // The last pass (a clean close, nobody writing) truncates SQLite's WAL to nothing.
    let mode = if last_pass { "TRUNCATE" } else { "PASSIVE" };
    if checkpoint_index(inner, c, &db, mode) == Some(true) {
        state.checkpointed_seq = indexed;
    }
    let synced = inner.synced_seq.load(Ordering::SeqCst);
    let mut pending = std::mem::take(&mut *inner.closed.lock());
    pending.retain(|(path, last)| {
        if *last > synced {
            return true;
        }
        match std::fs::remove_file(path) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "ledger: cannot delete indexed WAL segment");
                true
            }
        }
    });
    inner.closed.lock().append(&mut pending);
}

/// A checkpoint of SQLite's WAL, `PASSIVE` (it waits for nobody) or `TRUNCATE` (at a
/// clean close: the WAL file is cut to nothing); when it is complete,
/// every record indexed and covered by a ledger checkpoint before it is in the synced
/// database, and `synced_seq` moves up to them. `Some(complete)`, `None` on error.
///
/// The collector takes these off the indexer's path. But SQLite starts its WAL over
/// only when a write transaction begins with the WAL fully checkpointed, and under
/// steady load the indexer is always mid-transaction when the collector's checkpoint
/// ends, so the WAL would only grow (to 200 MiB in a 200k-record run): every
/// `FINISH_BYTES` the indexer checkpoints the last frames itself, between two of its
/// transactions.
pub(super) fn checkpoint_index(
    inner: &Inner,
    c: &rusqlite::Connection,
    db: &Path,
    mode: &str,
) -> Option<bool> {
    // Read before checkpointing: what a complete checkpoint syncs includes these rows.
    let covered = match (index::head(c), index::last_checkpoint(c)) {
        (Ok(h), Ok(cp)) => h.map_or(0, |h| h.0).min(cp.unwrap_or(0)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(db = %db.display(), error = %e, "ledger: cannot read the index head; keeping WAL segments");
            return None;
        }
    };
    // (busy, frames in the WAL, frames checkpointed)
    let result = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((0, log, done)) if done == log => {
            inner.synced_seq.fetch_max(covered, Ordering::SeqCst);
            Some(true)
        }
        Ok(_) => Some(false),
        Err(e) => {
            tracing::warn!(db = %db.display(), error = %e, "ledger: index checkpoint failed; keeping WAL segments");
            None
        }
    }
}

/// Background sync (`fsync: interval`), timed checkpoints, segment age rotation and
/// hourly retention.
pub(super) fn maintenance(inner: Arc<Inner>) {
    let tick = match inner.cfg.fsync {
        FsyncPolicy::Interval(d) => d.min(Duration::from_millis(100)),
        FsyncPolicy::Always => Duration::from_millis(100),
    };
    let started = Instant::now();
    let mut last_sync = Instant::now();
    loop {
        // Woken early by `shutdown` (unpark).
        std::thread::park_timeout(tick);
        if inner.stop.load(Ordering::SeqCst) || inner.crashed.load(Ordering::SeqCst) {
            return;
        }
        // Closed segments, and the current one when the interval is up.
        let to_sync;
        {
            let mut w = inner.writer.lock();
            if w.last_checkpoint_at.elapsed() >= inner.cfg.checkpoint_interval
                && w.since_checkpoint > 0
            {
                if let Err(e) = inner.checkpoint_locked(&mut w) {
                    tracing::error!(error = %e, "ledger: timed checkpoint failed");
                }
            }
            if w.seg.opened.elapsed() >= SEGMENT_AGE && w.since_checkpoint == 0 {
                if let Err(e) = inner.rotate_locked(&mut w) {
                    tracing::error!(error = %e, "ledger: segment rotation failed");
                }
            }
            let mut files = std::mem::take(&mut w.unsynced);
            if let FsyncPolicy::Interval(d) = inner.cfg.fsync {
                if w.dirty && last_sync.elapsed() >= d {
                    w.dirty = false;
                    last_sync = Instant::now();
                    files.push((w.seg.file.clone(), w.seg.path.clone()));
                }
            }
            to_sync = files;
        }
        // Syncs outside the lock: appends continue meanwhile. A failed one is retried on
        // the next turn (the current segment marked dirty again, a closed one queued).
        for (file, path) in to_sync {
            if let Err(e) = file.sync_data() {
                tracing::error!(segment = %path.display(), error = %e, "ledger: WAL sync failed; retrying");
                let mut w = inner.writer.lock();
                if w.seg.path == path {
                    w.dirty = true;
                } else {
                    w.unsynced.push((file, path));
                }
            }
        }
        let due = {
            let last = inner.retention.lock();
            match *last {
                Some(t) => t.elapsed() >= RETENTION_EVERY,
                None => started.elapsed() >= Duration::from_secs(60),
            }
        };
        if due && (inner.cfg.retention_days > 0 || inner.cfg.content_retention_days.is_some()) {
            if let Err(e) = inner.run_retention(SystemTime::now()) {
                tracing::error!(error = %e, "ledger: retention run failed");
            }
        }
    }
}
