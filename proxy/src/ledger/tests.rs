//! Ledger tests: real files in a temporary directory, real SQLite. The shared helpers
//! are here; the tests are in `tests/`, one file per topic.

mod canonical;
mod export;
mod failure;
mod follow;
mod lifecycle;
mod maintenance;
mod scale;
mod tamper;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::*;
use crate::record::{rfc3339, Connection as ConnRecord, Outcome, Upstream};
use crate::record::{AdminAction, AdminOutcome, Initiator, Record, Target};
use crate::sink::RecordSink;
use crate::testing::sample_interaction;
use chain::{StoredRecord, GENESIS};
use index::{Columns, IndexRow};
use writer::{prepare_value, self_admin, SEGMENT_BYTES};

use crate::testing::TempDir;

impl TempDir {
    fn ledger(&self) -> PathBuf {
        self.path().join("ledger")
    }
}

fn cfg(dir: &Path) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_path_buf(),
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        retention_days: 90,
        ..LedgerConfig::default()
    }
}

fn interaction(i: u64) -> Record {
    sample_interaction(i)
}

fn with(mut r: Record, f: impl FnOnce(&mut crate::record::Interaction)) -> Record {
    if let Record::Interaction(x) = &mut r {
        f(x);
    }
    r
}

fn fill(dir: &Path, n: u64) {
    let l = Ledger::open(&cfg(dir)).unwrap();
    for i in 0..n {
        l.append(&interaction(i)).unwrap();
    }
    l.close().unwrap();
}

fn rw(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(index::db_path(dir)).unwrap()
}

/// The `meta` and `content` texts of row `seq`, decompressed.
fn texts(c: &rusqlite::Connection, seq: u64) -> (String, Option<String>) {
    let mut u = index::Unpacker::new(c).unwrap();
    c.query_row(
        "SELECT meta, content FROM records WHERE seq = ?1",
        [seq as i64],
        |r| Ok((u.text(r, 0)?.unwrap(), u.text(r, 1)?)),
    )
    .unwrap()
}

/// Tamper with row `seq`: replace `from` by `to` in its `column` (`meta` or
/// `content`), compressed again the way the indexer stores it.
fn edit_text(c: &rusqlite::Connection, seq: u64, column: &str, from: &str, to: &str) {
    let (meta, content) = texts(c, seq);
    let text = if column == "meta" {
        meta
    } else {
        content.unwrap()
    };
    assert!(text.contains(from), "{from} not in {column} of seq {seq}");
    let mut packed = Vec::new();
    index::Packer::new(c)
        .unwrap()
        .pack_into(&text.replace(from, to), &mut packed)
        .unwrap();
    c.execute(
        &format!("UPDATE records SET {column} = ?1 WHERE seq = ?2"),
        rusqlite::params![packed, seq as i64],
    )
    .unwrap();
}

/// The newest `limit` records, unfiltered.
fn newest(dir: &Path, limit: usize) -> Vec<Value> {
    query(
        dir,
        &Filter {
            limit,
            ..Filter::default()
        },
    )
    .unwrap()
}

/// The admin records, as `query` returns them.
fn admins(dir: &Path) -> Vec<Value> {
    query(
        dir,
        &Filter {
            kind: Some("admin".into()),
            ..Filter::default()
        },
    )
    .unwrap()
}

/// Verify with the cadence `cfg` writes at.
fn check(dir: &Path) -> VerifyReport {
    let c = cfg(dir);
    let opts = VerifyOptions {
        cadence: Some((c.checkpoint_every, c.checkpoint_interval)),
        ..VerifyOptions::default()
    };
    verify(dir, &opts).unwrap()
}

fn first(dir: &Path) -> VerifyError {
    let r = check(dir);
    assert!(!r.ok, "verify should fail: {r:?}");
    r.first_error.unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    wal::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}
