//! Ledger figures: appends per second with chain and HMAC on, and the filtered queries
//! `sluice events tail` runs, timed on a large ledger.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde_json::Value;
use sluice::ledger::{self, Filter, Ledger, LedgerConfig};
use sluice::record::Record;
use sluice::testing::sample_interaction;

/// Append `n` synthetic interaction records (about 1 KiB each) from two threads into a
/// fresh ledger in a temporary directory with chain and HMAC on; returns records/s.
/// The directory is removed afterwards.
///
/// # Errors
/// The ledger could not be opened or written.
pub fn append(n: usize) -> anyhow::Result<f64> {
    let bench = BenchLedger::open("append")?;
    let sample = sample_interaction(0);
    let start = Instant::now();
    append_in_two_threads(bench.ledger(), n, |_| &sample)?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    bench.ledger().flush();
    Ok(rate)
}

/// Fill a fresh ledger with `n` varied records, then time shipping all of them to the
/// central ledger at `url` (as node `bench-<rep>`); returns records/s.
///
/// # Errors
/// The ledger could not be written or PostgreSQL could not take the rows.
pub fn central_ingest(n: usize, url: &str, rep: usize) -> anyhow::Result<f64> {
    let bench = BenchLedger::open("central")?;
    append_in_two_threads(bench.ledger(), n, varied)?;
    bench.ledger().flush();
    let config: ledger::central::CentralConfig =
        serde_json::from_value(serde_json::json!({ "url": url }))?;
    let node = format!("bench-{}-{rep}", std::process::id());
    let start = Instant::now();
    let sent = ledger::central::ship_all(&bench.dir, &node, &config)?;
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(sent as usize >= n, "shipped {sent} of {n} records");
    Ok(rate)
}

/// Fill a fresh ledger with `n` varied interaction records (through `append`, from two
/// threads: four providers, ten models, one decision in 50 a block, a thousand pids),
/// then time each filter `sluice events tail` offers `reps` times (at least three) as it
/// runs it (`query`: index opened read-only, newest 100). Returns
/// `{records, fill_records_per_s, queries: {name: {ms: [..], rows}}}`; the directory is
/// removed afterwards.
///
/// # Errors
/// The ledger could not be opened, written or queried.
pub fn query(n: usize, reps: usize) -> anyhow::Result<Value> {
    let bench = BenchLedger::open("query")?;
    let (t0, start) = (SystemTime::now(), Instant::now());
    append_in_two_threads(bench.ledger(), n, varied)?;
    bench.ledger().flush();
    let fill = start.elapsed();
    let at = |share: f64| Some(t0 + fill.mul_f64(share));
    let block = || Some("block".to_string());
    let pid = |p: u32| Some(format!("\"pid\":{p},"));
    let filters = [
        (
            "provider_model",
            Filter {
                provider: Some("anthropic".into()),
                model: Some("model-3".into()),
                ..Filter::default()
            },
        ),
        (
            "decision",
            Filter {
                decision: block(),
                ..Filter::default()
            },
        ),
        (
            "identity",
            Filter {
                identity: pid(123),
                ..Filter::default()
            },
        ),
        (
            "time_window",
            Filter {
                since: at(0.4),
                until: at(0.6),
                ..Filter::default()
            },
        ),
        (
            "decision_identity",
            Filter {
                decision: block(),
                identity: pid(300),
                ..Filter::default()
            },
        ),
    ];
    let mut queries = serde_json::Map::new();
    for (name, filter) in filters {
        let mut ms = Vec::new();
        let mut rows = 0;
        for _ in 0..reps.max(3) {
            let t = Instant::now();
            rows = ledger::query(&bench.dir, &filter)?.len();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        queries.insert(name.into(), serde_json::json!({"ms": ms, "rows": rows}));
    }
    Ok(serde_json::json!({
        "records": n,
        "fill_records_per_s": n as f64 / fill.as_secs_f64(),
        "queries": queries,
    }))
}

/// What the ledger writes to disk per record: `write_bytes` of `/proc/self/io` (the bytes
/// of the pages this process dirtied, counted when it dirties them, so nothing waits for
/// writeback) and `wchar` (bytes passed to `write`/`pwrite`), over `n` records appended
/// at `rate` records/s from one thread, or as fast as two threads go (`None`), up to
/// and including the clean close (final checkpoint, SQLite WAL checkpointed and cut).
/// Also the sizes of the WAL files left behind.
///
/// # Errors
/// The ledger could not be opened or written, or `/proc/self/io` read.
pub fn disk_per_record(
    rate: Option<f64>,
    n: usize,
    fsync: Option<ledger::FsyncPolicy>,
) -> anyhow::Result<Value> {
    let mut bench = BenchLedger::open_with("disk", |c| {
        if let Some(f) = fsync {
            c.fsync = f;
        }
    })?;
    let sample = sample_interaction(0);
    let before = proc_io()?;
    let start = Instant::now();
    match rate {
        Some(r) => {
            for i in 0..n {
                bench.ledger().append(&sample)?;
                let due = start + std::time::Duration::from_secs_f64((i + 1) as f64 / r);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        None => append_in_two_threads(bench.ledger(), n, |_| &sample)?,
    }
    let running = proc_io()?;
    if let Some(l) = bench.ledger.take() {
        l.close()?;
    }
    let after = proc_io()?;
    let size = |name: &str| std::fs::metadata(bench.dir.join(name)).map_or(0, |m| m.len());
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / n as f64;
    Ok(serde_json::json!({
        "records": n,
        "rate_per_s": rate,
        "seconds": start.elapsed().as_secs_f64(),
        "write_bytes_per_record": per(after.0, before.0),
        "write_bytes_per_record_before_close": per(running.0, before.0),
        "wchar_per_record": per(after.1, before.1),
        "sqlite_wal_bytes_after_close": size("ledger.sqlite-wal"),
        "sqlite_db_bytes": size("ledger.sqlite"),
    }))
}

/// `(write_bytes, wchar)` of this process so far.
fn proc_io() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io")?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/self/io has no {name}"))
    };
    Ok((field("write_bytes:")?, field("wchar:")?))
}

/// A ledger in a fresh temporary directory, removed on drop.
struct BenchLedger {
    /// `None` once closed, on drop.
    ledger: Option<Ledger>,
    dir: PathBuf,
}

impl BenchLedger {
    fn open(what: &str) -> anyhow::Result<BenchLedger> {
        Self::open_with(what, |_| {})
    }

    fn open_with(what: &str, tune: impl FnOnce(&mut LedgerConfig)) -> anyhow::Result<BenchLedger> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-ledger-bench-{what}-{}-{}",
            std::process::id(),
            sluice::record::new_id()
        ));
        let mut cfg = LedgerConfig {
            dir: dir.clone(),
            retention_days: 0,
            ..LedgerConfig::default()
        };
        tune(&mut cfg);
        let ledger = Ledger::open(&cfg)?;
        Ok(BenchLedger {
            ledger: Some(ledger),
            dir,
        })
    }
}

impl BenchLedger {
    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().expect("open until dropped")
    }
}

impl Drop for BenchLedger {
    fn drop(&mut self) {
        // Closed first: its threads write to the directory until then.
        if let Some(ledger) = self.ledger.take() {
            let _ = ledger.close();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Append `record(i)` for every `i < n`, the even ones from one thread and the odd ones
/// from another.
fn append_in_two_threads<R: std::borrow::Borrow<Record>>(
    ledger: &Ledger,
    n: usize,
    record: impl Fn(usize) -> R + Sync,
) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let record = &record;
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (t..n).step_by(2) {
                        ledger.append(record(i).borrow())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("an appending thread panicked"))??;
        }
        Ok(())
    })
}

/// Record `i` of `bench_query`'s ledger.
fn varied(i: usize) -> Record {
    let mut r = sample_interaction(i as u64);
    if let Record::Interaction(x) = &mut r {
        x.provider = ["openai", "anthropic", "gemini", "mistral"][i % 4].into();
        x.model = Some(format!("model-{}", i % 10));
        x.identity.pid = Some((i % 1000) as u32);
        if i % 50 == 0 {
            x.decision = "block";
        }
    }
    r
}
