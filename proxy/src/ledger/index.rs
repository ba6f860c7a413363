//! The SQLite index: one row per record (the hashed texts plus columns for filtering),
//! checkpoints and retention anchors. WAL journal mode, so readers (`query`, `verify`,
//! `export`) work while the proxy writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::chain::{canonical, Checkpoint, StoredRecord};
use super::LedgerError;

/// File name of the index inside the ledger directory.
pub(crate) const DB_FILE: &str = "ledger.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
  seq INTEGER PRIMARY KEY,
  ts TEXT NOT NULL,
  ts_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  provider TEXT,
  model TEXT,
  decision TEXT,
  outcome TEXT,
  action TEXT,
  identity_id INTEGER,
  input_tokens INTEGER,
  output_tokens INTEGER,
  cost_usd REAL,
  hash TEXT NOT NULL,
  hmac TEXT NOT NULL,
  meta TEXT NOT NULL,
  content TEXT
);
CREATE TABLE IF NOT EXISTS identities (id INTEGER PRIMARY KEY, json TEXT NOT NULL UNIQUE);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts_ms);
CREATE INDEX IF NOT EXISTS records_provider_model ON records(provider, model);
CREATE INDEX IF NOT EXISTS records_decision ON records(decision);
CREATE INDEX IF NOT EXISTS records_identity ON records(identity_id);
DROP INDEX IF EXISTS records_kind;
CREATE INDEX IF NOT EXISTS records_admin ON records(kind) WHERE kind = 'admin';
CREATE INDEX IF NOT EXISTS records_connection ON records(kind) WHERE kind = 'connection';
CREATE TABLE IF NOT EXISTS checkpoints (
  seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anchors (
  seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, record_seq INTEGER NOT NULL
);
";

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

pub(crate) fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Open (creating) the index for writing.
pub(crate) fn open_rw(dir: &Path) -> Result<Connection, LedgerError> {
    let path = db_path(dir);
    let e = sql_err(&path);
    let c = Connection::open(&path).map_err(&e)?;
    c.busy_timeout(Duration::from_secs(10)).map_err(&e)?;
    // 64 KiB pages for a new index (no effect on an existing one, which keeps its page
    // size): a record row is about 2 KiB, so 4 KiB pages meant one WAL frame, one
    // checksum and one `pwrite` per two rows, at commit and again at checkpoint.
    // Set before the journal mode, as WAL mode fixes the page size.
    c.pragma_update(None, "page_size", 65_536).map_err(&e)?;
    // WAL: readers never block the indexer. NORMAL: a commit is durable once SQLite
    // checkpoints (which syncs its WAL first); the ledger's own WAL segments are only
    // deleted after such a checkpoint, so a power loss cannot lose an indexed record.
    c.pragma_update(None, "journal_mode", "WAL").map_err(&e)?;
    // Checkpoint SQLite's WAL every ~32 MiB instead of every 1000 pages (4 MiB at the
    // old page size): fewer syncs and fewer copies of pages rewritten by successive
    // batches. Durability is unchanged: the ledger's segments are deleted only after
    // its own checkpoint (see `delete_covered`), which syncs the index first.
    let page_size: i64 = c
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .map_err(&e)?;
    c.pragma_update(None, "wal_autocheckpoint", (32 << 20) / page_size.max(512))
        .map_err(&e)?;
    c.pragma_update(None, "synchronous", "NORMAL").map_err(&e)?;
    // 64 MiB of page cache: the five secondary indexes stay in memory while indexing,
    // instead of thrashing SQLite's 2 MiB default once the table is large.
    c.pragma_update(None, "cache_size", -65_536).map_err(&e)?;
    c.execute_batch(SCHEMA).map_err(&e)?;
    Ok(c)
}

/// Open the index read-only (works while a proxy writes it).
pub(crate) fn open_ro(dir: &Path) -> Result<Connection, LedgerError> {
    let path = db_path(dir);
    if !path.exists() {
        return Err(LedgerError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let e = sql_err(&path);
    let c = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&e)?;
    c.busy_timeout(Duration::from_secs(10)).map_err(&e)?;
    Ok(c)
}

/// The columns a record is filtered and aggregated by, all derived from its metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Columns {
    pub ts: String,
    pub ts_ms: i64,
    pub kind: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub decision: Option<String>,
    pub outcome: Option<String>,
    pub action: Option<String>,
    /// Canonical JSON of `identity` (interactions, connections) or `initiator` (admin).
    pub identity: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (0 when unparsable).
pub(crate) fn ts_millis(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

impl Columns {
    /// The columns from a record's top-level fields, however they are read: `text(key)`
    /// is a string field's value, `object(key)` the canonical text of a non-null field
    /// (the caller or initiator), then the token counts of `usage` and `cost_usd`.
    pub(crate) fn assemble(
        text: impl Fn(&str) -> Option<String>,
        object: impl FnOnce(&str) -> Option<String>,
        (input_tokens, output_tokens): (Option<i64>, Option<i64>),
        cost_usd: Option<f64>,
    ) -> Columns {
        let ts = text("ts").unwrap_or_default();
        let kind = text("kind").unwrap_or_default();
        let identity = object(if kind == "admin" {
            "initiator"
        } else {
            "identity"
        });
        Columns {
            ts_ms: ts_millis(&ts),
            ts,
            provider: text("provider"),
            model: text("model"),
            decision: text("decision"),
            outcome: text("outcome"),
            action: text("action"),
            identity,
            input_tokens,
            output_tokens,
            cost_usd,
            kind,
        }
    }

    pub(crate) fn from_meta(m: &serde_json::Map<String, Value>) -> Columns {
        let usage = m.get("usage");
        let tok = |k: &str| {
            usage
                .and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .map(|n| n as i64)
        };
        Columns::assemble(
            |k| m.get(k).and_then(Value::as_str).map(str::to_owned),
            |k| m.get(k).filter(|v| !v.is_null()).map(canonical),
            (tok("input_tokens"), tok("output_tokens")),
            m.get("cost_usd").and_then(Value::as_f64),
        )
    }
}

/// A record ready for the index.
#[derive(Debug, Clone)]
pub(crate) struct IndexRow {
    pub seq: u64,
    pub cols: Columns,
    pub rec: StoredRecord,
}

/// Inserts rows within one transaction; keeps the identity dictionary cached.
pub(crate) struct Inserter {
    identities: HashMap<String, i64, foldhash::fast::RandomState>,
}

impl Inserter {
    pub(crate) fn new() -> Inserter {
        Inserter {
            identities: HashMap::default(),
        }
    }

    fn identity_id(&mut self, tx: &Connection, json: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.identities.get(json) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO identities(json) VALUES (?1)")?
            .execute([json])?;
        let id: i64 = tx
            .prepare_cached("SELECT id FROM identities WHERE json = ?1")?
            .query_row([json], |r| r.get(0))?;
        if self.identities.len() > 100_000 {
            self.identities.clear();
        }
        self.identities.insert(json.to_owned(), id);
        Ok(id)
    }

    /// Insert a record; a row already present (same seq) is left alone (replay is
    /// idempotent).
    pub(crate) fn record(&mut self, tx: &Connection, row: &IndexRow) -> rusqlite::Result<()> {
        let c = &row.cols;
        let identity_id = match &c.identity {
            Some(j) => Some(self.identity_id(tx, j)?),
            None => None,
        };
        tx.prepare_cached(
            "INSERT OR IGNORE INTO records (seq, ts, ts_ms, kind, provider, model, decision,
               outcome, action, identity_id, input_tokens, output_tokens, cost_usd, hash, hmac,
               meta, content)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?
        .execute(params![
            row.seq as i64,
            c.ts,
            c.ts_ms,
            c.kind,
            c.provider,
            c.model,
            c.decision,
            c.outcome,
            c.action,
            identity_id,
            c.input_tokens,
            c.output_tokens,
            c.cost_usd,
            row.rec.hash,
            row.rec.hmac,
            row.rec.meta,
            row.rec.content,
        ])?;
        Ok(())
    }
}

/// Insert a checkpoint (idempotent).
pub(crate) fn insert_checkpoint(tx: &Connection, cp: &Checkpoint) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO checkpoints (seq, hash, ts, signature) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![cp.seq as i64, cp.hash, cp.ts, cp.signature])?;
    Ok(())
}

/// The newest record in the index: `(seq, hash)`.
pub(crate) fn head(c: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    c.query_row(
        "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .optional()
}

/// The newest checkpoint's seq.
pub(crate) fn last_checkpoint(c: &Connection) -> rusqlite::Result<Option<u64>> {
    c.query_row("SELECT max(seq) FROM checkpoints", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|s| s.map(|s| s as u64))
}

/// [`display`] of a row whose first columns are `meta, content, hash, hmac`.
pub(crate) fn display_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    Ok(display(
        &r.get::<_, String>(0)?,
        r.get::<_, Option<String>>(1)?.as_deref(),
        &r.get::<_, String>(2)?,
        &r.get::<_, String>(3)?,
    ))
}

/// Rebuild a record for display: metadata with the content merged back, plus `hash`
/// and `hmac`; `content_removed: true` when retention removed the content.
pub(crate) fn display(meta: &str, content: Option<&str>, hash: &str, hmac: &str) -> Value {
    let mut m = match serde_json::from_str::<Value>(meta) {
        Ok(Value::Object(m)) => m,
        _ => {
            let mut m = serde_json::Map::new();
            m.insert("unreadable_meta".into(), Value::String(meta.to_owned()));
            m
        }
    };
    match content.map(serde_json::from_str::<Value>) {
        Some(Ok(c)) => super::chain::merge_content(&mut m, c),
        Some(Err(_)) => {
            m.insert("unreadable_content".into(), Value::Bool(true));
        }
        None if m.contains_key("content_sha256") => {
            m.insert("content_removed".into(), Value::Bool(true));
        }
        None => {}
    }
    m.insert("hash".into(), Value::String(hash.to_owned()));
    m.insert("hmac".into(), Value::String(hmac.to_owned()));
    Value::Object(m)
}
