//! Replay at open: the write-ahead segments read back into the SQLite index,
//! idempotently (keyed by `seq`), with a torn last line of the newest segment cut off.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::LedgerError;
use super::index::{Columns, IndexRow};
use super::{chain, index, wal};

/// What replaying the WAL found.
pub(super) struct Replay {
    /// `(first_seq, path, last record seq)` of every segment.
    pub(super) segments: Vec<(u64, PathBuf, Option<u64>)>,
    /// A torn last line cut off the newest segment: `(segment name, bytes)`.
    pub(super) torn: Option<(String, u64)>,
}

/// Insert every record and checkpoint of the WAL segments into the index (idempotent),
/// skipping records already pruned (at or below the newest anchor).
pub(super) fn replay(dir: &Path, conn: &mut rusqlite::Connection) -> Result<Replay, LedgerError> {
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
