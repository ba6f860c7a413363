//! Read-only queries over the SQLite index (`sluice events tail`). They open the index
//! read-only, so they work while a proxy writes it; records still in the WAL and not yet
//! indexed are not seen: at low rates the indexer gathers records for up to a second
//! before it commits them (see `indexer::GATHER`), under load a few milliseconds' worth.

use std::path::Path;
use std::time::SystemTime;

use rusqlite::types::Value as Sql;
use serde_json::Value;

use super::index::{self, Unpacker};
use super::LedgerError;

/// Which records a query returns. Empty fields do not filter.
#[derive(Debug, Clone)]
pub struct Filter {
    /// At most this many records (newest first). Default: 100.
    pub limit: usize,
    /// Exact provider label (`openai`, …).
    pub provider: Option<String>,
    /// Exact model name.
    pub model: Option<String>,
    /// Exact policy decision (`allow`, `block`, `redact`, …).
    pub decision: Option<String>,
    /// Substring of the identity JSON (for admin records: the initiator), e.g. a pid,
    /// a process name or a client address.
    pub identity: Option<String>,
    /// `interaction`, `connection` or `admin`.
    pub kind: Option<String>,
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// Records before this time.
    pub until: Option<SystemTime>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            limit: 100,
            provider: None,
            model: None,
            decision: None,
            identity: None,
            kind: None,
            since: None,
            until: None,
        }
    }
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// `WHERE` clause and parameters for the time window and the filter's fields.
pub(crate) fn where_clause(f: &Filter) -> (String, Vec<Sql>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    let mut eq = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            params.push(Sql::Text(v.clone()));
            conds.push(format!("{col} = ?{}", params.len()));
        }
    };
    eq("provider", &f.provider);
    eq("model", &f.model);
    eq("decision", &f.decision);
    match f.kind.as_deref() {
        // Literal, not a parameter: SQLite uses the partial indexes on `kind` only for a
        // query that names the same value.
        Some(k @ ("admin" | "connection" | "interaction")) => conds.push(format!("kind = '{k}'")),
        _ => eq("kind", &f.kind),
    }
    if let Some(id) = &f.identity {
        params.push(Sql::Text(id.clone()));
        conds.push(format!(
            "identity_id IN (SELECT id FROM identities WHERE instr(json, ?{}) > 0)",
            params.len()
        ));
    }
    if let Some(t) = f.since {
        params.push(Sql::Integer(millis(t)));
        conds.push(format!("ts_ms >= ?{}", params.len()));
    }
    if let Some(t) = f.until {
        params.push(Sql::Integer(millis(t)));
        conds.push(format!("ts_ms < ?{}", params.len()));
    }
    let w = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    (w, params)
}

/// Records matching `filter`, newest first, as the JSON an auditor sees (content merged
/// back, `hash` and `hmac` included).
///
/// # Errors
/// [`LedgerError::NotFound`] when `dir` holds no index; SQLite errors.
pub fn query(dir: &Path, filter: &Filter) -> Result<Vec<Value>, LedgerError> {
    let conn = index::open_ro(dir)?;
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let (w, mut params) = where_clause(filter);
    params.push(Sql::Integer(filter.limit.min(i64::MAX as usize) as i64));
    // A time window alone is answered from the `ts_ms` index, newest first; with an
    // equality filter its own index (ending in `seq`) gives the order directly.
    let time_only = (filter.since.is_some() || filter.until.is_some())
        && filter.provider.is_none()
        && filter.model.is_none()
        && filter.decision.is_none()
        && filter.identity.is_none();
    let order = if time_only {
        "ts_ms DESC, seq DESC"
    } else {
        "seq DESC"
    };
    let sql = format!(
        "SELECT meta, content, hash, hmac FROM records {w} ORDER BY {order} LIMIT ?{}",
        params.len()
    );
    let mut u = Unpacker::new(&conn).map_err(&e)?;
    let mut stmt = conn.prepare(&sql).map_err(&e)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |r| u.display_row(r))
        .map_err(&e)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&e)
}

/// Up to 1000 records with `seq > after_seq`, oldest first: poll it with the last seq
/// seen to follow the ledger (`events tail --follow`).
///
/// # Errors
/// As [`query`].
pub fn tail_after(dir: &Path, after_seq: u64) -> Result<Vec<Value>, LedgerError> {
    let conn = index::open_ro(dir)?;
    let db = index::db_path(dir);
    let e = index::sql_err(&db);
    let mut stmt = conn
        .prepare_cached(
            "SELECT meta, content, hash, hmac FROM records WHERE seq > ?1 ORDER BY seq LIMIT 1000",
        )
        .map_err(&e)?;
    let mut u = Unpacker::new(&conn).map_err(&e)?;
    let rows = stmt
        .query_map([after_seq as i64], |r| u.display_row(r))
        .map_err(&e)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&e)
}
