//! The load generator of the benchmark harness (`sluice-bench run`, driven by
//! `sluice-bench suite`).
//!
//! `sluice-bench run` sends OpenAI chat-completion requests (plain or SSE) to one listener,
//! with the URL's host as SNI and `Host` (`--connect` says where to connect), trusting only
//! the given CAs, and prints one JSON object on stdout:
//! - closed loop (`--connections N`): N connections send back to back; saturation req/s;
//! - open loop (`--rate R`): requests are scheduled at a fixed rate and latency is measured
//!   from the *scheduled* send time whenever the connection was still busy then, so a stall
//!   is not hidden by coordinated omission (timer slack on an idle connection is not
//!   counted against the path);
//! - `--new-conn`: a new TCP + full TLS handshake (no resumption) per request;
//! - `--sse`: every event is timestamped (time to first event, gaps between events) and the
//!   stream is checked against a reference (event count and bytes equal to what the mock
//!   sends when asked directly, `--reference-connect`).
//!
//! Every answer is verified (status 200; a plain answer contains the mock's reply text; a
//! stream ends with `data: [DONE]`); anything else is an error, with samples in the output.
//!
//! What it is **not**: a general HTTP benchmarking tool; it speaks the one API the mock
//! answers and measures nothing but the client's view.

mod client;
mod hold;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use self::client::{Conn, Failure, Outcome, Target};

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Request URL; its host is the SNI and `Host`.
    #[arg(long, default_value = "https://api.openai.com/v1/chat/completions")]
    pub(crate) url: String,
    /// Address to connect to (the listener under test); default: the URL's host and port.
    #[arg(long)]
    pub(crate) connect: Option<SocketAddr>,
    /// CA certificates (PEM) to trust; repeatable. Only these are trusted.
    #[arg(long = "ca")]
    pub(crate) ca: Vec<PathBuf>,
    /// Concurrent connections (closed loop) or the connection pool (open loop).
    #[arg(long, default_value_t = 1)]
    pub(crate) connections: usize,
    /// Open loop at this many requests per second; closed loop when absent.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Unmeasured seconds before the measurement (connections warm, pools filled).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// A new connection (TCP + full TLS handshake, no resumption) for every request.
    #[arg(long)]
    pub(crate) new_conn: bool,
    /// Offer HTTP/2.
    #[arg(long)]
    pub(crate) http2: bool,
    /// Size of the user prompt in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) prompt_bytes: usize,
    /// Ask for a stream (`stream: true`) of this many content chunks (`x-mock-chunks`).
    #[arg(long)]
    pub(crate) sse_chunks: Option<usize>,
    /// Pad the mock's reply text to this many bytes (`x-mock-body-bytes`).
    #[arg(long)]
    pub(crate) reply_bytes: Option<usize>,
    /// Pause between streamed frames at the mock, milliseconds (`x-mock-delay-ms`).
    #[arg(long)]
    pub(crate) mock_delay_ms: Option<u64>,
    /// Expected text in every plain answer.
    #[arg(long, default_value = "Mock reply to: ")]
    pub(crate) expect: String,
    /// The model asked for.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub(crate) model: String,
    /// The status of a correct answer (e.g. 403 for requests a policy refuses).
    #[arg(long, default_value_t = 200)]
    pub(crate) expect_status: u16,
    /// Streams: close the connection after this many events, as a cancelling client
    /// does; such an exchange counts as correct (and as `cancelled`).
    #[arg(long)]
    pub(crate) cancel_after_events: Option<usize>,
    /// For streams: ask the mock directly at this address once, and hold every stream to
    /// the same event count and byte count.
    #[arg(long)]
    pub(crate) reference_connect: Option<SocketAddr>,
    /// CA of the mock for `--reference-connect`.
    #[arg(long)]
    pub(crate) reference_ca: Vec<PathBuf>,
    /// Longest wait for one complete answer, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) timeout: f64,
    /// Open loop: when a connection falls behind its schedule, skip the slots it missed
    /// (counted as `skipped`) and go on, instead of giving up on the rest of the run.
    /// For long runs whose point is a steady load, not the latency under overload.
    #[arg(long)]
    pub(crate) skip_when_behind: bool,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
}

/// `sluice-bench run`: the load, then its figures as one JSON line on stdout.
///
/// # Errors
/// Bad arguments, unreadable CA files, or a failed reference request.
pub(crate) fn run_blocking(args: RunArgs) -> anyhow::Result<()> {
    let out = runtime(args.threads)?.block_on(run(args))?;
    println!("{out}");
    Ok(())
}

/// `sluice-bench hold`: see [`hold`].
///
/// # Errors
/// Bad arguments or unreadable CA files.
pub(crate) fn hold_blocking(args: RunArgs, stream: bool, hold_secs: f64) -> anyhow::Result<()> {
    let target = target(&args, args.connect, &args.ca)?;
    runtime(args.threads)?.block_on(hold::run(target, args.connections, stream, hold_secs))
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

// === the run ===

fn target(args: &RunArgs, connect: Option<SocketAddr>, ca: &[PathBuf]) -> anyhow::Result<Target> {
    let uri: http::Uri = args.url.parse().context("--url")?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("--url must be http:// or https://"),
    };
    let host = uri.host().context("--url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect = match connect {
        Some(a) => a,
        None => std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .context("the URL's host does not resolve")?,
    };
    let tls = if tls {
        Some(client::tls_connector(ca, args.http2, !args.new_conn)?)
    } else {
        None
    };
    let mut headers = Vec::new();
    if let Some(n) = args.sse_chunks {
        headers.push(("x-mock-chunks".into(), n.to_string()));
    }
    if let Some(n) = args.mock_delay_ms {
        headers.push(("x-mock-delay-ms".into(), n.to_string()));
    }
    if let Some(n) = args.reply_bytes {
        headers.push(("x-mock-body-bytes".into(), n.to_string()));
    }
    Ok(Target {
        connect,
        host,
        path: uri
            .path_and_query()
            .map_or("/".into(), |p| p.as_str().to_string()),
        tls,
        http2: args.http2,
        body: request_body(&args.model, args.prompt_bytes, args.sse_chunks.is_some()),
        headers,
        sse: args.sse_chunks.is_some(),
        expect_status: http::StatusCode::from_u16(args.expect_status)
            .context("--expect-status is not an HTTP status")?,
        expect: Bytes::from(args.expect.clone().into_bytes()),
        cancel_after: args.cancel_after_events,
        timeout: Duration::from_secs_f64(args.timeout),
    })
}

/// A chat-completion request for `model` whose user message is `prompt_bytes` long (ASCII
/// words).
fn request_body(model: &str, prompt_bytes: usize, stream: bool) -> Bytes {
    const WORDS: &str = "the quick brown fox jumps over the lazy dog ";
    let mut prompt = String::with_capacity(prompt_bytes);
    while prompt.len() < prompt_bytes {
        let take = (prompt_bytes - prompt.len()).min(WORDS.len());
        prompt.push_str(&WORDS[..take]);
    }
    let body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a benchmark."},
            {"role": "user", "content": prompt},
        ],
        "stream": stream,
    });
    Bytes::from(body.to_string())
}

/// Per-worker tallies, merged at the end (no locks on the request path).
struct Tally {
    latency: Histogram<u64>,
    ttfe: Histogram<u64>,
    gaps: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// Answers received in the whole run, warm-up included (any status): what a proxy
    /// that records every request should have recorded.
    responses_total: u64,
    /// Connections opened in the whole run, warm-up included.
    connections_total: u64,
    fidelity_failures: u64,
    error_samples: Vec<String>,
    late_sends: u64,
    /// Streams let go of on purpose (`--cancel-after-events`), warm-up included.
    cancelled: u64,
    /// Open-loop slots skipped while behind the schedule (`--skip-when-behind`).
    skipped: u64,
}

impl Tally {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Self {
            latency: h(),
            ttfe: h(),
            gaps: h(),
            ok: 0,
            errors: 0,
            responses_total: 0,
            connections_total: 0,
            fidelity_failures: 0,
            error_samples: Vec::new(),
            late_sends: 0,
            cancelled: 0,
            skipped: 0,
        }
    }

    fn merge(&mut self, o: Tally) {
        // Same bounds everywhere: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.ttfe.add(&o.ttfe);
        let _ = self.gaps.add(&o.gaps);
        self.ok += o.ok;
        self.errors += o.errors;
        self.responses_total += o.responses_total;
        self.connections_total += o.connections_total;
        self.fidelity_failures += o.fidelity_failures;
        self.late_sends += o.late_sends;
        self.cancelled += o.cancelled;
        self.skipped += o.skipped;
        for s in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }

    fn error(&mut self, measured: bool, what: String) {
        if measured {
            self.errors += 1;
        }
        if self.error_samples.len() < 5 && !self.error_samples.contains(&what) {
            self.error_samples.push(what);
        }
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What the stream of a correct path looks like (from the mock, asked directly).
#[derive(Clone, Copy, Debug)]
struct Reference {
    events: usize,
    bytes: usize,
}

/// State shared by the workers of one run.
struct Plan {
    target: Target,
    new_conn: bool,
    /// Start of the measured window.
    measure_from: Instant,
    /// End of the measured window.
    until: Instant,
    reference: Option<Reference>,
    /// `--skip-when-behind`.
    skip_when_behind: bool,
}

async fn run(args: RunArgs) -> anyhow::Result<Value> {
    let target = target(&args, args.connect, &args.ca)?;
    let reference = match (args.sse_chunks, args.reference_connect) {
        (Some(_), Some(addr)) => {
            let ca = if args.reference_ca.is_empty() {
                &args.ca
            } else {
                &args.reference_ca
            };
            // The whole stream, as the mock sends it.
            let mut t = self::target(&args, Some(addr), ca)?;
            t.cancel_after = None;
            t.expect_status = http::StatusCode::OK;
            let mut conn = client::connect(&t).await.context("reference connection")?;
            let o = client::exchange(&mut conn, &t).await.map_err(|e| match e {
                Failure::Io(e) => e.context("reference request"),
                Failure::Bad(s) => anyhow::anyhow!("reference request: {s}"),
            })?;
            Some(Reference {
                events: o.events.len(),
                bytes: o.bytes,
            })
        }
        _ => None,
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let plan = Arc::new(Plan {
        target,
        new_conn: args.new_conn,
        measure_from,
        until,
        reference,
        skip_when_behind: args.skip_when_behind,
    });
    let workers = args.connections.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..workers {
        let plan = plan.clone();
        match args.rate {
            Some(rate) => {
                let period = Duration::from_secs_f64(workers as f64 / rate);
                let first = start + Duration::from_secs_f64(k as f64 / rate);
                tasks.spawn(open_worker(plan, first, period));
            }
            None => {
                tasks.spawn(closed_worker(plan));
            }
        }
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.merge(t?);
    }
    let secs = args.duration;
    let q = |h: &Histogram<u64>| {
        if h.is_empty() {
            return Value::Null;
        }
        json!({
            "count": h.len(),
            "mean": h.mean(),
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        })
    };
    let measured = total.ok + total.errors;
    if measured == 0 && total.error_samples.is_empty() {
        total.error_samples.push(
            "no request both started and finished inside the measured window (too short?)".into(),
        );
    }
    Ok(json!({
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "url": args.url,
        "connect": plan.target.connect.to_string(),
        "connections": workers,
        "rate": args.rate,
        "new_conn": args.new_conn,
        "http2": args.http2,
        "prompt_bytes": args.prompt_bytes,
        "sse_chunks": args.sse_chunks,
        "duration_s": secs,
        "warmup_s": args.warmup,
        "requests": measured,
        "ok": total.ok,
        "errors": total.errors,
        "error_rate": if measured == 0 { 1.0 } else { total.errors as f64 / measured as f64 },
        "error_samples": total.error_samples,
        "rps": total.ok as f64 / secs,
        "latency_us": q(&total.latency),
        "ttfe_us": q(&total.ttfe),
        "gap_us": q(&total.gaps),
        "sse_reference": reference.map(|r| json!({"events": r.events, "bytes": r.bytes})),
        "fidelity_failures": total.fidelity_failures,
        "late_sends": total.late_sends,
        "responses_total": total.responses_total,
        "connections_total": total.connections_total,
        "cancelled": total.cancelled,
        "skipped": total.skipped,
    }))
}

/// One exchange, reconnecting when needed; records into `tally` when `measured`.
async fn one(
    plan: &Plan,
    conn: &mut Option<Conn>,
    tally: &mut Tally,
    start: Instant,
    measured: bool,
) {
    if conn.is_none() || plan.new_conn {
        match client::connect(&plan.target).await {
            Ok(c) => {
                tally.connections_total += 1;
                *conn = Some(c);
            }
            Err(e) => {
                tally.error(measured, format!("connect: {e:#}"));
                // Do not spin on a refusing listener.
                tokio::time::sleep(Duration::from_millis(5)).await;
                return;
            }
        }
    }
    let Some(c) = conn.as_mut() else { return };
    let result = client::exchange(c, &plan.target).await;
    let end = Instant::now();
    match result {
        Ok(o) => {
            tally.responses_total += 1;
            if o.cancelled {
                tally.cancelled += 1;
                *conn = None;
            } else if measured {
                record(plan, tally, start, end, &o);
            }
            if o.cancelled && measured {
                tally.ok += 1;
                let _ = tally.latency.record(us(end - start));
            }
        }
        Err(Failure::Bad(s)) => {
            tally.responses_total += 1;
            tally.error(measured, s);
        }
        Err(Failure::Io(e)) => {
            *conn = None;
            tally.error(measured, format!("{e:#}"));
        }
    }
    if plan.new_conn {
        *conn = None;
    }
}

fn record(plan: &Plan, tally: &mut Tally, start: Instant, end: Instant, o: &Outcome) {
    if let Some(r) = plan.reference {
        // A stream that differs from the mock's is a fidelity failure, reported on its
        // own: the answer was still served, and its timings still count.
        if o.events.len() != r.events || o.bytes != r.bytes {
            tally.fidelity_failures += 1;
            let what = format!(
                "stream differs from the mock's: {} events / {} bytes, expected {} / {}",
                o.events.len(),
                o.bytes,
                r.events,
                r.bytes
            );
            if tally.error_samples.len() < 5 && !tally.error_samples.contains(&what) {
                tally.error_samples.push(what);
            }
        }
    }
    tally.ok += 1;
    let _ = tally.latency.record(us(end - start));
    if let Some(first) = o.events.first() {
        let _ = tally.ttfe.record(us(*first - start));
        for w in o.events.windows(2) {
            let _ = tally.gaps.record(us(w[1] - w[0]));
        }
    }
}

async fn closed_worker(plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::new();
    let mut conn = None;
    loop {
        let start = Instant::now();
        if start >= plan.until {
            break;
        }
        let measured = start >= plan.measure_from;
        one(&plan, &mut conn, &mut tally, start, measured).await;
    }
    tally
}

/// How far an open-loop worker may fall behind its schedule before it gives up.
const MAX_LAG: Duration = Duration::from_secs(2);

/// Sends at `first`, `first + period`, … until the window ends. When the previous request
/// was still running at a scheduled time, latency counts from the schedule (the wait is
/// the path's fault); otherwise from the actual send (the timer's slack is ours).
async fn open_worker(plan: Arc<Plan>, first: Instant, period: Duration) -> Tally {
    let mut tally = Tally::new();
    let mut conn = None;
    let mut scheduled = first;
    while scheduled < plan.until {
        let now = Instant::now();
        let lag = now.saturating_duration_since(scheduled);
        if lag > MAX_LAG && plan.skip_when_behind {
            let missed = (lag.as_secs_f64() / period.as_secs_f64()).floor() as u32;
            tally.skipped += u64::from(missed);
            scheduled += period * missed;
            continue;
        }
        if lag > MAX_LAG {
            // Far behind the schedule: the rate exceeds what the path serves. What is left
            // counts as failed instead of stretching the run without bound.
            let left = plan
                .until
                .saturating_duration_since(scheduled)
                .as_secs_f64()
                / period.as_secs_f64();
            let measured_left = plan
                .until
                .saturating_duration_since(scheduled.max(plan.measure_from))
                .as_secs_f64()
                / period.as_secs_f64();
            tally.errors += measured_left.ceil() as u64;
            tally.error(
                false,
                format!(
                    "open loop fell {MAX_LAG:?} behind its schedule (rate above capacity); {left:.0} requests not sent"
                ),
            );
            break;
        }
        let busy_past_schedule = now > scheduled;
        tokio::time::sleep_until(scheduled.into()).await;
        let start = if busy_past_schedule {
            tally.late_sends += 1;
            scheduled
        } else {
            Instant::now()
        };
        let measured = scheduled >= plan.measure_from;
        one(&plan, &mut conn, &mut tally, start, measured).await;
        scheduled += period;
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_has_the_asked_prompt_size() {
        for n in [0, 1, 44, 1024, 100 * 1024] {
            let body: Value =
                serde_json::from_slice(&request_body("gpt-4o-mini", n, false)).unwrap();
            let prompt = body["messages"][1]["content"].as_str().unwrap();
            assert_eq!(prompt.len(), n);
        }
    }
}
