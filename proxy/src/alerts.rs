//! Security alerts: rules evaluated off the request path over the record stream.
//!
//! A thread of its own follows the ledger from a persisted cursor (like a sink, see
//! [`crate::delivery`]), feeds every record to the rules ([`engine`]) and appends each
//! alert that fires or resolves to the ledger as a `kind: "alert"` record — so alerts are
//! chained, verified, exported and queried like everything else, and reach people
//! through sinks: the alert channels (Slack, PagerDuty, Microsoft Teams, a webhook) are
//! sinks that take `kind: alert` records.
//!
//! Rules: the built-ins ([`rules::builtins`]) and your own in the same grammar
//! (`alerts.rules`): which records (`when`), grouped how (`per`, the `report --by`
//! dimensions), measured how (`count`, `cost_usd`, `tokens`, `distinct:<dimension>`,
//! `first_seen`), over which `window`, from which `threshold`, with a `cooldown`. An alert
//! fires once per rule and group and stays firing (no repeats) until the measure falls
//! below the threshold and the cooldown has passed; then a `resolved` alert with the same
//! `dedup_key` ends it. State (cursor, firing alerts, groups seen) is kept in
//! `<ledger>/alerts.json`; after a restart the windows are refilled from the records of
//! the longest window, without firing again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::ledger::follow;
use crate::ledger::Ledger;
use crate::metrics;
use crate::record::{Alert, AlertState, Record};

pub mod engine;
pub mod rules;
mod seen;

pub use rules::{AlertsConfig, Rule, RuleConfig};

fn state_path(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join("alerts.json")
}

fn load_state(ledger_dir: &Path) -> engine::State {
    crate::state_file::load(&state_path(ledger_dir))
}

fn save_state(ledger_dir: &Path, st: &engine::State) -> std::io::Result<()> {
    crate::state_file::save(&state_path(ledger_dir), st)
}

/// The evaluation thread.
pub struct Alerts {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Alerts {
    /// Starts evaluating `rules` over the ledger.
    pub fn start(ledger: Arc<Ledger>, rules: Vec<Rule>) -> Alerts {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        for r in &rules {
            metrics::ALERTS_FIRING.with_label_values(&[&r.name]).set(0);
        }
        let thread = std::thread::Builder::new()
            .name("sluice-alerts".into())
            .spawn(move || run(&ledger, rules, &flag))
            .map_err(|e| tracing::error!(error = %e, "alerts: cannot start the rules thread"))
            .ok();
        Alerts { stop, thread }
    }

    /// Evaluates what the ledger holds now, then stops.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The alert thread's body. (Kept a function of its own in release builds: called once,
/// it would be inlined into the thread's start, and the bench's per-phase breakdown names
/// it.)
#[inline(never)]
fn run(ledger: &Ledger, rules: Vec<Rule>, stop: &AtomicBool) {
    let dir = ledger.dir().to_path_buf();
    let mut ledger_rows = follow::Follower::new(&dir);
    let state = load_state(&dir);
    let mut eng = engine::Engine::new(rules, state);
    // Refill the windows from the records already evaluated, without firing.
    let evaluated = eng.state.seq;
    let from = now_ms() - eng.max_window_ms();
    let mut at = follow::first_seq_since(&dir, from)
        .ok()
        .flatten()
        .map_or(evaluated, |s| (s - 1).min(evaluated));
    while at < evaluated {
        match ledger_rows.metadata_after(at, 1000) {
            Ok(rows) if !rows.is_empty() => {
                for r in rows.iter().take_while(|r| r.seq <= evaluated) {
                    eng.observe(&seen::Seen::parse(&r.meta), true);
                    at = r.seq;
                }
                if rows.last().is_some_and(|r| r.seq > evaluated) {
                    break;
                }
            }
            _ => break,
        }
    }
    for f in eng.state.firing.values() {
        metrics::ALERTS_FIRING.with_label_values(&[&f.rule]).inc();
    }
    tracing::info!(
        rules = eng.rules().len(),
        from_seq = evaluated + 1,
        "alerts: evaluating"
    );
    let mut last_save = Instant::now();
    let mut dirty = false;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let rows = match ledger_rows.metadata_after(eng.state.seq, 500) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "alerts: cannot read the ledger; retrying");
                Vec::new()
            }
        };
        if let Ok(head) = ledger_rows.head_seq() {
            metrics::ALERTS_LAG.set((head - eng.state.seq - rows.len() as i64).max(0));
        }
        let mut alerts = Vec::new();
        for r in &rows {
            alerts.extend(eng.observe(&seen::Seen::parse(&r.meta), false));
            eng.state.seq = r.seq;
            dirty = true;
        }
        alerts.extend(eng.tick(now_ms()));
        for a in alerts {
            record(ledger, a);
            dirty = true;
        }
        if dirty && (rows.is_empty() || last_save.elapsed() > Duration::from_secs(1) || stopping) {
            if let Err(e) = save_state(&dir, &eng.state) {
                tracing::error!(error = %e, "alerts: cannot persist the rules' state");
            }
            dirty = false;
            last_save = Instant::now();
        }
        if stopping && rows.is_empty() {
            return;
        }
        if rows.is_empty() {
            let until = Instant::now() + Duration::from_millis(250);
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

/// Appends the alert to the ledger and counts it.
fn record(ledger: &Ledger, a: Alert) {
    let state = match a.state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    };
    metrics::ALERTS
        .with_label_values(&[&a.rule, a.severity.as_str(), state])
        .inc();
    let gauge = metrics::ALERTS_FIRING.with_label_values(&[&a.rule]);
    match a.state {
        AlertState::Firing if a.threshold > 0.0 && !a.summary.contains(": first call") => {
            gauge.inc()
        }
        AlertState::Resolved => gauge.dec(),
        AlertState::Firing => {}
    }
    tracing::warn!(rule = %a.rule, severity = a.severity.as_str(), state, group = ?a.group, summary = %a.summary, "alert");
    if let Err(e) = ledger.append(&Record::Alert(Box::new(a))) {
        tracing::error!(error = %e, "alerts: cannot record an alert in the ledger");
    }
}

/// Every alert record of the ledger in `dir` (oldest first), and the dedup keys still
/// firing (their newest record is not a resolve).
///
/// # Errors
/// The ledger cannot be read.
pub fn list(
    dir: &Path,
) -> Result<(Vec<serde_json::Value>, std::collections::BTreeSet<String>), crate::ledger::LedgerError>
{
    let all = crate::ledger::query(
        dir,
        &crate::ledger::Filter {
            kind: Some("alert".into()),
            limit: usize::MAX,
            ..crate::ledger::Filter::default()
        },
    )?;
    let mut last: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for a in &all {
        let k = a["dedup_key"].as_str().unwrap_or("").to_owned();
        last.insert(k, a["state"].as_str().unwrap_or("").to_owned());
    }
    let firing = last
        .into_iter()
        .filter(|(_, s)| s == "firing")
        .map(|(k, _)| k)
        .collect();
    Ok((all, firing))
}
