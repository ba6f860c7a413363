//! The data plane: every accepted connection is classified here, then relayed untouched,
//! refused, or terminated and handed to the HTTP interceptor.
//!
//! ```text
//! accept ─▶ sniff first bytes (TLS ClientHello SNI, or plain-HTTP Host)
//!          ├─ host is an inspected provider ─▶ TLS with a minted leaf ─▶ http::Interceptor
//!          ├─ host listed in `passthrough:` ─▶ relay::passthrough (connection record)
//!          └─ anything else (unknown or missing SNI/Host, not TLS or HTTP, no
//!             destination, would loop) ─▶ refused (connection record, counter)
//! ```
//!
//! Nothing here parses provider formats or decides policy; it only routes connections.

mod coalesce;
mod exchange;
mod guard;
mod http;
mod keepalive;
pub mod listen;
mod relay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

pub use http::Interceptor;
pub use keepalive::HeadLimits;

use crate::config::Config;
use crate::identity;
use crate::metrics;
use crate::original_dst::{Accepted, Destination, LoopGuard, OriginalDst};
use crate::providers::{self, normalize_host, Adapter, HostPattern};
use crate::record::{self, Connection, Identity, Outcome, Record, Upstream};
use crate::sink::Recorder;
use crate::tls::{self, Sniffed};

/// How long a new connection may take to show its first bytes before it is treated as
/// opaque (server-speaks-first protocols, idle clients).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS 1.2-framed fatal alert `unrecognized_name` (112): sent to a client whose SNI is
/// neither inspected nor listed for passthrough, before closing.
const TLS_ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// Largest plain-HTTP request head read to find the `Host` header.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// One inspected destination, resolved from config.
pub struct ProviderEntry {
    /// Which hosts.
    pattern: HostPattern,
    /// TLS (true) or plain HTTP.
    pub tls: bool,
    /// The provider format.
    pub adapter: &'static dyn Adapter,
}

/// The inspected hosts, most specific first (exact names before wildcards), and the hosts
/// an operator listed for passthrough.
pub struct ProviderTable {
    entries: Vec<ProviderEntry>,
    passthrough: Vec<HostPattern>,
}

impl ProviderTable {
    /// Build from validated config.
    pub fn from_config(config: &Config) -> ProviderTable {
        let mut entries: Vec<ProviderEntry> = config
            .providers
            .iter()
            .filter_map(|p| {
                let adapter = match &p.adapter {
                    Some(name) => providers::adapter_by_name(name)?,
                    None => providers::adapter_for_host(&p.host)?,
                };
                Some(ProviderEntry {
                    pattern: HostPattern::parse(&p.host).ok()?,
                    tls: p.tls,
                    adapter,
                })
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.pattern.specificity()));
        let passthrough = config
            .passthrough
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect();
        ProviderTable {
            entries,
            passthrough,
        }
    }

    /// Whether `host` (normalised) is listed for passthrough.
    pub fn is_passthrough(&self, host: &str) -> bool {
        self.passthrough.iter().any(|p| p.matches(host))
    }

    /// The entry for `host` (already normalised), exact matches first.
    pub fn find(&self, host: &str, tls: bool) -> Option<&ProviderEntry> {
        self.entries
            .iter()
            .find(|e| e.tls == tls && e.pattern.matches(host))
    }
}

/// What the interceptor needs to know about the connection a request arrived on.
pub struct ConnInfo {
    /// Both ends of the accepted socket.
    pub accepted: Accepted,
    /// Normalised SNI or Host that selected the provider.
    pub host: String,
    /// Where requests are forwarded.
    pub dst: SocketAddr,
    /// Upstream TLS (with `host` as SNI) or plain HTTP.
    pub tls: bool,
    /// The provider format.
    pub adapter: &'static dyn Adapter,
    /// Who connected.
    pub identity: Identity,
    /// Requests the HTTP layer handed to the interceptor on this connection.
    pub requests: std::sync::atomic::AtomicU64,
}

/// Live intercepted connections, keyed by their two ends, so the HTTP layer (which only
/// sees socket addresses) finds its connection's context.
#[derive(Default)]
pub struct ConnTable {
    inner: Mutex<HashMap<Accepted, Arc<ConnInfo>>>,
}

impl ConnTable {
    fn insert(self: &Arc<Self>, info: Arc<ConnInfo>) -> ConnGuard {
        let key = info.accepted;
        self.inner.lock().insert(key, info);
        ConnGuard {
            table: self.clone(),
            key,
        }
    }

    /// The context of a live connection.
    pub fn get(&self, key: &Accepted) -> Option<Arc<ConnInfo>> {
        self.inner.lock().get(key).cloned()
    }
}

/// Removes a connection from the table when its handling ends.
struct ConnGuard {
    table: Arc<ConnTable>,
    key: Accepted,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.table.inner.lock().remove(&self.key);
    }
}

/// State shared by every connection.
pub struct Shared {
    /// Inspected hosts.
    pub providers: ProviderTable,
    /// Original destination source.
    pub original_dst: Box<dyn OriginalDst>,
    /// OpenTelemetry export, when configured.
    pub otel: Option<crate::otel::Exporter>,
    /// Names of the node's pods, for attribution.
    pub pods: Arc<crate::identity::pods::PodDirectory>,
    /// Who client addresses are (`networks:`).
    pub networks: crate::identity::networks::Networks,
    /// Loop guard over our own listeners.
    pub loop_guard: LoopGuard,
    /// Where connection and admin records go (off the request path).
    pub recorder: Recorder,
    /// The audit ledger (interactions are appended synchronously).
    pub ledger: Arc<crate::ledger::Ledger>,
    /// What to do when it cannot be written.
    pub on_ledger_failure: crate::config::OnLedgerFailure,
    /// Unix seconds of the last failed append (0: none).
    pub ledger_failed_at: std::sync::atomic::AtomicU64,
    /// Live intercepted connections.
    pub conns: Arc<ConnTable>,
    /// Bytes of each body inspected.
    pub max_inspect_bytes: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read (silence) timeout.
    pub read_timeout: Duration,
    /// Client body deadlines: longest silence, and longest time in all.
    pub body_idle_timeout: Duration,
    pub body_deadline: Duration,
    /// Waiting for and reading request heads (HTTP/1.1).
    pub head_limits: HeadLimits,
    /// Offer h2 upstream.
    pub upstream_h2: bool,
    /// SO_MARK for upstream sockets, so the redirect probe never loops them back.
    pub mark: Option<u32>,
    /// Governance: virtual keys and the policy chain, swapped whole on reload.
    pub policy: arc_swap::ArcSwap<crate::policy::Engine>,
}

/// The `ServerApp` every listener runs.
pub struct InterceptApp {
    shared: Arc<Shared>,
    acceptor: Acceptor,
    http: Arc<HttpProxy<Interceptor>>,
    /// Behind a transparent (TPROXY) listener: every connection was accepted on the
    /// address its client dialled, which is therefore its destination, not a loop.
    transparent: bool,
}

impl InterceptApp {
    /// Wire the app from its parts.
    pub fn new(
        shared: Arc<Shared>,
        acceptor: Acceptor,
        http: Arc<HttpProxy<Interceptor>>,
    ) -> InterceptApp {
        InterceptApp {
            shared,
            acceptor,
            http,
            transparent: false,
        }
    }

    /// The same app for a transparent listener (the appliance's capture).
    pub fn transparent(self) -> InterceptApp {
        InterceptApp {
            transparent: true,
            ..self
        }
    }
}

/// What the first bytes told us.
enum FirstBytes {
    Tls(Option<String>),
    Http(Option<String>),
    Opaque,
}

#[async_trait]
impl ServerApp for InterceptApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let started = (Instant::now(), SystemTime::now());
        let accepted = accepted_of(&stream)?;
        let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("listener produced a non-TCP stream; closing");
            return None;
        };
        let _ = l4.set_nodelay();
        // The sniff, the handshake and the relay are boxed: this future lives as long as
        // the connection (idle keep-alive included), and unboxed it would be as large as
        // the largest of them (the sniff's 4 KiB read buffer, rustls's handshake state).
        let first = match Box::pin(sniff(&mut l4)).await {
            Ok(first) => first,
            Err(e) => {
                tracing::debug!(peer = %accepted.peer, error = %e, "connection closed before it said anything");
                return None;
            }
        };
        let (host, is_tls) = match &first {
            FirstBytes::Tls(h) => (h.clone(), true),
            FirstBytes::Http(h) => (h.clone(), false),
            FirstBytes::Opaque => (None, false),
        };
        let shared = &self.shared;
        let dst = {
            use std::os::fd::{AsRawFd, BorrowedFd};
            // SAFETY: the fd belongs to `l4`, which outlives this borrow.
            let socket = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) };
            shared
                .original_dst
                .lookup_socket(socket, &accepted, host.as_deref())
        };
        let identity = identity::of_connection(
            accepted.peer,
            dst.as_ref().and_then(|d| d.attribution.as_ref()),
            &shared.pods,
            &shared.networks,
        );
        let refuse = |reason: &'static str, dst: Option<SocketAddr>| {
            metrics::REFUSED.with_label_values(&[reason]).inc();
            tracing::info!(peer = %accepted.peer, host = host.as_deref().unwrap_or(""), reason, "connection refused");
            connection_record(
                started,
                Outcome::Refused,
                reason,
                host.clone(),
                identity.clone(),
                dst,
                (0, 0),
                None,
            )
        };
        let Some(Destination { addr: dst, .. }) = dst else {
            shared.recorder.submit(refuse("no_destination", None)).await;
            return None;
        };
        if shared
            .loop_guard
            .is_self(dst, accepted.local, self.transparent)
        {
            shared.recorder.submit(refuse("loop", Some(dst))).await;
            return None;
        }
        let entry = host
            .as_deref()
            .and_then(|h| shared.providers.find(h, is_tls));
        let Some(entry) = entry else {
            // Captured traffic is inspected or refused: it is relayed untouched only when an
            // operator listed its host for passthrough.
            let listed = host
                .as_deref()
                .filter(|h| shared.providers.is_passthrough(h));
            let Some(_) = listed else {
                let reason = match (&first, host.is_some()) {
                    (FirstBytes::Tls(_), true) => "sni_not_inspected",
                    (FirstBytes::Tls(_), false) => "sni_missing",
                    (FirstBytes::Http(_), true) => "host_not_inspected",
                    (FirstBytes::Http(_), false) => "host_missing",
                    (FirstBytes::Opaque, _) => "not_tls_or_http",
                };
                if is_tls {
                    // A fatal `unrecognized_name` alert, so the client says why it failed.
                    let _ =
                        tokio::io::AsyncWriteExt::write_all(&mut *l4, &TLS_ALERT_UNRECOGNIZED_NAME)
                            .await;
                }
                shared.recorder.submit(refuse(reason, Some(dst))).await;
                return None;
            };
            metrics::PASSTHROUGH.inc();
            let mut pending = PendingConnection {
                shared: shared.clone(),
                started,
                reason: "passthrough_listed",
                host: host.clone(),
                identity: Some(identity),
                dst,
                bytes: Arc::new(relay::Bytes::default()),
            };
            let err = Box::pin(relay::passthrough(
                *l4,
                dst,
                shared.mark,
                pending.bytes.clone(),
            ))
            .await;
            let bytes = pending.bytes.get();
            let outcome = if err.is_some() && bytes == (0, 0) {
                Outcome::Failed
            } else {
                Outcome::Passthrough
            };
            let record = pending.record(outcome, err);
            shared.recorder.submit(record).await;
            return None;
        };
        let info = Arc::new(ConnInfo {
            accepted,
            host: host.clone().unwrap_or_default(),
            dst,
            tls: entry.tls,
            adapter: entry.adapter,
            identity: identity.clone(),
            requests: std::sync::atomic::AtomicU64::new(0),
        });
        let _guard = shared.conns.insert(info.clone());
        // Small writes (a response's head, then its body) leave together (`coalesce`).
        let l4 = coalesce::Coalesce::new(*l4);
        let stream: Stream = if is_tls {
            let limit = shared.head_limits.tls_handshake;
            let handshake = Box::pin(self.acceptor.tls_handshake(l4));
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(tls)) => {
                    metrics::TLS_HANDSHAKES.with_label_values(&["ok"]).inc();
                    Box::new(tls)
                }
                Err(_) => {
                    // A client that sent its ClientHello and stalls: it holds nothing longer.
                    metrics::TLS_HANDSHAKES
                        .with_label_values(&["timeout"])
                        .inc();
                    tracing::warn!(peer = %accepted.peer, ?limit, "downstream TLS handshake timed out (downstream.tls_handshake_timeout_ms)");
                    return None;
                }
                Ok(Err(e)) => {
                    metrics::TLS_HANDSHAKES.with_label_values(&["failed"]).inc();
                    // Typically the client does not trust the organisation CA yet.
                    tracing::warn!(peer = %accepted.peer, error = %e, "downstream TLS handshake failed (does the client trust the Sluice CA?)");
                    return None;
                }
            }
        } else {
            Box::new(l4)
        };
        let served = keepalive::serve(&self.http, stream, shutdown, shared.head_limits).await;
        let (reused, refused) = match served {
            keepalive::Served::Ended(reused) => (reused, None),
            keepalive::Served::HeadRefused(reason) => (None, Some(reason)),
        };
        let nothing = info.requests.load(std::sync::atomic::Ordering::Relaxed) == 0;
        if refused.is_some() || nothing {
            // A head refused here (late or too large: on the record whichever request of
            // the connection it was), or nothing reached the interceptor: the HTTP layer
            // refused the request head (malformed headers, obfuscated Transfer-Encoding,
            // conflicting Content-Length…) or the client sent none.
            let reason = refused.unwrap_or("no_request_accepted");
            metrics::REFUSED.with_label_values(&[reason]).inc();
            let record = connection_record(
                started,
                Outcome::Refused,
                reason,
                host.clone(),
                identity,
                Some(dst),
                (0, 0),
                None,
            );
            shared.recorder.submit(record).await;
        }
        reused
    }
}

fn accepted_of(stream: &Stream) -> Option<Accepted> {
    let digest = stream.get_socket_digest()?;
    Some(Accepted {
        peer: *digest.peer_addr()?.as_inet()?,
        local: *digest.local_addr()?.as_inet()?,
    })
}

/// Read the first bytes, decide what they are, and put them back.
async fn sniff(l4: &mut L4Stream) -> std::io::Result<FirstBytes> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let decision = loop {
        let n = match tokio::time::timeout_at(deadline, l4.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => break FirstBytes::Opaque,
        };
        if n == 0 {
            if buf.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            break FirstBytes::Opaque;
        }
        buf.extend_from_slice(&chunk[..n]);
        match tls::sniff(&buf) {
            Sniffed::Tls(info) => break FirstBytes::Tls(info.sni),
            Sniffed::Malformed(_) => break FirstBytes::Opaque,
            Sniffed::NeedMore if buf.len() < tls::MAX_CLIENT_HELLO => continue,
            Sniffed::NeedMore => break FirstBytes::Opaque,
            Sniffed::NotTls => match http_host(&buf) {
                HeadScan::Host(h) => break FirstBytes::Http(h),
                HeadScan::NeedMore if buf.len() < MAX_HTTP_HEAD => continue,
                _ => break FirstBytes::Opaque,
            },
        }
    };
    l4.rewind(&buf);
    Ok(decision)
}

enum HeadScan {
    Host(Option<String>),
    NeedMore,
    NotHttp,
}

/// The `Host` of a plain HTTP/1.x request head.
fn http_host(buf: &[u8]) -> HeadScan {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => HeadScan::Host(
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(normalize_host),
        ),
        Ok(httparse::Status::Partial) => HeadScan::NeedMore,
        Err(_) => HeadScan::NotHttp,
    }
}

/// A relayed connection whose record is still to be written. If the relay is cut off
/// (the proxy stops while the connection is open), dropping this writes the record
/// straight to the ledger: a connection that crossed Sluice always has one.
struct PendingConnection {
    shared: Arc<Shared>,
    started: (Instant, SystemTime),
    reason: &'static str,
    host: Option<String>,
    /// Taken when the record is made.
    identity: Option<Identity>,
    dst: SocketAddr,
    bytes: Arc<relay::Bytes>,
}

impl PendingConnection {
    fn record(&mut self, outcome: Outcome, err: Option<String>) -> Record {
        connection_record(
            self.started,
            outcome,
            self.reason,
            self.host.clone(),
            self.identity.take().unwrap_or_default(),
            Some(self.dst),
            self.bytes.get(),
            err,
        )
    }
}

impl Drop for PendingConnection {
    fn drop(&mut self) {
        if self.identity.is_none() {
            return; // recorded
        }
        let record = self.record(
            Outcome::Passthrough,
            Some("Sluice stopped while the connection was open; the relay was cut".into()),
        );
        if let Err(e) = self.shared.ledger.append(&record) {
            tracing::error!(error = %e, "cannot record a relay cut off at shutdown");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn connection_record(
    started: (Instant, SystemTime),
    outcome: Outcome,
    reason: &str,
    sni: Option<String>,
    identity: Identity,
    dst: Option<SocketAddr>,
    (up, down): (u64, u64),
    error: Option<String>,
) -> Record {
    Record::Connection(Box::new(Connection {
        id: record::new_id(),
        ts: record::rfc3339(started.1),
        kind: "connection",
        outcome,
        reason: reason.to_string(),
        sni: sni.clone(),
        identity,
        upstream: Upstream {
            addr: dst.map(|d| d.to_string()),
            sni,
        },
        bytes_up: up,
        bytes_down: down,
        duration_ms: started.0.elapsed().as_secs_f64() * 1e3,
        error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_head_host() {
        assert!(matches!(
            http_host(b"POST /v1/chat/completions HTTP/1.1\r\nHost: Ollama.Local:11434\r\n\r\n"),
            HeadScan::Host(Some(h)) if h == "ollama.local"
        ));
        assert!(matches!(
            http_host(b"POST /v1/chat HTTP/1.1\r\nHo"),
            HeadScan::NeedMore
        ));
        assert!(matches!(
            http_host(b"\x00\x01garbage\r\n\r\n"),
            HeadScan::NotHttp
        ));
    }

    #[test]
    fn provider_table_prefers_exact_then_wildcard_and_respects_tls() {
        let config = Config::from_yaml(
            "providers:\n  - host: api.openai.com\n  - host: \"*.openai.azure.com\"\n  - host: llm.local\n    tls: false\n    adapter: openai_compatible\n",
            "t.yaml",
        )
        .unwrap();
        let t = ProviderTable::from_config(&config);
        assert_eq!(
            t.find("api.openai.com", true).unwrap().adapter.name(),
            "openai"
        );
        assert_eq!(
            t.find("corp.openai.azure.com", true)
                .unwrap()
                .adapter
                .name(),
            "azure_openai"
        );
        assert!(t.find("openai.azure.com.evil.com", true).is_none());
        assert!(t.find("api.openai.com", false).is_none());
        assert!(t.find("llm.local", false).is_some());
        assert!(t.find("llm.local", true).is_none());
    }
}
