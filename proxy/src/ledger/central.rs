//! The fleet's central ledger on PostgreSQL: every node ships its records there, with
//! their chain intact, so an auditor can query and verify every node from one place.
//!
//! The node's own ledger stays the source of truth (it is what is written on the request
//! path, checkpointed and witnessed); shipping runs on its own thread, off the request
//! path. The cursor is durable because it is PostgreSQL's own: at (re)connection the
//! shipper asks for the highest `seq` it holds for this node and sends what follows, in
//! `seq` order, in transactions of up to `batch` rows, each row keyed by `(node_id, seq)`,
//! so a retry or a crash between insert and acknowledgement never duplicates, and a row
//! is never skipped. A row already stored under the same key with another hash (planted
//! ahead of the node) is replaced by the node's record and counted
//! (`sluice_central_conflicts_total`). Lag is a metric
//! (`sluice_central_lag_records`).
//!
//! Stored per record: the node, `seq`, the exact canonical `meta` and `content` texts and
//! the `hash`/`hmac` the node computed (so verification hashes bytes, as on the node), and
//! columns for the queries (`ts`, `kind`, `provider`, `model`, `decision`, the identity
//! text), indexed as the node's index is.
//!
//! Migrations are versioned (`sluice_migrations`) and applied by `sluice` itself at
//! connection, inside one transaction holding a PostgreSQL advisory lock, so any number
//! of nodes may start at once: one applies, the others find them applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::chain;
use super::follow::{self, Stored};
use super::index;
use super::LedgerError;
use crate::metrics;

/// `ledger.central:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// `postgres://user:password@host:5432/db` (or key=value form). Keep the password out
    /// of the file with `${DATABASE_URL}`.
    pub url: String,
    /// Rows per transaction. Default 1000.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Pause when caught up, in ms. Default 500.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_batch() -> usize {
    1000
}
fn default_interval() -> u64 {
    500
}

impl CentralConfig {
    /// Problems with the section, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.url.parse::<postgres::Config>() {
            out.push((
                "url",
                format!("not a PostgreSQL connection string ({e}); write postgres://user:password@host:5432/db"),
            ));
        }
        if !(1..=50_000).contains(&self.batch) {
            out.push((
                "batch",
                format!(
                    "{} is out of range; use 1 to 50000 (default 1000)",
                    self.batch
                ),
            ));
        }
        if self.interval_ms == 0 {
            out.push(("interval_ms", "must be at least 1".into()));
        }
        out
    }
}

/// Errors of the central store.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// PostgreSQL refused or could not be reached.
    #[error(
        "central ledger (PostgreSQL): {} (check ledger.central.url and that the server is up)",
        pg_message(.0)
    )]
    Db(#[from] postgres::Error),
    /// The connection string does not parse.
    #[error("central ledger: ledger.central.url is not a PostgreSQL connection string: {0}")]
    Url(String),
    /// The node's own ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What PostgreSQL said: the server's message when it answered with one (the driver's
/// own text is only "db error"), else the driver's.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// The schema, one migration per version; never edit one that shipped, add the next.
const MIGRATIONS: &[&str] = &[
    // 1: records with each node's chain, indexed like the node's index.
    "CREATE TABLE sluice_records (
        node_id text NOT NULL,
        seq bigint NOT NULL,
        id text,
        ts timestamptz NOT NULL,
        kind text NOT NULL,
        provider text,
        model text,
        decision text,
        identity text,
        meta text NOT NULL,
        content text,
        hash text NOT NULL,
        hmac text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (node_id, seq)
     );
     CREATE INDEX sluice_records_ts ON sluice_records (ts);
     CREATE INDEX sluice_records_kind_ts ON sluice_records (kind, ts);
     CREATE INDEX sluice_records_provider_model_ts ON sluice_records (provider, model, ts);
     CREATE INDEX sluice_records_decision_ts ON sluice_records (decision, ts);",
    // 2: retention anchors: for each node, the last record pruned centrally (its seq and
    // hash), from which the node's remaining chain verifies.
    "CREATE TABLE sluice_anchors (
        node_id text PRIMARY KEY,
        seq bigint NOT NULL,
        hash text NOT NULL,
        pruned_at timestamptz NOT NULL DEFAULT now()
     );",
    // 3: the records partitioned by day (UTC) of `ts`, so retention drops whole days, and
    // tokens and cost as columns, so fleet reports do not parse JSON. A table partitioned
    // on `ts` needs `ts` in its key: `(node_id, seq)` stays unique because shipping first
    // deletes any row of the node's seq range that is not the node's record (`insert`).
    // Existing rows move into their days' partitions.
    "DROP INDEX sluice_records_ts, sluice_records_kind_ts, sluice_records_provider_model_ts,
                sluice_records_decision_ts;
     ALTER TABLE sluice_records RENAME TO sluice_records_v2;
     ALTER TABLE sluice_records_v2 RENAME CONSTRAINT sluice_records_pkey TO sluice_records_v2_pkey;
     CREATE TABLE sluice_records (
        node_id text NOT NULL,
        seq bigint NOT NULL,
        id text,
        ts timestamptz NOT NULL,
        kind text NOT NULL,
        provider text,
        model text,
        decision text,
        identity text,
        meta text NOT NULL,
        content text,
        hash text NOT NULL,
        hmac text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        input_tokens bigint,
        output_tokens bigint,
        cost_usd double precision,
        PRIMARY KEY (node_id, seq, ts)
     ) PARTITION BY RANGE (ts);
     CREATE TABLE sluice_records_default PARTITION OF sluice_records DEFAULT;
     CREATE INDEX sluice_records_ts ON sluice_records (ts);
     CREATE INDEX sluice_records_kind_ts ON sluice_records (kind, ts);
     CREATE INDEX sluice_records_provider_model_ts ON sluice_records (provider, model, ts);
     CREATE INDEX sluice_records_decision_ts ON sluice_records (decision, ts);
     -- The partition of `day` (UTC), made once: rows of that day already in the default
     -- partition move into it.
     CREATE FUNCTION sluice_partition(day date) RETURNS void LANGUAGE plpgsql AS $$
     DECLARE
        part text := 'sluice_records_' || to_char(day, 'YYYYMMDD');
        lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
        hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
     BEGIN
        IF to_regclass(part) IS NOT NULL THEN RETURN; END IF;
        PERFORM pg_advisory_xact_lock(5845401775854);
        IF to_regclass(part) IS NOT NULL THEN RETURN; END IF;
        EXECUTE format('CREATE TABLE %I (LIKE sluice_records INCLUDING DEFAULTS)', part);
        EXECUTE format('WITH moved AS (DELETE FROM sluice_records_default
                          WHERE ts >= %L AND ts < %L RETURNING *)
                        INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE sluice_records ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
     END $$;
     SELECT sluice_partition(d) FROM
        (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d FROM sluice_records_v2) days;
     INSERT INTO sluice_records
        (node_id, seq, id, ts, kind, provider, model, decision, identity, meta, content, hash,
         hmac, received_at, input_tokens, output_tokens, cost_usd)
        SELECT node_id, seq, id, ts, kind, provider, model, decision, identity, meta, content,
               hash, hmac, received_at,
               (meta::jsonb #>> '{usage,input_tokens}')::bigint,
               (meta::jsonb #>> '{usage,output_tokens}')::bigint,
               (meta::jsonb ->> 'cost_usd')::float8
        FROM sluice_records_v2;
     DROP TABLE sluice_records_v2;",
];

/// Any 64-bit number, the same on every node: the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x511C_E1ED_5EED;

/// Connects, bounded by `timeout`.
///
/// # Errors
/// [`CentralError`] naming what failed.
pub fn connect(url: &str, timeout: Duration) -> Result<postgres::Client, CentralError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| CentralError::Url(e.to_string()))?;
    config.connect_timeout(timeout);
    config.application_name("sluice");
    Ok(config.connect(postgres::NoTls)?)
}

/// Applies the migrations this binary knows and the database lacks; safe from many nodes
/// at once. Returns the schema version.
///
/// # Errors
/// [`CentralError::Db`].
pub fn migrate(client: &mut postgres::Client) -> Result<i32, CentralError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluice_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let have: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sluice_migrations",
            &[],
        )?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version > have {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO sluice_migrations (version) VALUES ($1)",
                &[&version],
            )?;
            tracing::info!(version, "central ledger: migration applied");
        }
    }
    tx.commit()?;
    Ok(MIGRATIONS.len() as i32)
}

/// Ships the node's ledger to PostgreSQL on its own thread.
pub struct Shipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shipper {
    /// Starts shipping the ledger in `dir` as node `node`.
    pub fn start(dir: PathBuf, node: String, config: CentralConfig) -> Shipper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-central".into())
            .spawn(move || ship(&dir, &node, &config, &flag))
            .map_err(|e| tracing::error!(error = %e, "central ledger: cannot start the shipping thread; records stay on the node"))
            .ok();
        Shipper { stop, thread }
    }

    /// Ships what the ledger holds now (a last round), then stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ship(dir: &Path, node: &str, config: &CentralConfig, stop: &AtomicBool) {
    let idle = Duration::from_millis(config.interval_ms);
    let mut backoff = Duration::from_millis(200);
    let mut client: Option<(postgres::Client, i64)> = None;
    let mut local = follow::Follower::new(dir);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if client.is_none() {
            match connect(&config.url, Duration::from_secs(5)).and_then(|mut c| {
                migrate(&mut c)?;
                let at = resume_after(&mut c, dir, node)?;
                Ok((c, at))
            }) {
                Ok((c, at)) => {
                    tracing::info!(
                        node,
                        from_seq = at + 1,
                        "central ledger: connected; shipping"
                    );
                    backoff = Duration::from_millis(200);
                    client = Some((c, at));
                }
                Err(e) => {
                    metrics::CENTRAL_ERRORS.inc();
                    tracing::warn!(node, error = %e, retry_in_ms = backoff.as_millis() as u64, "central ledger: cannot connect; records wait on the node");
                    if stopping {
                        return;
                    }
                    sleep_unless(stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }
        let Some((c, at)) = client.as_mut() else {
            continue;
        };
        let rows = match local.stored_after(*at, config.batch) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "central ledger: cannot read the node's ledger; retrying");
                sleep_unless(stop, idle);
                continue;
            }
        };
        if let Ok(head) = local.head_seq() {
            let shipped = rows.last().map_or(*at, |r| r.seq);
            metrics::CENTRAL_LAG.set(head - shipped);
        }
        if rows.is_empty() {
            if stopping {
                return;
            }
            sleep_unless(stop, idle);
            continue;
        }
        let started = Instant::now();
        match insert(c, node, &rows) {
            Ok(()) => {
                *at = rows.last().map_or(*at, |r| r.seq);
                metrics::CENTRAL_SHIPPED.inc_by(rows.len() as u64);
                tracing::debug!(
                    node,
                    rows = rows.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "central ledger: shipped"
                );
            }
            Err(e) => {
                metrics::CENTRAL_ERRORS.inc();
                tracing::warn!(node, error = %pg_message(&e), "central ledger: shipping failed; reconnecting (nothing is lost: the node keeps the records)");
                client = None;
                if stopping {
                    return;
                }
                sleep_unless(stop, backoff);
            }
        }
    }
}

/// Ships everything the node's ledger in `dir` holds that the store lacks, now, on this
/// thread; returns the rows sent (benchmarks, and a node catching up by hand).
///
/// # Errors
/// [`CentralError`] when PostgreSQL or the node's ledger cannot be used.
pub fn ship_all(dir: &Path, node: &str, config: &CentralConfig) -> Result<u64, CentralError> {
    let mut c = connect(&config.url, Duration::from_secs(10))?;
    migrate(&mut c)?;
    let mut at = resume_after(&mut c, dir, node)?;
    let mut sent = 0;
    loop {
        let rows = follow::stored_after(dir, at, config.batch)?;
        let Some(last) = rows.last() else {
            return Ok(sent);
        };
        at = last.seq;
        insert(&mut c, node, &rows)?;
        sent += rows.len() as u64;
    }
}

/// Where shipping resumes: after the last record PostgreSQL holds without a gap before
/// it. A hole (rows lost centrally, a restore from an older backup) is sent again from
/// the node, as long as the node still keeps those records.
fn resume_after(c: &mut postgres::Client, dir: &Path, node: &str) -> Result<i64, CentralError> {
    // One ordered pass over the node's keys (no probe per row into every partition).
    let row = c.query_one(
        "SELECT min(seq),
                (SELECT min(seq) FROM
                   (SELECT seq, lead(seq) OVER (ORDER BY seq) AS next
                    FROM sluice_records WHERE node_id = $1) k
                 WHERE next IS DISTINCT FROM seq + 1)
         FROM sluice_records WHERE node_id = $1",
        &[&node],
    )?;
    let (first, contiguous_end): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
    // Records pruned centrally are never sent again.
    let anchor: i64 = c
        .query_opt(
            "SELECT seq FROM sluice_anchors WHERE node_id = $1",
            &[&node],
        )?
        .map_or(0, |r| r.get(0));
    let local_first = follow::stored_after(dir, anchor, 1)?.first().map(|r| r.seq);
    Ok(match (first, local_first) {
        // The store lacks the node's oldest records (past the anchor): from the first.
        (Some(f), Some(l)) if l < f => l - 1,
        (Some(_), _) => contiguous_end.unwrap_or(anchor).max(anchor),
        (None, _) => anchor,
    })
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}

/// One batch in one transaction (columns as arrays, `unnest`ed): one round trip to make
/// sure the batch's days have partitions, one transaction for the rows.
///
/// `(node_id, seq)` is unique by construction, not by a constraint (the partitioned
/// table's key must hold `ts`): any row already there under this node in the batch's seq
/// range that is not one of the batch's records (same seq and hash) is deleted first —
/// planted, or left from another node under the same id — and counted; then the rows are
/// inserted, a retry's duplicates skipped by the key.
fn insert(c: &mut postgres::Client, node: &str, rows: &[Stored]) -> Result<(), postgres::Error> {
    fn col<T>(n: usize) -> Vec<T> {
        Vec::with_capacity(n)
    }
    let n = rows.len();
    let (mut seq, mut id, mut ts, mut kind) = (col(n), col(n), col(n), col(n));
    let (mut provider, mut model, mut decision, mut identity) = (col(n), col(n), col(n), col(n));
    let (mut meta, mut content, mut hash, mut hmac) = (col(n), col(n), col(n), col(n));
    let (mut input, mut output, mut cost) = (col(n), col(n), col(n));
    for r in rows {
        let m: Value = serde_json::from_str(&r.meta).unwrap_or(Value::Null);
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let usage = |k: &str| {
            m.get("usage")
                .and_then(|u| u.get(k))
                .and_then(Value::as_i64)
        };
        seq.push(r.seq);
        id.push(s("id"));
        ts.push(s("ts").unwrap_or_else(|| "1970-01-01T00:00:00Z".into()));
        kind.push(s("kind").unwrap_or_else(|| "unknown".into()));
        provider.push(s("provider"));
        model.push(s("model"));
        decision.push(s("decision"));
        identity.push(m.get("identity").map(Value::to_string));
        meta.push(r.meta.as_str());
        content.push(r.content.as_deref());
        hash.push(r.hash.as_str());
        hmac.push(r.hmac.as_str());
        input.push(usage("input_tokens"));
        output.push(usage("output_tokens"));
        cost.push(m.get("cost_usd").and_then(Value::as_f64));
    }
    let (lo, hi) = (seq.first().copied(), seq.last().copied());
    c.execute(
        "SELECT sluice_partition(d) FROM
           (SELECT DISTINCT (t::timestamptz AT TIME ZONE 'UTC')::date AS d FROM unnest($1::text[]) t) days",
        &[&ts],
    )?;
    let mut tx = c.transaction()?;
    let replaced: Vec<i64> = tx
        .query(
            "DELETE FROM sluice_records s
             WHERE s.node_id = $1 AND s.seq BETWEEN $2 AND $3
               AND NOT EXISTS (SELECT 1 FROM unnest($4::bigint[], $5::text[]) AS b(seq, hash)
                               WHERE b.seq = s.seq AND b.hash = s.hash)
             RETURNING s.seq",
            &[&node, &lo, &hi, &seq, &hash],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute(
        "INSERT INTO sluice_records
           (node_id, seq, id, ts, kind, provider, model, decision, identity, meta, content, hash, hmac,
            input_tokens, output_tokens, cost_usd)
         SELECT $1, seq, id, ts::timestamptz, kind, provider, model, decision, identity, meta, content,
                hash, hmac, input_tokens, output_tokens, cost_usd
         FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                     $14::bigint[], $15::bigint[], $16::float8[])
              AS r(seq, id, ts, kind, provider, model, decision, identity, meta, content, hash, hmac,
                   input_tokens, output_tokens, cost_usd)
         ON CONFLICT (node_id, seq, ts) DO NOTHING",
        &[
            &node, &seq, &id, &ts, &kind, &provider, &model, &decision, &identity, &meta,
            &content, &hash, &hmac, &input, &output, &cost,
        ],
    )?;
    tx.commit()?;
    if !replaced.is_empty() {
        metrics::CENTRAL_CONFLICTS.inc_by(replaced.len() as u64);
        tracing::error!(node, seqs = ?replaced, "central ledger: rows under this node's id did not match its records; replaced with the node's");
    }
    Ok(())
}

/// What `audit verify --central` found for one node.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub node: String,
    pub records: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    /// HMACs checked (a key for their `hmac_key_id` was at hand).
    pub hmac_checked: u64,
    /// The last seq pruned by central retention, the chain's starting point.
    pub anchor: Option<i64>,
    /// Each break: `seq N: what`.
    pub errors: Vec<String>,
}

/// Verifies every node's chain from PostgreSQL alone: no gap in `seq`, each record's
/// `prev_hash` the previous one's hash, each hash the SHA-256 of the previous hash and the
/// stored metadata, content matching its digest, and HMACs where `keys` hold the key.
///
/// # Errors
/// [`CentralError::Db`] when the store cannot be read.
pub fn verify(
    client: &mut postgres::Client,
    keys: &HashMap<String, Vec<u8>>,
    only: Option<&str>,
) -> Result<Vec<NodeReport>, CentralError> {
    let keyed: HashMap<&str, chain::HmacSha256> = keys
        .iter()
        .map(|(id, k)| (id.as_str(), chain::hmac_for(k)))
        .collect();
    let nodes: Vec<String> = client
        .query(
            "SELECT DISTINCT node_id FROM sluice_records ORDER BY node_id",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .filter(|n: &String| only.is_none_or(|o| o == n))
        .collect();
    let mut reports = Vec::new();
    for node in nodes {
        let mut rep = NodeReport {
            node: node.clone(),
            ..NodeReport::default()
        };
        // After central retention the chain continues from the anchor: the last pruned
        // record's seq and hash.
        let mut prev: Option<(i64, [u8; 32])> = client
            .query_opt(
                "SELECT seq, hash FROM sluice_anchors WHERE node_id = $1",
                &[&node],
            )?
            .and_then(|r| {
                let seq: i64 = r.get(0);
                let hash: String = r.get(1);
                chain::decode_hash(&hash).map(|h| (seq, h))
            });
        rep.anchor = prev.map(|(seq, _)| seq);
        let params: [&(dyn postgres::types::ToSql + Sync); 1] = [&node];
        let mut rows = client.query_raw(
            "SELECT seq, meta, content, hash, hmac FROM sluice_records WHERE node_id = $1 ORDER BY seq",
            params,
        )?;
        use postgres::fallible_iterator::FallibleIterator;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0);
            let meta: String = row.get(1);
            let content: Option<String> = row.get(2);
            let hash_hex: String = row.get(3);
            let hmac: String = row.get(4);
            rep.records += 1;
            if rep.records == 1 {
                rep.first_seq = seq;
            }
            rep.last_seq = seq;
            let m: serde_json::Map<String, Value> = match serde_json::from_str(&meta) {
                Ok(Value::Object(m)) => m,
                _ => {
                    rep.errors.push(format!(
                        "seq {seq}: the metadata is not a JSON object (edited)"
                    ));
                    prev = chain::decode_hash(&hash_hex).map(|h| (seq, h));
                    continue;
                }
            };
            if m.get("seq").and_then(Value::as_i64) != Some(seq) {
                rep.errors.push(format!(
                    "seq {seq}: the row's seq is not the record's (moved)"
                ));
            }
            let prev_hash = m
                .get("prev_hash")
                .and_then(Value::as_str)
                .and_then(chain::decode_hash);
            match (&prev, prev_hash) {
                (Some((p, _)), _) if seq == *p => {
                    rep.errors
                        .push(format!("seq {seq}: a second row under this seq (planted)"));
                }
                (Some((p, _)), _) if seq != p + 1 => {
                    rep.errors
                        .push(format!("seq {}..{}: missing (deleted)", p + 1, seq - 1));
                }
                (Some((_, h)), Some(ph)) if *h != ph => {
                    rep.errors.push(format!(
                        "seq {seq}: prev_hash is not seq {}'s hash (chain broken)",
                        seq - 1
                    ));
                }
                (None, Some(ph)) if seq == 1 && ph != chain::GENESIS => {
                    rep.errors
                        .push("seq 1: prev_hash is not the genesis hash".into());
                }
                (_, None) => rep.errors.push(format!("seq {seq}: no prev_hash (edited)")),
                _ => {}
            }
            let computed = chain::chain_hash(&prev_hash.unwrap_or(chain::GENESIS), &meta);
            if chain::hex_string(&computed) != hash_hex {
                rep.errors.push(format!(
                    "seq {seq}: the hash does not match the record (edited)"
                ));
            }
            if let Some(c) = &content {
                if m.get("content_sha256").and_then(Value::as_str)
                    != Some(chain::sha256_hex(c.as_bytes()).as_str())
                {
                    rep.errors.push(format!(
                        "seq {seq}: the content does not match content_sha256 (edited)"
                    ));
                }
            }
            let key_id = m.get("hmac_key_id").and_then(Value::as_str).unwrap_or("");
            if let Some(k) = keyed.get(key_id) {
                rep.hmac_checked += 1;
                let stored = chain::decode_hash(&hash_hex).unwrap_or(computed);
                if chain::hmac_hex(k, &stored) != hmac {
                    rep.errors
                        .push(format!("seq {seq}: the HMAC does not match (forged)"));
                }
            }
            prev = Some((seq, chain::decode_hash(&hash_hex).unwrap_or(computed)));
        }
        reports.push(rep);
    }
    Ok(reports)
}

/// Records from the central store, newest `filter.limit` matching, oldest first, each
/// as the node shows it plus `node_id`.
///
/// # Errors
/// [`CentralError::Db`].
pub fn query(
    client: &mut postgres::Client,
    filter: &super::Filter,
) -> Result<Vec<Value>, CentralError> {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM sluice_records WHERE true");
    let mut params: Vec<Box<dyn postgres::types::ToSql + Sync>> = Vec::new();
    let mut add = |sql: &mut String, clause: &str, v: Box<dyn postgres::types::ToSql + Sync>| {
        params.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(v) = &filter.provider {
        add(&mut sql, " AND provider = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.model {
        add(&mut sql, " AND model = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.decision {
        add(&mut sql, " AND decision = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.kind {
        add(&mut sql, " AND kind = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.identity {
        add(
            &mut sql,
            " AND strpos(identity, ?) > 0",
            Box::new(v.clone()),
        );
    }
    if let Some(v) = filter.since {
        let ms = super::query::millis(v) as f64;
        add(
            &mut sql,
            " AND ts >= to_timestamp(?::double precision / 1000)",
            Box::new(ms),
        );
    }
    if let Some(v) = filter.until {
        let ms = super::query::millis(v) as f64;
        add(
            &mut sql,
            " AND ts < to_timestamp(?::double precision / 1000)",
            Box::new(ms),
        );
    }
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    add(
        &mut sql,
        " ORDER BY ts DESC, node_id, seq DESC LIMIT ?",
        Box::new(limit),
    );
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref()).collect();
    let mut out: Vec<Value> = client
        .query(&sql, &refs)?
        .iter()
        .map(|r| displayed(r).1)
        .collect();
    out.reverse();
    Ok(out)
}

/// The columns every central reader selects, in this order.
const RECORD_COLUMNS: &str = "node_id, meta, content, hash, hmac";

/// A row of [`RECORD_COLUMNS`] as the node shows the record, plus its `node_id`; and the
/// node.
fn displayed(r: &postgres::Row) -> (String, Value) {
    let node: String = r.get(0);
    let meta: String = r.get(1);
    let content: Option<String> = r.get(2);
    let hash: String = r.get(3);
    let hmac: String = r.get(4);
    let mut v = index::display(&meta, content.as_deref(), &hash, &hmac);
    if let Value::Object(m) = &mut v {
        m.insert("node_id".into(), Value::String(node.clone()));
    }
    (node, v)
}

/// `$1`/`$2` of [`WINDOW`]: the bounds in ms since the epoch.
fn window(
    since: Option<std::time::SystemTime>,
    until: Option<std::time::SystemTime>,
) -> (Option<f64>, Option<f64>) {
    let ms = |t: Option<std::time::SystemTime>| t.map(|t| super::query::millis(t) as f64);
    (ms(since), ms(until))
}

/// `since <= ts < until`, either bound optional, as `$1` and `$2`.
const WINDOW: &str = "($1::double precision IS NULL OR ts >= to_timestamp($1 / 1000))
                  AND ($2::double precision IS NULL OR ts < to_timestamp($2 / 1000))";

/// `audit export --central`: every node's records with `since <= ts < until`, node by
/// node in `seq` order, in `format` (syslog's HOSTNAME is the node); returns how many.
///
/// # Errors
/// PostgreSQL cannot be read or `out` cannot be written.
pub fn export(
    client: &mut postgres::Client,
    format: super::ExportFormat,
    since: Option<std::time::SystemTime>,
    until: Option<std::time::SystemTime>,
    out: &mut dyn std::io::Write,
) -> Result<u64, CentralError> {
    use postgres::fallible_iterator::FallibleIterator;
    let (since, until) = window(since, until);
    let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&since, &until];
    let mut rows = client.query_raw(
        &format!(
            "SELECT {RECORD_COLUMNS} FROM sluice_records WHERE {WINDOW} ORDER BY node_id, seq"
        ),
        params,
    )?;
    let mut w = super::export::RecordWriter::new(format, out)?;
    while let Some(r) = rows.next()? {
        let (node, v) = displayed(&r);
        w.record(&v, &node)?;
    }
    Ok(w.finish()?)
}

/// What [`prune`] removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// `(node, records pruned)`, nodes with nothing to prune left out.
    pub nodes: Vec<(String, u64)>,
    /// Day partitions dropped whole (every row in them inside its node's pruned prefix).
    pub partitions: Vec<String>,
}

/// Central retention: for every node, deletes its records with `ts < before` — only a
/// prefix of its chain (up to the first record that is newer), and records the last one
/// deleted as the node's anchor in the same transaction, so what remains still verifies.
/// A day partition entirely older than `before` whose rows all lie in their nodes' pruned
/// prefixes is dropped (no row-by-row delete, no bloat); rows of a day that also holds a
/// record still kept (a node whose clock stepped back) are deleted one by one.
///
/// # Errors
/// [`CentralError::Db`].
pub fn prune(
    client: &mut postgres::Client,
    before: std::time::SystemTime,
) -> Result<Pruned, CentralError> {
    let cutoff = super::query::millis(before) as f64;
    let mut tx = client.transaction()?;
    let nodes: Vec<String> = tx
        .query(
            "SELECT DISTINCT node_id FROM sluice_records ORDER BY node_id",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Pruned::default();
    let mut prefixes = Vec::new();
    for node in nodes {
        // The chain's prefix older than the cutoff: up to (not including) the first
        // record at or after it.
        let last: Option<i64> = tx
            .query_one(
                "SELECT coalesce(
                    (SELECT min(seq) FROM sluice_records
                       WHERE node_id = $1 AND ts >= to_timestamp($2::double precision / 1000)) - 1,
                    (SELECT max(seq) FROM sluice_records WHERE node_id = $1))",
                &[&node, &cutoff],
            )?
            .get(0);
        let Some(last) = last else { continue };
        let Some(row) = tx.query_opt(
            "SELECT hash, (SELECT count(*) FROM sluice_records WHERE node_id = $1 AND seq <= $2)
             FROM sluice_records WHERE node_id = $1 AND seq = $2",
            &[&node, &last],
        )?
        else {
            continue;
        };
        let (hash, count): (String, i64) = (row.get(0), row.get(1));
        tx.execute(
            "INSERT INTO sluice_anchors (node_id, seq, hash) VALUES ($1, $2, $3)
             ON CONFLICT (node_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, pruned_at = now()
             WHERE sluice_anchors.seq < excluded.seq",
            &[&node, &last, &hash],
        )?;
        prefixes.push((node.clone(), last));
        out.nodes.push((node, u64::try_from(count).unwrap_or(0)));
    }
    // Whole days before the cutoff.
    let days: Vec<String> = tx
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'sluice_records'::regclass
               AND c.relname ~ '^sluice_records_[0-9]{8}$'
               AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
                   <= to_timestamp($1::double precision / 1000)
             ORDER BY c.relname",
            &[&cutoff],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for day in days {
        // Shipping into this day waits until the transaction ends: no row can slip in
        // between the check and the drop.
        tx.batch_execute(&format!("LOCK TABLE \"{day}\" IN SHARE ROW EXCLUSIVE MODE"))?;
        let kept = tx.query_opt(
            &format!(
                "SELECT 1 FROM \"{day}\" p WHERE p.seq > coalesce(
                   (SELECT a.seq FROM sluice_anchors a WHERE a.node_id = p.node_id), -1) LIMIT 1"
            ),
            &[],
        )?;
        if kept.is_none() {
            tx.batch_execute(&format!("DROP TABLE \"{day}\""))?;
            out.partitions.push(day);
        }
    }
    for (node, last) in &prefixes {
        tx.execute(
            "DELETE FROM sluice_records WHERE node_id = $1 AND seq <= $2",
            &[node, last],
        )?;
    }
    tx.commit()?;
    Ok(out)
}

/// `sluice report --central`: the same reports over every node's records, read from the
/// central store (usage and access grouped across nodes as asked — `node` is one of the
/// groupings; the change and security reports list records node by node, each with its
/// `node_id`).
///
/// # Errors
/// PostgreSQL cannot be read.
pub fn report(
    client: &mut postgres::Client,
    kind: super::ReportKind,
    since: Option<std::time::SystemTime>,
    until: Option<std::time::SystemTime>,
    grouping: &super::report::ReportOptions,
) -> Result<Value, CentralError> {
    use super::report::{activity, assemble, grouped, record_rows, Sums};
    use super::ReportKind;
    let (from, to) = window(since, until);
    let (columns, rows, totals) = match kind {
        ReportKind::Activity => {
            let who = grouping.who.as_deref().unwrap_or("");
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM sluice_records WHERE {WINDOW} ORDER BY ts, node_id, seq"
            );
            let recs: Vec<Value> = client
                .query(&sql, &[&from, &to])?
                .iter()
                .map(|r| displayed(r).1)
                .filter(|r| super::report::concerns(r, who))
                .collect();
            activity(recs.into_iter())
        }
        ReportKind::Access | ReportKind::Usage | ReportKind::Inventory => {
            let sql = format!(
                "SELECT identity, provider, model, node_id, count(*),
                        sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cost_usd),
                        to_char(min(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        to_char(max(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                 FROM sluice_records WHERE kind = 'interaction' AND {WINDOW}
                 GROUP BY identity, provider, model, node_id"
            );
            let sums: Vec<Sums> = client
                .query(&sql, &[&from, &to])?
                .iter()
                .map(|r| Sums {
                    identity: r.get(0),
                    provider: r.get(1),
                    model: r.get(2),
                    node: r.get(3),
                    requests: r.get(4),
                    input_tokens: r.get::<_, Option<i64>>(5).unwrap_or(0),
                    output_tokens: r.get::<_, Option<i64>>(6).unwrap_or(0),
                    cost_usd: r.get::<_, Option<f64>>(7).unwrap_or(0.0),
                    first_seen: r.get(8),
                    last_seen: r.get(9),
                })
                .collect();
            grouped(kind, &sums, grouping)
        }
        ReportKind::Change | ReportKind::Security => {
            let cond = if kind == ReportKind::Change {
                "kind = 'admin'"
            } else {
                "(kind = 'interaction' AND decision IS NOT NULL AND decision != 'allow')
                 OR (kind = 'connection' AND meta::jsonb ->> 'outcome' = 'refused')"
            };
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM sluice_records
                 WHERE ({cond}) AND {WINDOW} ORDER BY node_id, seq"
            );
            let (nodes, recs): (Vec<String>, Vec<Value>) = client
                .query(&sql, &[&from, &to])?
                .iter()
                .map(displayed)
                .unzip();
            let (columns, mut rows) = record_rows(kind, recs);
            let mut columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
            columns.insert(0, "node_id".into());
            for (row, node) in rows.iter_mut().zip(nodes) {
                if let Value::Object(m) = row {
                    m.insert("node_id".into(), Value::String(node));
                }
            }
            (columns, rows, None)
        }
    };
    Ok(assemble(kind, since, until, &columns, rows, totals))
}
