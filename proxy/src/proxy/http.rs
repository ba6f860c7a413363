//! The HTTP interceptor: a thin `ProxyHttp` whose phases delegate to governance
//! ([`crate::policy`]), the provider adapter and the exchange (`exchange`), which ends
//! in exactly one interaction record per request.
//!
//! Phase by phase:
//! - `request_filter`: find the connection's context, classify the endpoint, govern
//!   (`Engine::apply_request_policies`), answer a refusal;
//! - `request_body_filter`: keep up to `max_inspect_bytes` of the body (the rest flows on);
//! - `upstream_peer`: the original destination, TLS verified against the real host name;
//! - `upstream_request_filter`: ask for an uncompressed answer so it can be parsed;
//! - `response_filter`: pick the stream parser or the body buffer, drop `Alt-Svc` (h3);
//! - `response_body_filter`: feed chunks to the side parser as they pass — never held;
//! - `logging`: errors, cancellations and refusals end here: `exchange::finish`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use super::exchange::{self, Capture, Exchange};
use super::{ConnInfo, Shared};
use crate::config::OnLedgerFailure;
use crate::metrics;
use crate::original_dst::Accepted;
use crate::policy::{self, Refusal, WholeBody};
use crate::providers::{self, Adapter};

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
    /// Starts the exchange: when, what, on which connection (its destination, adapter and
    /// workload identity), which endpoint.
    ///
    /// # Errors
    /// The connection is unknown (cannot happen for connections `InterceptApp` accepted):
    /// refused rather than forwarded somewhere unknown.
    fn begin(&self, session: &Session, ctx: &mut Exchange) -> Result<Arc<ConnInfo>> {
        ctx.t.started = Some((Instant::now(), SystemTime::now()));
        let req = session.req_header();
        ctx.method = req.method.to_string();
        // Credentials in the query (Gemini's `?key=`) never reach a record or a log.
        ctx.path =
            policy::scrub_path(req.uri.path_and_query().map_or("/", |p| p.as_str())).into_owned();
        let key = session
            .client_addr()
            .and_then(|p| p.as_inet())
            .zip(session.server_addr().and_then(|l| l.as_inet()))
            .map(|(peer, local)| Accepted {
                peer: *peer,
                local: *local,
            });
        let Some(conn) = key.and_then(|k| self.shared.conns.get(&k)) else {
            return Error::e_explain(
                ErrorType::InternalError,
                "request on a connection with no known destination",
            );
        };
        ctx.host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .map(str::to_owned);
        ctx.endpoint = conn.adapter.endpoint(req.method.as_str(), &ctx.path);
        ctx.in_flight = Some(super::exchange::InFlight::new(conn.adapter.name()));
        ctx.governed.identity = conn.identity.clone();
        conn.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.conn = Some(conn.clone());
        Ok(conn)
    }
}

/// A 421 Misdirected Request when the request's `Host`/`:authority` is missing or names
/// another host than `conn_host` (the connection's SNI, normalised).
fn misdirected(host: Option<&str>, conn_host: &str) -> Option<Refusal> {
    let named = host.map(providers::normalize_host);
    if named.as_deref() == Some(conn_host) {
        return None;
    }
    let message = match named {
        Some(named) => format!(
            "Sluice refuses this request: it names host {named:?} on a connection opened for {conn_host:?}; send it to {named} directly."
        ),
        None => format!(
            "Sluice refuses this request: it names no host (Host or :authority) on a connection opened for {conn_host:?}."
        ),
    };
    Some(Refusal {
        status: 421,
        message,
        retry_after: None,
    })
}

/// The request body for governance: read whole here when its declared length fits what
/// Pingora can replay upstream; otherwise (larger, or chunked) `request_body_filter`
/// holds it back as it arrives and judges it before any byte goes upstream.
struct SessionBody<'a> {
    session: &'a mut Session,
    capture: &'a mut Capture,
    limit: usize,
    /// When the whole body must have arrived.
    deadline: Instant,
}

impl policy::RequestBody for SessionBody<'_> {
    type Error = Box<Error>;

    async fn read_whole(&mut self) -> Result<Option<WholeBody<'_>>> {
        let len = self
            .session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if self.session.as_mut().is_body_empty() {
            return Ok(Some(WholeBody {
                bytes: &[],
                truncated: false,
            }));
        }
        if len.is_none_or(|n| n > PREREAD_LIMIT) {
            // Held back as it arrives instead, and judged before any of it goes upstream.
            return Ok(None);
        }
        continue_if_expected(self.session).await?;
        self.session.enable_retry_buffering();
        while let Some(chunk) = self.session.read_request_body().await? {
            self.capture.push(&chunk, self.limit);
            if Instant::now() > self.deadline {
                let e = Error::explain(ErrorType::ReadTimedout, "request body deadline");
                return Err(e.into_down());
            }
        }
        Ok(Some(WholeBody {
            bytes: &self.capture.buf,
            truncated: self.capture.truncated,
        }))
    }
}

/// Refuses a request whose body did not arrive in time (408, `body_timeout`): the
/// error that ends the exchange, answered by `fail_to_proxy`.
fn body_timeout(ctx: &mut Exchange, limit: Duration) -> Box<Error> {
    ctx.governed.verdict.refuse(None, "body_timeout", Refusal {
        status: 408,
        message: format!(
            "Sluice stopped waiting for the request body: it did not arrive in time (limits: {} ms of silence, downstream.body_deadline_ms in all).",
            limit.as_millis()
        ),
        retry_after: None,
    });
    ctx.refused = true;
    ctx.held.clear();
    Error::explain(ErrorType::ReadTimedout, "request body deadline").into_down()
}

/// The held chunks as one buffer.
fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in &chunks {
                out.extend_from_slice(c);
            }
            Bytes::from(out)
        }
    }
}

/// Answers `Expect: 100-continue` with `100 Continue` once the request is admitted, so
/// the client sends its body at once (curl otherwise waits a second per upload). A
/// refusal decided from the headers answers without it, and without reading the body.
async fn continue_if_expected(session: &mut Session) -> Result<()> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if expects && !session.is_http2() {
        let header = ResponseHeader::build(100, Some(0))?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
    }
    Ok(())
}

impl Interceptor {
    /// A body too large to read before the upstream is asked, under a policy that judges
    /// bodies: held back chunk by chunk (nothing of it goes upstream), judged once it is
    /// complete or passes `max_inspect_bytes`, then released whole (redacted, if so
    /// decided) — or refused, which aborts the exchange before its first byte leaves.
    async fn hold_and_judge(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> Result<()> {
        if let Some(chunk) = body.take() {
            ctx.request.push(&chunk, self.shared.max_inspect_bytes);
            ctx.held.push(chunk);
        }
        if !end_of_stream && !ctx.request.truncated {
            // Nothing yet (an empty chunk is not written upstream; `None` would end it).
            *body = Some(Bytes::new());
            return Ok(());
        }
        let Some(conn) = ctx.conn.clone() else {
            *body = Some(Bytes::new());
            return Ok(());
        };
        let endpoint = ctx.endpoint.clone();
        let whole = WholeBody {
            bytes: &ctx.request.buf,
            truncated: ctx.request.truncated,
        };
        let engine = self.shared.policy.load_full();
        engine
            .judge_body(&mut ctx.governed, conn.adapter, endpoint.as_ref(), whole)
            .await;
        for cat in &ctx.governed.verdict.triggered {
            metrics::GUARDRAIL_FINDINGS
                .with_label_values(&[cat.as_str()])
                .inc();
        }
        if ctx.governed.verdict.refusal.is_some() {
            ctx.held.clear();
            ctx.refused = true;
            // Marked as the downstream's: Pingora then abandons the upstream request at
            // once (an upstream-side error would wait for its answer) and fail_to_proxy
            // answers with the refusal.
            let e = Error::explain(
                ErrorType::Custom("refused_by_policy"),
                "request refused by policy after its body was judged",
            );
            return Err(e.into_down());
        }
        let released = match ctx.governed.verdict.rewritten_body.take() {
            Some(new) => Bytes::from(new),
            None => concat(std::mem::take(&mut ctx.held)),
        };
        *body = Some(released);
        Ok(())
    }

    /// Answers the client ourselves with the verdict's refusal, in the provider's error
    /// format, and stops here (the exchange is recorded by `logging`).
    async fn refuse(&self, session: &mut Session, ctx: &mut Exchange) -> Result<bool> {
        let adapter = ctx
            .conn
            .as_ref()
            .map_or(providers::default_adapter(), |c| c.adapter);
        let refusal = ctx.governed.verdict.refusal.clone().unwrap_or(Refusal {
            status: 403,
            message: "Refused by Sluice.".into(),
            retry_after: None,
        });
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
        ctx.answer.status = refusal.status;
        ctx.refused = true;
        let retry = match refusal.retry_after {
            // Over a limit: tell the client when; SDKs honour Retry-After.
            Some(secs) => ("retry-after", secs.to_string()),
            // A policy refusal will not change on retry.
            None => ("x-should-retry", "false".to_string()),
        };
        write_error(
            session,
            adapter,
            refusal.status,
            &refusal.message,
            Some(retry),
        )
        .await?;
        Ok(true)
    }

    /// Assemble, price, count and keep the interaction record: appended to the ledger
    /// synchronously, so a record exists before the client can have the whole answer.
    fn finish(&self, session: &Session, e: Option<&Error>, ctx: &mut Exchange) -> Result<()> {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|s| *s >= 200)
            .unwrap_or(ctx.answer.status);
        exchange::finish(&self.shared, e, ctx, status)
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

#[async_trait]
impl ProxyHttp for Interceptor {
    type CTX = Exchange;

    fn new_ctx(&self) -> Exchange {
        let mut ctx = Exchange::default();
        ctx.shared = Some(self.shared.clone());
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Exchange) -> Result<bool> {
        let t = Instant::now();
        let conn = self.begin(session, ctx)?;
        // A stalled body is answered (408), not waited for: see request_body_filter too.
        session.set_read_timeout(Some(self.shared.body_idle_timeout));
        if session.req_header().method == http::Method::CONNECT {
            ctx.governed.verdict.refuse(
                None,
                "connect_refused",
                Refusal {
                    status: 405,
                    message: "Sluice does not tunnel CONNECT to an LLM provider.".into(),
                    retry_after: None,
                },
            );
            return self.refuse(session, ctx).await;
        }
        // A ledger that cannot be written refuses work (fail_closed): nothing unrecorded.
        if self.ledger_refusing() {
            ctx.recorded = true; // there is nowhere to record it; the log says why
            tracing::warn!(
                "request refused: the audit ledger is failing (on_ledger_failure: fail_closed)"
            );
            ctx.governed.verdict.refuse(None, "ledger_unavailable", Refusal {
                status: 503,
                message: "Sluice cannot write its audit ledger (disk full or unwritable); requests are refused until it recovers (on_ledger_failure: fail_closed).".into(),
                retry_after: None,
            });
            return self.refuse(session, ctx).await;
        }
        // The request must name the host its connection was opened for (the SNI, or the
        // plain-HTTP Host the connection was routed by): no fronting another host.
        if let Some(refusal) = misdirected(ctx.host.as_deref(), &conn.host) {
            ctx.governed
                .verdict
                .refuse(None, "host_sni_mismatch", refusal);
            return self.refuse(session, ctx).await;
        }
        // Governance, in its one documented order (policy::Engine::apply_request_policies).
        let engine = self.shared.policy.load_full();
        let request = policy::Request {
            adapter: conn.adapter,
            endpoint: ctx.endpoint.as_ref(),
            presented_key: {
                let req = session.req_header();
                let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
                policy::presented_key(&req.headers, path)
            },
            workload: conn.identity.clone(),
        };
        let mut body = SessionBody {
            session,
            capture: &mut ctx.request,
            limit: self.shared.max_inspect_bytes,
            deadline: t + self.shared.body_deadline,
        };
        let governed = engine.apply_request_policies(request, &mut body).await?;
        ctx.preread = governed.body_read;
        ctx.governed = governed;
        for cat in &ctx.governed.verdict.triggered {
            metrics::GUARDRAIL_FINDINGS
                .with_label_values(&[cat.as_str()])
                .inc();
        }
        if ctx.governed.verdict.refusal.is_some() {
            return self.refuse(session, ctx).await;
        }
        if !ctx.preread {
            // Admitted, body still to come: ask for it now rather than after the client's
            // own `Expect` timeout.
            continue_if_expected(session).await?;
        }
        ctx.t.own += t.elapsed();
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> Result<()> {
        if ctx.preread {
            // The body was read (and judged) in request_filter; it comes back here as one
            // buffer, which redaction replaces.
            if let (Some(_), Some(new)) =
                (body.as_ref(), ctx.governed.verdict.rewritten_body.as_ref())
            {
                *body = Some(Bytes::from(new.clone()));
            }
            return Ok(());
        }
        let t = Instant::now();
        let started = ctx.t.started.map_or(t, |(s, _)| s);
        if !end_of_stream && t.duration_since(started) > self.shared.body_deadline {
            // A body trickling in (one byte at a time) past the deadline.
            return Err(body_timeout(ctx, self.shared.body_deadline));
        }
        if ctx.governed.body_pending {
            self.hold_and_judge(body, end_of_stream, ctx).await?;
        } else if let Some(chunk) = body {
            ctx.request.push(chunk, self.shared.max_inspect_bytes);
        }
        ctx.t.own += t.elapsed();
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Exchange,
    ) -> Result<Box<HttpPeer>> {
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
        ctx.t.upstream_sent = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Exchange,
    ) -> Result<()> {
        // An uncompressed answer can be parsed on the side without inflating it; LLM
        // responses are small next to the cost of the model, so the bytes are cheap.
        upstream_request.insert_header("accept-encoding", "identity")?;
        // Virtual key → the real provider key, in the header the client used.
        if let Some(swap) = &ctx.governed.swap_key {
            upstream_request.insert_header(swap.header, swap.header_value())?;
        }
        if let Some(new) = &ctx.governed.verdict.rewritten_body {
            upstream_request.insert_header("content-length", new.len().to_string())?;
        }
        // Sluice answered any `Expect: 100-continue` itself.
        upstream_request.remove_header(&http::header::EXPECT);
        if ctx.governed.body_pending {
            // The body is judged as it arrives and may be redacted: its length is known
            // only at its end. Without a length Pingora frames it itself (chunked for an
            // HTTP/1.1 upstream, data frames for HTTP/2).
            upstream_request.remove_header(&http::header::CONTENT_LENGTH);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Exchange,
    ) -> Result<()> {
        let t = Instant::now();
        // Keep clients on TCP, where they are captured: never advertise HTTP/3.
        upstream_response.remove_header("alt-svc");
        let header = |name| {
            upstream_response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
        };
        let rewritten = ctx.answer_begins(
            upstream_response.status.as_u16(),
            header(http::header::CONTENT_TYPE),
            header(http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            self.shared.max_inspect_bytes,
        );
        if rewritten {
            // The answer is checked (and maybe cut) as it flows: its length will change.
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            if !session.is_http2() {
                upstream_response.insert_header("transfer-encoding", "chunked")?;
            }
        }
        ctx.t.own += t.elapsed();
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> Result<Option<Duration>> {
        if let Some(at) = ctx.t.cut_at {
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
        ctx.answer_passes(body, end_of_stream, self.shared.max_inspect_bytes);
        ctx.t.own += t.elapsed();
        if ctx.answer.cut.is_some() {
            ctx.t.cut_at = Some(Instant::now());
            // Recorded before the error event is released, like any last byte.
            return self.finish(session, None, ctx).map(|()| None);
        }
        // The record is in the ledger's write-ahead file before the last byte is released:
        // a client that received the whole answer always has a record, even if the proxy
        // is killed right after.
        if end_of_stream || ctx.answer.complete() {
            self.finish(session, None, ctx)?;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Exchange,
    ) -> pingora::proxy::FailToProxy {
        if *e.etype() == ErrorType::ReadTimedout
            && *e.esource() != ErrorSource::Upstream
            && ctx.governed.verdict.refusal.is_none()
        {
            // The client went silent mid-body: tell it, and record why.
            let _ = body_timeout(ctx, self.shared.body_idle_timeout);
        }
        if *e.esource() == ErrorSource::Upstream {
            let provider = ctx.conn.as_ref().map_or("unknown", |c| c.adapter.name());
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[provider, upstream_error_kind(e.etype())])
                .inc();
        }
        let code = match (&ctx.governed.verdict.refusal, e.etype()) {
            // A body judged while held back was refused: that refusal is the answer.
            (Some(r), _) if ctx.refused => r.status,
            (_, ErrorType::HTTPStatus(code)) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => 0,
                _ => 500,
            },
        };
        // Answer in the provider's error format, so SDKs raise their usual error with a
        // message that says what happened.
        // Nothing but an interim `100 Continue` sent yet: the answer is still ours to give.
        let answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if code > 0 && !answered {
            let adapter = ctx
                .conn
                .as_ref()
                .map_or(providers::default_adapter(), |c| c.adapter);
            let message = match (&ctx.governed.verdict.refusal, code) {
                (Some(r), _) if ctx.refused => r.message.clone(),
                (_, 503) => format!("Sluice could not record this request in its audit ledger, so the answer is withheld (on_ledger_failure: fail_closed): {e}"),
                (_, 502) => format!("Sluice could not get an answer from the provider: {e}"),
                _ => format!("Sluice failed to proxy this request: {e}"),
            };
            ctx.answer.status = code;
            if let Err(err) = write_error(session, adapter, code, &message, None).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What Pingora's own log lines say of a request: method, host and the scrubbed path
    /// (its default prints the URI whole, `?key=` included).
    fn request_summary(&self, session: &Session, _ctx: &Exchange) -> String {
        let req = session.req_header();
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        format!(
            "{} {}, Host: {}",
            req.method,
            policy::scrub_path(path),
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Exchange) {
        // Errors, cancellations and bodiless responses end here; complete responses were
        // recorded in response_body_filter already.
        let _ = self.finish(session, e, ctx);
    }
}

/// The `kind` label of `sluice_upstream_errors_total`: a bounded name for Pingora's error
/// type (`tls` covers a provider certificate that does not verify).
fn upstream_error_kind(e: &ErrorType) -> &'static str {
    match e {
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => "tls",
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError => "connect",
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => "io",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_must_name_the_connections_host() {
        assert!(misdirected(Some("api.openai.com"), "api.openai.com").is_none());
        assert!(misdirected(Some("API.OpenAI.com.:443"), "api.openai.com").is_none());
        let r = misdirected(Some("example.org"), "api.openai.com").unwrap();
        assert_eq!(r.status, 421);
        assert!(r.message.contains("example.org") && r.message.contains("api.openai.com"));
        assert_eq!(misdirected(None, "api.openai.com").unwrap().status, 421);
        assert!(misdirected(Some("api.openai.com.evil"), "api.openai.com").is_some());
    }
}
