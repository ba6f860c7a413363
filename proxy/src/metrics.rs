//! Every Prometheus metric Sluice exports, in one place, all named `sluice_*`.
//!
//! Metrics live in a private [`Registry`] (not the process-global default) so tests and
//! embedders see only Sluice's series. [`serve`] answers `GET /metrics` on its own port.
//! Label values come from small closed sets (provider names, outcomes, reasons), never
//! from client input, so cardinality stays bounded.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The registry holding all Sluice series.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The name of every family registered, for [`catalogue`].
static NAMES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `c` once and notes its name.
fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// Every metric family Sluice can export, by name, whether or not it has a series yet
/// (a labelled family appears in `/metrics` only once a label value is used): what
/// dashboards and alerting rules may reference.
pub fn catalogue() -> Vec<String> {
    init();
    LazyLock::force(&KUBERNETES_PODS);
    LazyLock::force(&KUBERNETES_API_ERRORS);
    LazyLock::force(&OTEL_EXPORTED);
    LazyLock::force(&OTEL_DROPPED);
    LazyLock::force(&COUNTER_STORE_UP);
    LazyLock::force(&COUNTER_STORE_ERRORS);
    LazyLock::force(&COUNTER_STORE_SECONDS);
    LazyLock::force(&COUNTER_STORE_FALLBACKS);
    LazyLock::force(&COUNTER_STORE_PENDING);
    LazyLock::force(&CENTRAL_LAG);
    LazyLock::force(&CENTRAL_SHIPPED);
    LazyLock::force(&CENTRAL_ERRORS);
    LazyLock::force(&SINK_LAG);
    LazyLock::force(&SINK_DELIVERED);
    LazyLock::force(&SINK_ERRORS);
    LazyLock::force(&SINK_DEAD_LETTERS);
    LazyLock::force(&SINK_SECONDS);
    LazyLock::force(&ALERTS);
    LazyLock::force(&ALERTS_FIRING);
    LazyLock::force(&ALERTS_LAG);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    names.sort();
    names.dedup();
    names
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(c)
}

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    register(c)
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    register(g)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("static metric definition");
    register(g)
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    register(h)
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition");
    register(h)
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const ADDED_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Intercepted requests by provider, endpoint and outcome.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_requests_total",
        "Intercepted LLM API requests",
        &["provider", "endpoint", "outcome"],
    )
});
/// Requests that ended in an error (upstream error status, connect/TLS failure, cancel).
pub static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_errors_total",
        "Intercepted requests that did not complete successfully",
        &["provider", "kind"],
    )
});
/// Tokens by provider, model class and direction.
pub static TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_tokens_total",
        "Tokens by provider, model family (the price table's name; `other` when unpriced) and direction (input, output)",
        &["provider", "model", "direction"],
    )
});

/// Spend in USD, by provider and model family.
pub static COST_USD: LazyLock<prometheus::CounterVec> = LazyLock::new(|| {
    let c = prometheus::CounterVec::new(
        Opts::new(
            "sluice_cost_usd_total",
            "Spend in US dollars by provider and model family (from the price table)",
        ),
        &["provider", "model"],
    )
    .expect("static metric definition");
    register(c)
});

pub static UNPRICED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_unpriced_interactions_total",
        "Interactions whose model is not in the price table (cost_usd is null)",
        &["provider"],
    )
});
/// Upstream latency: request sent to response complete.
pub static UPSTREAM_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sluice_upstream_latency_seconds",
        "Time from forwarding a request to the end of the provider's response",
        &["provider"],
        LATENCY_BUCKETS.to_vec(),
    )
});
/// Time spent inside Sluice for one request (parsing, decisions, record hand-off).
pub static ADDED_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_added_latency_seconds",
        "Time a request spent in Sluice itself, excluding the upstream",
        ADDED_BUCKETS.to_vec(),
    )
});
/// Downstream TLS handshakes by result.
pub static TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_tls_handshakes_total",
        "Downstream TLS handshakes terminated with the organisation CA",
        &["result"],
    )
});
/// Leaf certificate cache lookups.
pub static CERT_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_cert_cache_total",
        "Leaf certificate cache lookups (hit, miss = minted)",
        &["result"],
    )
});
/// Connections relayed untouched (SNI not inspected).
pub static PASSTHROUGH: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_passthrough_connections_total",
        "Connections relayed byte for byte without inspection",
    )
});
/// Bytes relayed on passthrough connections.
pub static PASSTHROUGH_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_passthrough_bytes_total",
        "Bytes relayed on passthrough connections",
        &["direction"],
    )
});
/// Connections refused (no known destination, loop, not a provider).
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_connections_refused_total",
        "Accepted connections refused instead of being forwarded",
        &["reason"],
    )
});
/// Records written by the sink.
pub static RECORDS_WRITTEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_records_written_total",
        "Records durably handed to the record sink",
        &["kind"],
    )
});
/// Record sink write failures.
pub static RECORD_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_record_write_errors_total",
        "Failed record writes (the writer retries; see the log)",
    )
});
/// Records waiting between the request path and the writer.
pub static RECORD_QUEUE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_record_queue_depth",
        "Records accepted but not yet written",
    )
});
/// Bodies cut at `max_inspect_bytes`.
pub static TRUNCATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_inspect_truncated_total",
        "Bodies larger than max_inspect_bytes (forwarded whole, inspected in part)",
        &["direction"],
    )
});

/// eBPF redirect events, from the probe's per-CPU counters.
pub static REDIRECT_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_redirect_events_total",
        "Connect-hook decisions: redirected, skipped_marked, fail_open, fail_closed, quic_refused, no_proxy_addr",
        &["event"],
    )
});

/// The appliance's capture: `reinstalled` (the nftables table or a policy route had gone
/// and was put back), `set_updated` (provider addresses changed), `update_failed`.
pub static APPLIANCE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_appliance_events_total",
        "Appliance capture events: reinstalled, set_updated, update_failed",
        &["event"],
    )
});

/// Guardrail detector hits on prompts, by category (whatever the action taken).
pub static GUARDRAIL_FINDINGS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_guardrail_findings_total",
        "Guardrail detector findings in prompts",
        &["category"],
    )
});
/// Policy decisions on interactions.
pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_policy_decisions_total",
        "Policy decisions: allow, redact, block, shadow_block, shadow_redact",
        &["decision"],
    )
});

/// Reason codes of policy decisions (a fixed vocabulary: `model_denied`, `prompt_injection`,
/// `budget_exceeded`, …), one count per code per request.
pub static REASONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_policy_reasons_total",
        "Reason codes of policy decisions, one per code per request",
        &["reason"],
    )
});

/// Time from the request to the first byte of a streamed answer, by provider.
pub static TIME_TO_FIRST_TOKEN: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sluice_time_to_first_token_seconds",
        "Time to the first byte of a streamed answer, by provider",
        &["provider"],
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Config reload attempts by result.
pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_config_reloads_total",
        "Config reloads (SIGHUP or file change): success, failure (old policy kept)",
        &["result"],
    )
});

/// Records appended to the audit ledger, by kind.
pub static LEDGER_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_ledger_records_total",
        "Records appended to the audit ledger",
        &["kind"],
    )
});
/// Ledger appends that failed (the caller's `on_ledger_failure` decides what happens).
pub static LEDGER_APPEND_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_ledger_append_errors_total",
        "Records that could not be appended to the audit ledger",
    )
});
/// Records appended but not yet in the ledger's SQLite index.
pub static LEDGER_INDEX_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_ledger_index_lag",
        "Records in the ledger WAL not yet indexed into SQLite",
    )
});
/// Signed ledger checkpoints written.
pub static LEDGER_CHECKPOINTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_ledger_checkpoints_total",
        "Signed checkpoints written to the audit ledger",
    )
});

/// Text exposition of every Sluice metric.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; an encoding error would be a bug in a
    // metric definition, which the unit tests exercise.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    buf
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g =
        prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(g)
}

/// Per budget (its shared name or policy id) and period: the highest spend this period
/// (per-identity budgets: the identity nearest its cap), updated as spend is settled.
pub static BUDGET_SPENT_USD: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    float_gauge_vec(
        "sluice_budget_spent_usd",
        "Highest spend this period under a budget (per-identity budgets: the identity nearest its cap)",
        &["budget", "period"],
    )
});

/// Per budget and period: its cap.
pub static BUDGET_LIMIT_USD: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    float_gauge_vec(
        "sluice_budget_limit_usd",
        "A budget's cap in US dollars",
        &["budget", "period"],
    )
});

/// Per budget and period: spent / cap (1 = exhausted).
pub static BUDGET_UTILISATION: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    float_gauge_vec(
        "sluice_budget_utilisation_ratio",
        "Highest spend this period over the budget's cap (1 = exhausted)",
        &["budget", "period"],
    )
});

/// Failures talking to a provider, by provider and kind (`tls`: its certificate did not
/// verify or the handshake failed; `connect`, `timeout`, `io`, `other`).
pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_upstream_errors_total",
        "Failures talking to a provider, by provider and kind (tls, connect, timeout, io, other)",
        &["provider", "kind"],
    )
});

/// Whether `/readyz` would answer ready, evaluated at each scrape (1 ready, 0 not).
pub static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_ready",
        "1 when every readiness check passes (what /readyz answers), 0 otherwise; evaluated at each scrape",
    )
});

/// Capacity of the record hand-off queue (`records.channel_capacity`).
pub static RECORD_QUEUE_CAPACITY: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_record_queue_capacity",
        "Capacity of the record hand-off queue (records.channel_capacity)",
    )
});

/// Requests in flight (streams until their last byte), by provider.
pub static IN_FLIGHT: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_requests_in_flight",
        "Requests being served (streams until their last byte), by provider",
        &["provider"],
    )
});

/// OpenTelemetry items exported (spans, metric streams), by signal.
pub static OTEL_EXPORTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_otel_exported_total",
        "OpenTelemetry items exported, by signal (traces: spans, metrics: metric streams)",
        &["signal"],
    )
});

/// OpenTelemetry items dropped, by signal and reason (`queue_full`, `export_failed`).
pub static OTEL_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_otel_dropped_total",
        "OpenTelemetry items dropped, by signal and reason (queue_full, export_failed)",
        &["signal", "reason"],
    )
});

/// Pods of this node known from the Kubernetes API (`kubernetes.api`); absent when the
/// API is not watched.
pub static KUBERNETES_PODS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_kubernetes_pods",
        "Pods of this node known from the Kubernetes API watch",
    )
});

/// Errors of the Kubernetes API watch (RBAC refusals, unreachable API server).
pub static KUBERNETES_API_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_kubernetes_api_errors_total",
        "Errors of the Kubernetes API pod watch (retried with backoff)",
    )
});

/// Touch every metric so each appears (at zero) from the first scrape on.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&ERRORS);
    LazyLock::force(&TOKENS);
    LazyLock::force(&COST_USD);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&BUDGET_SPENT_USD);
    LazyLock::force(&BUDGET_LIMIT_USD);
    LazyLock::force(&BUDGET_UTILISATION);
    LazyLock::force(&READY);
    LazyLock::force(&RECORD_QUEUE_CAPACITY);
    LazyLock::force(&REASONS);
    LazyLock::force(&TIME_TO_FIRST_TOKEN);
    LazyLock::force(&UNPRICED);
    LazyLock::force(&UPSTREAM_LATENCY);
    LazyLock::force(&ADDED_LATENCY);
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&CERT_CACHE);
    LazyLock::force(&PASSTHROUGH);
    LazyLock::force(&PASSTHROUGH_BYTES);
    LazyLock::force(&REFUSED);
    LazyLock::force(&RECORDS_WRITTEN);
    LazyLock::force(&RECORD_ERRORS);
    LazyLock::force(&RECORD_QUEUE);
    LazyLock::force(&TRUNCATED);
    LazyLock::force(&REDIRECT_EVENTS);
    LazyLock::force(&APPLIANCE_EVENTS);
    LazyLock::force(&GUARDRAIL_FINDINGS);
    LazyLock::force(&DECISIONS);
    LazyLock::force(&CONFIG_RELOADS);
    LazyLock::force(&LEDGER_RECORDS);
    LazyLock::force(&LEDGER_APPEND_ERRORS);
    LazyLock::force(&LEDGER_INDEX_LAG);
    LazyLock::force(&LEDGER_CHECKPOINTS);
    LazyLock::force(&WITNESS_LAG);
    LazyLock::force(&WITNESS_SIZE);
    LazyLock::force(&WITNESS_ERRORS);
    LazyLock::force(&CENTRAL_LAG);
    LazyLock::force(&CENTRAL_SHIPPED);
    LazyLock::force(&CENTRAL_ERRORS);
    LazyLock::force(&CENTRAL_CONFLICTS);
    LazyLock::force(&SINK_LAG);
    LazyLock::force(&SINK_DELIVERED);
    LazyLock::force(&SINK_ERRORS);
    LazyLock::force(&SINK_DEAD_LETTERS);
    LazyLock::force(&SINK_SECONDS);
    LazyLock::force(&ALERTS);
    LazyLock::force(&ALERTS_FIRING);
    LazyLock::force(&ALERTS_LAG);
}

/// Alerts fired and resolved, by rule, severity and state.
pub static ALERTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_alerts_total",
        "Security alerts fired or resolved, by rule, severity and state",
        &["rule", "severity", "state"],
    )
});
/// Alerts firing now, by rule.
pub static ALERTS_FIRING: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_alerts_firing",
        "Security alerts firing now (not yet resolved), by rule",
        &["rule"],
    )
});
/// Records not yet evaluated by the alert rules.
pub static ALERTS_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_alerts_lag_records",
        "Records of the ledger the alert rules have not evaluated yet",
    )
});

/// Records of the ledger a SIEM sink has not taken yet (its cursor behind the head).
pub static SINK_LAG: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_sink_lag_records",
        "Records of the ledger not yet delivered to the sink, by sink",
        &["sink"],
    )
});
/// Records a sink's destination accepted.
pub static SINK_DELIVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_sink_delivered_total",
        "Records delivered to the sink's destination, by sink",
        &["sink"],
    )
});
/// Failed deliveries (retried with backoff), by sink and reason class.
pub static SINK_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_sink_errors_total",
        "Failed deliveries to a sink, retried with backoff, by sink",
        &["sink"],
    )
});
/// Records a destination refused as invalid, parked in the sink's dead-letter file.
pub static SINK_DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_sink_dead_letters_total",
        "Records the sink's destination rejected as invalid, kept in its dead-letter file",
        &["sink"],
    )
});
/// Seconds per delivered batch, by sink.
pub static SINK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sluice_sink_batch_seconds",
        "Seconds to deliver one batch to the sink's destination, by sink",
        &["sink"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )
});

/// Whether the fleet's shared counter store answers: 1 up, 0 down, by store (`redis`);
/// no series without `fleet.redis`.
pub static COUNTER_STORE_UP: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_counter_store_up",
        "Whether the shared counter store answers: 1 up, 0 down",
        &["store"],
    )
});
/// Shared counter store calls that failed or timed out, by operation.
pub static COUNTER_STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_counter_store_errors_total",
        "Shared counter store calls that failed or timed out",
        &["op"],
    )
});
/// Shared counter store round trips on the request path, by operation.
pub static COUNTER_STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sluice_counter_store_seconds",
        "Round trip of a shared counter store call",
        &["op"],
        ADDED_BUCKETS.to_vec(),
    )
});
/// Decisions taken without the shared store, by the policy's `on_counter_store_unavailable`.
pub static COUNTER_STORE_FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_counter_store_fallbacks_total",
        "Budget and rate-limit decisions taken while the shared counter store was down",
        &["mode"],
    )
});
/// Spend settled locally while the shared store was down, waiting to be pushed to it.
pub static COUNTER_STORE_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_counter_store_pending",
        "Settlements made while the shared counter store was down, not yet reconciled",
    )
});

/// Records of this node's ledger not yet in the central ledger (PostgreSQL).
pub static CENTRAL_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "sluice_central_lag_records",
        "Records of the node's ledger not yet shipped to the central ledger",
    )
});
/// Records shipped to the central ledger.
pub static CENTRAL_SHIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_central_shipped_total",
        "Records shipped to the central ledger (PostgreSQL)",
    )
});
/// Rows found under this node's id and seq in the central ledger that were not its
/// records, replaced by them.
pub static CENTRAL_CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_central_conflicts_total",
        "Central ledger rows under this node's id that did not match its records, replaced",
    )
});
/// Failed connections or transactions to the central ledger (retried).
pub static CENTRAL_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_central_errors_total",
        "Failed connections or transactions to the central ledger, retried",
    )
});

/// Seconds the oldest checkpoint not yet cosigned by a witness has waited (0 when the
/// witness holds the newest): rises while a witness is unreachable or refuses, falls
/// when the outbox catches up.
pub static WITNESS_LAG: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_ledger_witness_lag_seconds",
        "Age of the oldest ledger checkpoint a witness has not cosigned yet",
        &["witness"],
    )
});
/// The tree size each witness last cosigned.
pub static WITNESS_SIZE: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "sluice_ledger_witness_cosigned_size",
        "Ledger tree size the witness last cosigned",
        &["witness"],
    )
});
/// Failed deliveries to a witness, by reason (`unreachable`, `refused_403`, `refused_404`,
/// `refused_409`, `refused_422`, `http_error`, `bad_cosignature`, `witness_ahead`,
/// `proof`).
pub static WITNESS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_ledger_witness_errors_total",
        "Checkpoint deliveries to a witness that failed",
        &["witness", "reason"],
    )
});

/// Serve `GET /metrics`, `/healthz` (liveness: the process answers) and `/readyz`
/// (`ready`, see `crate::readiness`: 503 with the failing checks) on `listener` until the
/// task is dropped.
///
/// A deliberately tiny server: one request per connection, no keep-alive. Scrapers
/// are few and infrequent, and this keeps the metrics port free of the data-plane stack.
pub async fn serve(listener: tokio::net::TcpListener, ready: ReadyCheck) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n = 0;
            // Read until the end of the request head (or the buffer is full).
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(m) => n += m,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, ctype) = match path {
                "/metrics" => {
                    READY.set(i64::from(ready().0));
                    ("200 OK", render(), "text/plain; version=0.0.4")
                }
                "/healthz" => ("200 OK", b"ok\n".to_vec(), "text/plain"),
                "/readyz" => match ready() {
                    (true, text) => ("200 OK", text.into_bytes(), "text/plain"),
                    (false, text) => ("503 Service Unavailable", text.into_bytes(), "text/plain"),
                },
                _ => ("404 Not Found", b"not found\n".to_vec(), "text/plain"),
            };
            let header = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(header.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

/// What `/readyz` answers: ready or not, and the text listing each check.
pub type ReadyCheck = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// Bind the metrics listener.
///
/// # Errors
/// The bind error, e.g. the port is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    /// Dashboards and alerting rules read only metrics Sluice exports: renaming one away
    /// fails here, before a panel goes blank in production.
    #[test]
    fn dashboards_and_rules_reference_only_exported_metrics() {
        let catalogue = super::catalogue();
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut checked = 0;
        for dir in ["dashboards", "prometheus"] {
            for entry in std::fs::read_dir(deploy.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if !matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("json" | "yml")
                ) {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("sluice_") {
                    // Recording rules' own names (`level:metric:operation`) are not exports.
                    if text[..i].ends_with(':') {
                        continue;
                    }
                    let name: String = text[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    // Identifiers that are not metrics: dashboard uids, rule group names.
                    if base.starts_with("sluice_overview") || base.starts_with("sluice_operations")
                    {
                        continue;
                    }
                    assert!(
                        catalogue.iter().any(|c| c == base),
                        "{}: {name} is not a metric Sluice exports",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} references found");
    }

    #[test]
    fn every_metric_renders_under_the_sluice_prefix() {
        super::init();
        super::REQUESTS
            .with_label_values(&["openai", "chat.completions", "success"])
            .inc();
        let text = String::from_utf8(super::render()).unwrap();
        assert!(text.contains(
            "sluice_requests_total{endpoint=\"chat.completions\",outcome=\"success\",provider=\"openai\"}"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("sluice_"), "{line}");
        }
    }
}
