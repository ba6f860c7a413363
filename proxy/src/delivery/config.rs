//! `sinks:` — where the ledger is delivered continuously, each sink with its own
//! filter, content selection and destination. Validated once, with the config.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// One sink: a name (its cursor and dead-letter file are named after it), what it takes,
/// and exactly one destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `[a-z0-9_-]`, unique: the metric label and the state files' name.
    pub name: String,
    /// Which records go. Default: all.
    #[serde(default)]
    pub filter: SinkFilter,
    /// `full` (default) or `metadata` (no prompt or response texts; their SHA-256
    /// digests stay, so evidence can still be matched).
    #[serde(default)]
    pub content: SinkContent,
    /// Most records per batch. Default 500.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Longest a record waits for its batch to fill, in ms. Default 1000.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Per request (connect, each read and write), in ms. Default 10000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// PEM roots trusted besides the system's (a SIEM behind a private CA).
    /// Verification cannot be turned off.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    #[serde(default)]
    pub splunk_hec: Option<SplunkConfig>,
    #[serde(default)]
    pub datadog: Option<DatadogConfig>,
    #[serde(default)]
    pub elasticsearch: Option<ElasticConfig>,
    /// Amazon S3 or an S3-compatible store: compressed JSON Lines by date and hour.
    #[serde(default)]
    pub s3: Option<S3SinkConfig>,
    /// Azure Monitor Logs Ingestion API (a data collection rule's stream).
    #[serde(default)]
    pub azure_monitor: Option<AzureMonitorConfig>,
    /// OTLP logs over HTTP to a collector.
    #[serde(default)]
    pub otlp_logs: Option<OtlpLogsConfig>,
    /// Alert channel: a Slack incoming webhook (its URL is the secret).
    #[serde(default)]
    pub slack: Option<UrlSecret>,
    /// Alert channel: PagerDuty Events API v2.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyConfig>,
    /// Alert channel: a Microsoft Teams workflow webhook (its URL is the secret).
    #[serde(default)]
    pub teams: Option<UrlSecret>,
}

/// The S3 sink. Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and
/// `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// `https://s3.<region>.amazonaws.com`, or an S3-compatible server (path-style).
    pub endpoint: String,
    pub bucket: String,
    /// Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix, e.g. `sluice/`. Default: none.
    #[serde(default)]
    pub prefix: String,
    /// Store each object under a retention (the bucket must have Object Lock on).
    #[serde(default)]
    pub object_lock: Option<ObjectLock>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// S3 Object Lock retention for each object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    /// `compliance` (nobody can shorten it) or `governance`.
    pub mode: String,
    pub retention_days: u32,
}

/// Azure Monitor Logs Ingestion API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMonitorConfig {
    /// The data collection endpoint's (or the DCR's) logs ingestion URL,
    /// `https://<dce>.<region>.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The data collection rule's immutable id, `dcr-…`.
    pub dcr_immutable_id: String,
    /// The stream, `Custom-SluiceAudit_CL`.
    pub stream: String,
    pub tenant_id: String,
    /// The app registration allowed to write (Monitoring Metrics Publisher on the DCR).
    pub client_id: String,
    pub client_secret: Secret,
    /// Default `https://login.microsoftonline.com` (another for sovereign clouds).
    #[serde(default = "default_authority")]
    pub authority: String,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}

/// OTLP logs over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpLogsConfig {
    /// The collector's OTLP/HTTP base URL, `http://otel-collector:4318`.
    pub endpoint: String,
    /// Extra request headers (an auth token as `${ENV}`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A webhook whose URL is its credential (Slack, Teams).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSecret {
    pub url: Secret,
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The service integration's routing key.
    pub routing_key: Secret,
    /// Default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default)]
    pub url: Option<String>,
}

fn default_batch() -> usize {
    500
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    10_000
}

/// Records a sink takes; an empty list takes every value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFilter {
    /// `interaction`, `connection`, `admin`.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Interactions' decisions: `allow`, `redact`, `block`, … (other kinds pass).
    #[serde(default)]
    pub decisions: Vec<String>,
    /// Interactions' providers (other kinds pass).
    #[serde(default)]
    pub providers: Vec<String>,
    /// Alerts' severities: `info`, `warning`, `critical` (other kinds pass).
    #[serde(default)]
    pub severities: Vec<String>,
}

impl SinkFilter {
    /// Whether `record` (as displayed) goes to the sink.
    pub fn matches(&self, record: &Value) -> bool {
        let field = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("");
        let kind = field("kind");
        let takes = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        takes(&self.kinds, kind)
            && (kind != "interaction"
                || (takes(&self.decisions, field("decision"))
                    && takes(&self.providers, field("provider"))))
            && (kind != "alert" || takes(&self.severities, field("severity")))
    }
}

/// What of each record a sink receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkContent {
    #[default]
    Full,
    Metadata,
}

/// A secret given inline (normally `${ENV}`, expanded when the config is read) or in a
/// file (a mounted Kubernetes secret); read at start, never written to the ledger.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .finish()
    }
}

impl Secret {
    /// The secret's text (a file's trailing newline dropped).
    ///
    /// # Errors
    /// Neither or both given, or the file cannot be read or is empty.
    pub fn read(&self) -> Result<String, String> {
        let s = match (&self.value, &self.file) {
            (Some(v), None) => v.clone(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            _ => return Err("give exactly one of `value` (e.g. \"${TOKEN}\") and `file`".into()),
        };
        if s.is_empty() {
            return Err("is empty".into());
        }
        Ok(s)
    }
}

/// A generic HTTPS endpoint taking JSON batches, signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (or `http://` on a trusted network).
    pub url: String,
    /// HMAC-SHA256 key: `x-sluice-signature: v1=<hex of HMAC(key, "<timestamp>.<body>")>`
    /// with `x-sluice-timestamp`, so the receiver can reject forgeries and replays.
    pub secret: Secret,
}

/// RFC 5424 over TCP or TLS, octet-counting framing (RFC 6587 §3.4.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `tcp://host:port` or `tls://host:port`.
    pub url: String,
}

/// Splunk HTTP Event Collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkConfig {
    /// `https://splunk:8088` (the collector's base URL).
    pub url: String,
    /// The HEC token.
    pub token: Secret,
    #[serde(default)]
    pub index: Option<String>,
    /// Default `sluice:record`.
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// Wait for indexer acknowledgement (the token must have it enabled) before a batch
    /// counts as delivered.
    #[serde(default)]
    pub ack: bool,
}

fn default_sourcetype() -> String {
    "sluice:record".into()
}

/// Datadog Logs intake v2.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogConfig {
    /// `datadoghq.com` (default), `datadoghq.eu`, `us3.datadoghq.com`, …
    #[serde(default = "default_site")]
    pub site: String,
    /// Overrides the intake URL derived from `site` (a proxy, a test receiver).
    #[serde(default)]
    pub url: Option<String>,
    pub api_key: Secret,
    /// Default `sluice`.
    #[serde(default = "default_service")]
    pub service: String,
    /// `key:value` tags added to every log.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_site() -> String {
    "datadoghq.com".into()
}
fn default_service() -> String {
    "sluice".into()
}

/// Elasticsearch or OpenSearch `_bulk`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticConfig {
    pub url: String,
    /// An index or a data stream (documents are `create`d with the record id as `_id`,
    /// which both accept). Default `sluice-audit`.
    #[serde(default = "default_index")]
    pub index: String,
    /// `Authorization: ApiKey …` (the base64 `id:key` Elasticsearch hands out).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Basic authentication instead.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_index() -> String {
    "sluice-audit".into()
}

impl SinkConfig {
    /// Slack, PagerDuty and Teams take alerts only.
    pub fn alert_channel(&self) -> bool {
        self.slack.is_some() || self.pagerduty.is_some() || self.teams.is_some()
    }

    /// `(key under sinks[i], what is wrong)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        fn bad(out: &mut Vec<(String, String)>, k: &str, m: String) {
            out.push((k.to_owned(), m));
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            bad(
                &mut out,
                "name",
                format!(
                    "`{}` must be [a-z0-9_-]+ (it names the sink's state files and metric label)",
                    self.name
                ),
            );
        }
        if self.batch == 0 {
            bad(&mut out, "batch", "must be at least 1".into());
        }
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            bad(
                &mut out,
                "interval_ms",
                "interval_ms and timeout_ms must be above 0".into(),
            );
        }
        let given = [
            self.webhook.is_some(),
            self.syslog.is_some(),
            self.splunk_hec.is_some(),
            self.datadog.is_some(),
            self.elasticsearch.is_some(),
            self.s3.is_some(),
            self.azure_monitor.is_some(),
            self.otlp_logs.is_some(),
            self.slack.is_some(),
            self.pagerduty.is_some(),
            self.teams.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            bad(
                &mut out,
                "destination",
                format!("give exactly one of webhook, syslog, splunk_hec, datadog, elasticsearch, s3, azure_monitor, otlp_logs, slack, pagerduty, teams ({given} given)"),
            );
        }
        if let Some(ca) = &self.ca_file {
            if let Err(e) = crate::http::client::tls_with_ca(Some(ca)) {
                bad(&mut out, "ca_file", e);
            }
        }
        fn url(out: &mut Vec<(String, String)>, k: &str, u: &str) {
            if crate::http::client::split_url(u).is_err() {
                out.push((k.to_owned(), format!("`{u}` is not an http[s]:// URL")));
            }
        }
        let mut secrets: Vec<(&str, &Secret)> = Vec::new();
        if let Some(w) = &self.webhook {
            url(&mut out, "webhook.url", &w.url);
            secrets.push(("webhook.secret", &w.secret));
        }
        if let Some(s) = &self.splunk_hec {
            url(&mut out, "splunk_hec.url", &s.url);
            secrets.push(("splunk_hec.token", &s.token));
        }
        if let Some(d) = &self.datadog {
            if let Some(u) = &d.url {
                url(&mut out, "datadog.url", u);
            }
            secrets.push(("datadog.api_key", &d.api_key));
        }
        if let Some(e) = &self.elasticsearch {
            url(&mut out, "elasticsearch.url", &e.url);
            if let Some(k) = &e.api_key {
                secrets.push(("elasticsearch.api_key", k));
            }
            if let Some(p) = &e.password {
                secrets.push(("elasticsearch.password", p));
            }
            if e.api_key.is_some() && e.username.is_some() {
                out.push((
                    "elasticsearch".into(),
                    "give api_key or username/password, not both".into(),
                ));
            }
            if e.username.is_some() != e.password.is_some() {
                out.push((
                    "elasticsearch.password".into(),
                    "username and password go together".into(),
                ));
            }
        }
        if let Some(s) = &self.s3 {
            url(&mut out, "s3.endpoint", &s.endpoint);
            if let Err(e) = crate::http::s3::check_bucket(&s.bucket) {
                out.push(("s3.bucket".into(), e));
            }
            if let Some(l) = &s.object_lock {
                if !matches!(l.mode.as_str(), "compliance" | "governance") {
                    out.push((
                        "s3.object_lock.mode".into(),
                        format!("`{}`: use compliance or governance", l.mode),
                    ));
                }
                if l.retention_days == 0 {
                    out.push((
                        "s3.object_lock.retention_days".into(),
                        "must be at least 1".into(),
                    ));
                }
            }
        }
        if let Some(o) = &self.otlp_logs {
            url(&mut out, "otlp_logs.endpoint", &o.endpoint);
        }
        if let Some(a) = &self.azure_monitor {
            url(&mut out, "azure_monitor.endpoint", &a.endpoint);
            url(&mut out, "azure_monitor.authority", &a.authority);
            for (k, v) in [
                ("dcr_immutable_id", &a.dcr_immutable_id),
                ("stream", &a.stream),
                ("tenant_id", &a.tenant_id),
                ("client_id", &a.client_id),
            ] {
                if v.is_empty() || v.contains(['/', '?', '#', ' ']) {
                    out.push((
                        format!("azure_monitor.{k}"),
                        format!("`{v}` is empty or not an id"),
                    ));
                }
            }
            secrets.push(("azure_monitor.client_secret", &a.client_secret));
        }
        if let Some(s) = &self.slack {
            secrets.push(("slack.url", &s.url));
        }
        if let Some(t) = &self.teams {
            secrets.push(("teams.url", &t.url));
        }
        if let Some(p) = &self.pagerduty {
            if let Some(u) = &p.url {
                url(&mut out, "pagerduty.url", u);
            }
            secrets.push(("pagerduty.routing_key", &p.routing_key));
        }
        if self.alert_channel() && self.filter.kinds.iter().any(|k| k != "alert") {
            out.push((
                "filter.kinds".into(),
                "an alert channel (slack, pagerduty, teams) takes alert records only; leave kinds empty or [alert]".into(),
            ));
        }
        if let Some(s) = &self.syslog {
            if super::syslog::endpoint(&s.url).is_none() {
                out.push((
                    "syslog.url".into(),
                    format!("`{}` is not tcp://host:port or tls://host:port", s.url),
                ));
            }
        }
        for (k, s) in secrets {
            if let Err(e) = s.read() {
                out.push((k.to_owned(), e));
            }
        }
        out
    }
}
