//! Budgets in USD per scope and period, persisted so a restart forgets nothing.
//!
//! Before a request: its worst case (estimated input tokens at the input price plus the
//! requested maximum output at the output price) must fit in what is neither spent nor
//! reserved by requests in flight, and is reserved. After it: the reservation is released
//! and the real cost from the record added — streams and cancelled streams included,
//! since both end in a priced record; a refused or failed request releases it whole. A model missing from the price table cannot be budgeted
//! and is refused by a budgeted policy (`budget_unpriced_model`): spend that cannot be
//! counted cannot be capped.
//!
//! This is step 5 of the governance order: only a request that passed the rules and the
//! prompt guardrails reserves its worst case.
//!
//! Counters are kept by [`super::Counters`]: on one node behind [`CounterStore`]
//! ([`SqliteCounters`] is the embedded default; reads come from memory, spend is written
//! behind the request by the store's own thread within tens of milliseconds, and in full
//! at a clean stop), in a fleet in Redis.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use serde::Deserialize;

use super::counters::{BudgetHold, OnUnavailable, Reserved};
use super::verdict::{PolicyOutcome, Verdict};
use super::{limit_key, Compiled, Engine, Facts, Mode, Policy};
use crate::record::Identity;

/// `budget:` of a policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The cap, in USD.
    pub usd: f64,
    /// `day` (UTC), `month` (UTC) or `total`.
    #[serde(default)]
    pub period: Period,
    /// Name of a shared budget: every identity (and every policy naming it) draws from
    /// one counter. Default: each identity has its own.
    #[serde(default)]
    pub shared: Option<String>,
    /// Output tokens assumed when a request sets no maximum. Default: 4096.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

fn default_max_tokens() -> u64 {
    4096
}

/// What is left of the tightest enforcing budget once a request was admitted, so a
/// stream can be cut when its real output spends it.
#[derive(Debug, Clone)]
pub struct StreamBudget {
    /// The budget's policy, `id@vN`.
    pub policy_id: String,
    /// USD left in the budget before this request.
    pub headroom_usd: f64,
    /// The prompt's estimated cost.
    pub input_usd: f64,
    /// Price of one output token.
    pub output_usd_per_token: f64,
}

impl StreamBudget {
    /// Whether `output_tokens` more would spend past the budget.
    pub fn exceeded(&self, output_tokens: u64) -> bool {
        self.input_usd + output_tokens as f64 * self.output_usd_per_token > self.headroom_usd
    }
}

/// Checks policy `c`'s budget: the worst case must fit in what is neither spent nor
/// reserved (429 otherwise) and is reserved into `holds`; an unpriced model cannot be
/// budgeted (refused). The tightest enforcing budget travels with the request so a
/// stream can be cut when it spends past it.
pub(super) async fn check(
    engine: &Engine,
    c: &Compiled,
    id: &str,
    facts: &Facts<'_>,
    v: &mut Verdict,
    out: &mut PolicyOutcome,
    holds: &mut Vec<BudgetHold>,
) {
    let p = &c.policy;
    let Some(b) = &p.budget else { return };
    if !facts.llm_call {
        return; // no model, no spend: not a generation the budget counts
    }
    let price = facts
        .model
        .as_deref()
        .and_then(|m| crate::pricing::PriceTable::embedded().lookup(facts.adapter, m));
    let Some(price) = price else {
        v.note("budget_unpriced_model");
        out.refuse = Some((
            403,
            format!(
                "model {:?} has no price, so its spend cannot be budgeted",
                facts.model.as_deref().unwrap_or("")
            ),
        ));
        return;
    };
    let max_out = facts.max_output_tokens.unwrap_or(b.default_max_tokens);
    let cost = |input_tokens: u64| {
        let input_usd = input_tokens as f64 * price.input_per_mtok / 1e6;
        (
            input_usd,
            input_usd + max_out as f64 * price.output_per_mtok / 1e6,
        )
    };
    let key = budget_key(p, b, facts.identity);
    let on = p.on_counter_store_unavailable;
    // The worst case with the prompt's bytes as its token count (no tokenizer); only if
    // that does not fit is the prompt counted exactly and tried again.
    let (mut input_usd, mut worst) = cost(facts.input_tokens.upper_bound());
    let mut reservation = engine
        .counters
        .reserve(&key, b.period, b.usd, worst, on)
        .await;
    if matches!(reservation, Reserved::Exhausted { .. })
        && facts.input_tokens.exact() < facts.input_tokens.upper_bound()
    {
        (input_usd, worst) = cost(facts.input_tokens.exact());
        reservation = engine
            .counters
            .reserve(&key, b.period, b.usd, worst, on)
            .await;
    }
    let (spent, reserved) = match reservation {
        Reserved::Granted {
            spent,
            reserved,
            hold,
        } => {
            holds.push(hold);
            (spent, reserved)
        }
        Reserved::Exhausted { spent, reserved } => {
            v.note("budget_exceeded");
            out.refuse = Some((
                429,
                format!(
                    "budget exhausted: ${spent:.6} of ${:.6} spent this {:?} period (${reserved:.6} reserved by requests in flight), this request may cost up to ${worst:.6}",
                    b.usd, b.period
                ),
            ));
            return;
        }
        Reserved::Unavailable => {
            v.note("counter_store_unavailable");
            if on == OnUnavailable::FailClosed {
                out.refuse = Some((
                    503,
                    "the fleet's budget counters cannot be reached, and this policy refuses without them (on_counter_store_unavailable: fail_closed)".into(),
                ));
            }
            return;
        }
    };
    let headroom = b.usd - spent - reserved;
    let tighter = v
        .stream_budget
        .as_ref()
        .is_none_or(|s| headroom < s.headroom_usd);
    if p.mode == Mode::Enforce && tighter {
        v.stream_budget = Some(StreamBudget {
            policy_id: id.to_owned(),
            headroom_usd: headroom,
            input_usd,
            output_usd_per_token: price.output_per_mtok / 1e6,
        });
    }
}

/// Releases a finished request's reservations and adds its real cost to every budget
/// that covers its caller.
pub(super) fn settle(
    engine: &Engine,
    mut holds: Vec<BudgetHold>,
    identity: &Identity,
    cost_usd: Option<f64>,
) {
    let usd = cost_usd.unwrap_or(0.0);
    for c in engine.in_scope(identity) {
        if let Some(b) = &c.policy.budget {
            let key = budget_key(&c.policy, b, identity);
            let hold = holds
                .iter()
                .position(|h| h.key == key)
                .map(|i| holds.swap_remove(i));
            if hold.is_none() && usd <= 0.0 {
                continue;
            }
            let period = b.period.index(super::now_secs());
            let (name, kind, cap) = (gauge_name(&c.policy, b).to_owned(), b.period, b.usd);
            engine
                .counters
                .settle(hold, &key, b.period, usd, move |spent| {
                    export(&name, kind, cap, period, spent);
                });
        }
    }
    // Reservations of budgets no longer in scope (a reload changed them): released.
    for h in holds {
        let key = h.key.clone();
        engine
            .counters
            .settle(Some(h), &key, Period::Total, 0.0, |_| {});
    }
}

/// The highest spend seen this period under each budget name (per-identity budgets: the
/// identity nearest its cap), for the gauges.
static HIGHEST: Mutex<Option<HashMap<String, (i64, f64)>>> = Mutex::new(None);

/// The name a budget's gauges carry: its shared name, else its policy's id (both come
/// from the config: a bounded label set).
pub(super) fn gauge_name<'a>(p: &'a Policy, b: &'a Budget) -> &'a str {
    b.shared.as_deref().unwrap_or(&p.id)
}

/// Updates `sluice_budget_*{budget, period}` after `spent` was settled under one of the
/// budget's counters.
fn export(name: &str, kind: Period, cap: f64, period: i64, spent: f64) {
    let mut guard = HIGHEST.lock();
    let highest = guard.get_or_insert_with(HashMap::new);
    let entry = highest.entry(name.to_owned()).or_insert((period, 0.0));
    if entry.0 != period {
        *entry = (period, 0.0);
    }
    entry.1 = entry.1.max(spent);
    let labels = [name, kind.as_str()];
    crate::metrics::BUDGET_SPENT_USD
        .with_label_values(&labels)
        .set(entry.1);
    crate::metrics::BUDGET_LIMIT_USD
        .with_label_values(&labels)
        .set(cap);
    crate::metrics::BUDGET_UTILISATION
        .with_label_values(&labels)
        .set(if cap > 0.0 { entry.1 / cap } else { 1.0 });
}

/// A budget counter: shared by name, else per policy (not version: a policy edit must not
/// reset spend) and identity.
fn budget_key(p: &Policy, b: &Budget, identity: &Identity) -> String {
    match &b.shared {
        Some(name) => format!("shared:{name}"),
        None => format!("{}|{}", p.id, limit_key(identity)),
    }
}

/// Budget period.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Calendar day, UTC.
    Day,
    /// Calendar month, UTC.
    #[default]
    Month,
    /// Never resets.
    Total,
}

impl Period {
    /// Its name in config and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// A stable number for the period containing `unix_secs`.
    pub fn index(self, unix_secs: i64) -> i64 {
        match self {
            Period::Day => unix_secs.div_euclid(86_400),
            Period::Month => {
                let t = time::OffsetDateTime::from_unix_timestamp(unix_secs)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                i64::from(t.year()) * 12 + i64::from(u8::from(t.month()))
            }
            Period::Total => 0,
        }
    }
}

/// Where spend (and the rate-limit windows) are kept.
pub trait CounterStore: Send + Sync {
    /// USD spent under `key` in `period`.
    fn spent(&self, key: &str, period: i64) -> f64;
    /// Add `usd` under `key` in `period`.
    fn add(&self, key: &str, period: i64, usd: f64);
    /// Rate-limit windows as last saved. Default: none (kept in memory only).
    fn load_windows(&self) -> Vec<super::limits::WindowRow> {
        Vec::new()
    }
    /// Replace the saved rate-limit windows. Default: nothing is kept.
    fn save_windows(&self, _rows: &[super::limits::WindowRow]) {}
}

/// Errors opening the counter store.
#[derive(Debug, thiserror::Error)]
#[error("budget counters at {path}: {source} (check the state directory is writable)")]
pub struct StoreError {
    path: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// SQLite-backed counters with an in-memory read cache. Spend is written behind the
/// request, not on it: [`CounterStore::add`] updates the cache and the unwritten sum of
/// its counter under one lock; a writer thread of the store commits the unwritten sums,
/// one transaction per batch (every few tens of milliseconds under load). A SQLite
/// commit — and the WAL checkpoint one commit in a thousand pays — never runs on a
/// request's thread. What a crash can lose is the spend of that last batch; a clean stop
/// writes everything ([`CounterStore::save_windows`] flushes, and so does dropping the
/// store).
pub struct SqliteCounters {
    inner: Arc<SqliteInner>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct SqliteInner {
    db: Mutex<rusqlite::Connection>,
    counts: Mutex<Counts>,
    wake: Condvar,
}

/// What the store counts in memory.
#[derive(Default)]
struct Counts {
    /// Every counter's spend (what reads see).
    spent: HashMap<(String, i64), f64>,
    /// Spend added since the last successful write, summed per counter: bounded by the
    /// counters, not the requests, however long the database stays unwritable.
    unwritten: HashMap<(String, i64), f64>,
    closing: bool,
}

/// How long the writer lets additions gather after the first one wakes it.
const SPEND_BATCH: std::time::Duration = std::time::Duration::from_millis(20);

/// After a failed write (database locked past the busy timeout, disk full), the pause
/// before the next try.
const SPEND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl SqliteInner {
    /// Writes the unwritten sums in one transaction. `false` when that failed: they are
    /// added back to what came meanwhile. (Kept a function of its own in release builds:
    /// the bench's per-phase breakdown names it.)
    #[inline(never)]
    fn write_pending(&self) -> bool {
        let batch = std::mem::take(&mut self.counts.lock().unwritten);
        if batch.is_empty() {
            return true;
        }
        let mut db = self.db.lock();
        let result = (|| -> rusqlite::Result<()> {
            let tx = db.transaction()?;
            {
                let mut up = tx.prepare_cached(
                    "INSERT INTO spend (key, period, usd) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key, period) DO UPDATE SET usd = usd + excluded.usd",
                )?;
                for ((key, period), usd) in &batch {
                    up.execute(rusqlite::params![key, period, usd])?;
                }
            }
            tx.commit()
        })();
        let Err(e) = result else {
            return true;
        };
        tracing::error!(
            counters = batch.len(),
            error = %e,
            "cannot persist budget spend yet; it counts in memory and is retried"
        );
        let mut counts = self.counts.lock();
        for (counter, usd) in batch {
            *counts.unwritten.entry(counter).or_default() += usd;
        }
        false
    }

    /// The writer thread: waits for additions, lets a batch gather, writes it; returns
    /// once the store closes and nothing is left.
    fn run_writer(&self) {
        loop {
            {
                let mut counts = self.counts.lock();
                while counts.unwritten.is_empty() && !counts.closing {
                    self.wake.wait(&mut counts);
                }
                if counts.unwritten.is_empty() && counts.closing {
                    return;
                }
            }
            std::thread::sleep(SPEND_BATCH);
            if !self.write_pending() {
                if self.counts.lock().closing {
                    return; // logged; the last try is the closing one's
                }
                std::thread::sleep(SPEND_RETRY);
            }
        }
    }
}

impl SqliteCounters {
    /// Open (create) the store, load every counter and start its writer thread.
    ///
    /// # Errors
    /// [`StoreError`] naming the file.
    pub fn open(path: &Path) -> Result<SqliteCounters, StoreError> {
        let err = |source: rusqlite::Error| StoreError {
            path: path.display().to_string(),
            source: source.into(),
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = rusqlite::Connection::open(path).map_err(err)?;
        // Only the store's writer and the shutdown write: a locked database is retried
        // (`SPEND_RETRY`), not waited on for long.
        db.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(err)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS spend (key TEXT NOT NULL, period INTEGER NOT NULL,
               usd REAL NOT NULL, PRIMARY KEY (key, period));
             CREATE TABLE IF NOT EXISTS rate_windows (key TEXT PRIMARY KEY, minute INTEGER NOT NULL,
               req_now INTEGER NOT NULL, req_before INTEGER NOT NULL,
               tok_now INTEGER NOT NULL, tok_before INTEGER NOT NULL);",
        )
        .map_err(err)?;
        let mut spent = HashMap::new();
        {
            let mut stmt = db
                .prepare("SELECT key, period, usd FROM spend")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
                .map_err(err)?;
            for row in rows {
                let (k, v) = row.map_err(err)?;
                spent.insert(k, v);
            }
        }
        let inner = Arc::new(SqliteInner {
            db: Mutex::new(db),
            counts: Mutex::new(Counts {
                spent,
                ..Counts::default()
            }),
            wake: Condvar::new(),
        });
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("sluice-spend".into())
                .spawn(move || inner.run_writer())
                .map_err(|e| StoreError {
                    path: path.display().to_string(),
                    source: e.into(),
                })?
        };
        Ok(SqliteCounters {
            inner,
            writer: Some(writer),
        })
    }
}

impl Drop for SqliteCounters {
    fn drop(&mut self) {
        self.inner.counts.lock().closing = true;
        self.inner.wake.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.inner.write_pending();
    }
}

impl CounterStore for SqliteCounters {
    fn spent(&self, key: &str, period: i64) -> f64 {
        self.inner
            .counts
            .lock()
            .spent
            .get(&(key.to_string(), period))
            .copied()
            .unwrap_or(0.0)
    }

    fn add(&self, key: &str, period: i64, usd: f64) {
        if usd <= 0.0 {
            return;
        }
        let counter = (key.to_string(), period);
        {
            let mut counts = self.inner.counts.lock();
            *counts.spent.entry(counter.clone()).or_default() += usd;
            *counts.unwritten.entry(counter).or_default() += usd;
        }
        self.inner.wake.notify_one();
    }

    fn load_windows(&self) -> Vec<super::limits::WindowRow> {
        let db = self.inner.db.lock();
        let rows = db
            .prepare(
                "SELECT key, minute, req_now, req_before, tok_now, tok_before FROM rate_windows",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                    Ok((r.get(0)?, n(1)?, n(2)?, n(3)?, n(4)?, n(5)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            });
        rows.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read saved rate-limit windows; starting from zero");
            Vec::new()
        })
    }

    /// Also writes the spend still queued: called every few seconds and at shutdown.
    fn save_windows(&self, rows: &[super::limits::WindowRow]) {
        self.inner.write_pending();
        let mut db = self.inner.db.lock();
        let result = (|| -> rusqlite::Result<()> {
            let tx = db.transaction()?;
            tx.execute("DELETE FROM rate_windows", [])?;
            {
                let mut ins = tx.prepare(
                    "INSERT INTO rate_windows (key, minute, req_now, req_before, tok_now, tok_before)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (k, m, rc, rp, tc, tp) in rows {
                    let i = |v: &u64| i64::try_from(*v).unwrap_or(i64::MAX);
                    ins.execute(rusqlite::params![k, i(m), i(rc), i(rp), i(tc), i(tp)])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot save rate-limit windows; they are kept in memory");
        }
    }
}

/// In-memory counters (tests, or when no state directory is wanted).
#[derive(Default)]
pub struct MemoryCounters(Mutex<HashMap<(String, i64), f64>>);

impl CounterStore for MemoryCounters {
    fn spent(&self, key: &str, period: i64) -> f64 {
        self.0
            .lock()
            .get(&(key.to_string(), period))
            .copied()
            .unwrap_or(0.0)
    }
    fn add(&self, key: &str, period: i64, usd: f64) {
        *self
            .0
            .lock()
            .entry((key.to_string(), period))
            .or_insert(0.0) += usd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let t = 1_763_900_000; // 2025-11-23
        assert_eq!(Period::Day.index(t), t / 86_400);
        assert_eq!(Period::Month.index(t), 2025 * 12 + 11);
        assert_eq!(Period::Total.index(t), 0);
    }

    #[test]
    fn sqlite_counters_survive_reopen() {
        let path =
            std::env::temp_dir().join(format!("sluice-budget-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let s = SqliteCounters::open(&path).unwrap();
            s.add("user:alice", 7, 0.25);
            s.add("user:alice", 7, 0.5);
            assert!((s.spent("user:alice", 7) - 0.75).abs() < 1e-12);
        }
        let s = SqliteCounters::open(&path).unwrap();
        assert!((s.spent("user:alice", 7) - 0.75).abs() < 1e-12);
        assert_eq!(s.spent("user:alice", 8), 0.0);
        let _ = std::fs::remove_file(&path);
    }

    /// Spend is written behind the request: with the database locked by someone else
    /// (a long checkpoint, a backup), `add` counts in memory, the writer's failed write
    /// is queued again, and it commits once the lock goes, without a clean stop.
    #[test]
    fn a_locked_database_does_not_hold_up_the_request_and_the_spend_still_lands() {
        let path = std::env::temp_dir().join(format!(
            "sluice-budget-locked-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let s = SqliteCounters::open(&path).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        // Written through, each of these would wait out SQLite's busy timeout and fail:
        // the spend would never reach the file.
        for _ in 0..100 {
            s.add("team:ml", 3, 0.01);
        }
        assert!((s.spent("team:ml", 3) - 1.0).abs() < 1e-9);
        // Held past the writer's busy timeout: its first write fails and is retried.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        other.execute_batch("COMMIT").unwrap();
        let on_disk = || -> f64 {
            other
                .query_row(
                    "SELECT coalesce(sum(usd), 0) FROM spend WHERE key = 'team:ml'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0.0)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while (on_disk() - 1.0).abs() > 1e-9 {
            assert!(std::time::Instant::now() < deadline, "{}", on_disk());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(s);
        let _ = std::fs::remove_file(&path);
    }
}
