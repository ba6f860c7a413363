//! Continuous delivery of the ledger to the tools security teams run (SIEMs, log
//! platforms, webhooks).
//!
//! Each configured sink (`sinks:`) has a thread of its own that reads the node's ledger
//! in `seq` order from the sink's **own cursor**, persisted in
//! `<ledger dir>/sinks/<name>.json` after every batch its destination accepted: nothing
//! is queued twice in memory, and a restart or a crash resumes where the destination last
//! confirmed — at least once, with the record id sent as an idempotency key wherever the
//! destination takes one (Elasticsearch `_id`, the webhook's `idempotency-key`).
//!
//! The request path never sees a sink: records reach the ledger as they always did, and
//! a slow or dead destination only lets its cursor fall behind the head
//! (`sluice_sink_lag_records{sink}`, `sluice sinks status`). Retryable failures (no
//! answer, 408/429/5xx, "server busy") are retried with exponential backoff and jitter
//! (0.2 s doubling to 60 s). What a destination rejects as invalid is split down to the
//! record at fault, which is parked in `<name>.dead.jsonl` with the destination's reason
//! (and an admin record in the ledger says so); a batch too large for the destination
//! (413) is halved.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ledger::follow::{self, Stored};
use crate::ledger::Ledger;
use crate::metrics;

mod azure;
mod channels;
pub mod config;
mod datadog;
mod elastic;
mod otlp;
mod s3;
mod splunk;
pub(crate) mod syslog;
mod webhook;

pub use config::{SinkConfig, SinkContent, SinkFilter};

/// A record on its way to a destination.
pub(crate) struct Item {
    pub seq: i64,
    pub id: String,
    pub record: Value,
    /// Its position among the rows read (to halve a batch by rows).
    row: usize,
}

/// What a destination did with a batch it answered for.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Items (by index) the destination refused as invalid, with its reason; every other
    /// item up to `consumed` was accepted.
    pub rejected: Vec<(usize, String)>,
    /// Items dealt with, from the first (the rest go again); `None` for all.
    pub consumed: Option<usize>,
}

/// Why a batch did not get through.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Try again later (network, busy, auth misconfigured: the lag shows it).
    Retry(String),
    /// The batch is larger than the destination takes (413): send fewer.
    TooLarge,
    /// The destination refuses the batch as invalid: narrowed down to the record.
    Reject(String),
}

/// A destination in its own wire format.
pub(crate) trait Destination: Send {
    /// Sends `items`, in order, as one request (or one write).
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure>;
}

/// The common reading of an HTTP answer: 2xx delivered; 408, 425, 429 and 5xx retried;
/// 401/403 retried (a token problem an operator must fix, visible as lag and errors);
/// 413 too large; any other 4xx rejected as invalid.
pub(crate) fn http_outcome(answer: &crate::http::client::Answer) -> Result<(), Failure> {
    let excerpt = || answer.body.chars().take(300).collect::<String>();
    match answer.status {
        200..=299 => Ok(()),
        413 => Err(Failure::TooLarge),
        401 | 403 => Err(Failure::Retry(format!(
            "HTTP {}: the destination refused the credentials (check the sink's token or key): {}",
            answer.status,
            excerpt()
        ))),
        408 | 425 | 429 | 500..=599 => Err(Failure::Retry(format!(
            "HTTP {}: {}",
            answer.status,
            excerpt()
        ))),
        s => Err(Failure::Reject(format!("HTTP {s}: {}", excerpt()))),
    }
}

/// One `POST`, a network failure as a retry.
pub(crate) fn post(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    url: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<crate::http::client::Answer, Failure> {
    crate::http::client::exchange_trusting(tls, url, "POST", path, headers, body, timeout)
        .map_err(retry)
}

/// A network failure as a retry.
pub(crate) fn retry(e: impl std::fmt::Display) -> Failure {
    Failure::Retry(e.to_string())
}

/// What `<name>.json` keeps for a sink.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SinkState {
    /// Records up to this seq are dealt with.
    pub seq: i64,
    pub delivered: u64,
    pub dead_letters: u64,
    #[serde(default)]
    pub last_delivery: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<String>,
}

/// Where a sink's state lives.
pub fn state_dir(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join("sinks")
}

fn state_path(ledger_dir: &Path, name: &str) -> PathBuf {
    state_dir(ledger_dir).join(format!("{name}.json"))
}

/// The dead-letter file of sink `name`.
pub fn dead_letter_path(ledger_dir: &Path, name: &str) -> PathBuf {
    state_dir(ledger_dir).join(format!("{name}.dead.jsonl"))
}

/// The sink's persisted state (default for a new sink).
pub fn load_state(ledger_dir: &Path, name: &str) -> SinkState {
    crate::state_file::load(&state_path(ledger_dir, name))
}

fn save_state(ledger_dir: &Path, name: &str, st: &SinkState) -> std::io::Result<()> {
    crate::state_file::save(&state_path(ledger_dir, name), st)
}

/// The sinks' threads.
pub struct Deliveries {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Deliveries {
    /// Starts one thread per sink; a sink whose destination cannot be set up (a secret
    /// file gone since validation) is logged and left out, the others run.
    pub fn start(ledger: Arc<Ledger>, node: String, sinks: &[SinkConfig]) -> Deliveries {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for cfg in sinks {
            let dest = match destination(cfg, &node) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(sink = %cfg.name, error = %e, "sink not started: its records wait in the ledger");
                    continue;
                }
            };
            let mut cfg = cfg.clone();
            if cfg.alert_channel() {
                cfg.filter.kinds = vec!["alert".into()];
            }
            let runner = Runner {
                ledger: ledger.clone(),
                cfg,
                dest,
                stop: stop.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("sluice-sink-{}", runner.cfg.name))
                .spawn(move || runner.run())
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a sink's thread")
                }
            }
        }
        Deliveries { stop, threads }
    }

    /// Each sink makes one last attempt with what the ledger holds, then stops.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The destination of `cfg`.
///
/// # Errors
/// What is wrong with its settings.
fn destination(cfg: &SinkConfig, node: &str) -> Result<Box<dyn Destination>, String> {
    let tls = crate::http::client::tls_with_ca(cfg.ca_file.as_deref())?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    if let Some(w) = &cfg.webhook {
        return Ok(Box::new(webhook::Webhook::new(
            w, &cfg.name, node, tls, timeout,
        )?));
    }
    if let Some(s) = &cfg.syslog {
        return Ok(Box::new(syslog::Syslog::new(s, node, tls, timeout)?));
    }
    if let Some(s) = &cfg.splunk_hec {
        return Ok(Box::new(splunk::Splunk::new(s, node, tls, timeout)?));
    }
    if let Some(d) = &cfg.datadog {
        return Ok(Box::new(datadog::Datadog::new(d, node, tls, timeout)?));
    }
    if let Some(e) = &cfg.elasticsearch {
        return Ok(Box::new(elastic::Elastic::new(e, node, tls, timeout)?));
    }
    if let Some(s) = &cfg.s3 {
        return Ok(Box::new(s3::S3::new(s, node, tls, timeout)));
    }
    if let Some(o) = &cfg.otlp_logs {
        return Ok(Box::new(otlp::OtlpLogs::new(o, node, tls, timeout)));
    }
    if let Some(a) = &cfg.azure_monitor {
        return Ok(Box::new(azure::AzureMonitor::new(a, node, tls, timeout)?));
    }
    // The channels whose URL is their secret (Slack, Teams): one constructor.
    let webhook = [
        (channels::Kind::Slack, cfg.slack.as_ref()),
        (channels::Kind::Teams, cfg.teams.as_ref()),
    ]
    .into_iter()
    .find_map(|(kind, c)| c.map(|c| (kind, &c.url)));
    if let Some((kind, url)) = webhook {
        return Ok(Box::new(channels::Channel::webhook(
            kind, url, node, tls, timeout,
        )?));
    }
    if let Some(p) = &cfg.pagerduty {
        return Ok(Box::new(channels::Channel::pagerduty(
            p, node, tls, timeout,
        )?));
    }
    Err("no destination".into())
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Runner {
    ledger: Arc<Ledger>,
    cfg: SinkConfig,
    dest: Box<dyn Destination>,
    stop: Arc<AtomicBool>,
}

impl Runner {
    fn run(mut self) {
        let dir = self.ledger.dir().to_path_buf();
        let name = self.cfg.name.clone();
        let lag = metrics::SINK_LAG.with_label_values(&[&name]);
        let errors = metrics::SINK_ERRORS.with_label_values(&[&name]);
        let delivered = metrics::SINK_DELIVERED.with_label_values(&[&name]);
        let seconds = metrics::SINK_SECONDS.with_label_values(&[&name]);
        metrics::SINK_DEAD_LETTERS.with_label_values(&[&name]);
        let mut st = load_state(&dir, &name);
        // A cursor past the ledger's head is not this ledger's (edited, or left from a
        // ledger since replaced): trusting it would skip every record up to it. Deliver
        // from the start instead — duplicates, never a gap.
        if let Ok(head) = follow::head_seq(&dir) {
            if st.seq > head {
                tracing::error!(sink = %name, cursor = st.seq, head, "sink: its cursor is past the ledger's head; delivering from the first record again");
                st.last_error = Some(format!(
                    "cursor {} was past the ledger's head {head}: reset to deliver from the start",
                    st.seq
                ));
                st.seq = 0;
                self.save(&dir, &st);
            }
        }
        let interval = Duration::from_millis(self.cfg.interval_ms);
        let with_content = self.cfg.content == SinkContent::Full;
        let mut cap = self.cfg.batch;
        let mut backoff = MIN_BACKOFF;
        let mut last_send: Option<Instant> = None;
        let mut last_warned: Option<(String, Instant)> = None;
        let mut tried_after_stop = false;
        tracing::info!(sink = %name, from_seq = st.seq + 1, "sink: delivering");
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping && tried_after_stop {
                return;
            }
            if let Ok(head) = follow::head_seq(&dir) {
                lag.set((head - st.seq).max(0));
            }
            let rows = match follow::stored_after(&dir, st.seq, cap) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "sink: cannot read the ledger; retrying");
                    self.sleep(interval);
                    continue;
                }
            };
            if rows.is_empty() {
                if stopping {
                    return;
                }
                self.sleep(interval.min(Duration::from_millis(250)));
                continue;
            }
            // A part-filled batch waits for more, up to the interval since the last send.
            if rows.len() < cap && !stopping {
                if let Some(wait) = last_send.and_then(|t| interval.checked_sub(t.elapsed())) {
                    self.sleep(wait.min(Duration::from_millis(250)));
                    continue;
                }
            }
            tried_after_stop = stopping;
            let last_row = rows.last().map_or(st.seq, |r| r.seq);
            let items = select(&rows, &self.cfg.filter, with_content);
            if items.is_empty() {
                st.seq = last_row;
                self.save(&dir, &st);
                continue;
            }
            let started = Instant::now();
            let outcome = self.dest.send(&items);
            last_send = Some(Instant::now());
            match outcome {
                Ok(sent) => {
                    seconds.observe(started.elapsed().as_secs_f64());
                    let consumed = sent.consumed.unwrap_or(items.len()).clamp(1, items.len());
                    for (i, reason) in &sent.rejected {
                        if let Some(item) = items.get(*i) {
                            self.dead_letter(&dir, &mut st, item, reason);
                        }
                    }
                    let ok = consumed.saturating_sub(sent.rejected.len()) as u64;
                    delivered.inc_by(ok);
                    st.delivered += ok;
                    st.seq = if consumed == items.len() {
                        last_row
                    } else {
                        items[consumed - 1].seq
                    };
                    st.last_delivery = Some(crate::record::rfc3339(SystemTime::now()));
                    st.last_error = None;
                    self.save(&dir, &st);
                    backoff = MIN_BACKOFF;
                    cap = (cap * 2).min(self.cfg.batch);
                }
                Err(Failure::TooLarge | Failure::Reject(_)) if items.len() > 1 => {
                    // Narrow down: the rows holding the first half of the items.
                    cap = items[items.len() / 2 - 1].row + 1;
                }
                Err(Failure::TooLarge) => {
                    let reason = "larger than the destination accepts (HTTP 413)";
                    self.dead_letter(&dir, &mut st, &items[0], reason);
                    st.seq = items[0].seq;
                    self.save(&dir, &st);
                }
                Err(Failure::Reject(reason)) => {
                    self.dead_letter(&dir, &mut st, &items[0], &reason);
                    st.seq = items[0].seq;
                    self.save(&dir, &st);
                }
                Err(Failure::Retry(reason)) => {
                    errors.inc();
                    let now = Instant::now();
                    let repeat = last_warned.as_ref().is_some_and(|(r, t)| {
                        *r == reason && now.duration_since(*t) < Duration::from_secs(60)
                    });
                    if !repeat {
                        tracing::warn!(sink = %name, error = %reason, retry_in_ms = backoff.as_millis() as u64, "sink: delivery failed; retrying (records wait in the ledger)");
                        last_warned = Some((reason.clone(), now));
                        st.last_error = Some(reason);
                        st.last_error_at = Some(crate::record::rfc3339(SystemTime::now()));
                        self.save(&dir, &st);
                    }
                    if stopping {
                        return;
                    }
                    self.sleep(jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn save(&self, dir: &Path, st: &SinkState) {
        if let Err(e) = save_state(dir, &self.cfg.name, st) {
            tracing::error!(sink = %self.cfg.name, error = %e, "sink: cannot persist its cursor; records may be delivered again after a restart");
        }
    }

    /// Parks `item` in the dead-letter file with `reason`, and says so in the ledger.
    fn dead_letter(&self, dir: &Path, st: &mut SinkState, item: &Item, reason: &str) {
        use std::io::Write;
        let name = &self.cfg.name;
        metrics::SINK_DEAD_LETTERS.with_label_values(&[name]).inc();
        st.dead_letters += 1;
        let line = serde_json::json!({
            "at": crate::record::rfc3339(SystemTime::now()),
            "sink": name,
            "reason": reason,
            "record": item.record,
        });
        let written = std::fs::create_dir_all(state_dir(dir)).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dead_letter_path(dir, name))?;
            writeln!(f, "{line}")?;
            f.sync_data()
        });
        if let Err(e) = written {
            tracing::error!(sink = %name, seq = item.seq, error = %e, "sink: cannot write its dead-letter file; the record stays in the ledger");
        }
        tracing::warn!(sink = %name, seq = item.seq, id = %item.id, reason, "sink: the destination rejected a record; parked in the dead-letter file");
        let admin = crate::record::Admin::new(
            crate::record::AdminAction::Export,
            crate::record::AdminOutcome::Failure,
            crate::record::Initiator {
                id: "sluice".into(),
                role: "system".into(),
                ip: None,
            },
            crate::record::Target {
                kind: "sink".into(),
                id: name.clone(),
            },
            serde_json::json!({
                "event": "dead_letter",
                "record_id": item.id,
                "record_seq": item.seq,
                "reason": reason,
            }),
        );
        if let Err(e) = self
            .ledger
            .append(&crate::record::Record::Admin(Box::new(admin)))
        {
            tracing::error!(sink = %name, error = %e, "sink: cannot record the dead letter in the ledger");
        }
    }
}

/// The rows the sink takes, as it takes them.
fn select(rows: &[Stored], filter: &SinkFilter, content: bool) -> Vec<Item> {
    rows.iter()
        .enumerate()
        .filter_map(|(row, r)| {
            let record = r.display(content);
            filter.matches(&record).then(|| Item {
                seq: r.seq,
                id: record
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                record,
                row,
            })
        })
        .collect()
}

/// `d` ± 25 %, so nodes that lost the same destination do not retry in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r =
        getrandom::getrandom(&mut b).map_or(0.5, |()| f64::from(u16::from_le_bytes(b)) / 65535.0);
    d.mul_f64(0.75 + r * 0.5)
}

/// Whether the sink's destination answers now (for `sluice doctor`): a TCP connection for
/// syslog, one HTTP request (any answer: reachable, and over TLS its certificate checked)
/// for the others. The destination's own URL for the log, never a secret one.
///
/// # Errors
/// Why it cannot be reached.
pub fn reach(cfg: &SinkConfig) -> Result<String, String> {
    let tls = crate::http::client::tls_with_ca(cfg.ca_file.as_deref())?;
    let timeout = Duration::from_secs(5);
    if let Some(s) = &cfg.syslog {
        let ep = syslog::endpoint(&s.url).ok_or("not tcp:// or tls://host:port")?;
        crate::http::client::connect(&tls, &ep, &s.url, timeout).map_err(|e| e.to_string())?;
        return Ok(format!("{} accepts connections", s.url));
    }
    let (url, shown) = if let Some(w) = &cfg.webhook {
        (w.url.clone(), w.url.clone())
    } else if let Some(s) = &cfg.splunk_hec {
        (s.url.clone(), s.url.clone())
    } else if let Some(d) = &cfg.datadog {
        let u = d
            .url
            .clone()
            .unwrap_or_else(|| format!("https://http-intake.logs.{}", d.site));
        (u.clone(), u)
    } else if let Some(e) = &cfg.elasticsearch {
        (e.url.clone(), e.url.clone())
    } else if let Some(s) = &cfg.s3 {
        (s.endpoint.clone(), s.endpoint.clone())
    } else if let Some(a) = &cfg.azure_monitor {
        (a.endpoint.clone(), a.endpoint.clone())
    } else if let Some(o) = &cfg.otlp_logs {
        (o.endpoint.clone(), o.endpoint.clone())
    } else if let Some(p) = &cfg.pagerduty {
        let u = p
            .url
            .clone()
            .unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into());
        (u.clone(), u)
    } else if let Some(s) = &cfg.slack {
        (s.url.read()?, "the Slack webhook".into())
    } else if let Some(t) = &cfg.teams {
        (t.url.read()?, "the Teams webhook".into())
    } else {
        return Err("no destination".into());
    };
    let ep = crate::http::client::split_url(&url).map_err(|e| e.to_string())?;
    let answer =
        crate::http::client::exchange_trusting(&tls, &ep.base(), "GET", "/", &[], "", timeout)
            .map_err(|e| e.to_string().replace(&url, &shown))?;
    Ok(format!(
        "{shown} answers (HTTP {}{})",
        answer.status,
        if ep.tls { ", certificate verified" } else { "" }
    ))
}

/// One sink as `sluice sinks status` shows it.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub destination: &'static str,
    pub cursor: i64,
    pub lag_records: i64,
    pub delivered: u64,
    pub dead_letters: u64,
    pub last_delivery: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// Every configured sink's cursor, lag and last error, from its state file and the
/// ledger's head (works while `sluice run` runs).
///
/// # Errors
/// The ledger cannot be read.
pub fn status(
    ledger_dir: &Path,
    sinks: &[SinkConfig],
) -> Result<Vec<SinkStatus>, crate::ledger::LedgerError> {
    let head = follow::head_seq(ledger_dir)?;
    Ok(sinks
        .iter()
        .map(|c| {
            let st = load_state(ledger_dir, &c.name);
            SinkStatus {
                name: c.name.clone(),
                destination: kind_of(c),
                cursor: st.seq,
                lag_records: (head - st.seq).max(0),
                delivered: st.delivered,
                dead_letters: st.dead_letters,
                last_delivery: st.last_delivery,
                last_error: st.last_error,
                last_error_at: st.last_error_at,
            }
        })
        .collect())
}

fn kind_of(c: &SinkConfig) -> &'static str {
    if c.webhook.is_some() {
        "webhook"
    } else if c.syslog.is_some() {
        "syslog"
    } else if c.splunk_hec.is_some() {
        "splunk_hec"
    } else if c.datadog.is_some() {
        "datadog"
    } else if c.elasticsearch.is_some() {
        "elasticsearch"
    } else if c.s3.is_some() {
        "s3"
    } else if c.azure_monitor.is_some() {
        "azure_monitor"
    } else if c.otlp_logs.is_some() {
        "otlp_logs"
    } else if c.slack.is_some() {
        "slack"
    } else if c.pagerduty.is_some() {
        "pagerduty"
    } else if c.teams.is_some() {
        "teams"
    } else {
        "none"
    }
}
