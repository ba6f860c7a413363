//! The write path: [`Ledger::open`], [`Ledger::append`] and the chain state behind one
//! mutex, the write-ahead segments, checkpoints, and the handle's lifecycle (the
//! indexer, maintenance and collector threads it starts live in their own modules).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::chain::{self, Checkpoint, HmacSha256, PreMeta, StoredRecord, GENESIS};
use super::config::{ContentMode, FsyncPolicy, LedgerConfig};
use super::error::LedgerError;
use super::index::{self, Columns, IndexRow};
use super::indexer::indexer;
use super::maintenance::{collect, collector, maintenance, Collector};
use super::replay::replay;
use super::{canon, keys, wal};
use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Record, Target};
use crate::tlog::merkle::{self, Frontier};
use crate::tlog::note::NoteSigner;

/// A segment is closed (after a checkpoint) once it is this large…
pub(super) const SEGMENT_BYTES: u64 = 16 << 20;
/// …or this old, so content never outlives content retention in a segment for long.
pub(super) const SEGMENT_AGE: Duration = Duration::from_secs(3600);
/// Records queued for the indexer before `append` waits for it (backpressure).
pub(super) const MAX_QUEUE: usize = 32 * 1024;
/// The initiator of records the ledger writes about itself.
pub(super) const SELF_ID: &str = "sluice-ledger";

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number (1-based, gapless).
    pub seq: u64,
    /// Its chain hash (hex).
    pub hash: String,
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Records deleted.
    pub pruned: u64,
    /// The last pruned seq, now the chain's anchor.
    pub anchor_seq: Option<u64>,
    /// Records whose content was removed.
    pub content_removed: u64,
}

/// The write-ahead segment being appended to.
pub(super) struct Segment {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    pub(super) len: u64,
    pub(super) opened: Instant,
}

/// Chain state, guarded by the writer mutex.
pub(super) struct Writer {
    pub(super) next_seq: u64,
    pub(super) prev_hash: [u8; 32],
    /// The Merkle tree over records `1..next_seq`, as its frontier.
    pub(super) tree: Frontier,
    pub(super) seg: Segment,
    pub(super) since_checkpoint: u64,
    pub(super) last_checkpoint_seq: u64,
    pub(super) last_checkpoint_at: Instant,
    pub(super) dirty: bool,
    /// Closed segments not yet synced: the maintenance thread syncs them outside the lock
    /// (a 16 MiB sync under it stalled every appender for tens of milliseconds).
    pub(super) unsynced: Vec<(Arc<File>, PathBuf)>,
    /// Items handed to the indexer so far.
    pub(super) pushed: u64,
    pub(super) broken: Option<String>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "short-lived queue items; boxing would add an allocation per record"
)]
pub(super) enum Item {
    Record(IndexRow),
    Checkpoint(Checkpoint),
    /// A segment no longer written; deletable once indexed and checkpointed.
    SegmentClosed {
        path: PathBuf,
        last_seq: u64,
    },
}

#[derive(Default)]
pub(super) struct Progress {
    /// Items the indexer has committed.
    pub(super) done: u64,
    pub(super) indexed_seq: u64,
}

pub(super) struct Inner {
    pub(super) cfg: LedgerConfig,
    pub(super) hmac: HmacSha256,
    pub(super) hmac_key_id: String,
    /// Signs checkpoints, under the ledger's origin.
    pub(super) signer: NoteSigner,
    pub(super) public_pem: String,
    pub(super) writer: Mutex<Writer>,
    pub(super) queue: Mutex<std::collections::VecDeque<Item>>,
    pub(super) queue_cv: Condvar,
    pub(super) progress: Mutex<Progress>,
    pub(super) progress_cv: Condvar,
    pub(super) stop: AtomicBool,
    /// Test hook: threads exit at once, as if the process had been killed.
    pub(super) crashed: AtomicBool,
    /// Test hook: the indexer takes nothing from its queue.
    pub(super) paused: AtomicBool,
    pub(super) retention: Mutex<Option<Instant>>,
    /// Closed segments whose items the indexer committed: `(path, last_seq)`, for the
    /// collector to delete once covered.
    pub(super) closed: Mutex<Vec<(PathBuf, u64)>>,
    /// Records up to this seq are in SQLite's database file, synced (a complete
    /// checkpoint covered them): their segments may go.
    pub(super) synced_seq: AtomicU64,
    /// Callers waiting in `flush`: the indexer commits what it has at once.
    pub(super) flushing: std::sync::atomic::AtomicUsize,
    /// The queue length at which `enqueue` wakes the indexer, set by the indexer (under
    /// the queue lock) before it waits: 1 while it idles on an empty queue, the records
    /// still missing from a whole batch while it gathers one (see `indexer`).
    pub(super) wake_at: std::sync::atomic::AtomicUsize,
}

/// An open ledger. Cheap to share (`Arc<Ledger>`); `append` may be called from any
/// number of threads.
pub struct Ledger {
    pub(super) inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.inner.cfg.dir)
            .finish_non_exhaustive()
    }
}

/// A record prepared outside the writer lock.
pub(super) struct Prepared {
    pub(super) pre: PreMeta,
    pub(super) content: Option<String>,
    pub(super) cols: Columns,
}

impl Ledger {
    /// Open (creating) the ledger in `cfg.dir`: load or generate keys, replay the WAL
    /// segments into the index, and start the indexer and maintenance threads.
    ///
    /// # Errors
    /// [`LedgerError`] naming the path when the directory, a key or the index cannot be
    /// used, when another process holds the ledger, or when a segment other than the
    /// newest one's last line is damaged.
    pub fn open(cfg: &LedgerConfig) -> Result<Ledger, LedgerError> {
        crate::metrics::init();
        let dir = &cfg.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| LedgerError::io("create directory", dir, e))?;
        let lock_path = dir.join("ledger.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LedgerError::io("open lock file", &lock_path, e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| LedgerError::Locked {
                path: dir.clone(),
                detail: errno.desc().to_owned(),
            })?;

        let (hmac_key_id, hmac_key) = keys::current_hmac_key(dir, cfg.hmac_source(), true)?
            .ok_or_else(|| LedgerError::Key {
                path: dir.join(keys::HMAC_KEY_FILE),
                detail: "no HMAC key could be created".into(),
            })?;
        let signing = keys::signing_key(dir, cfg.signing_source())?;
        let public_pem = keys::public_pem(&signing, &dir.join(keys::SIGNING_KEY_FILE))?;

        let mut conn = index::open_rw(dir)?;
        let replay = replay(dir, &mut conn)?;
        let db = index::db_path(dir);
        let ins = index::Inserter::new(&conn).map_err(index::sql_err(&db))?;
        // The collector checkpoints SQLite's WAL (see `collect`): a checkpoint's two
        // syncs in the indexer's commit had it waiting on the disk about half its time.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(index::sql_err(&db))?;
        let (head_seq, head_hash) = index::head(&conn)
            .map_err(index::sql_err(&db))?
            .map(|(s, h)| (s, chain::decode_hash(&h).unwrap_or(GENESIS)))
            .unwrap_or((0, GENESIS));
        let last_cp = index::last_checkpoint(&conn)
            .map_err(index::sql_err(&db))?
            .unwrap_or(0);
        let tree = index::frontier(&conn).map_err(|detail| LedgerError::Corrupt {
            path: db.clone(),
            offset: 0,
            detail: format!("the Merkle tree over the index cannot be rebuilt: {detail}"),
        })?;
        if tree.size() != head_seq {
            return Err(LedgerError::Corrupt {
                path: db.clone(),
                offset: 0,
                detail: format!(
                    "the Merkle tree over the index ends at {} but the chain at {head_seq}",
                    tree.size()
                ),
            });
        }
        let origin = match &cfg.origin {
            Some(o) => o.clone(),
            None => default_origin(&signing.verifying_key()),
        };

        // Always continue in a fresh segment; the replayed ones are closed.
        let next_seq = head_seq + 1;
        let seg_path = dir.join(wal::segment_name(next_seq));
        let mut closed = Vec::new();
        for (first, path, last) in replay.segments {
            if path != seg_path {
                closed.push(Item::SegmentClosed {
                    path,
                    last_seq: last.unwrap_or(first.saturating_sub(1)),
                });
            }
        }
        let seg = open_segment(next_seq, seg_path)?;
        let inner = Arc::new(Inner {
            hmac: chain::hmac_for(&hmac_key),
            hmac_key_id,
            signer: NoteSigner {
                name: origin,
                key: signing,
            },
            public_pem,
            writer: Mutex::new(Writer {
                next_seq,
                prev_hash: head_hash,
                tree,
                seg,
                since_checkpoint: head_seq.saturating_sub(last_cp),
                last_checkpoint_seq: last_cp,
                last_checkpoint_at: Instant::now(),
                dirty: false,
                unsynced: Vec::new(),
                pushed: 0,
                broken: None,
            }),
            queue: Mutex::new(std::collections::VecDeque::new()),
            queue_cv: Condvar::new(),
            progress: Mutex::new(Progress {
                done: 0,
                indexed_seq: head_seq,
            }),
            progress_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            retention: Mutex::new(None),
            closed: Mutex::new(Vec::new()),
            synced_seq: AtomicU64::new(0),
            flushing: std::sync::atomic::AtomicUsize::new(0),
            wake_at: std::sync::atomic::AtomicUsize::new(1),
            cfg: cfg.clone(),
        });
        {
            let mut w = inner.writer.lock();
            let n = closed.len() as u64;
            inner.queue.lock().extend(closed);
            w.pushed += n;
            // Cover what was replayed, so its segments can go.
            if head_seq > last_cp {
                if let Err(e) = inner.checkpoint_locked(&mut w) {
                    tracing::warn!(error = %e, "ledger: checkpoint after replay failed");
                }
            }
        }

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| LedgerError::io("start thread for", dir, e))
        };
        let i = inner.clone();
        threads.push(spawn(
            "sluice-ledger-index",
            Box::new(move || indexer(i, conn, ins)),
        )?);
        let i = inner.clone();
        threads.push(spawn(
            "sluice-ledger-sync",
            Box::new(move || maintenance(i)),
        )?);
        let i = inner.clone();
        threads.push(spawn("sluice-ledger-gc", Box::new(move || collector(i)))?);
        if !cfg.witnesses.is_empty() {
            let i = inner.clone();
            threads.push(spawn(
                "sluice-ledger-witness",
                Box::new(move || super::outbox::outbox(i)),
            )?);
        }
        let ledger = Ledger {
            inner,
            threads: Mutex::new(threads),
            _lock: lock,
        };
        if let Some(torn) = replay.torn {
            let admin = self_admin(
                AdminAction::Update,
                AdminOutcome::Failure,
                "wal_segment",
                &torn.0,
                serde_json::json!({
                    "event": "torn_tail_removed",
                    "bytes": torn.1,
                    "note": "the last line of the newest WAL segment was incomplete (crash mid-write) and was cut off at open",
                }),
                SystemTime::now(),
            );
            ledger.append(&admin)?;
        }
        Ok(ledger)
    }

    /// Append one record: assign its seq, chain it, write it to the WAL.
    ///
    /// # Errors
    /// [`LedgerError`] naming the path and the fix when the WAL cannot be written (disk
    /// full, read-only, …); counted in `sluice_ledger_append_errors_total`. Nothing was
    /// appended then, except with `fsync: always` when only the sync failed: the record
    /// is in the WAL but may not survive a power loss.
    pub fn append(&self, record: &Record) -> Result<Appended, LedgerError> {
        self.inner.append_counted(record)
    }

    /// Wait until every record appended before this call is in the SQLite index.
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Checkpoint the chain head, sync, let the indexer finish and stop the threads.
    ///
    /// # Errors
    /// The final checkpoint or sync failed (the records are in the WAL regardless).
    pub fn close(self) -> Result<(), LedgerError> {
        self.shutdown()
    }

    /// [`Self::close`] through a shared handle: checkpoint, sync, let the indexer (and
    /// the witness outbox) finish and stop the threads. Appends after it fail with
    /// [`LedgerError::Closed`]; a second call does nothing.
    ///
    /// # Errors
    /// The final checkpoint or sync failed (the records are in the WAL regardless).
    pub fn stop(&self) -> Result<(), LedgerError> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<(), LedgerError> {
        let threads = std::mem::take(&mut *self.threads.lock());
        if threads.is_empty() {
            return Ok(());
        }
        let mut result = Ok(());
        if !self.inner.crashed.load(Ordering::SeqCst) {
            let mut w = self.inner.writer.lock();
            result = self.inner.checkpoint_locked(&mut w).and_then(|()| {
                let mut files = std::mem::take(&mut w.unsynced);
                files.push((w.seg.file.clone(), w.seg.path.clone()));
                for (file, path) in &files {
                    file.sync_data()
                        .map_err(|e| LedgerError::io("sync WAL segment", path, e))?;
                }
                Ok(())
            });
        }
        if !self.inner.cfg.witnesses.is_empty() {
            // The final checkpoint indexed, so the outbox's last round can send it.
            self.inner.flush_within(Duration::from_secs(5));
        }
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.queue_cv.notify_all();
        self.inner.progress_cv.notify_all();
        for t in &threads {
            t.thread().unpark();
        }
        for t in threads {
            let _ = t.join();
        }
        if !self.inner.crashed.load(Ordering::SeqCst) {
            collect(&self.inner, &mut Collector::default(), true);
        }
        result
    }

    /// The Ed25519 public key (SPKI PEM) checkpoints are signed with.
    pub fn public_key_pem(&self) -> String {
        self.inner.public_pem.clone()
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// Apply retention as of `now`: prune records older than `retention_days` (writing
    /// an anchor admin record first, so the remaining chain verifies from it) and remove
    /// the content of records older than `content_retention_days` (writing an admin
    /// record). The ledger also runs this hourly by itself with the system clock.
    ///
    /// # Errors
    /// The index could not be read or changed, or an admin record not appended.
    pub fn run_retention(&self, now: SystemTime) -> Result<RetentionReport, LedgerError> {
        self.inner.run_retention(now)
    }

    /// Test hook: stop every thread at once without a final checkpoint, sync or
    /// indexing, as a killed process would.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        let _ = self.shutdown();
    }

    /// Test hook: write the WAL into `path` from now on (e.g. `/dev/full`).
    #[cfg(test)]
    pub(crate) fn redirect_wal(&self, path: &Path) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open test WAL");
        let mut w = self.inner.writer.lock();
        w.seg.file = Arc::new(f);
        w.seg.path = path.to_path_buf();
    }

    /// Test hook: stop (or resume) the indexer taking records.
    #[cfg(test)]
    pub(crate) fn pause_indexer(&self, paused: bool) {
        self.inner.paused.store(paused, Ordering::SeqCst);
        self.inner.queue_cv.notify_all();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "ledger: closing on drop failed");
        }
    }
}

/// An admin record written by the ledger about itself.
pub(super) fn self_admin(
    action: AdminAction,
    outcome: AdminOutcome,
    target_type: &str,
    target_id: &str,
    details: Value,
    now: SystemTime,
) -> Record {
    let mut a = Admin::new(
        action,
        outcome,
        Initiator {
            id: SELF_ID.into(),
            role: "system".into(),
            ip: None,
        },
        Target {
            kind: target_type.into(),
            id: target_id.into(),
        },
        details,
    );
    a.ts = crate::record::rfc3339(now);
    Record::Admin(Box::new(a))
}

pub(super) fn open_segment(first_seq: u64, path: PathBuf) -> Result<Segment, LedgerError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| LedgerError::io("open WAL segment", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| LedgerError::io("stat WAL segment", &path, e))?
        .len();
    Ok(Segment {
        first_seq,
        path,
        file: Arc::new(file),
        len,
        opened: Instant::now(),
    })
}

/// `prepare` by way of a `serde_json::Value`: the reference the fast path
/// (`canon::prepare`) must match byte for byte, and the path taken when it gives up.
pub(super) fn prepare_value(
    record: &Record,
    mode: ContentMode,
    hmac_key_id: &str,
) -> Result<Prepared, LedgerError> {
    let Value::Object(mut m) = serde_json::to_value(record)? else {
        return Err(LedgerError::Serialize(serde::ser::Error::custom(
            "a record must serialise to a JSON object",
        )));
    };
    for k in ["seq", "prev_hash", "hash", "hmac"] {
        m.remove(k);
    }
    let content = chain::split_content(&mut m, mode).map(|c| chain::canonical(&c));
    if let Some(c) = &content {
        m.insert(
            "content_sha256".into(),
            chain::sha256_hex(c.as_bytes()).into(),
        );
        m.insert("content_mode".into(), mode.as_str().into());
    }
    m.insert("hmac_key_id".into(), hmac_key_id.to_owned().into());
    Ok(Prepared {
        cols: Columns::from_meta(&m),
        pre: PreMeta::new(&m),
        content,
    })
}

// === impl Inner ===

impl Inner {
    fn prepare(&self, record: &Record) -> Result<Prepared, LedgerError> {
        let mode = self.cfg.content_mode;
        match canon::prepare(record, mode, &self.hmac_key_id) {
            Some(p) => Ok(Prepared {
                pre: p.pre,
                content: p.content,
                cols: p.cols,
            }),
            None => prepare_value(record, mode, &self.hmac_key_id),
        }
    }

    pub(super) fn append_counted(&self, record: &Record) -> Result<Appended, LedgerError> {
        let r = self.append(record);
        match &r {
            Ok(_) => crate::metrics::LEDGER_RECORDS
                .with_label_values(&[record.kind()])
                .inc(),
            Err(e) => {
                crate::metrics::LEDGER_APPEND_ERRORS.inc();
                tracing::error!(error = %e, "ledger append failed");
            }
        }
        r
    }

    pub(super) fn append(&self, record: &Record) -> Result<Appended, LedgerError> {
        let p = self.prepare(record)?;
        // Before taking the writer lock: the indexer takes that lock to publish its
        // progress, so waiting for it while holding the lock could wait forever.
        self.wait_for_room();
        let mut w = self.writer.lock();
        if self.stop.load(Ordering::Relaxed) {
            return Err(LedgerError::Closed);
        }
        if let Some(detail) = &w.broken {
            return Err(LedgerError::Broken {
                path: w.seg.path.clone(),
                detail: detail.clone(),
            });
        }
        let seq = w.next_seq;
        let meta = p.pre.finish(&w.prev_hash, seq);
        let hash = chain::chain_hash(&w.prev_hash, &meta);
        let hash_hex = chain::hex_string(&hash);
        let hmac = chain::hmac_hex(&self.hmac, &hash);
        let line = chain::record_line(&meta, p.content.as_deref(), &hash_hex, &hmac);
        self.write_line(&mut w, &line)?;
        w.next_seq += 1;
        w.prev_hash = hash;
        w.tree.push(merkle::leaf_hash(&hash));
        w.since_checkpoint += 1;
        w.dirty = true;
        w.pushed += 1;
        self.enqueue(Item::Record(IndexRow {
            seq,
            cols: p.cols,
            rec: StoredRecord {
                meta,
                content: p.content,
                hash: hash_hex.clone(),
                hmac,
            },
        }));
        if w.since_checkpoint >= self.cfg.checkpoint_every.max(1) {
            // The record is kept; a failed checkpoint is retried with the next record.
            if let Err(e) = self.checkpoint_locked(&mut w) {
                tracing::error!(error = %e, "ledger: checkpoint failed");
            }
        }
        if self.cfg.fsync == FsyncPolicy::Always {
            w.dirty = false;
            w.seg
                .file
                .sync_data()
                .map_err(|e| LedgerError::io("sync WAL segment", &w.seg.path, e))?;
        }
        Ok(Appended {
            seq,
            hash: hash_hex,
        })
    }

    /// Hand an item to the indexer, waking it only when the queue reaches the length it
    /// asked to be woken at (`wake_at`): the first record after it went idle, or the
    /// record that completes the batch it is gathering. Waking it for every record had
    /// cost the appending thread a futex call and, on a busy core, two context switches
    /// per record, while the gathering indexer took one record per wake-up.
    pub(super) fn enqueue(&self, item: Item) {
        let mut q = self.queue.lock();
        q.push_back(item);
        let wake = q.len() == self.wake_at.load(Ordering::Relaxed);
        drop(q);
        if wake {
            self.queue_cv.notify_one();
        }
    }

    /// Backpressure: if the indexer is far behind, wait for it (memory stays bounded:
    /// each appending thread adds at most one record past the limit). The indexer wakes
    /// the waiters as soon as it takes a batch off the full queue, not once it has
    /// committed the batch, so appending goes on while the batch is indexed.
    pub(super) fn wait_for_room(&self) {
        while self.queue.lock().len() >= MAX_QUEUE
            && !self.stop.load(Ordering::Relaxed)
            && !self.paused.load(Ordering::Relaxed)
        {
            let mut p = self.progress.lock();
            // Looked at again with `progress` held, which the indexer takes to wake us:
            // a wake-up between the look and the wait is not missed.
            if self.queue.lock().len() < MAX_QUEUE {
                break;
            }
            self.progress_cv.wait_for(&mut p, Duration::from_millis(50));
        }
    }

    /// One `write(2)` of a whole line; on failure the segment is cut back so no partial
    /// line stays behind (or the ledger refuses further records if that fails too).
    pub(super) fn write_line(&self, w: &mut Writer, line: &[u8]) -> Result<(), LedgerError> {
        match (&*w.seg.file).write_all(line) {
            Ok(()) => {
                w.seg.len += line.len() as u64;
                Ok(())
            }
            Err(err) => {
                if let Err(e2) = w.seg.file.set_len(w.seg.len) {
                    w.broken = Some(format!("{err}; cutting back the partial line failed: {e2}"));
                }
                Err(LedgerError::io("append to WAL segment", &w.seg.path, err))
            }
        }
    }

    /// Sign and write a checkpoint of the chain head (if it moved), then close the
    /// segment if it is large or old.
    pub(super) fn checkpoint_locked(&self, w: &mut Writer) -> Result<(), LedgerError> {
        let head = w.next_seq - 1;
        if head == 0 || head == w.last_checkpoint_seq {
            return Ok(());
        }
        let cp = chain::sign_checkpoint(
            &self.signer,
            &w.tree,
            &hex::encode(w.prev_hash),
            crate::record::rfc3339(SystemTime::now()),
        );
        self.write_line(w, &chain::checkpoint_line(&cp))?;
        w.since_checkpoint = 0;
        w.last_checkpoint_seq = head;
        w.last_checkpoint_at = Instant::now();
        w.dirty = true;
        w.pushed += 1;
        self.enqueue(Item::Checkpoint(cp));
        crate::metrics::LEDGER_CHECKPOINTS.inc();
        if w.seg.len >= SEGMENT_BYTES || w.seg.opened.elapsed() >= SEGMENT_AGE {
            self.rotate_locked(w)?;
        }
        Ok(())
    }

    /// Close the current segment (synced) and start `wal-<next_seq>.jsonl`.
    pub(super) fn rotate_locked(&self, w: &mut Writer) -> Result<(), LedgerError> {
        if w.seg.first_seq == w.next_seq {
            return Ok(()); // nothing in it yet
        }
        let path = self.cfg.dir.join(wal::segment_name(w.next_seq));
        let old = std::mem::replace(&mut w.seg, open_segment(w.next_seq, path)?);
        if std::mem::take(&mut w.dirty) {
            w.unsynced.push((old.file, old.path.clone()));
        }
        w.pushed += 1;
        self.enqueue(Item::SegmentClosed {
            path: old.path,
            last_seq: w.next_seq - 1,
        });
        Ok(())
    }

    pub(super) fn flush(&self) {
        self.flush_within(Duration::MAX);
    }

    /// [`Self::flush`], giving up after `limit`.
    pub(super) fn flush_within(&self, limit: Duration) {
        let deadline = Instant::now().checked_add(limit);
        let target = self.writer.lock().pushed;
        // The indexer commits at once instead of gathering more (see `indexer`).
        self.flushing.fetch_add(1, Ordering::SeqCst);
        let mut p = self.progress.lock();
        while p.done < target
            && !self.crashed.load(Ordering::SeqCst)
            && !self.stop.load(Ordering::SeqCst)
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            self.queue_cv.notify_all();
            self.progress_cv
                .wait_for(&mut p, Duration::from_millis(100));
        }
        drop(p);
        self.flushing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The origin of a ledger whose configuration names none: derived from its checkpoint
/// key, so it is stable across restarts and differs between nodes.
pub(super) fn default_origin(key: &ed25519_dalek::VerifyingKey) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    format!("sluice/{}", chain::hex_string(&d[..8]))
}
