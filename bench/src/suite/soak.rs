//! `--scenario soak`: the governed path under a steady mixed load for a long time, and
//! whether anything grows that should not.
//!
//! The path is the budgeted one (`sluice-budget`'s policy) plus one refused model and its
//! metrics listener. First its saturation is taken (closed loop, 1 KB prompts); then four
//! open-loop generators run side by side for the soak's length at half that rate in all:
//!
//! | share | requests |
//! |---|---|
//! | 60 % | plain, 1 KB prompt |
//! | 20 % | streamed, 10 events |
//! | 10 % | refused by policy (a denied model: 403) |
//! | 10 % | streams the client cancels after 2 of 50 events (connection closed) |
//!
//! Every `interval` the harness reads the process's resident memory and open file
//! descriptors, the ledger directory's size, and from `/metrics` the record hand-off
//! queue, the ledger indexer's lag and the alert engine's lag. "Start" is the first sample
//! after a tenth of the soak (allocator pools and connection pools warm), "end" the last
//! one under load. Flat means, stated here and in the report:
//! - resident memory at the end ≤ start × 1.10 + 4 MiB;
//! - open descriptors at the end ≤ start + 16 (pool connections come and go);
//! - queued records (queue + index lag + alert lag) at the end ≤ max(256, 2 × start);
//! - the ledger's bytes per record over the second half within ±25 % of the first half's
//!   (`sluice_ledger_records_total` against the directory's size);
//! - records per second over the second half within ±15 % of the first half's (the offered
//!   load is constant: a path that slows down as its ledger grows shows here);
//! - every answer is recorded: interaction records == answers received (cancelled and
//!   refused ones included), counted after the process stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use super::json::JsonExt;
use super::loadgen::Loadgen;
use super::peers::{self, Rig, REFUSED_MODEL, SOAK_PATH};
use super::procfs;
use super::profile::{loadgen_args, Profile};

/// One reading of the process and its queues.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at_s: f64,
    rss_kb: u64,
    /// Of which anonymous memory (heap); the rest is mapped files (the ledger's).
    anon_kb: u64,
    fds: u64,
    ledger_bytes: u64,
    /// Records the ledger has taken (`sluice_ledger_records_total`).
    records: f64,
    record_queue: f64,
    index_lag: f64,
    alerts_lag: f64,
}

impl Sample {
    fn queued(&self) -> f64 {
        self.record_queue + self.index_lag + self.alerts_lag
    }

    fn json(&self) -> Json {
        json!({
            "at_s": self.at_s,
            "rss_kb": self.rss_kb,
            "anon_kb": self.anon_kb,
            "fds": self.fds,
            "ledger_bytes": self.ledger_bytes,
            "records": self.records,
            "record_queue": self.record_queue,
            "index_lag": self.index_lag,
            "alerts_lag": self.alerts_lag,
        })
    }
}

/// The four generators of the mix: name, share of the rate, extra arguments, and how long
/// one exchange lasts at most (sizes the connection pool of the open loop).
fn mix() -> [(&'static str, f64, Vec<String>, f64); 4] {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    [
        ("plain", 0.6, s(&["--prompt-bytes", "1024"]), 0.02),
        (
            "streamed",
            0.2,
            s(&[
                "--sse-chunks",
                "10",
                "--reply-bytes",
                "400",
                "--mock-delay-ms",
                "5",
            ]),
            0.1,
        ),
        (
            "refused",
            0.1,
            s(&[
                "--model",
                REFUSED_MODEL,
                "--expect-status",
                "403",
                "--expect",
                "is not allowed",
            ]),
            0.02,
        ),
        (
            "cancelled",
            0.1,
            s(&[
                "--sse-chunks",
                "50",
                "--reply-bytes",
                "1000",
                "--mock-delay-ms",
                "10",
                "--cancel-after-events",
                "2",
            ]),
            0.05,
        ),
    ]
}

/// Runs the soak; its figures as JSON (`available: false` with a reason when it could not).
pub(super) fn run(rig: &Rig, lg: &Loadgen, p: &Profile) -> Result<Json> {
    let mut running = peers::start(rig, SOAK_PATH)?;
    let pid = running.pid().context("the soak's Sluice has no process")?;
    let metrics = running
        .metrics
        .context("the soak's Sluice has no metrics listener")?;
    let state = match &running.records {
        Some(peers::Records::Interactions { state, .. }) => state.clone(),
        _ => bail!("the soak's path records no interactions"),
    };
    let mut seen = super::Seen::default();
    // Warm, then the saturation the soak's rate is half of.
    seen.add(&super::warm_up(lg, &running, p)?);
    let sat = lg.run_for(
        running.addr,
        &running.client_ca,
        &loadgen_args(p, "sat_1k"),
        p.duration.max(1.0),
        p.warmup,
        30.0,
    )?;
    seen.add(&sat);
    let saturation = sat.member("rps").num().unwrap_or(0.0);
    if saturation <= 0.0 {
        bail!("no saturation figure: {}", sat);
    }
    let rate = saturation / 2.0;
    let secs = p.soak_secs;
    let interval = (secs / 20.0).clamp(1.0, 30.0);
    println!(
        "bench: soak: saturation {saturation:.0} req/s; {secs:.0} s at {rate:.0} req/s, \
         a sample every {interval:.0} s"
    );

    let started = Instant::now();
    let read = |started: Instant| Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kb: procfs::status_kb(pid, "VmRSS"),
        anon_kb: procfs::status_kb(pid, "RssAnon"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        ledger_bytes: dir_bytes(&state.join("ledger")),
        records: gauge(metrics, "sluice_ledger_records_total").unwrap_or(f64::NAN),
        record_queue: gauge(metrics, "sluice_record_queue_depth").unwrap_or(f64::NAN),
        index_lag: gauge(metrics, "sluice_ledger_index_lag").unwrap_or(f64::NAN),
        alerts_lag: gauge(metrics, "sluice_alerts_lag_records").unwrap_or(0.0),
    };
    let mut samples = vec![read(started)];
    let mix = mix();
    let (addr, ca) = (running.addr, running.client_ca.clone());
    let outcomes: Vec<(&str, f64, Result<Json>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = mix
            .iter()
            .map(|(name, share, extra, longest)| {
                let r = rate * share;
                // Room for latency well above the usual: the soak is about a steady load.
                let pool = (r * longest * 4.0).ceil() as usize + 8;
                let mut args = vec![
                    "--skip-when-behind".to_string(),
                    "--connections".to_string(),
                    pool.to_string(),
                    "--rate".to_string(),
                    format!("{r:.3}"),
                ];
                args.extend(extra.iter().cloned());
                let ca = ca.clone();
                (
                    *name,
                    r,
                    scope.spawn(move || lg.run_for(addr, &ca, &args, secs, 0.0, 30.0)),
                )
            })
            .collect();
        let mut next = started + Duration::from_secs_f64(interval);
        // The last sample is taken just before the generators' end, under load.
        let last = started + Duration::from_secs_f64((secs - 0.5).max(0.5));
        let mut took_last = false;
        while handles.iter().any(|(_, _, h)| !h.is_finished()) {
            if !took_last && Instant::now() >= last {
                samples.push(read(started));
                took_last = true;
            } else if Instant::now() >= next && Instant::now() < last {
                samples.push(read(started));
                next += Duration::from_secs_f64(interval);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|(name, r, h)| {
                let out = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the generator's thread panicked")));
                (name, r, out)
            })
            .collect()
    });
    // Drained: a moment after the load, what is still queued.
    std::thread::sleep(Duration::from_secs(2));
    let drained = read(started);

    let mut load = Json::obj();
    let mut failed = Vec::new();
    for (name, r, out) in outcomes {
        match out {
            Ok(o) => {
                seen.add(&o);
                load.set(
                    name,
                    json!({
                        "rate": r,
                        "ok": o.member("ok").clone(),
                        "errors": o.member("errors").clone(),
                        "error_samples": o.member("error_samples").clone(),
                        "cancelled": o.member("cancelled").clone(),
                        "skipped": o.member("skipped").clone(),
                        "answered_per_s": o.member("responses_total").num().unwrap_or(0.0) / secs,
                        "responses_total": o.member("responses_total").clone(),
                        "latency_p99_us": o.at("latency_us/p99").clone(),
                    }),
                );
            }
            Err(e) => failed.push(format!("{name}: {e:#}")),
        }
    }
    running.stop();
    let audit = super::audit(&rig.sluice, &running, &seen);
    if !failed.is_empty() {
        bail!("the soak's load failed: {}", failed.join("; "));
    }

    // Start: the first sample past a tenth of the soak; end: the last under load.
    let end = *samples.last().context("no sample")?;
    let start = samples
        .iter()
        .copied()
        .find(|s| s.at_s >= secs / 10.0)
        .unwrap_or(end);
    let half = (start.at_s + end.at_s) / 2.0;
    let mid = samples
        .iter()
        .copied()
        .min_by(|a, b| (a.at_s - half).abs().total_cmp(&(b.at_s - half).abs()))
        .unwrap_or(end);
    // The ledger's bytes per record and the records per second, each half.
    let per_record = |a: Sample, b: Sample| {
        (b.ledger_bytes as f64 - a.ledger_bytes as f64) / (b.records - a.records).max(1.0)
    };
    let rate_of = |a: Sample, b: Sample| (b.records - a.records) / (b.at_s - a.at_s).max(1e-9);
    let (first_size, second_size) = (per_record(start, mid), per_record(mid, end));
    let (first_rate, second_rate) = (rate_of(start, mid), rate_of(mid, end));
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
    let checks = json!({
        "rss": end.rss_kb as f64 <= start.rss_kb as f64 * 1.10 + 4096.0,
        "fds": end.fds <= start.fds + 16,
        "queued": end.queued() <= (2.0 * start.queued()).max(256.0),
        "ledger_per_record": (0.75..=1.25).contains(&ratio(first_size, second_size)),
        "throughput": (0.85..=1.15).contains(&ratio(first_rate, second_rate)),
        "every_answer_recorded": audit.member("complete").clone(),
    });
    let flat = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v.as_bool() == Some(true)));
    Ok(json!({
        "available": true,
        "seconds": secs,
        "saturation_rps": saturation,
        "rate_rps": rate,
        "interval_s": interval,
        "load": load,
        "start": start.json(),
        "end": end.json(),
        "drained": drained.json(),
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "ledger_bytes_per_record": {"first_half": first_size, "second_half": second_size},
        "records_per_s": {"first_half": first_rate, "second_half": second_rate},
        "tolerance": "rss end <= start x 1.10 + 4 MiB; fds end <= start + 16; queued end \
                      <= max(256, 2 x start); ledger bytes per record, second half within \
                      25% of the first; records/s, second half within 15% of the first; \
                      interaction records == answers",
        "checks": checks,
        "flat": flat,
        "audit": audit,
    }))
}

/// The soak's section of the report.
pub(super) fn markdown(s: &Json) -> String {
    let n = |path: &str| s.at(path).num().unwrap_or(f64::NAN);
    let ok = |name: &str| {
        if s.at(&format!("checks/{name}")).as_bool() == Some(true) {
            "flat"
        } else {
            "**not flat**"
        }
    };
    let mut out = format!(
        "### Soak ({:.0} s at {:.0} req/s, half of the measured {:.0} req/s saturation)\n\n\
         Mix: 60 % plain, 20 % streamed, 10 % refused by policy, 10 % cancelled streams.\n\n\
         | figure | start | end | drained | verdict |\n|---|---|---|---|---|\n",
        n("seconds"),
        n("rate_rps"),
        n("saturation_rps")
    );
    out.push_str(&format!(
        "| resident memory (MB) | {:.1} | {:.1} | {:.1} | {} |\n",
        n("start/rss_kb") / 1024.0,
        n("end/rss_kb") / 1024.0,
        n("drained/rss_kb") / 1024.0,
        ok("rss")
    ));
    out.push_str(&format!(
        "| open file descriptors | {:.0} | {:.0} | {:.0} | {} |\n",
        n("start/fds"),
        n("end/fds"),
        n("drained/fds"),
        ok("fds")
    ));
    let queued = |at: &str| {
        n(&format!("{at}/record_queue"))
            + n(&format!("{at}/index_lag"))
            + n(&format!("{at}/alerts_lag"))
    };
    out.push_str(&format!(
        "| queued records (queue + index lag + alert lag) | {:.0} | {:.0} | {:.0} | {} |\n",
        queued("start"),
        queued("end"),
        queued("drained"),
        ok("queued")
    ));
    out.push_str(&format!(
        "| ledger size (MB) | {:.1} | {:.1} | {:.1} | {} ({:.0} → {:.0} bytes per record, \
         first half → second) |\n",
        n("start/ledger_bytes") / 1e6,
        n("end/ledger_bytes") / 1e6,
        n("drained/ledger_bytes") / 1e6,
        ok("ledger_per_record"),
        n("ledger_bytes_per_record/first_half"),
        n("ledger_bytes_per_record/second_half"),
    ));
    out.push_str(&format!(
        "| records written | {:.0} | {:.0} | {:.0} | {} ({:.0} → {:.0} records/s, first \
         half → second) |\n",
        n("start/records"),
        n("end/records"),
        n("drained/records"),
        ok("throughput"),
        n("records_per_s/first_half"),
        n("records_per_s/second_half"),
    ));
    let kinds: Vec<String> = s
        .member("load")
        .keys()
        .into_iter()
        .map(|k| {
            format!(
                "{k} {} ok / {} failed, {:.0} of {:.0} req/s sent ({} slots skipped behind \
                 schedule)",
                s.at(&format!("load/{k}/ok")),
                s.at(&format!("load/{k}/errors")),
                n(&format!("load/{k}/answered_per_s")),
                n(&format!("load/{k}/rate")),
                s.at(&format!("load/{k}/skipped")),
            )
        })
        .collect();
    out.push_str(&format!("\nAnswers: {}.\n", kinds.join(", ")));
    out.push_str(&format!(
        "\nEvery answer recorded: {} ({} records for {} answers). Tolerances: {}.\n",
        if s.at("checks/every_answer_recorded").as_bool() == Some(true) {
            "yes"
        } else {
            "**no**"
        },
        s.at("audit/records"),
        s.at("audit/expected"),
        s.member("tolerance").str().unwrap_or_default()
    ));
    out
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The sum of a metric's samples (every label set) from Sluice's `/metrics`.
fn gauge(at: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {at}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
