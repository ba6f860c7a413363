//! OpenTelemetry export (opt-in, `otel.endpoint`): a span per interaction and the GenAI
//! client metrics, over OTLP/HTTP with protobuf bodies.
//!
//! **Conventions followed: OpenTelemetry semantic conventions v1.41.0, GenAI (status
//! Development).** Spans are named `{gen_ai.operation.name} {gen_ai.request.model}`, kind
//! CLIENT, with `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.response.id`, `gen_ai.usage.input_tokens`/`output_tokens`, `gen_ai.response.finish_reasons`,
//! `server.address`/`server.port` (the real provider), `error.type` when the interaction
//! did not succeed; Sluice's own `sluice.decision`, `sluice.reason_codes`,
//! `sluice.policy_id`, `sluice.outcome`, `sluice.cost_usd`; and the caller as the
//! standard `process.*`, `user.*`, `k8s.*` attributes. Prompts and answers
//! (`gen_ai.input.messages`, `gen_ai.output.messages`) only with `otel.content: true`
//! and the ledger's `content_mode: full`. Metrics: `gen_ai.client.token.usage`
//! (`{token}`, by `gen_ai.token.type`), `gen_ai.client.operation.duration` (s) and, for
//! streams, `gen_ai.client.operation.time_to_first_chunk` (s), as cumulative explicit-bucket
//! histograms with the buckets the conventions advise. `gen_ai.response.model` (on spans
//! and metrics) and `gen_ai.response.id` (spans) are the provider's own, when it says
//! (Bedrock's bodies carry no id).
//!
//! Off the request path: the request path only builds the span's attributes and offers
//! them to a bounded queue (`otel.queue`); a full queue drops the span and counts it
//! (`sluice_otel_dropped_total{signal="traces",reason="queue_full"}`). One thread batches
//! (`otel.batch` spans or `otel.flush_interval_ms`), posts, and aggregates the metrics it
//! posts every `otel.metrics_interval_ms`; a collector that is down or refuses costs a
//! counted drop (`reason="export_failed"`), never a request.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
    ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use serde::Deserialize;

use crate::metrics;
use crate::record::{Interaction, Outcome};

/// The semantic-conventions version followed (its schema URL goes with every export).
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.0";

/// `otel:` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// OTLP/HTTP base URL of a collector, e.g. `http://otel-collector:4318`; `/v1/traces`
    /// and `/v1/metrics` are appended. Default: none (no export).
    pub endpoint: Option<String>,
    /// Extra request headers, e.g. an API key of a hosted backend.
    pub headers: BTreeMap<String, String>,
    /// Put prompts and answers in spans (only with `ledger.content_mode: full`).
    /// Default: false.
    pub content: bool,
    /// Spans waiting for export at most; beyond, dropped and counted. Default: 2048.
    pub queue: usize,
    /// Spans per export at most. Default: 512.
    pub batch: usize,
    /// Longest a span waits for its batch, ms. Default: 1000.
    pub flush_interval_ms: u64,
    /// Metrics export period, ms. Default: 10000.
    pub metrics_interval_ms: u64,
    /// Connect and read timeout of an export, ms. Default: 5000.
    pub timeout_ms: u64,
    /// `service.name` of the resource. Default: `sluice`.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            headers: BTreeMap::new(),
            content: false,
            queue: 2048,
            batch: 512,
            flush_interval_ms: 1000,
            metrics_interval_ms: 10_000,
            timeout_ms: 5000,
            service_name: "sluice".into(),
        }
    }
}

/// What the request path hands over: the span, and the values the metrics aggregate.
struct Event {
    span: Span,
    /// Attributes shared by the three metrics.
    metric_attrs: Vec<KeyValue>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    duration_s: f64,
    ttfc_s: Option<f64>,
}

/// What the export thread receives: spans, or a request to send everything it holds.
enum Msg {
    Event(Box<Event>),
    /// Export what is batched and the metrics now, then answer.
    Flush(SyncSender<()>),
}

/// The handle the data plane holds.
pub struct Exporter {
    tx: SyncSender<Msg>,
    content: bool,
}

impl Exporter {
    /// Starts the export thread when `otel.endpoint` is set; `content_full`: the ledger
    /// keeps content (`content_mode: full`), without which no content is exported.
    pub fn start(config: &OtelConfig, content_full: bool) -> Option<Exporter> {
        let endpoint = config.endpoint.clone()?;
        let (tx, rx) = sync_channel(config.queue.max(1));
        let worker = Worker::new(config.clone(), endpoint);
        let spawned = std::thread::Builder::new()
            .name("sluice-otel".into())
            .spawn(move || worker.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "otel: cannot start the export thread; nothing is exported");
            return None;
        }
        Some(Exporter {
            tx,
            content: config.content && content_full,
        })
    }

    /// Offers an interaction's span and measurements; never blocks (a full queue drops
    /// it, counted).
    pub fn submit(&self, r: &Interaction, started: SystemTime) {
        let event = event(r, started, self.content);
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::OTEL_DROPPED
                    .with_label_values(&["traces", "queue_full"])
                    .inc();
            }
        }
    }

    /// At shutdown: exports the spans still queued and the metrics, waiting at most
    /// `timeout` (what is left then is lost, and said).
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (ack, done) = sync_channel(1);
        let mut msg = Msg::Flush(ack);
        // The queue may be full: retry until the thread makes room or time runs out.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    tracing::warn!("otel: the export thread did not take the final flush; queued spans are lost");
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            tracing::warn!(
                timeout_s = timeout.as_secs_f64(),
                "otel: the final export did not finish in time"
            );
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// `gen_ai.provider.name` (the conventions' well-known values where there is one).
pub fn provider_name(provider: &str) -> &str {
    match provider {
        "gemini" => "gcp.gemini",
        "azure" | "azure_openai" => "azure.ai.openai",
        "bedrock" => "aws.bedrock",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}

/// `gen_ai.operation.name` of an endpoint.
pub fn operation_name(endpoint: Option<&str>) -> &'static str {
    match endpoint {
        Some(e) if e.contains("embed") => "embeddings",
        Some(e) if e.contains("generate") => "generate_content",
        Some(e) if e.contains("chat") || e == "messages" || e.starts_with("converse") => "chat",
        Some("responses") => "chat",
        Some("completions") => "text_completion",
        _ => "chat",
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A trace id: a UUIDv7 (time-ordered, 74 random bits), unique per interaction.
fn trace_id() -> Vec<u8> {
    uuid::Uuid::now_v7().as_bytes().to_vec()
}

/// A span id: the random half of another UUIDv7.
fn span_id() -> Vec<u8> {
    uuid::Uuid::now_v7().as_bytes()[8..].to_vec()
}

fn event(r: &Interaction, started: SystemTime, content: bool) -> Event {
    let operation = operation_name(r.endpoint.as_deref());
    let provider = provider_name(&r.provider);
    let model = r.model.as_deref().unwrap_or("");
    let mut metric_attrs = vec![
        s("gen_ai.operation.name", operation),
        s("gen_ai.provider.name", provider),
    ];
    if !model.is_empty() {
        metric_attrs.push(s("gen_ai.request.model", model));
    }
    if let Some(m) = &r.response.model {
        metric_attrs.push(s("gen_ai.response.model", m.clone()));
    }
    let (host, port) = match &r.upstream.sni {
        Some(h) => (Some(h.clone()), 443),
        None => (None, 0),
    };
    if let Some(h) = &host {
        metric_attrs.push(s("server.address", h.clone()));
    }
    let error_type = match r.outcome {
        Outcome::Success => None,
        other => Some(if r.status >= 400 {
            r.status.to_string()
        } else {
            other.as_str().to_owned()
        }),
    };
    if let Some(e) = &error_type {
        metric_attrs.push(s("error.type", e.clone()));
    }
    let mut attrs = metric_attrs.clone();
    if port > 0 {
        attrs.push(i("server.port", port));
    }
    if let Some(id) = &r.response.id {
        attrs.push(s("gen_ai.response.id", id.clone()));
    }
    if let Some(n) = r.usage.input_tokens {
        attrs.push(i("gen_ai.usage.input_tokens", n as i64));
    }
    if let Some(n) = r.usage.output_tokens {
        attrs.push(i("gen_ai.usage.output_tokens", n as i64));
    }
    if let Some(f) = &r.response.finish_reason {
        attrs.push(kv(
            "gen_ai.response.finish_reasons",
            any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::StringValue(f.clone())),
                }],
            }),
        ));
    }
    attrs.push(s("sluice.decision", r.decision));
    attrs.push(s("sluice.outcome", r.outcome.as_str()));
    if !r.reason_codes.is_empty() {
        attrs.push(kv(
            "sluice.reason_codes",
            any_value::Value::ArrayValue(ArrayValue {
                values: r
                    .reason_codes
                    .iter()
                    .map(|c| AnyValue {
                        value: Some(any_value::Value::StringValue(c.clone())),
                    })
                    .collect(),
            }),
        ));
    }
    if let Some(p) = &r.policy_id {
        attrs.push(s("sluice.policy_id", p.clone()));
    }
    if let Some(c) = r.cost_usd {
        attrs.push(kv("sluice.cost_usd", any_value::Value::DoubleValue(c)));
    }
    attrs.push(s("sluice.interaction.id", r.id.clone()));
    let id = &r.identity;
    if let Some(p) = id.pid {
        attrs.push(i("process.pid", i64::from(p)));
    }
    if let Some(p) = &id.process {
        attrs.push(s("process.executable.name", p.clone()));
    }
    if let Some(p) = &id.exe {
        attrs.push(s("process.executable.path", p.clone()));
    }
    if let Some(u) = id.uid {
        attrs.push(i("process.owner.id", i64::from(u)));
    }
    if let Some(u) = &id.user {
        attrs.push(s("user.name", u.clone()));
    }
    if let Some(t) = &id.team {
        attrs.push(s("sluice.team", t.clone()));
    }
    if let Some(a) = &id.client_addr {
        attrs.push(s("client.address", a.clone()));
    }
    if let Some(k) = &id.kubernetes {
        attrs.push(s("k8s.namespace.name", k.namespace.clone()));
        attrs.push(s("k8s.pod.name", k.pod.clone()));
        if let Some(c) = &k.container {
            attrs.push(s("k8s.container.name", c.clone()));
        }
    }
    if let Some(uid) = &id.pod_uid {
        attrs.push(s("k8s.pod.uid", uid.clone()));
    }
    if content {
        if let Ok(m) = serde_json::to_string(&r.request.messages) {
            attrs.push(s("gen_ai.input.messages", m));
        }
        let out = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": r.response.output}]}]);
        attrs.push(s("gen_ai.output.messages", out.to_string()));
    }
    let end = started + Duration::from_secs_f64((r.latency_ms / 1000.0).max(0.0));
    let span = Span {
        trace_id: trace_id(),
        span_id: span_id(),
        name: if model.is_empty() {
            operation.to_owned()
        } else {
            format!("{operation} {model}")
        },
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: nanos(started),
        end_time_unix_nano: nanos(end),
        attributes: attrs,
        status: Some(Status {
            code: if error_type.is_some() {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: r.error.clone().unwrap_or_default(),
        }),
        ..Span::default()
    };
    Event {
        span,
        metric_attrs,
        input_tokens: r.usage.input_tokens,
        output_tokens: r.usage.output_tokens,
        duration_s: r.latency_ms / 1000.0,
        ttfc_s: if r.stream {
            r.ttft_ms.map(|t| t / 1000.0)
        } else {
            None
        },
    }
}

/// The buckets the GenAI conventions advise.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

struct Series {
    attrs: Vec<KeyValue>,
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Cumulative histograms by (metric, attributes).
struct Histograms {
    start_ns: u64,
    series: BTreeMap<(&'static str, String), Series>,
}

impl Histograms {
    fn record(&mut self, name: &'static str, attrs: &[KeyValue], value: f64) {
        let bounds = bounds(name);
        let key = (name, format!("{attrs:?}"));
        let s = self.series.entry(key).or_insert_with(|| Series {
            attrs: attrs.to_vec(),
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
        let at = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        s.counts[at] += 1;
        s.count += 1;
        s.sum += value;
        s.min = s.min.min(value);
        s.max = s.max.max(value);
    }

    fn metrics(&self, now_ns: u64) -> Vec<Metric> {
        let mut by_name: BTreeMap<&'static str, Vec<HistogramDataPoint>> = BTreeMap::new();
        for ((name, _), s) in &self.series {
            by_name.entry(name).or_default().push(HistogramDataPoint {
                attributes: s.attrs.clone(),
                start_time_unix_nano: self.start_ns,
                time_unix_nano: now_ns,
                count: s.count,
                sum: Some(s.sum),
                bucket_counts: s.counts.clone(),
                explicit_bounds: bounds(name).to_vec(),
                min: Some(s.min),
                max: Some(s.max),
                ..HistogramDataPoint::default()
            });
        }
        by_name
            .into_iter()
            .map(|(name, points)| Metric {
                name: name.to_owned(),
                description: describe(name).to_owned(),
                unit: if name == TOKEN_USAGE { "{token}" } else { "s" }.to_owned(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Metric::default()
            })
            .collect()
    }
}

const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
const DURATION: &str = "gen_ai.client.operation.duration";
const TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";

fn bounds(name: &str) -> &'static [f64] {
    if name == TOKEN_USAGE {
        TOKEN_BUCKETS
    } else {
        SECONDS_BUCKETS
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        TOKEN_USAGE => "Number of input and output tokens used",
        DURATION => "GenAI operation duration",
        _ => "Time to receive the first chunk of a streamed answer",
    }
}

struct Worker {
    config: OtelConfig,
    endpoint: String,
    headers: Vec<(String, String)>,
    resource: Resource,
    histograms: Histograms,
}

impl Worker {
    fn new(config: OtelConfig, endpoint: String) -> Worker {
        let mut headers: Vec<(String, String)> = config
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        headers.push(("content-type".into(), "application/x-protobuf".into()));
        let resource = Resource {
            attributes: vec![
                s("service.name", config.service_name.clone()),
                s("service.version", env!("CARGO_PKG_VERSION")),
                s(
                    "host.name",
                    std::env::var("NODE_NAME")
                        .ok()
                        .or_else(|| {
                            std::fs::read_to_string("/proc/sys/kernel/hostname")
                                .ok()
                                .map(|h| h.trim().to_owned())
                        })
                        .unwrap_or_default(),
                ),
            ],
            ..Resource::default()
        };
        Worker {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            config,
            headers,
            resource,
            histograms: Histograms {
                start_ns: nanos(SystemTime::now()),
                series: BTreeMap::new(),
            },
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "sluice".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..InstrumentationScope::default()
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let flush = Duration::from_millis(self.config.flush_interval_ms.max(10));
        let metrics_every = Duration::from_millis(self.config.metrics_interval_ms.max(100));
        let mut batch: Vec<Span> = Vec::new();
        let mut last_flush = Instant::now();
        let mut last_metrics = Instant::now();
        let mut dirty = false;
        loop {
            // A flush asked for (at shutdown) sends everything now, like a closed queue.
            let mut ack = None;
            let mut next = match rx.recv_timeout(flush) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    ack = Some(None);
                    None
                }
            };
            while let Some(m) = next.take() {
                match m {
                    Msg::Event(e) => {
                        self.take(*e, &mut batch);
                        dirty = true;
                    }
                    Msg::Flush(done) => {
                        ack = Some(Some(done));
                        break;
                    }
                }
                if batch.len() < self.config.batch {
                    next = rx.try_recv().ok();
                }
            }
            let now = ack.is_some();
            if !batch.is_empty()
                && (now || batch.len() >= self.config.batch || last_flush.elapsed() >= flush)
            {
                self.export_spans(std::mem::take(&mut batch));
                last_flush = Instant::now();
            }
            if dirty && (now || last_metrics.elapsed() >= metrics_every) {
                self.export_metrics();
                last_metrics = Instant::now();
            }
            match ack {
                Some(Some(done)) => {
                    let _ = done.send(());
                }
                Some(None) => return,
                None => {}
            }
        }
    }

    fn take(&mut self, e: Event, batch: &mut Vec<Span>) {
        let h = &mut self.histograms;
        for (kind, n) in [("input", e.input_tokens), ("output", e.output_tokens)] {
            if let Some(n) = n {
                let mut attrs = e.metric_attrs.clone();
                attrs.push(s("gen_ai.token.type", kind));
                h.record(TOKEN_USAGE, &attrs, n as f64);
            }
        }
        h.record(DURATION, &e.metric_attrs, e.duration_s);
        if let Some(t) = e.ttfc_s {
            h.record(TIME_TO_FIRST_CHUNK, &e.metric_attrs, t);
        }
        batch.push(e.span);
    }

    fn export_spans(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(Self::scope()),
                    spans,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: SCHEMA_URL.into(),
            }],
        }
        .encode_to_vec();
        self.post("traces", "/v1/traces", &body, n);
    }

    fn export_metrics(&self) {
        let metrics = self.histograms.metrics(nanos(SystemTime::now()));
        let n = metrics.len() as u64;
        let body = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(Self::scope()),
                    metrics,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: SCHEMA_URL.into(),
            }],
        }
        .encode_to_vec();
        self.post("metrics", "/v1/metrics", &body, n);
    }

    /// One attempt and one retry; then the batch is dropped and counted.
    fn post(&self, signal: &str, path: &str, body: &[u8], items: u64) {
        let timeout = Duration::from_millis(self.config.timeout_ms.max(100));
        let mut last = String::new();
        for _ in 0..2 {
            match crate::http::client::exchange_bytes(
                &self.endpoint,
                "POST",
                path,
                &self.headers,
                body,
                timeout,
            ) {
                Ok(a) if (200..300).contains(&a.status) => {
                    metrics::OTEL_EXPORTED
                        .with_label_values(&[signal])
                        .inc_by(items);
                    return;
                }
                Ok(a) => last = format!("HTTP {}", a.status),
                Err(e) => last = e.to_string(),
            }
        }
        metrics::OTEL_DROPPED
            .with_label_values(&[signal, "export_failed"])
            .inc_by(items);
        tracing::warn!(signal, items, error = %last, "otel: export failed; dropped");
    }
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("content", &self.content)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Box<Interaction> {
        match crate::testing::sample_interaction(1) {
            crate::record::Record::Interaction(r) => r,
            _ => unreachable!("sample_interaction makes an interaction"),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = sync_channel(1);
        let exporter = Exporter { tx, content: false };
        let r = sample();
        let dropped = || {
            metrics::OTEL_DROPPED
                .with_label_values(&["traces", "queue_full"])
                .get()
        };
        let before = dropped();
        exporter.submit(&r, SystemTime::now());
        exporter.submit(&r, SystemTime::now());
        exporter.submit(&r, SystemTime::now());
        assert_eq!(dropped() - before, 2, "one queued, two dropped");
    }

    #[test]
    fn conventions_names() {
        assert_eq!(operation_name(Some("chat.completions")), "chat");
        assert_eq!(operation_name(Some("messages")), "chat");
        assert_eq!(operation_name(Some("embeddings")), "embeddings");
        assert_eq!(operation_name(Some("generateContent")), "generate_content");
        assert_eq!(provider_name("gemini"), "gcp.gemini");
        assert_eq!(provider_name("bedrock"), "aws.bedrock");
        assert_eq!(provider_name("openai"), "openai");
    }

    #[test]
    fn content_goes_only_where_allowed() {
        let r = sample();
        let keys = |content| {
            event(&r, SystemTime::now(), content)
                .span
                .attributes
                .into_iter()
                .map(|kv| kv.key)
                .collect::<Vec<_>>()
        };
        assert!(!keys(false).iter().any(|k| k == "gen_ai.input.messages"));
        assert!(keys(true).iter().any(|k| k == "gen_ai.input.messages"));
        assert!(keys(false).iter().any(|k| k == "gen_ai.request.model"));
    }
}
