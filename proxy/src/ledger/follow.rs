//! Reading the ledger in order from a cursor: what every consumer that ships records
//! off the node (the central ledger, the SIEM sinks) reads, one batch at a time, from the
//! node's index opened read-only — never from the writer's path.

use std::path::Path;

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
    read_after(dir, after, limit, true)
}

/// [`stored_after`] without the records' content (`content: None`; never read from the
/// index nor decompressed): for readers of the metadata alone, such as the alert rules.
///
/// # Errors
/// The index cannot be opened or read.
pub fn metadata_after(dir: &Path, after: i64, limit: usize) -> Result<Vec<Stored>, LedgerError> {
    read_after(dir, after, limit, false)
}

fn read_after(
    dir: &Path,
    after: i64,
    limit: usize,
    content: bool,
) -> Result<Vec<Stored>, LedgerError> {
    let conn = index::open_ro(dir)?;
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let sql = if content {
        "SELECT seq, meta, hash, hmac, content FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    } else {
        "SELECT seq, meta, hash, hmac FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    };
    let mut stmt = conn.prepare_cached(sql).map_err(&e)?;
    let mut u = Unpacker::new(&conn).map_err(&e)?;
    let rows = stmt
        .query_map(rusqlite::params![after, limit as i64], |r| {
            Ok(Stored {
                seq: r.get(0)?,
                meta: u.text(r, 1)?.unwrap_or_default(),
                hash: r.get(2)?,
                hmac: r.get(3)?,
                content: if content { u.text(r, 4)? } else { None },
            })
        })
        .map_err(&e)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&e)
}

/// The newest record's seq (0 for an empty ledger).
///
/// # Errors
/// The index cannot be opened or read.
pub fn head_seq(dir: &Path) -> Result<i64, LedgerError> {
    let conn = index::open_ro(dir)?;
    let head = index::head(&conn).map_err(index::sql_err(&index::db_path(dir)))?;
    Ok(head.map_or(0, |(seq, _)| i64::try_from(seq).unwrap_or(i64::MAX)))
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
