//! Reading the ledger in order from a cursor: what every consumer that ships records
//! off the node (the central ledger, the SIEM sinks) reads, one batch at a time, from the
//! node's index opened read-only — never from the writer's path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use super::index::{self, Unpacker};
use super::LedgerError;

/// One record as stored: its exact canonical texts and the node's hashes.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub meta: String,
    /// `None` once retention removed it.
    pub content: Option<String>,
    pub hash: String,
    pub hmac: String,
}

impl Stored {
    /// The record as the node shows it (`sluice events tail --json`); without its
    /// content (the texts; their digests stay) when `content` is false.
    pub fn display(&self, content: bool) -> Value {
        let mut v = index::display(
            &self.meta,
            self.content.as_deref().filter(|_| content),
            &self.hash,
            &self.hmac,
        );
        if !content {
            if let Value::Object(m) = &mut v {
                m.remove("content_removed");
            }
        }
        v
    }
}

/// Up to `limit` records of the ledger in `dir` with `seq > after`, oldest first.
///
/// # Errors
/// The index cannot be opened or read.
pub fn stored_after(dir: &Path, after: i64, limit: usize) -> Result<Vec<Stored>, LedgerError> {
    Follower::new(dir).stored_after(after, limit)
}

/// [`stored_after`] without the records' content (`content: None`; never read from the
/// index nor decompressed): for readers of the metadata alone, such as the alert rules.
///
/// # Errors
/// The index cannot be opened or read.
pub fn metadata_after(dir: &Path, after: i64, limit: usize) -> Result<Vec<Stored>, LedgerError> {
    Follower::new(dir).metadata_after(after, limit)
}

/// The newest record's seq (0 for an empty ledger).
///
/// # Errors
/// The index cannot be opened or read.
pub fn head_seq(dir: &Path) -> Result<i64, LedgerError> {
    Follower::new(dir).head_seq()
}

/// A reader that follows the ledger batch after batch (the alert rules, the central
/// ledger's shipper) on one read-only connection to the index and one set of zstd
/// dictionaries, kept between batches. Opening both for every batch — the schema read,
/// a dictionary loaded, its tables built — had cost more than the batch itself whenever
/// records arrive one or a few at a time, which is most of a node's life.
///
/// Between batches the connection holds no read transaction (each batch's statement is
/// reset), so SQLite checkpoints are not held back. After an error, or every
/// [`REOPEN_EVERY`], the next batch opens the index afresh (an index rebuilt in its
/// place, a dictionary added since).
pub struct Follower {
    dir: PathBuf,
    open: Option<Open>,
}

struct Open {
    conn: Connection,
    unpacker: Unpacker,
    since: Instant,
}

/// How long a [`Follower`] keeps one connection.
const REOPEN_EVERY: Duration = Duration::from_secs(300);

impl Follower {
    /// A follower of the ledger in `dir`; nothing is opened until the first read.
    pub fn new(dir: &Path) -> Follower {
        Follower {
            dir: dir.to_path_buf(),
            open: None,
        }
    }

    /// Up to `limit` records with `seq > after`, oldest first ([`stored_after`]).
    ///
    /// # Errors
    /// The index cannot be opened or read.
    pub fn stored_after(&mut self, after: i64, limit: usize) -> Result<Vec<Stored>, LedgerError> {
        self.read_after(after, limit, true)
    }

    /// The same without content ([`metadata_after`]).
    ///
    /// # Errors
    /// The index cannot be opened or read.
    pub fn metadata_after(&mut self, after: i64, limit: usize) -> Result<Vec<Stored>, LedgerError> {
        self.read_after(after, limit, false)
    }

    /// The newest record's seq (0 for an empty ledger).
    ///
    /// # Errors
    /// The index cannot be opened or read.
    pub fn head_seq(&mut self) -> Result<i64, LedgerError> {
        self.with(|conn, _| {
            let head = index::head(conn)?;
            Ok(head.map_or(0, |(seq, _)| i64::try_from(seq).unwrap_or(i64::MAX)))
        })
    }

    fn read_after(
        &mut self,
        after: i64,
        limit: usize,
        content: bool,
    ) -> Result<Vec<Stored>, LedgerError> {
        self.with(|conn, u| {
            let sql = if content {
                "SELECT seq, meta, hash, hmac, content FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            } else {
                "SELECT seq, meta, hash, hmac FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(rusqlite::params![after, limit as i64], |r| {
                Ok(Stored {
                    seq: r.get(0)?,
                    meta: u.text(r, 1)?.unwrap_or_default(),
                    hash: r.get(2)?,
                    hmac: r.get(3)?,
                    content: if content { u.text(r, 4)? } else { None },
                })
            })?;
            rows.collect()
        })
    }

    /// Runs `f` on the open index (opening it first when needed); any error closes it, so
    /// the next call starts from a fresh connection.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&Connection, &mut Unpacker) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.since.elapsed() > REOPEN_EVERY)
        {
            self.open = None;
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let conn = index::open_ro(&self.dir)?;
                let unpacker =
                    Unpacker::new(&conn).map_err(index::sql_err(&index::db_path(&self.dir)))?;
                self.open.insert(Open {
                    conn,
                    unpacker,
                    since: Instant::now(),
                })
            }
        };
        let out = f(&open.conn, &mut open.unpacker);
        if out.is_err() {
            self.open = None;
        }
        out.map_err(index::sql_err(&index::db_path(&self.dir)))
    }
}

/// The first record's seq with `ts >= since_ms` (ms since the epoch), if any.
///
/// # Errors
/// The index cannot be opened or read.
pub fn first_seq_since(dir: &Path, since_ms: i64) -> Result<Option<i64>, LedgerError> {
    let conn = index::open_ro(dir)?;
    conn.query_row(
        "SELECT min(seq) FROM records WHERE ts_ms >= ?1",
        [since_ms],
        |r| r.get(0),
    )
    .map_err(index::sql_err(&index::db_path(dir)))
}

/// The newest checkpoint's tree size (the seq it covers), if any.
pub fn newest_checkpoint(dir: &Path) -> Option<u64> {
    let conn = index::open_ro(dir).ok()?;
    index::last_checkpoint(&conn).ok().flatten()
}
