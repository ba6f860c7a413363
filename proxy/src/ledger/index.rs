//! The SQLite index: one row per record (the hashed texts plus columns for filtering),
//! checkpoints and retention anchors. WAL journal mode, so readers (`query`, `verify`,
//! `export`) work while the proxy writes.
//!
//! A row's `meta` and `content` are stored compressed: a BLOB holding one byte, the id
//! of a row of the `dictionaries` table, then a Zstandard frame compressed with that
//! dictionary (rows written before compression hold TEXT and are read as they are).
//! The dictionary, trained on synthetic records of every kind in canonical form (see
//! `zdict-1.py`), knows their keys and common values, so a ~1.2 KiB metadata text
//! shrinks about fourfold. Every byte of a row is written twice by SQLite (its WAL, then
//! the database at checkpoint) and had made the index the ledger's largest disk cost. The dictionary is kept in the
//! index itself, so any zstd tool can read a row: `zstd -d -D <dictionary>` of the BLOB
//! without its first byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{Type, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use zstd::bulk::{Compressor, Decompressor};

use super::chain::{canonical, decode_hash, Checkpoint, StoredRecord};
use super::LedgerError;
use crate::tlog::merkle::{leaf_hash, Frontier};

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
  seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL, note TEXT NOT NULL,
  frontier TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dictionaries (
  id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 255), bytes BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS anchors (
  seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, record_seq INTEGER NOT NULL,
  frontier TEXT NOT NULL
);
";

/// The dictionary new rows are compressed with. Never edit it: a changed dictionary is
/// stored as a new row of `dictionaries`, and rows name the one they were written with.
const DICTIONARY: &[u8] = include_bytes!("zdict-1.bin");

/// zstd level for rows, on the indexer thread that paces appends: with the dictionary,
/// level 3 stores 7% less than level 1 for 30% more CPU, level −3 a quarter less CPU
/// for 40% more bytes.
const LEVEL: i32 = 1;

/// The largest text a row may decompress to (a record's bodies are capped far below).
const MAX_TEXT: u64 = 256 << 20;

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
    // 4 KiB pages for a new index (no effect on an existing one, which keeps its page
    // size). A compressed row is about 700 bytes; every commit rewrites whole pages (the
    // newest leaf of the table and of each index), which at a few records a commit is
    // most of what a record costs: at 10 records/s 16 KiB pages wrote 15.7 KB a record,
    // 4 KiB pages 9.4 KB, and saturated they write the same ~3.4 KB (and appended as
    // fast or faster). Measured with `sluice-bench components` (`ledger_disk`,
    // /proc/self/io). Set before the journal mode, as WAL mode fixes the page size.
    c.pragma_update(None, "page_size", 4_096).map_err(&e)?;
    // WAL: readers never block the indexer. NORMAL: a commit is durable once SQLite
    // checkpoints (which syncs its WAL first); the ledger's own WAL segments are only
    // deleted after such a checkpoint, so a power loss cannot lose an indexed record.
    c.pragma_update(None, "journal_mode", "WAL").map_err(&e)?;
    // Connections other than the indexer's (which checkpoints nothing: the ledger's
    // collector does, see `collect`) checkpoint SQLite's WAL every ~32 MiB instead of
    // every 1000 pages. Durability does not rest on it: the ledger's segments are deleted
    // only after a complete checkpoint, which syncs the index first.
    let page_size: i64 = c
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .map_err(&e)?;
    c.pragma_update(None, "wal_autocheckpoint", (32 << 20) / page_size.max(512))
        .map_err(&e)?;
    c.pragma_update(None, "synchronous", "NORMAL").map_err(&e)?;
    // After a checkpoint lets SQLite start its WAL over, the file is cut back to this:
    // the WAL stays bounded on disk however large one burst made it.
    c.pragma_update(None, "journal_size_limit", 64i64 << 20)
        .map_err(&e)?;
    // 8 MiB of page cache per connection: the pages an append touches (the right-hand
    // edges of the table and of its five secondary indexes) stay in memory instead of
    // thrashing SQLite's 2 MiB default once the table is large. More buys no appends/s
    // and costs resident memory that grows with the index until the cap (the soak's
    // finding: 64 MiB per connection read as a steady climb for minutes).
    c.pragma_update(None, "cache_size", -8_192).map_err(&e)?;
    refuse_old_format(&c, &path)?;
    c.execute_batch(SCHEMA).map_err(&e)?;
    Ok(c)
}

/// An index written before checkpoints were Merkle tree heads (a `signature` column
/// where `note` is now) cannot be continued: its checkpoints prove nothing a witness
/// can check.
fn refuse_old_format(c: &Connection, path: &Path) -> Result<(), LedgerError> {
    let old: bool = c
        .query_row(
            "SELECT count(*) FROM pragma_table_info('checkpoints') WHERE name = 'signature'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql_err(path))?
        > 0;
    if old {
        return Err(LedgerError::Format {
            path: path.to_path_buf(),
            detail: "this ledger was written by a Sluice before 0.3, whose checkpoints are not Merkle tree heads; verify and export it with that version, then move the directory aside so a new ledger starts".into(),
        });
    }
    Ok(())
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

/// Compresses `meta` and `content` texts into the BLOBs rows hold.
pub(crate) struct Packer {
    id: u8,
    cctx: Compressor<'static>,
}

/// A value that could not be written to or read from the index.
fn conversion(err: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(err))
}

impl Packer {
    /// A packer for the index `c` writes to, registering the current dictionary there.
    pub(crate) fn new(c: &Connection) -> rusqlite::Result<Packer> {
        c.prepare_cached("INSERT OR IGNORE INTO dictionaries(id, bytes) VALUES ((SELECT coalesce(max(id), 0) + 1 FROM dictionaries), ?1)")?
            .execute([DICTIONARY])?;
        let id: i64 = c.query_row(
            "SELECT id FROM dictionaries WHERE bytes = ?1",
            [DICTIONARY],
            |r| r.get(0),
        )?;
        let id = u8::try_from(id).map_err(conversion)?;
        Ok(Packer {
            id,
            cctx: Compressor::with_dictionary(LEVEL, DICTIONARY).map_err(conversion)?,
        })
    }

    /// `text` compressed into `out` (reused from row to row), behind the dictionary id.
    pub(crate) fn pack_into(&mut self, text: &str, out: &mut Vec<u8>) -> rusqlite::Result<()> {
        out.clear();
        out.resize(1 + zstd::zstd_safe::compress_bound(text.len()), 0);
        out[0] = self.id;
        let n = self
            .cctx
            .compress_to_buffer(text.as_bytes(), &mut out[1..])
            .map_err(conversion)?;
        out.truncate(1 + n);
        Ok(())
    }
}

/// Inserts rows within one transaction; keeps the identity dictionary cached.
pub(crate) struct Inserter {
    identities: HashMap<String, i64, foldhash::fast::RandomState>,
    packer: Packer,
    /// The packed `meta` and `content` of the row being inserted.
    meta: Vec<u8>,
    content: Vec<u8>,
    /// Bytes of rows inserted since the last [`Inserter::take_written`].
    written: u64,
}

/// A row's bytes besides its texts: `hash` and `hmac` in hex, and about 100 bytes of
/// columns and index entries.
const ROW_OVERHEAD: usize = 128 + 100;

impl Inserter {
    /// An inserter for the index `c` writes to.
    pub(crate) fn new(c: &Connection) -> rusqlite::Result<Inserter> {
        Ok(Inserter {
            identities: HashMap::default(),
            packer: Packer::new(c)?,
            meta: Vec::new(),
            content: Vec::new(),
            written: 0,
        })
    }

    /// Bytes of rows inserted since the last call: the texts as stored plus
    /// `ROW_OVERHEAD` each.
    pub(crate) fn take_written(&mut self) -> u64 {
        std::mem::take(&mut self.written)
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
        self.packer.pack_into(&row.rec.meta, &mut self.meta)?;
        let content = match &row.rec.content {
            Some(text) => {
                self.packer.pack_into(text, &mut self.content)?;
                Some(&self.content[..])
            }
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
            self.meta,
            content,
        ])?;
        self.written += (self.meta.len() + content.map_or(0, <[u8]>::len) + ROW_OVERHEAD) as u64;
        Ok(())
    }
}

/// Insert a checkpoint (idempotent).
pub(crate) fn insert_checkpoint(tx: &Connection, cp: &Checkpoint) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO checkpoints (seq, hash, ts, note, frontier)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        cp.seq as i64,
        cp.hash,
        cp.ts,
        cp.note,
        serde_json::to_string(&cp.frontier).unwrap_or_default()
    ])?;
    Ok(())
}

/// Checkpoints in seq order, from `after` on.
pub(crate) fn checkpoints(c: &Connection, after: u64) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, hash, ts, note, frontier FROM checkpoints WHERE seq > ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([after as i64], |r| {
        let frontier: String = r.get(4)?;
        Ok(Checkpoint {
            seq: r.get::<_, i64>(0)? as u64,
            hash: r.get(1)?,
            ts: r.get(2)?,
            note: r.get(3)?,
            frontier: serde_json::from_str(&frontier).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// The newest retention anchor: `(seq, chain hash, frontier)`.
pub(crate) fn anchor(c: &Connection) -> rusqlite::Result<Option<(u64, String, Vec<String>)>> {
    c.query_row(
        "SELECT seq, hash, frontier FROM anchors ORDER BY seq DESC LIMIT 1",
        [],
        |r| {
            let f: String = r.get(2)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                serde_json::from_str(&f).unwrap_or_default(),
            ))
        },
    )
    .optional()
}

/// The Merkle frontier at the index's head: from the newest checkpoint (or retention
/// anchor) on, the leaves of the records after it. A checkpoint whose frontier does not
/// match its signed root is passed over for the one before.
pub(crate) fn frontier(c: &Connection) -> Result<Frontier, String> {
    let cps = checkpoints(c, 0).map_err(|e| e.to_string())?;
    let anchor = anchor(c).map_err(|e| e.to_string())?;
    let base = cps
        .iter()
        .rev()
        .find_map(Checkpoint::frontier)
        .or_else(|| {
            let (seq, _, roots) = anchor.as_ref()?;
            let roots = roots
                .iter()
                .map(|h| decode_hash(h))
                .collect::<Option<Vec<_>>>()?;
            Frontier::from_parts(*seq, roots)
        })
        .unwrap_or_default();
    let mut f = base;
    let mut stmt = c
        .prepare("SELECT seq, hash FROM records WHERE seq > ?1 ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([f.size() as i64]).map_err(|e| e.to_string())?;
    while let Some(r) = rows.next().map_err(|e| e.to_string())? {
        let seq = r.get::<_, i64>(0).map_err(|e| e.to_string())? as u64;
        let hash: String = r.get(1).map_err(|e| e.to_string())?;
        if seq != f.size() + 1 {
            return Err(format!(
                "record {} follows {} in the index: the tree cannot continue",
                seq,
                f.size()
            ));
        }
        let h = decode_hash(&hash).ok_or_else(|| format!("record {seq} has a malformed hash"))?;
        f.push(leaf_hash(&h));
    }
    Ok(f)
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

/// Reads the `meta` and `content` columns back into text, whichever way a row holds
/// them.
pub(crate) struct Unpacker {
    dicts: HashMap<u8, Decompressor<'static>>,
}

/// Why a stored text could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreadable(String);

impl Unpacker {
    /// An unpacker knowing the dictionaries of the index `c` (none in an index written
    /// before compression).
    pub(crate) fn new(c: &Connection) -> rusqlite::Result<Unpacker> {
        let mut dicts = HashMap::new();
        let has_table: bool = c.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'dictionaries'",
            [],
            |r| r.get(0),
        )?;
        if has_table {
            let mut stmt = c.prepare("SELECT id, bytes FROM dictionaries")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let bytes: Vec<u8> = r.get(1)?;
                let id = u8::try_from(id).map_err(conversion)?;
                dicts.insert(
                    id,
                    Decompressor::with_dictionary(&bytes).map_err(conversion)?,
                );
            }
        }
        Ok(Unpacker { dicts })
    }

    /// The text in column `idx` of `r`: NULL as `None`, TEXT as it is, a BLOB
    /// decompressed with the dictionary it names.
    pub(crate) fn text(
        &mut self,
        r: &rusqlite::Row<'_>,
        idx: usize,
    ) -> rusqlite::Result<Option<String>> {
        let bad = |detail: String| {
            rusqlite::Error::FromSqlConversionFailure(idx, Type::Blob, Box::new(Unreadable(detail)))
        };
        let blob = match r.get_ref(idx)? {
            ValueRef::Null => return Ok(None),
            ValueRef::Blob(b) => b,
            _ => return r.get(idx),
        };
        let (&id, frame) = blob
            .split_first()
            .ok_or_else(|| bad("an empty BLOB where a compressed text belongs".into()))?;
        let d = self.dicts.get_mut(&id).ok_or_else(|| {
            bad(format!(
                "compressed with dictionary {id}, which the index does not hold"
            ))
        })?;
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) if n <= MAX_TEXT => n as usize,
            _ => return Err(bad("not a zstd frame of a known, bounded size".into())),
        };
        let bytes = d
            .decompress(frame, size)
            .map_err(|e| bad(format!("does not decompress: {e}")))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| bad(format!("decompresses to invalid UTF-8: {e}")))
    }

    /// [`display`] of a row whose first columns are `meta, content, hash, hmac`.
    pub(crate) fn display_row(&mut self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
        Ok(display(
            &self.text(r, 0)?.unwrap_or_default(),
            self.text(r, 1)?.as_deref(),
            &r.get::<_, String>(2)?,
            &r.get::<_, String>(3)?,
        ))
    }
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
