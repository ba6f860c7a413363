//! The HTTP interceptor: a thin `ProxyHttp` whose phases delegate to the provider
//! adapter and end in exactly one interaction record per request.
//!
//! Phase by phase:
//! - `request_filter`: find the connection's context, classify the endpoint;
//! - `request_body_filter`: keep up to `max_inspect_bytes` of the body (the rest flows on);
//! - `upstream_peer`: the original destination, TLS verified against the real host name;
//! - `upstream_request_filter`: ask for an uncompressed answer so it can be parsed;
//! - `response_filter`: pick the stream parser or the body buffer, drop `Alt-Svc` (h3);
//! - `response_body_filter`: feed chunks to the side parser as they pass — never held;
//! - `logging`: assemble the record, price it, hand it to the recorder.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use super::guard::{BodyGuard, Cut, StreamGuard};
use super::{ConnInfo, Shared};
use crate::config::OnLedgerFailure;
use crate::metrics;
use crate::original_dst::Accepted;
use crate::policy::{self, Decision, Verdict};
use crate::pricing::PriceTable;
use crate::providers::{self, Adapter, Endpoint, ParsedResponse, StreamParser};
use crate::record::{
    self, Identity, Interaction, Outcome, Record, RequestPart, ResponsePart, Upstream,
};

/// The `ProxyHttp` implementation.
pub struct Interceptor {
    shared: Arc<Shared>,
}

impl Interceptor {
    /// An interceptor over the shared state.
    pub fn new(shared: Arc<Shared>) -> Interceptor {
        Interceptor { shared }
    }
}

/// Seconds a failed ledger keeps refusing new requests (fail_closed) before trying again.
const LEDGER_RETRY_SECS: u64 = 5;

/// After a stream is cut, how long the provider may go on sending (dropped) before the
/// exchange is torn down.
const CUT_GRACE: Duration = Duration::from_millis(50);

/// Largest body read before forwarding (Pingora replays at most this much to the upstream).
const PREREAD_LIMIT: usize = 64 * 1024;

impl Interceptor {
    /// Read the whole request body (when small enough to replay) and evaluate the
    /// policies on it. Larger or unsized bodies stream through unjudged, with a reason code.
    async fn preread_and_decide(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let len = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match len {
            Some(n) if n <= PREREAD_LIMIT => {}
            _ => {
                ctx.verdict
                    .reason_codes
                    .push("body_not_inspected_by_policy".into());
                return Ok(());
            }
        }
        session.enable_retry_buffering();
        while let Some(chunk) = session.read_request_body().await? {
            ctx.request.push(&chunk, self.shared.max_inspect_bytes);
        }
        ctx.preread = true;
        let Some(conn) = ctx.conn.as_ref() else {
            return Ok(());
        };
        let parsed = ctx
            .endpoint
            .as_ref()
            .map(|ep| conn.adapter.parse_request(ep, &ctx.request.buf));
        let model = parsed.as_ref().and_then(|p| p.model.clone()).or_else(|| {
            ctx.endpoint
                .as_ref()
                .and_then(|ep| ep.model_from_path.clone())
        });
        let identity = ctx.identity.clone().unwrap_or_default();
        let input_tokens = parsed.as_ref().map_or(0, |p| {
            p.messages
                .iter()
                .map(|m| providers::estimate_tokens(&m.content))
                .sum()
        });
        let max_output_tokens = parsed
            .as_ref()
            .and_then(|p| conn.adapter.max_output_tokens(p));
        let before = std::mem::take(&mut ctx.verdict);
        ctx.verdict = self.shared.policy.load().evaluate(&policy::Facts {
            adapter: conn.adapter,
            model: model.as_deref(),
            identity: &identity,
            body: Some(&ctx.request.buf),
            input_tokens,
            max_output_tokens,
        });
        // Keep what the rate-limit step noted (shadow limits, uninspected bodies).
        let mut codes = before.reason_codes;
        codes.append(&mut ctx.verdict.reason_codes);
        ctx.verdict.reason_codes = codes;
        if ctx.verdict.decision == Decision::Allow && before.decision != Decision::Allow {
            ctx.verdict.decision = before.decision;
            ctx.verdict.policy_id = before.policy_id;
            ctx.verdict.mode = before.mode;
        }
        for cat in &ctx.verdict.triggered {
            metrics::GUARDRAIL_FINDINGS
                .with_label_values(&[cat.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Answer the client ourselves, in the provider's error format, and stop here.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        adapter: &'static dyn Adapter,
        status: u16,
        reason: &str,
        message: String,
    ) -> Result<bool> {
        if ctx.verdict.decision == Decision::Allow {
            ctx.verdict.decision = Decision::Block;
        }
        if !reason.is_empty() && !ctx.verdict.reason_codes.iter().any(|r| r == reason) {
            ctx.verdict.reason_codes.push(reason.to_string());
        }
        // Read what the client is still sending (a small body) before answering: an
        // HTTP/2 stream answered mid-upload is reset, and some clients report the reset
        // instead of the answer; HTTP/1.1 keeps the connection reusable.
        if !ctx.preread {
            let mut drained = 0usize;
            while drained <= PREREAD_LIMIT {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => drained += chunk.len(),
                    _ => break,
                }
            }
        }
        ctx.status = status;
        ctx.refused = true;
        let retry = match ctx.retry_after {
            // Over a limit: tell the client when; SDKs honour Retry-After.
            Some(secs) => ("retry-after", secs.to_string()),
            // A policy refusal will not change on retry.
            None => ("x-should-retry", "false".to_string()),
        };
        write_error(session, adapter, status, &message, Some(retry)).await?;
        Ok(true)
    }

    /// Assemble, price, count and keep the interaction record: appended to the ledger
    /// synchronously, so a record exists before the client can have the whole answer.
    fn finish(&self, session: &Session, e: Option<&Error>, ctx: &mut Ctx) -> Result<()> {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        record_exchange(&self.shared, e, ctx, status)
    }
}

/// The one writer of every response Sluice answers itself (refusals, proxy failures): the
/// provider's own error format ([`Adapter::error_reply`]), so SDKs raise their usual
/// exception with a message that says what happened; `extra` is one more header.
async fn write_error(
    session: &mut Session,
    adapter: &dyn Adapter,
    status: u16,
    message: &str,
    extra: Option<(&'static str, String)>,
) -> Result<()> {
    let reply = adapter.error_reply(status, message);
    let mut header = ResponseHeader::build(reply.status, Some(3 + reply.headers.len()))?;
    header.insert_header("content-type", reply.content_type)?;
    header.insert_header("content-length", reply.body.len().to_string())?;
    for (name, value) in reply.headers.into_iter().chain(extra) {
        header.insert_header(name, value)?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(reply.body)), true)
        .await
}

/// Assemble, price, count and keep the interaction record of `ctx` (once).
fn record_exchange(shared: &Shared, e: Option<&Error>, ctx: &mut Ctx, status: u16) -> Result<()> {
    if ctx.recorded {
        return Ok(());
    }
    ctx.recorded = true;
    let t = Instant::now();
    let Some(conn) = ctx.conn.clone() else {
        return Ok(());
    };
    let record = build_record(shared.max_inspect_bytes, &conn, e, ctx, status);
    if let Some(admission) = ctx.admission.take() {
        let tokens =
            record.usage.input_tokens.unwrap_or(0) + record.usage.output_tokens.unwrap_or(0);
        shared.policy.load().finish(admission, tokens);
    }
    // Budgets are settled with the real cost, streams and cancellations included; a
    // cut stream with at least what the guard counted when it cut.
    if let Some(cost) = record.cost_usd {
        let cost = ctx.cut.as_ref().map_or(cost, |c| cost.max(c.spent_usd));
        shared.policy.load().settle(&record.identity, cost);
    }
    let provider = conn.adapter.name();
    let endpoint = record.endpoint.as_deref().unwrap_or("other");
    metrics::REQUESTS
        .with_label_values(&[provider, endpoint, record.outcome.as_str()])
        .inc();
    metrics::DECISIONS
        .with_label_values(&[record.decision])
        .inc();
    if record.outcome != Outcome::Success {
        metrics::ERRORS
            .with_label_values(&[provider, record.outcome.as_str()])
            .inc();
    }
    if let Some(n) = record.usage.input_tokens {
        metrics::TOKENS
            .with_label_values(&[provider, "input"])
            .inc_by(n);
    }
    if let Some(n) = record.usage.output_tokens {
        metrics::TOKENS
            .with_label_values(&[provider, "output"])
            .inc_by(n);
    }
    match record.cost_usd {
        Some(c) => metrics::COST_MICRO_USD
            .with_label_values(&[provider])
            .inc_by((c * 1e6).round() as u64),
        None if record.endpoint.is_some() && record.model.is_some() => {
            metrics::UNPRICED.with_label_values(&[provider]).inc()
        }
        None => {}
    }
    if let Some(sent) = ctx.upstream_sent {
        metrics::UPSTREAM_LATENCY
            .with_label_values(&[provider])
            .observe(sent.elapsed().as_secs_f64());
    }
    for (cap, dir) in [(&ctx.request, "request"), (&ctx.response, "response")] {
        if cap.truncated {
            metrics::TRUNCATED.with_label_values(&[dir]).inc();
        }
    }
    ctx.own += t.elapsed();
    // Time before the upstream was asked, plus our own processing afterwards.
    let before_upstream = match (ctx.started, ctx.upstream_sent) {
        (Some((s, _)), Some(u)) => u.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    metrics::ADDED_LATENCY.observe((before_upstream.max(ctx.own)).as_secs_f64());
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

impl Interceptor {
    /// Whether the ledger failed recently and fail_closed says to refuse new requests.
    fn ledger_refusing(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.shared.on_ledger_failure != OnLedgerFailure::FailClosed {
            return false;
        }
        let at = self.shared.ledger_failed_at.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Retry the ledger with real traffic after a short pause.
        at != 0 && now.saturating_sub(at) < LEDGER_RETRY_SECS
    }
}

/// A body kept up to a limit.
#[derive(Default)]
struct Capture {
    buf: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, chunk: &[u8], limit: usize) {
        self.total += chunk.len() as u64;
        let room = limit.saturating_sub(self.buf.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    conn: Option<Arc<ConnInfo>>,
    endpoint: Option<Endpoint>,
    started: Option<(Instant, SystemTime)>,
    /// Time spent in Sluice's own work, excluding waiting on either peer.
    own: Duration,
    upstream_sent: Option<Instant>,
    first_byte: Option<Instant>,
    request: Capture,
    response: Capture,
    parser: Option<Box<dyn StreamParser>>,
    status: u16,
    recorded: bool,
    /// Who is calling, for this request (connection identity plus keys).
    identity: Option<Identity>,
    /// The policy verdict, once evaluated.
    verdict: Verdict,
    /// The request body was read in `request_filter` (and arrives again as one buffer).
    preread: bool,
    /// The header carrying the client's key and the real key to send instead.
    swap_key: Option<(&'static str, String)>,
    /// Sluice answered the request itself (policy refusal).
    refused: bool,
    /// Rate-limit slots held until the request ends.
    admission: Option<policy::Admission>,
    /// Seconds for `Retry-After` on a rate-limit refusal.
    retry_after: Option<u64>,
    /// Response `Content-Length`, to know which chunk is the last.
    content_length: Option<u64>,
    /// Response guardrails and budget cut on a stream, when a policy asks for them.
    stream_guard: Option<StreamGuard>,
    /// Response guardrails on a plain answer.
    body_guard: Option<BodyGuard>,
    /// The stream was cut (budget); the error event has gone out.
    cut: Option<Cut>,
    /// Request method and path, for the record.
    method: String,
    path: String,
    /// The shared state, so a context dropped unrecorded (the proxy stopping mid-exchange)
    /// can still write its record.
    shared: Option<Arc<Shared>>,
    /// Dropped before the exchange ended.
    aborted: bool,
    cut_at: Option<Instant>,
}

/// A request that began but was never recorded — its task dropped because the proxy
/// stopped mid-exchange — is recorded now, with what was seen (`outcome: failed`): a
/// request Sluice accepted always has a record.
impl Drop for Ctx {
    fn drop(&mut self) {
        if self.recorded || self.conn.is_none() || self.started.is_none() {
            return;
        }
        let Some(shared) = self.shared.take() else {
            return;
        };
        self.aborted = true;
        let status = self.status;
        if let Err(e) = record_exchange(&shared, None, self, status) {
            tracing::error!(error = %e, "cannot record an exchange cut off at shutdown");
        }
    }
}

#[async_trait]
impl ProxyHttp for Interceptor {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let mut ctx = Ctx::default();
        ctx.shared = Some(self.shared.clone());
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let t = Instant::now();
        ctx.started = Some((t, SystemTime::now()));
        let req = session.req_header();
        ctx.method = req.method.to_string();
        ctx.path = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let key = session
            .client_addr()
            .and_then(|p| p.as_inet())
            .zip(session.server_addr().and_then(|l| l.as_inet()))
            .map(|(peer, local)| Accepted {
                peer: *peer,
                local: *local,
            });
        let Some(conn) = key.and_then(|k| self.shared.conns.get(&k)) else {
            // Cannot happen for connections accepted by InterceptApp; refuse rather than
            // forward somewhere unknown.
            return Error::e_explain(
                ErrorType::InternalError,
                "request on a connection with no known destination",
            );
        };
        let req = session.req_header();
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        ctx.endpoint = conn.adapter.endpoint(req.method.as_str(), path);
        let adapter = conn.adapter;
        let provider = adapter.name();
        ctx.conn = Some(conn.clone());

        // Identity: virtual key, else the fingerprint of the client's own key.
        let mut identity = conn.identity.clone();
        if let Some((header, key)) = policy::presented_key(&req.headers) {
            if key.starts_with(policy::VIRTUAL_KEY_PREFIX) {
                let engine = self.shared.policy.load_full();
                let Some(vk) = engine.keys.resolve(&key) else {
                    ctx.identity = Some(identity);
                    return self
                        .refuse(session, ctx, adapter, 401, "invalid_virtual_key",
                            "Sluice does not know this virtual key (sk-sluice-…); ask your administrator for a valid one.".into())
                        .await;
                };
                identity.user = Some(vk.user.clone());
                identity.team = vk.team.clone();
                identity.project = vk.project.clone();
                let Some(real) = vk.provider_key(provider) else {
                    ctx.identity = Some(identity);
                    return self
                        .refuse(
                            session,
                            ctx,
                            adapter,
                            403,
                            "no_provider_key",
                            format!("Sluice holds no {provider} key for this virtual key."),
                        )
                        .await;
                };
                ctx.swap_key = Some((header, real.to_string()));
            } else {
                identity.api_key_fingerprint = Some(policy::fingerprint(&key));
            }
        }
        // A ledger that cannot be written refuses work (fail_closed): nothing unrecorded.
        if self.ledger_refusing() {
            ctx.identity = Some(identity);
            ctx.recorded = true; // there is nowhere to record it; the log says why
            tracing::warn!(
                "request refused: the audit ledger is failing (on_ledger_failure: fail_closed)"
            );
            return self
                .refuse(session, ctx, adapter, 503, "ledger_unavailable",
                    "Sluice cannot write its audit ledger (disk full or unwritable); requests are refused until it recovers (on_ledger_failure: fail_closed).".into())
                .await;
        }

        // Rate limits: on identity alone, before reading the body.
        let mut shadow = Vec::new();
        let engine = self.shared.policy.load_full();
        match engine.admit(&identity, &mut shadow) {
            Ok(admission) => ctx.admission = Some(admission),
            Err((policy_id, limited)) => {
                ctx.identity = Some(identity);
                ctx.verdict.policy_id = Some(policy_id.clone());
                ctx.verdict.mode = Some("enforce");
                ctx.retry_after = Some(limited.retry_after);
                let message = format!(
                    "Rate limited by Sluice policy {policy_id}: more than {}; retry after {} s.",
                    limited.detail, limited.retry_after
                );
                return self
                    .refuse(session, ctx, adapter, 429, limited.reason, message)
                    .await;
            }
        }
        if let Some((policy_id, limited)) = shadow.into_iter().next() {
            ctx.verdict.decision = Decision::ShadowBlock;
            ctx.verdict.policy_id = Some(policy_id);
            ctx.verdict.mode = Some("shadow");
            ctx.verdict.reason_codes.push(limited.reason.to_string());
        }
        ctx.identity = Some(identity);

        // Policies that look at the body decide before anything is sent upstream.
        if engine.needs_body() && ctx.endpoint.is_some() {
            self.preread_and_decide(session, ctx).await?;
            if let Some((status, message)) = ctx.verdict.refusal.clone() {
                let code = ctx
                    .verdict
                    .reason_codes
                    .first()
                    .cloned()
                    .unwrap_or_default();
                return self
                    .refuse(session, ctx, adapter, status, &code, message)
                    .await;
            }
        }
        ctx.own += t.elapsed();
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.preread {
            // The body was read (and judged) in request_filter; it comes back here as one
            // buffer, which redaction replaces.
            if let (Some(_), Some(new)) = (body.as_ref(), ctx.verdict.rewritten_body.as_ref()) {
                *body = Some(Bytes::from(new.clone()));
            }
            return Ok(());
        }
        if let Some(chunk) = body {
            let t = Instant::now();
            ctx.request.push(chunk, self.shared.max_inspect_bytes);
            ctx.own += t.elapsed();
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(conn) = ctx.conn.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no connection context");
        };
        let mut peer = HttpPeer::new(conn.dst, conn.tls, conn.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.shared.connect_timeout);
        o.total_connection_timeout = Some(self.shared.connect_timeout);
        o.read_timeout = Some(self.shared.read_timeout);
        o.write_timeout = Some(self.shared.read_timeout);
        o.alpn = if self.shared.upstream_h2 {
            ALPN::H2H1
        } else {
            ALPN::H1
        };
        if let Some(mark) = self.shared.mark {
            // Marked sockets are skipped by the redirect probe: no loop back into Sluice.
            o.upstream_tcp_sock_tweak_hook = Some(Arc::new(move |sock| {
                super::relay::set_mark(sock, mark).map_err(|e| {
                    Error::because(
                        ErrorType::SocketError,
                        "setting SO_MARK (needs CAP_NET_ADMIN)",
                        e,
                    )
                })
            }));
        }
        ctx.upstream_sent = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An uncompressed answer can be parsed on the side without inflating it; LLM
        // responses are small next to the cost of the model, so the bytes are cheap.
        upstream_request.insert_header("accept-encoding", "identity")?;
        // Virtual key → the real provider key, in the header the client used.
        if let Some((header, real)) = &ctx.swap_key {
            let value = if *header == "authorization" {
                format!("Bearer {real}")
            } else {
                real.clone()
            };
            upstream_request.insert_header(*header, value)?;
        }
        if let Some(new) = &ctx.verdict.rewritten_body {
            upstream_request.insert_header("content-length", new.len().to_string())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = Instant::now();
        ctx.status = upstream_response.status.as_u16();
        ctx.content_length = upstream_response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // Keep clients on TCP, where they are captured: never advertise HTTP/3.
        upstream_response.remove_header("alt-svc");
        let event_stream = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(providers::looks_like_event_stream);
        if let (Some(conn), Some(ep)) = (ctx.conn.as_ref(), ctx.endpoint.as_ref()) {
            if event_stream || (ep.streaming_hint && ctx.status < 300) {
                ctx.parser = Some(conn.adapter.stream_parser(ep));
            }
            // The answer is checked (and maybe cut) as it flows: its length will change.
            if (200..300).contains(&ctx.status) {
                let redact = ctx.verdict.response.as_ref().and_then(|p| p.redact.clone());
                if event_stream {
                    ctx.stream_guard = StreamGuard::new(
                        conn.adapter,
                        ep.clone(),
                        redact,
                        ctx.verdict.stream_budget.clone(),
                    );
                } else if let (Some(scanner), None) = (redact, ctx.parser.as_ref()) {
                    ctx.body_guard = Some(BodyGuard::new(scanner, self.shared.max_inspect_bytes));
                }
                if ctx.stream_guard.is_some() || ctx.body_guard.is_some() {
                    ctx.content_length = None;
                    upstream_response.remove_header(&http::header::CONTENT_LENGTH);
                    if !session.is_http2() {
                        upstream_response.insert_header("transfer-encoding", "chunked")?;
                    }
                }
            }
        }
        ctx.own += t.elapsed();
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(at) = ctx.cut_at {
            // The budget ran out and the error event went to the client: nothing more does.
            *body = None;
            // Then stop the provider generating (and billing) by dropping the exchange —
            // but not in the batch of writes that carries the error event (Pingora drops
            // a batch whose filter fails), so only once that batch is surely written.
            if !end_of_stream && at.elapsed() >= CUT_GRACE {
                return Error::e_explain(
                    ErrorType::Custom("budget_cut"),
                    "stream cut: budget exhausted",
                );
            }
            return Ok(None);
        }
        let t = Instant::now();
        if body.is_some() {
            ctx.first_byte.get_or_insert(t);
        }
        if let Some(g) = ctx.stream_guard.as_mut() {
            let mut out = Vec::new();
            if let Some(chunk) = body.as_ref() {
                g.feed(chunk, &mut out);
            }
            if end_of_stream {
                g.finish(&mut out);
            }
            ctx.cut = g.cut().cloned();
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        } else if let Some(g) = ctx.body_guard.as_mut() {
            let mut out = body.take().and_then(|c| g.feed(&c)).unwrap_or_default();
            if end_of_stream {
                out.extend_from_slice(&g.finish());
            }
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        }
        // What is recorded is what the client receives.
        if let Some(chunk) = body {
            match ctx.parser.as_mut() {
                Some(p) => {
                    ctx.response.total += chunk.len() as u64;
                    p.feed(chunk);
                }
                None => ctx.response.push(chunk, self.shared.max_inspect_bytes),
            }
        }
        ctx.own += t.elapsed();
        if ctx.cut.is_some() {
            ctx.cut_at = Some(Instant::now());
            // Recorded before the error event is released, like any last byte.
            return self.finish(session, None, ctx).map(|()| None);
        }
        // The record is in the ledger's write-ahead file before the last byte is released:
        // a client that received the whole answer always has a record, even if the proxy
        // is killed right after.
        let complete = ctx.content_length.is_some_and(|n| ctx.response.total >= n);
        if end_of_stream || complete {
            self.finish(session, None, ctx)?;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => 0,
                _ => 500,
            },
        };
        // Answer in the provider's error format, so SDKs raise their usual error with a
        // message that says what happened.
        if code > 0 && session.response_written().is_none() {
            let adapter = ctx
                .conn
                .as_ref()
                .map_or(providers::default_adapter(), |c| c.adapter);
            let message = match code {
                503 => format!("Sluice could not record this request in its audit ledger, so the answer is withheld (on_ledger_failure: fail_closed): {e}"),
                502 => format!("Sluice could not get an answer from the provider: {e}"),
                _ => format!("Sluice failed to proxy this request: {e}"),
            };
            if let Err(err) = write_error(session, adapter, code, &message, None).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // Errors, cancellations and bodiless responses end here; complete responses were
        // recorded in response_body_filter already.
        let _ = self.finish(session, e, ctx);
    }
}

/// Assemble the interaction record from what the phases gathered.
fn build_record(
    max_inspect: usize,
    conn: &ConnInfo,
    e: Option<&Error>,
    ctx: &mut Ctx,
    status: u16,
) -> Interaction {
    let adapter = conn.adapter;
    let (started, started_wall) = ctx
        .started
        .unwrap_or_else(|| (Instant::now(), SystemTime::now()));
    let path = std::mem::take(&mut ctx.path);

    // What was forwarded is what is recorded: a redacted prompt stays redacted at rest.
    let forwarded = ctx
        .verdict
        .rewritten_body
        .as_deref()
        .unwrap_or(&ctx.request.buf);
    let parsed_req = ctx
        .endpoint
        .as_ref()
        .filter(|_| !forwarded.is_empty())
        .map(|ep| adapter.parse_request(ep, forwarded));
    let mut parsed_resp: ParsedResponse = match (ctx.parser.as_mut(), ctx.endpoint.as_ref()) {
        (Some(p), _) => p.finish(),
        (None, Some(ep)) if !ctx.response.buf.is_empty() => {
            adapter.parse_response(ep, &ctx.response.buf)
        }
        _ => ParsedResponse::default(),
    };
    let stream = ctx.parser.is_some();
    apply_response_findings(ctx, &parsed_resp.output);

    let outcome = match e {
        _ if ctx.cut.is_some() => Outcome::Cut,
        _ if ctx.aborted => Outcome::Failed,
        Some(err) if *err.esource() == ErrorSource::Downstream => Outcome::Cancelled,
        Some(_) => Outcome::Failed,
        None if ctx.refused => Outcome::Refused,
        None if status >= 400 || status == 0 => Outcome::UpstreamError,
        None => Outcome::Success,
    };
    let error = match e {
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
        decision: ctx.verdict.decision.as_str(),
        reason_codes: std::mem::take(&mut ctx.verdict.reason_codes),
        policy_id: ctx.verdict.policy_id.take(),
        triggered_categories: ctx
            .verdict
            .triggered
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        policy_mode: ctx.verdict.mode,
        identity: ctx
            .identity
            .clone()
            .unwrap_or_else(|| conn.identity.clone()),
        request: RequestPart {
            method: std::mem::take(&mut ctx.method),
            path,
            params,
            messages,
            body_bytes: ctx.request.total,
            truncated: ctx.request.truncated,
            parse_error: req_error,
        },
        response: ResponsePart {
            output: std::mem::take(&mut parsed_resp.output),
            tool_calls: std::mem::take(&mut parsed_resp.tool_calls),
            finish_reason: parsed_resp.finish_reason.take(),
            body_bytes: ctx.response.total,
            events: parsed_resp.events,
            truncated: ctx.response.truncated
                || (ctx.response.total as usize > max_inspect && !stream),
            error: parsed_resp.error.take(),
        },
        usage: parsed_resp.usage,
        cost_usd,
        latency_ms: now.duration_since(started).as_secs_f64() * 1e3,
        ttft_ms: if stream {
            ctx.first_byte
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

/// Fold what happened to the answer into the verdict: categories redacted on the way
/// (`redact`), found but only recorded (`alert`, shadow: `shadow_redact`), a stream cut by
/// a budget (`block`, `budget_exceeded_mid_stream`).
fn apply_response_findings(ctx: &mut Ctx, output: &str) {
    let v = &mut ctx.verdict;
    if let Some(plan) = v.response.clone() {
        let mut redacted: Vec<crate::guardrails::Category> = Vec::new();
        if let Some(g) = &ctx.stream_guard {
            redacted.extend_from_slice(g.findings());
        }
        if let Some(g) = &ctx.body_guard {
            redacted.extend_from_slice(g.findings());
            if g.overflowed() {
                v.reason_codes
                    .push("response_not_inspected_by_policy".into());
            }
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
            if !v.triggered.contains(cat) {
                v.triggered.push(*cat);
            }
            let code = policy::response_reason(*cat);
            if !v.reason_codes.contains(&code) {
                v.reason_codes.push(code);
            }
        }
        let (decision, mode) = if plan.shadow {
            (Decision::ShadowRedact, "shadow")
        } else {
            (Decision::Redact, "enforce")
        };
        let acted = if plan.shadow {
            !detected.is_empty()
        } else {
            !redacted.is_empty()
        };
        if acted && matches!(v.decision, Decision::Allow | Decision::ShadowRedact) {
            v.decision = decision;
            v.policy_id = Some(plan.policy_id.clone());
            v.mode = Some(mode);
        }
    }
    if let Some(cut) = &ctx.cut {
        v.decision = Decision::Block;
        v.policy_id = Some(cut.policy_id.clone());
        v.mode = Some("enforce");
        v.reason_codes.push("budget_exceeded_mid_stream".into());
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
