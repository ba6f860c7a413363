//! The audit ledger: every record Sluice emits, in one tamper-evident, queryable chain.
//!
//! # Write path
//! [`Ledger::append`] runs on the request path, before the last response byte is
//! released. It serialises the record outside any lock, then under one mutex assigns
//! the next `seq`, computes the chain hash and HMAC, and appends one line to the current
//! write-ahead segment `wal-<first_seq>.jsonl` with a single `write(2)`. Once `append`
//! returns the record survives a crash of the proxy (it is in the page cache); against
//! power loss `fsync: interval` (default) syncs the segment every 100 ms from a
//! background thread (a segment closed at 16 MiB too, on that thread's next turn: never
//! under the writer lock), `fsync: always` syncs inside `append`. A background indexer
//! inserts the records, in order and in transactions of up to 4,096, into SQLite
//! (`ledger.sqlite`, WAL journal mode) for queries; `append` waits only when 32k records
//! are queued for it. On open the segments are replayed into SQLite idempotently (keyed
//! by `seq`). A third thread checkpoints SQLite's WAL (the indexer finishes one itself
//! every 16 MiB it writes, so that WAL starts over) and deletes a segment once every
//! record in it is indexed, a checkpoint covers it and a complete SQLite checkpoint has
//! synced those rows.
//!
//! # Hashing scheme
//! The JSON object of a [`Record`] is split in two:
//! - **content** (interactions only): `request.messages`, `request.params`,
//!   `response.output`, `response.tool_calls`, as `{"request":{…},"response":{…}}`;
//! - **metadata**: everything else, plus `seq`, `prev_hash`, `hmac_key_id`, and for
//!   interactions `content_mode` and `content_sha256` = SHA-256 (hex) of the canonical
//!   content text.
//!
//! *Canonical* JSON: object keys sorted by their UTF-8 bytes at every depth, no
//! whitespace, strings and numbers as serde_json writes them (sorted explicitly, so the
//! form does not depend on serde_json's map feature). Then
//!
//! ```text
//! hash = SHA-256( prev_hash (32 raw bytes; zeros for seq 1) ‖ canonical(metadata) )
//! hmac = HMAC-SHA256( key named by hmac_key_id, hash (32 raw bytes) )
//! ```
//!
//! The exact canonical texts are stored (WAL line `{"meta":…,"content":…,"hash":…,
//! "hmac":…}`, SQLite columns `meta`/`content`, compressed there with a zstd dictionary
//! the index keeps: see `index`), so verification hashes bytes and never
//! depends on re-serialisation. Because the content enters the chain only through its
//! digest, retention can delete the content and the chain still verifies; while content
//! is present, verify checks it against `content_sha256`.
//!
//! Every `checkpoint_every` records or `checkpoint_interval` a **checkpoint**
//! `{seq, hash, ts, signature}` is written (WAL and `checkpoints` table), signed with
//! Ed25519 over the text `"{seq}|{hash}|{ts}"`. The signing key is `checkpoint.key`
//! (generated, 0600); its public key `checkpoint.pub.pem` ([`Ledger::public_key_pem`]) lets
//! an auditor without the HMAC secret verify the chain heads. An auditor should take the
//! public key from a trusted copy, not from the directory under audit.
//!
//! # Keys
//! The HMAC key comes from `hmac_key_file`, else `$SLUICE_LEDGER_HMAC_KEY` (hex or raw
//! text), else `<dir>/hmac.key`, generated (32 random bytes, hex, mode 0600) at first
//! open. `hmac_key_id` is derived from the key (16 hex digits of a SHA-256), so rotating
//! means: keep the old key as `<dir>/hmac-<anything>.key` for [`verify`] and configure a
//! new one.
//!
//! # Guarantees and limits
//! [`verify`] detects an edited record or content, a deleted record (gap), reordered
//! records, a wrong HMAC, a forged checkpoint and a truncated WAL. It cannot detect the
//! removal of the newest records after the last checkpoint by someone holding the
//! directory (the chain head is only pinned by checkpoints), nor a rewrite of the whole
//! chain by someone holding the HMAC key *and* the signing key. A torn last line of the
//! newest segment (a crash mid-write) is reported as an incomplete tail, not as
//! tampering, unless the index shows the record once existed in full.
//!
//! This module does not decide what a record contains ([`crate::record`]) nor what to do
//! when appending fails (`on_ledger_failure` is the caller's policy).

mod canon;
mod chain;
mod export;
mod index;
mod keys;
mod query;
mod report;
mod verify;
mod wal;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde::Deserialize;
use serde_json::Value;

use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Record, Target};
use crate::sink::{RecordSink, SinkError};

use chain::{Checkpoint, HmacSha256, PreMeta, StoredRecord, GENESIS};
use index::{Columns, IndexRow};

pub use export::{export, export_with_audit, ExportFormat};
pub use keys::{load_hmac_keys, rotate_hmac_key, Rotation, HMAC_KEY_ENV, PUBLIC_KEY_FILE};
pub use query::{query, tail_after, Filter};
pub use report::{render_report_text, report, ReportKind};
pub use verify::{verify, VerifyError, VerifyErrorKind, VerifyOptions, VerifyReport};

/// A segment is closed (after a checkpoint) once it is this large…
const SEGMENT_BYTES: u64 = 16 << 20;
/// …or this old, so content never outlives content retention in a segment for long.
const SEGMENT_AGE: Duration = Duration::from_secs(3600);
/// Records queued for the indexer before `append` waits for it (backpressure).
const MAX_QUEUE: usize = 32 * 1024;
/// Items indexed per SQLite transaction at most.
const INDEX_BATCH: usize = 4096;
/// How often the collector checkpoints SQLite's WAL and deletes covered segments.
const COLLECT_EVERY: Duration = Duration::from_millis(100);
/// Records indexed between two checkpoints of SQLite's WAL (about 10 MiB of it)…
const CHECKPOINT_ROWS: u64 = 16 * 1024;
/// …or how long a closed segment waits for one.
const SEGMENT_WAIT: Duration = Duration::from_secs(1);
/// Bytes the indexer writes to SQLite's WAL (estimated) before it checkpoints it
/// itself, between two transactions, so the WAL starts over.
const FINISH_BYTES: u64 = 16 << 20;
/// Pages every commit rewrites whole, over and above the rows: the newest leaf of the
/// table and of each index, and their parents (an estimate for `FINISH_BYTES`).
const PAGES_PER_COMMIT: u64 = 10;
/// How often the ledger applies retention by itself.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// The initiator of records the ledger writes about itself.
const SELF_ID: &str = "sluice-ledger";

// === config ===

/// When the write-ahead segment is synced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` inside every `append`: no acknowledged record is lost on power loss,
    /// at the cost of one disk flush per record.
    Always,
    /// A background thread syncs at this interval: a power loss loses at most this much.
    Interval(Duration),
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(100))
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::default()),
            other => parse_duration(other)
                .filter(|d| !d.is_zero())
                .map(FsyncPolicy::Interval)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "fsync: `{other}` is not `always`, `interval` or a duration such as `250ms`"
                    ))
                }),
        }
    }
}

/// What of a prompt and a response the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// Everything the record carries.
    #[default]
    Full,
    /// As given: redaction already happened upstream (the policy engine).
    Redacted,
    /// No text: each message, parameter, output and tool-call argument is replaced by
    /// its SHA-256 (hex, of the UTF-8 text) so evidence can be matched later.
    Metadata,
}

impl ContentMode {
    fn as_str(self) -> &'static str {
        match self {
            ContentMode::Full => "full",
            ContentMode::Redacted => "redacted",
            ContentMode::Metadata => "metadata",
        }
    }
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, or a bare number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!("`{t}` is not a duration such as `10s` or `500ms`"))
        }),
    }
}

/// The `ledger:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Directory holding the WAL segments, `ledger.sqlite` and the keys (created 0700).
    /// Default: `<state_dir>/ledger`.
    pub dir: PathBuf,
    /// `interval` (sync every 100 ms in the background), `always` (sync in every
    /// append), or an interval such as `250ms`. Default: `interval`.
    pub fsync: FsyncPolicy,
    /// Write a signed checkpoint after this many records. Default: 1000.
    pub checkpoint_every: u64,
    /// …or after this long when records arrived since the last one (`10s`, `500ms`).
    /// Default: 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_interval: Duration,
    /// Records older than this many days are pruned (an anchor keeps the chain
    /// verifiable); 0 keeps records forever. Default: 90.
    pub retention_days: u32,
    /// After this many days the content fields (messages, params, output, tool calls)
    /// are removed; metadata and hashes stay. Default: none (kept as long as the record).
    pub content_retention_days: Option<u32>,
    /// `full`, `redacted` (stored as given) or `metadata` (digests instead of text).
    /// Default: `full`.
    pub content_mode: ContentMode,
    /// File holding the HMAC key (hex or raw). Default: `$SLUICE_LEDGER_HMAC_KEY`, else
    /// `<dir>/hmac.key`, generated at first open.
    pub hmac_key_file: Option<PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            dir: crate::config::default_state_dir().join("ledger"),
            fsync: FsyncPolicy::default(),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            retention_days: 90,
            content_retention_days: None,
            content_mode: ContentMode::Full,
            hmac_key_file: None,
        }
    }
}

// === errors ===

/// Why the ledger could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file or directory of the ledger could not be used.
    #[error("ledger: cannot {op} {}: {source} ({hint})", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    /// The SQLite index failed.
    #[error("ledger index {}: {source} (check free disk space and permissions; `sluice audit verify` reports damaged records)", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A key file is missing, unreadable or malformed.
    #[error("ledger key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    /// No ledger at that path.
    #[error("no ledger at {} (check `ledger.dir`; the proxy creates it at first start)", path.display())]
    NotFound { path: PathBuf },
    /// Another process has the ledger open for writing.
    #[error("ledger {} is in use by another process ({detail}); one proxy per ledger directory", path.display())]
    Locked { path: PathBuf, detail: String },
    /// A WAL segment holds bytes that are not a record, before its end.
    #[error("WAL segment {} is damaged at byte {offset}: {detail} (run `sluice audit verify`; move the segment aside to start anyway)", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// A failed write could not be undone; the ledger refuses records until reopened.
    #[error("ledger {} stopped accepting records after a write it could not undo: {detail} (fix the disk, then restart the proxy)", path.display())]
    Broken { path: PathBuf, detail: String },
    /// A record did not serialise to a JSON object (a bug).
    #[error("record cannot be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The ledger is shutting down.
    #[error("the ledger is closed")]
    Closed,
}

impl LedgerError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> LedgerError {
        use std::io::ErrorKind as K;
        let hint = match source.kind() {
            K::StorageFull => "the disk is full: free space or move `ledger.dir` to a larger volume",
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                "the proxy user cannot write there: fix ownership/permissions or choose another `ledger.dir`"
            }
            K::NotFound => "the path does not exist: create it or fix `ledger.dir`",
            _ => "check that `ledger.dir` exists, is writable and has free space",
        };
        LedgerError::Io {
            op,
            path: path.to_path_buf(),
            source,
            hint,
        }
    }
}

// === metrics ===

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    crate::metrics::REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// Records appended, by kind.
pub static RECORDS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "sluice_ledger_records_total",
                "Records appended to the audit ledger",
            ),
            &["kind"],
        )
        .expect("static metric definition"),
    )
});
/// Appends that failed (the caller's `on_ledger_failure` decides what happens).
pub static APPEND_ERRORS_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "sluice_ledger_append_errors_total",
            "Records that could not be appended to the audit ledger",
        )
        .expect("static metric definition"),
    )
});
/// Records appended but not yet in the SQLite index.
pub static INDEX_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "sluice_ledger_index_lag",
            "Records in the ledger WAL not yet indexed into SQLite",
        )
        .expect("static metric definition"),
    )
});
/// Signed checkpoints written.
pub static CHECKPOINTS_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "sluice_ledger_checkpoints_total",
            "Signed checkpoints written to the audit ledger",
        )
        .expect("static metric definition"),
    )
});

/// Touch every ledger metric so each appears from the first scrape on.
pub fn init_metrics() {
    LazyLock::force(&RECORDS_TOTAL);
    LazyLock::force(&APPEND_ERRORS_TOTAL);
    LazyLock::force(&INDEX_LAG);
    LazyLock::force(&CHECKPOINTS_TOTAL);
}

// === impl Ledger ===

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
struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    opened: Instant,
}

/// Chain state, guarded by the writer mutex.
struct Writer {
    next_seq: u64,
    prev_hash: [u8; 32],
    seg: Segment,
    since_checkpoint: u64,
    last_checkpoint_seq: u64,
    last_checkpoint_at: Instant,
    dirty: bool,
    /// Closed segments not yet synced: the maintenance thread syncs them outside the lock
    /// (a 16 MiB sync under it stalled every appender for tens of milliseconds).
    unsynced: Vec<(Arc<File>, PathBuf)>,
    /// Items handed to the indexer so far.
    pushed: u64,
    broken: Option<String>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "short-lived queue items; boxing would add an allocation per record"
)]
enum Item {
    Record(IndexRow),
    Checkpoint(Checkpoint),
    /// A segment no longer written; deletable once indexed and checkpointed.
    SegmentClosed {
        path: PathBuf,
        last_seq: u64,
    },
}

#[derive(Default)]
struct Progress {
    /// Items the indexer has committed.
    done: u64,
    indexed_seq: u64,
}

struct Inner {
    cfg: LedgerConfig,
    hmac: HmacSha256,
    hmac_key_id: String,
    signing: ed25519_dalek::SigningKey,
    public_pem: String,
    writer: Mutex<Writer>,
    queue: Mutex<std::collections::VecDeque<Item>>,
    queue_cv: Condvar,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    stop: AtomicBool,
    /// Test hook: threads exit at once, as if the process had been killed.
    crashed: AtomicBool,
    /// Test hook: the indexer takes nothing from its queue.
    paused: AtomicBool,
    retention: Mutex<Option<Instant>>,
    /// Closed segments whose items the indexer committed: `(path, last_seq)`, for the
    /// collector to delete once covered.
    closed: Mutex<Vec<(PathBuf, u64)>>,
    /// Records up to this seq are in SQLite's database file, synced (a complete
    /// checkpoint covered them): their segments may go.
    synced_seq: AtomicU64,
}

/// An open ledger. Cheap to share (`Arc<Ledger>`); `append` may be called from any
/// number of threads.
pub struct Ledger {
    inner: Arc<Inner>,
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
struct Prepared {
    pre: PreMeta,
    content: Option<String>,
    cols: Columns,
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
        init_metrics();
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

        let (hmac_key_id, hmac_key) =
            keys::current_hmac_key(dir, cfg.hmac_key_file.as_deref(), true)?.ok_or_else(|| {
                LedgerError::Key {
                    path: dir.join(keys::HMAC_KEY_FILE),
                    detail: "no HMAC key could be created".into(),
                }
            })?;
        let signing = keys::signing_key(dir)?;
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
            signing,
            public_pem,
            writer: Mutex::new(Writer {
                next_seq,
                prev_hash: head_hash,
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

/// `query_row` returning `None` on no rows.
trait OptionalRow<T> {
    fn optional_row(self) -> rusqlite::Result<Option<T>>;
}
impl<T> OptionalRow<T> for rusqlite::Result<T> {
    fn optional_row(self) -> rusqlite::Result<Option<T>> {
        use rusqlite::OptionalExtension;
        self.optional()
    }
}

/// An admin record written by the ledger about itself.
fn self_admin(
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

fn open_segment(first_seq: u64, path: PathBuf) -> Result<Segment, LedgerError> {
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

/// What replaying the WAL found.
struct Replay {
    /// `(first_seq, path, last record seq)` of every segment.
    segments: Vec<(u64, PathBuf, Option<u64>)>,
    /// A torn last line cut off the newest segment: `(segment name, bytes)`.
    torn: Option<(String, u64)>,
}

/// Insert every record and checkpoint of the WAL segments into the index (idempotent),
/// skipping records already pruned (at or below the newest anchor).
fn replay(dir: &Path, conn: &mut rusqlite::Connection) -> Result<Replay, LedgerError> {
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let anchor: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM anchors", [], |r| {
            r.get(0)
        })
        .map_err(&e)?;
    let segs = wal::list_segments(dir)?;
    let n = segs.len();
    let mut out = Replay {
        segments: Vec::new(),
        torn: None,
    };
    let tx = conn.transaction().map_err(&e)?;
    let mut ins = index::Inserter::new(&tx).map_err(&e)?;
    for (i, (first, path)) in segs.into_iter().enumerate() {
        let Some(seg) = wal::read_segment(&path)? else {
            continue;
        };
        if let Some(bad) = seg.bad.first() {
            let newest_tail = i + 1 == n && seg.bad.len() == 1 && bad.at_end;
            if !newest_tail {
                return Err(LedgerError::Corrupt {
                    path,
                    offset: bad.offset,
                    detail: "a line that is not a ledger record".into(),
                });
            }
            tracing::warn!(segment = %path.display(), bytes = bad.len, "ledger: cutting off a torn last WAL line (crash mid-write)");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| LedgerError::io("open WAL segment", &path, e))?;
            f.set_len(seg.good_len)
                .map_err(|e| LedgerError::io("truncate torn WAL tail of", &path, e))?;
            out.torn = Some((
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bad.len as u64,
            ));
        }
        let mut last = None;
        for (off, line) in seg.lines {
            match line {
                chain::WalLine::Record(rec) => {
                    let meta: serde_json::Map<String, Value> = serde_json::from_str(&rec.meta)
                        .map_err(|err| LedgerError::Corrupt {
                            path: path.clone(),
                            offset: off,
                            detail: format!("record metadata is not a JSON object: {err}"),
                        })?;
                    let seq = meta.get("seq").and_then(Value::as_u64).ok_or_else(|| {
                        LedgerError::Corrupt {
                            path: path.clone(),
                            offset: off,
                            detail: "record without seq".into(),
                        }
                    })?;
                    last = Some(seq);
                    if seq as i64 <= anchor {
                        continue;
                    }
                    let row = IndexRow {
                        seq,
                        cols: Columns::from_meta(&meta),
                        rec,
                    };
                    ins.record(&tx, &row).map_err(&e)?;
                }
                chain::WalLine::Checkpoint(cp) => {
                    index::insert_checkpoint(&tx, &cp).map_err(&e)?;
                }
            }
        }
        out.segments.push((first, path, last));
    }
    tx.commit().map_err(&e)?;
    Ok(out)
}

/// `prepare` by way of a `serde_json::Value`: the reference the fast path
/// (`canon::prepare`) must match byte for byte, and the path taken when it gives up.
fn prepare_value(
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

    fn append_counted(&self, record: &Record) -> Result<Appended, LedgerError> {
        let r = self.append(record);
        match &r {
            Ok(_) => RECORDS_TOTAL.with_label_values(&[record.kind()]).inc(),
            Err(e) => {
                APPEND_ERRORS_TOTAL.inc();
                tracing::error!(error = %e, "ledger append failed");
            }
        }
        r
    }

    fn append(&self, record: &Record) -> Result<Appended, LedgerError> {
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

    /// Hand an item to the indexer, waking it only when the queue was empty: it sleeps
    /// only then, and a wake-up per record cost a futex call per append.
    fn enqueue(&self, item: Item) {
        let mut q = self.queue.lock();
        let was_empty = q.is_empty();
        q.push_back(item);
        drop(q);
        if was_empty {
            self.queue_cv.notify_one();
        }
    }

    /// Backpressure: if the indexer is far behind, wait for it (memory stays bounded:
    /// each appending thread adds at most one record past the limit). The indexer wakes
    /// the waiters as soon as it takes a batch off the full queue, not once it has
    /// committed the batch, so appending goes on while the batch is indexed.
    fn wait_for_room(&self) {
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
    fn write_line(&self, w: &mut Writer, line: &[u8]) -> Result<(), LedgerError> {
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
    fn checkpoint_locked(&self, w: &mut Writer) -> Result<(), LedgerError> {
        let head = w.next_seq - 1;
        if head == 0 || head == w.last_checkpoint_seq {
            return Ok(());
        }
        let cp = chain::sign_checkpoint(
            &self.signing,
            head,
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
        CHECKPOINTS_TOTAL.inc();
        if w.seg.len >= SEGMENT_BYTES || w.seg.opened.elapsed() >= SEGMENT_AGE {
            self.rotate_locked(w)?;
        }
        Ok(())
    }

    /// Close the current segment (synced) and start `wal-<next_seq>.jsonl`.
    fn rotate_locked(&self, w: &mut Writer) -> Result<(), LedgerError> {
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

    /// Shared by [`Ledger::run_retention`] and the maintenance thread.
    fn run_retention(&self, now: SystemTime) -> Result<RetentionReport, LedgerError> {
        let mut last = self.retention.lock();
        *last = Some(Instant::now());
        self.flush();
        let dir = &self.cfg.dir;
        let db = index::db_path(dir);
        let e = index::sql_err(&db);
        let mut conn = index::open_rw(dir)?;
        let mut report = RetentionReport::default();
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };

        if self.cfg.retention_days > 0 {
            let cutoff = now - days(self.cfg.retention_days);
            // Prune only a prefix of the chain: up to the first record that is kept.
            let keep_from: Option<i64> = conn
                .query_row(
                    "SELECT min(seq) FROM records WHERE ts_ms >= ?1",
                    [ms(cutoff)],
                    |r| r.get(0),
                )
                .map_err(&e)?;
            let last_pruned: Option<(i64, String)> = conn
                .query_row(
                    "SELECT seq, hash FROM records WHERE seq < coalesce(?1, 9223372036854775807)
                     ORDER BY seq DESC LIMIT 1",
                    [keep_from],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional_row()
                .map_err(&e)?;
            if let Some((seq, hash)) = last_pruned {
                let count: i64 = conn
                    .query_row("SELECT count(*) FROM records WHERE seq <= ?1", [seq], |r| {
                        r.get(0)
                    })
                    .map_err(&e)?;
                let anchor = self.append_counted(&self_admin(
                    AdminAction::Delete,
                    AdminOutcome::Success,
                    "ledger",
                    "records",
                    serde_json::json!({
                        "event": "retention_prune",
                        "anchor": { "seq": seq, "hash": hash },
                        "pruned_records": count,
                        "before": crate::record::rfc3339(cutoff),
                        "retention_days": self.cfg.retention_days,
                    }),
                    now,
                ))?;
                self.flush();
                let tx = conn.transaction().map_err(&e)?;
                tx.execute("DELETE FROM records WHERE seq <= ?1", [seq])
                    .map_err(&e)?;
                tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [seq])
                    .map_err(&e)?;
                tx.execute(
                    "INSERT OR REPLACE INTO anchors (seq, hash, record_seq) VALUES (?1, ?2, ?3)",
                    rusqlite::params![seq, hash, anchor.seq as i64],
                )
                .map_err(&e)?;
                tx.commit().map_err(&e)?;
                report.pruned = count as u64;
                report.anchor_seq = Some(seq as u64);
            }
        }

        if let Some(d) = self.cfg.content_retention_days {
            let cutoff = now - days(d);
            let (up_to, count): (Option<i64>, i64) = conn
                .query_row(
                    "SELECT max(seq), count(*) FROM records WHERE content IS NOT NULL AND ts_ms < ?1",
                    [ms(cutoff)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(&e)?;
            if let (Some(up_to), true) = (up_to, count > 0) {
                self.append_counted(&self_admin(
                    AdminAction::Update,
                    AdminOutcome::Success,
                    "ledger",
                    "content",
                    serde_json::json!({
                        "event": "retention_content_removed",
                        "records": count,
                        "up_to_seq": up_to,
                        "before": crate::record::rfc3339(cutoff),
                        "content_retention_days": d,
                        "fields": chain::CONTENT_FIELDS
                            .iter()
                            .map(|(o, f)| format!("{o}.{f}"))
                            .collect::<Vec<_>>(),
                    }),
                    now,
                ))?;
                let n = conn
                    .execute(
                        "UPDATE records SET content = NULL
                         WHERE content IS NOT NULL AND ts_ms < ?1 AND seq <= ?2",
                        rusqlite::params![ms(cutoff), up_to],
                    )
                    .map_err(&e)?;
                report.content_removed = n as u64;
            }
        }
        Ok(report)
    }

    fn flush(&self) {
        let target = self.writer.lock().pushed;
        let mut p = self.progress.lock();
        while p.done < target
            && !self.crashed.load(Ordering::SeqCst)
            && !self.stop.load(Ordering::SeqCst)
        {
            self.queue_cv.notify_all();
            self.progress_cv
                .wait_for(&mut p, Duration::from_millis(100));
        }
    }
}

// === threads ===

/// Insert queued records into SQLite in batches; delete segments once covered.
fn indexer(inner: Arc<Inner>, mut conn: rusqlite::Connection, mut ins: index::Inserter) {
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
                    if checkpoint_index(&inner, &conn, &db) == Some(true) {
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
                INDEX_LAG.set(next.saturating_sub(1 + p.indexed_seq) as i64);
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

/// Checkpoint SQLite's WAL and delete the WAL segments the indexer is done with, on a
/// thread of its own: a segment goes only after SQLite has checkpointed (and so synced)
/// the rows it holds. Checkpoints' syncs and the unlinking of 16 MiB files had the
/// indexer waiting on the disk about half its time when it did them itself.
/// [`Ledger::close`] makes a last pass once the indexer has stopped.
fn collector(inner: Arc<Inner>) {
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
struct Collector {
    conn: Option<rusqlite::Connection>,
    /// Records indexed when the last complete checkpoint was taken.
    checkpointed_seq: u64,
    last: Option<Instant>,
}

/// One pass: checkpoint SQLite's WAL into the database, then delete the segments
/// handed over so far whose records that checkpoint covered; the others stay for the
/// next pass.
fn collect(inner: &Inner, state: &mut Collector, last_pass: bool) {
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
    if checkpoint_index(inner, c, &db) == Some(true) {
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

/// A PASSIVE checkpoint of SQLite's WAL (it waits for nobody); when it is complete,
/// every record indexed and covered by a ledger checkpoint before it is in the synced
/// database, and `synced_seq` moves up to them. `Some(complete)`, `None` on error.
///
/// The collector takes these off the indexer's path. But SQLite starts its WAL over
/// only when a write transaction begins with the WAL fully checkpointed, and under
/// steady load the indexer is always mid-transaction when the collector's checkpoint
/// ends, so the WAL would only grow (to 200 MiB in a 200k-record run): every
/// `FINISH_BYTES` the indexer checkpoints the last frames itself, between two of its
/// transactions.
fn checkpoint_index(inner: &Inner, c: &rusqlite::Connection, db: &Path) -> Option<bool> {
    // Read before checkpointing: what a complete checkpoint syncs includes these rows.
    let covered = match (index::head(c), index::last_checkpoint(c)) {
        (Ok(h), Ok(cp)) => h.map_or(0, |h| h.0).min(cp.unwrap_or(0)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(db = %db.display(), error = %e, "ledger: cannot read the index head; keeping WAL segments");
            return None;
        }
    };
    // (busy, frames in the WAL, frames checkpointed)
    let result = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
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
fn maintenance(inner: Arc<Inner>) {
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

// === sink ===

/// Feeds the existing record writer thread into the ledger, for records that were not
/// appended synchronously on the request path.
pub struct LedgerSink {
    ledger: Arc<Ledger>,
    /// After a failed batch: `(id of its first record, records already appended)`, so
    /// the writer's retry of the same batch does not append them twice.
    resume: Option<(String, usize)>,
}

impl LedgerSink {
    /// A sink appending to `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> LedgerSink {
        LedgerSink {
            ledger,
            resume: None,
        }
    }
}

/// The id of any record.
pub fn record_id(r: &Record) -> &str {
    match r {
        Record::Interaction(i) => &i.id,
        Record::Connection(c) => &c.id,
        Record::Admin(a) => &a.id,
    }
}

impl RecordSink for LedgerSink {
    fn write_batch(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let first = records.first().map(record_id).unwrap_or_default();
        let skip = match self.resume.take() {
            Some((id, n)) if id == first => n,
            _ => 0,
        };
        for (i, r) in records.iter().enumerate().skip(skip) {
            if let Err(e) = self.ledger.append(r) {
                self.resume = Some((first.to_owned(), i));
                return Err(SinkError::Io {
                    path: self.ledger.dir().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
        Ok(())
    }
}
