//! One exchange: what a request gathers as it passes the proxy's phases, and the one road
//! from a finished exchange to the ledger ([`finish`]).
//!
//! The Pingora hooks (`http`) fill an [`Exchange`]; governance
//! ([`crate::policy::Engine::apply_request_policies`]) decides on it; [`finish`] turns it
//! into exactly one interaction record — priced, counted in metrics, settled against
//! budgets and rate limits — and appends it to the ledger before the client can have the
//! whole answer. A context dropped unrecorded (the proxy stopping mid-exchange) still
//! writes its record.
//!
//! What this module is not: it speaks no HTTP and makes no policy decision.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use super::guard::{BodyGuard, Cut, StreamGuard};
use super::{ConnInfo, Shared};
use crate::config::OnLedgerFailure;
use crate::guardrails::Category;
use crate::metrics;
use crate::policy::Governed;
use crate::pricing::PriceTable;
use crate::providers::{self, Endpoint, ParsedResponse, StreamParser};
use crate::record::{self, Interaction, Outcome, Record, RequestPart, ResponsePart, Upstream};

/// A body kept up to a limit.
#[derive(Default)]
pub(super) struct Capture {
    pub(super) buf: Vec<u8>,
    pub(super) total: u64,
    pub(super) truncated: bool,
}

impl Capture {
    pub(super) fn push(&mut self, chunk: &[u8], limit: usize) {
        self.total += chunk.len() as u64;
        let room = limit.saturating_sub(self.buf.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// When things happened, and the time spent in Sluice's own work.
#[derive(Default)]
pub(super) struct Timing {
    /// The request arrived (monotonic, wall clock).
    pub(super) started: Option<(Instant, SystemTime)>,
    /// Time spent in Sluice's own work, excluding waiting on either peer.
    pub(super) own: Duration,
    /// The upstream was asked.
    pub(super) upstream_sent: Option<Instant>,
    /// The first byte of the answer arrived.
    pub(super) first_byte: Option<Instant>,
    /// The stream was cut (budget) and the error event went out.
    pub(super) cut_at: Option<Instant>,
}

/// The answer as it flows back.
#[derive(Default)]
pub(super) struct Answer {
    /// The status the client got.
    pub(super) status: u16,
    /// `Content-Length` of the answer, to know which chunk is the last.
    pub(super) content_length: Option<u64>,
    /// The answer's bytes (plain answers), or just their count (streams).
    pub(super) capture: Capture,
    /// The adapter's stream parser, for streamed answers.
    pub(super) parser: Option<Box<dyn StreamParser>>,
    /// Response guardrails and budget cut on a stream, when a policy asks for them.
    pub(super) stream_guard: Option<StreamGuard>,
    /// Response guardrails on a plain answer.
    pub(super) body_guard: Option<BodyGuard>,
    /// The stream was cut (budget); the error event has gone out.
    pub(super) cut: Option<Cut>,
}

/// Per-request state: Pingora's `CTX` for the interceptor.
#[derive(Default)]
pub struct Exchange {
    /// The connection the request arrived on (destination, adapter, workload).
    pub(super) conn: Option<Arc<ConnInfo>>,
    /// Counts this request in `sluice_requests_in_flight` while the exchange lives.
    pub(super) in_flight: Option<InFlight>,
    /// Request method, `Host`/`:authority` and path, for the record.
    pub(super) method: String,
    pub(super) host: Option<String>,
    pub(super) path: String,
    /// The endpoint, as the adapter understands the path.
    pub(super) endpoint: Option<Endpoint>,
    /// The request body, kept up to `max_inspect_bytes`.
    pub(super) request: Capture,
    /// The body was read (and judged) before forwarding; it arrives again as one buffer.
    pub(super) preread: bool,
    /// Chunks of a body held back until it is judged (`governed.body_pending`).
    pub(super) held: Vec<Bytes>,
    /// Who is calling and what governance decided.
    pub(super) governed: Governed,
    /// Sluice answered the request itself (a refusal).
    pub(super) refused: bool,
    pub(super) t: Timing,
    pub(super) answer: Answer,
    /// The record was kept (or there was nowhere to keep it).
    pub(super) recorded: bool,
    /// Dropped before the exchange ended.
    pub(super) aborted: bool,
    /// The shared state, so a context dropped unrecorded can still write its record.
    pub(super) shared: Option<Arc<Shared>>,
}

/// A request that began but was never recorded — its task dropped because the proxy
/// stopped mid-exchange — is recorded now, with what was seen (`outcome: failed`): a
/// request Sluice accepted always has a record.
/// One request in `sluice_requests_in_flight{provider}`, from its start until its
/// exchange is dropped (streams included: they are in flight until their last byte).
pub(super) struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub(super) fn new(provider: &str) -> InFlight {
        let g = metrics::IN_FLIGHT.with_label_values(&[provider]);
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.recorded || self.conn.is_none() || self.t.started.is_none() {
            return;
        }
        let Some(shared) = self.shared.take() else {
            return;
        };
        self.aborted = true;
        let status = self.answer.status;
        if let Err(e) = finish(&shared, None, self, status) {
            tracing::error!(error = %e, "cannot record an exchange cut off at shutdown");
        }
    }
}

impl Exchange {
    /// The answer's head arrived: what parses it (a stream parser for streams) and what
    /// guards it as it flows (response guardrails, a budget's mid-stream cut), per the
    /// verdict. Returns whether the answer will be rewritten on the way (its length
    /// then changes).
    pub(super) fn answer_begins(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        content_length: Option<u64>,
        max_inspect: usize,
    ) -> bool {
        let answer = &mut self.answer;
        answer.status = status;
        answer.content_length = content_length;
        let (Some(conn), Some(ep)) = (self.conn.as_ref(), self.endpoint.as_ref()) else {
            return false;
        };
        let event_stream = content_type.is_some_and(providers::looks_like_event_stream);
        if event_stream || (ep.streaming_hint && status < 300) {
            answer.parser = Some(conn.adapter.stream_parser(ep));
        }
        if !(200..300).contains(&status) {
            return false;
        }
        let verdict = &self.governed.verdict;
        let redact = verdict.response.as_ref().and_then(|p| p.redact.clone());
        if event_stream {
            answer.stream_guard = StreamGuard::new(
                conn.adapter,
                ep.clone(),
                redact,
                verdict.stream_budget.clone(),
            );
        } else if let (Some(scanner), None) = (redact, answer.parser.as_ref()) {
            answer.body_guard = Some(BodyGuard::new(scanner, max_inspect));
        }
        let rewritten = answer.stream_guard.is_some() || answer.body_guard.is_some();
        if rewritten {
            answer.content_length = None;
        }
        rewritten
    }

    /// One chunk of the answer passes: the guards may rewrite it (or hold text back),
    /// and what is recorded is what the client receives.
    pub(super) fn answer_passes(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        max_inspect: usize,
    ) {
        if body.is_some() {
            self.t.first_byte.get_or_insert_with(Instant::now);
        }
        let answer = &mut self.answer;
        if let Some(g) = answer.stream_guard.as_mut() {
            let mut out = Vec::new();
            if let Some(chunk) = body.as_ref() {
                g.feed(chunk, &mut out);
            }
            if end_of_stream {
                g.finish(&mut out);
            }
            answer.cut = g.cut().cloned();
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        } else if let Some(g) = answer.body_guard.as_mut() {
            let mut out = body.take().and_then(|c| g.feed(&c)).unwrap_or_default();
            if end_of_stream {
                out.extend_from_slice(&g.finish());
            }
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        }
        if let Some(chunk) = body {
            match answer.parser.as_mut() {
                Some(p) => {
                    answer.capture.total += chunk.len() as u64;
                    p.feed(chunk);
                }
                None => answer.capture.push(chunk, max_inspect),
            }
        }
    }
}

impl Answer {
    /// Whether the declared length of the answer has passed.
    pub(super) fn complete(&self) -> bool {
        self.content_length.is_some_and(|n| self.capture.total >= n)
    }
}

/// The one road from a finished exchange to the ledger: assemble, price, count and keep
/// its interaction record, once. Every end of an exchange comes here: the last byte of
/// the answer (before it is released), a refusal, an error or cancellation (Pingora's
/// `logging`), and a context dropped at shutdown.
///
/// # Errors
/// The ledger refused the record and `on_ledger_failure` is `fail_closed`.
pub(super) fn finish(
    shared: &Shared,
    e: Option<&Error>,
    ctx: &mut Exchange,
    status: u16,
) -> Result<()> {
    if ctx.recorded {
        return Ok(());
    }
    ctx.recorded = true;
    let t = Instant::now();
    let Some(conn) = ctx.conn.clone() else {
        return Ok(());
    };
    let record = build_record(shared.max_inspect_bytes, &conn, e, ctx, status);
    // Rate-limit slots released with the tokens used; budgets settled with the real
    // cost, streams and cancellations included (a cut stream with at least what the guard
    // counted when it cut), their reservations released — a failed request's whole.
    let cost = record.cost_usd.map(|cost| {
        ctx.answer
            .cut
            .as_ref()
            .map_or(cost, |c| cost.max(c.spent_usd))
    });
    let admission = ctx.governed.admission.take();
    if admission.is_some() || cost.is_some() {
        let tokens =
            record.usage.input_tokens.unwrap_or(0) + record.usage.output_tokens.unwrap_or(0);
        shared.policy.load().finish(
            admission.unwrap_or_default(),
            tokens,
            &record.identity,
            cost,
        );
    }
    let provider = conn.adapter.name();
    let endpoint = record.endpoint.as_deref().unwrap_or("other");
    metrics::REQUESTS
        .with_label_values(&[provider, endpoint, record.outcome.as_str()])
        .inc();
    metrics::DECISIONS
        .with_label_values(&[record.decision])
        .inc();
    for code in &record.reason_codes {
        metrics::REASONS.with_label_values(&[code]).inc();
    }
    let family = record
        .model
        .as_deref()
        .and_then(|m| PriceTable::embedded().family(conn.adapter, m))
        .unwrap_or("other");
    if record.outcome != Outcome::Success {
        metrics::ERRORS
            .with_label_values(&[provider, record.outcome.as_str()])
            .inc();
    }
    if let Some(n) = record.usage.input_tokens {
        metrics::TOKENS
            .with_label_values(&[provider, family, "input"])
            .inc_by(n);
    }
    if let Some(n) = record.usage.output_tokens {
        metrics::TOKENS
            .with_label_values(&[provider, family, "output"])
            .inc_by(n);
    }
    if let Some(ttft) = record.ttft_ms {
        metrics::TIME_TO_FIRST_TOKEN
            .with_label_values(&[provider])
            .observe(ttft / 1000.0);
    }
    match record.cost_usd {
        Some(c) => metrics::COST_USD
            .with_label_values(&[provider, family])
            .inc_by(c.max(0.0)),
        None if record.endpoint.is_some() && record.model.is_some() => {
            metrics::UNPRICED.with_label_values(&[provider]).inc()
        }
        None => {}
    }
    if let Some(sent) = ctx.t.upstream_sent {
        metrics::UPSTREAM_LATENCY
            .with_label_values(&[provider])
            .observe(sent.elapsed().as_secs_f64());
    }
    for (cap, dir) in [(&ctx.request, "request"), (&ctx.answer.capture, "response")] {
        if cap.truncated {
            metrics::TRUNCATED.with_label_values(&[dir]).inc();
        }
    }
    ctx.t.own += t.elapsed();
    // Time before the upstream was asked, plus our own processing afterwards.
    let before_upstream = match (ctx.t.started, ctx.t.upstream_sent) {
        (Some((s, _)), Some(u)) => u.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    metrics::ADDED_LATENCY.observe((before_upstream.max(ctx.t.own)).as_secs_f64());
    if let Some(otel) = &shared.otel {
        let started = ctx.t.started.map_or_else(SystemTime::now, |(_, at)| at);
        otel.submit(&record, started);
    }
    keep(shared, Record::Interaction(Box::new(record)))
}

/// Append to the ledger; on failure follow `on_ledger_failure`.
fn keep(shared: &Shared, record: Record) -> Result<()> {
    use std::sync::atomic::Ordering;
    match shared.ledger.append(&record) {
        Ok(_) => {
            shared.ledger_failed_at.store(0, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1);
            shared.ledger_failed_at.store(now, Ordering::Relaxed);
            let id = crate::ledger::record_id(&record).to_string();
            match shared.on_ledger_failure {
                OnLedgerFailure::FailClosed => {
                    tracing::error!(record_id = %id, error = %err, "cannot write the audit ledger; response withheld (on_ledger_failure: fail_closed)");
                    Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        format!("audit ledger unwritable: {err}"),
                    )
                }
                OnLedgerFailure::FailOpen => {
                    // Not silent: the record's metadata goes to the log, never its content.
                    if let Record::Interaction(i) = &record {
                        tracing::error!(record_id = %id, provider = %i.provider, model = ?i.model, input_tokens = ?i.usage.input_tokens, output_tokens = ?i.usage.output_tokens, cost_usd = ?i.cost_usd, error = %err, "audit record lost (on_ledger_failure: fail_open)");
                    }
                    Ok(())
                }
            }
        }
    }
}

/// Assemble the interaction record from what the phases gathered.
fn build_record(
    max_inspect: usize,
    conn: &ConnInfo,
    e: Option<&Error>,
    ctx: &mut Exchange,
    status: u16,
) -> Interaction {
    let adapter = conn.adapter;
    let (started, started_wall) = ctx
        .t
        .started
        .unwrap_or_else(|| (Instant::now(), SystemTime::now()));
    let path = std::mem::take(&mut ctx.path);

    // What was forwarded is what is recorded: a redacted prompt stays redacted at rest.
    let forwarded = ctx
        .governed
        .verdict
        .rewritten_body
        .as_deref()
        .unwrap_or(&ctx.request.buf);
    let parsed_req = ctx
        .endpoint
        .as_ref()
        .filter(|_| !forwarded.is_empty())
        .map(|ep| adapter.parse_request(ep, forwarded));
    let mut parsed_resp: ParsedResponse = match (ctx.answer.parser.as_mut(), ctx.endpoint.as_ref())
    {
        (Some(p), _) => p.finish(),
        (None, Some(ep)) if !ctx.answer.capture.buf.is_empty() => {
            adapter.parse_response(ep, &ctx.answer.capture.buf)
        }
        _ => ParsedResponse::default(),
    };
    let stream = ctx.answer.parser.is_some();
    answer_findings(ctx, &parsed_resp.output);

    let outcome = match e {
        _ if ctx.answer.cut.is_some() => Outcome::Cut,
        _ if ctx.refused => Outcome::Refused,
        _ if ctx.aborted => Outcome::Failed,
        Some(err) if *err.esource() == ErrorSource::Downstream => Outcome::Cancelled,
        Some(_) => Outcome::Failed,
        None if ctx.refused => Outcome::Refused,
        None if status >= 400 || status == 0 => Outcome::UpstreamError,
        None => Outcome::Success,
    };
    let error = match e {
        _ if ctx.refused => None,
        Some(err) => Some(describe_error(err, conn)),
        None if ctx.aborted => Some(
            "Sluice stopped (shutdown) before the exchange ended; recorded with what was seen"
                .to_string(),
        ),
        None => None,
    };

    let model = parsed_req
        .as_ref()
        .and_then(|r| r.model.clone())
        .or_else(|| {
            ctx.endpoint
                .as_ref()
                .and_then(|ep| ep.model_from_path.clone())
        })
        .or_else(|| parsed_resp.model.clone());

    // A response without usage (a stream without include_usage, a cancelled stream) is
    // counted with a real tokenizer and marked as an estimate.
    if ctx.endpoint.is_some() && (200..300).contains(&status) || outcome == Outcome::Cancelled {
        let u = &mut parsed_resp.usage;
        if u.output_tokens.is_none() && !parsed_resp.output.is_empty() {
            u.output_tokens = Some(providers::estimate_tokens(&parsed_resp.output));
            u.estimated = true;
        }
        if u.input_tokens.is_none() {
            if let Some(r) = parsed_req.as_ref().filter(|r| !r.messages.is_empty()) {
                let n: u64 = r
                    .messages
                    .iter()
                    .map(|m| providers::estimate_tokens(&m.content))
                    .sum();
                u.input_tokens = Some(n);
                u.estimated = true;
            }
        }
    }
    let cost_usd = model
        .as_deref()
        .and_then(|m| PriceTable::embedded().cost_usd(adapter, m, &parsed_resp.usage));

    let (params, messages, req_error, req_stream) = match parsed_req {
        Some(r) => (r.params, r.messages, r.error, r.stream),
        None => Default::default(),
    };
    let now = Instant::now();
    Interaction {
        id: record::new_id(),
        ts: record::rfc3339(started_wall),
        kind: "interaction",
        provider: adapter.name().to_string(),
        model,
        endpoint: ctx.endpoint.as_ref().map(|ep| ep.name.to_string()),
        stream: stream || req_stream,
        status,
        outcome,
        decision: ctx.governed.verdict.decision.as_str(),
        reason_codes: std::mem::take(&mut ctx.governed.verdict.reason_codes),
        policy_id: ctx.governed.verdict.policy_id.take(),
        triggered_categories: ctx
            .governed
            .verdict
            .triggered
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        policy_mode: ctx.governed.verdict.mode,
        // Set from the connection when the exchange began, refined by governance.
        identity: std::mem::take(&mut ctx.governed.identity),
        request: RequestPart {
            method: std::mem::take(&mut ctx.method),
            host: ctx.host.take(),
            path,
            params,
            messages,
            body_bytes: ctx.request.total,
            truncated: ctx.request.truncated,
            parse_error: req_error,
        },
        response: ResponsePart {
            model: parsed_resp.model.take(),
            id: parsed_resp.id.take(),
            output: std::mem::take(&mut parsed_resp.output),
            tool_calls: std::mem::take(&mut parsed_resp.tool_calls),
            finish_reason: parsed_resp.finish_reason.take(),
            body_bytes: ctx.answer.capture.total,
            events: parsed_resp.events,
            truncated: ctx.answer.capture.truncated
                || (ctx.answer.capture.total as usize > max_inspect && !stream),
            error: parsed_resp.error.take(),
        },
        usage: parsed_resp.usage,
        cost_usd,
        latency_ms: now.duration_since(started).as_secs_f64() * 1e3,
        ttft_ms: if stream {
            ctx.t
                .first_byte
                .map(|f| f.duration_since(started).as_secs_f64() * 1e3)
        } else {
            None
        },
        upstream: Upstream {
            addr: Some(conn.dst.to_string()),
            sni: conn.tls.then(|| conn.host.clone()),
        },
        error,
    }
}

/// Folds what happened to the answer into the verdict: categories redacted on the way,
/// found and only recorded (the plan's `detect` scanner over the recorded output), a
/// stream cut by a budget; each category counted.
fn answer_findings(ctx: &mut Exchange, output: &str) {
    let verdict = &mut ctx.governed.verdict;
    if let Some(plan) = verdict.response.clone() {
        let mut redacted: Vec<Category> = Vec::new();
        let mut overflowed = false;
        if let Some(g) = &ctx.answer.stream_guard {
            redacted.extend_from_slice(g.findings());
        }
        if let Some(g) = &ctx.answer.body_guard {
            redacted.extend_from_slice(g.findings());
            overflowed = g.overflowed();
        }
        let mut detected = Vec::new();
        if let Some(scanner) = &plan.detect {
            for f in scanner.scan(output) {
                if !detected.contains(&f.category) {
                    detected.push(f.category);
                }
            }
        }
        for cat in redacted.iter().chain(&detected) {
            metrics::GUARDRAIL_FINDINGS
                .with_label_values(&[cat.as_str()])
                .inc();
        }
        verdict.answer_checked(&redacted, &detected, overflowed);
    }
    if let Some(cut) = &ctx.answer.cut {
        verdict.cut_mid_stream(cut.policy_id.clone());
    }
}

/// An operator-facing description of why an exchange failed.
fn describe_error(e: &Error, conn: &ConnInfo) -> String {
    match e.etype() {
        ErrorType::InvalidCert | ErrorType::TLSHandshakeFailure => format!(
            "upstream TLS to {} ({}) failed: {e}; the provider's certificate did not verify, so nothing was sent",
            conn.host, conn.dst
        ),
        ErrorType::ConnectTimedout | ErrorType::ConnectRefused | ErrorType::ConnectError => {
            format!("cannot connect to {} ({}): {e}", conn.host, conn.dst)
        }
        _ => match e.esource() {
            ErrorSource::Downstream => format!("client went away: {e}"),
            _ => e.to_string(),
        },
    }
}
