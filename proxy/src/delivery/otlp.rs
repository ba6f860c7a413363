//! OTLP logs over HTTP (`POST <endpoint>/v1/logs`, protobuf): each record a log record
//! whose body is the record's JSON, with `event.name` `sluice.<kind>`, the record id,
//! kind, provider, model and decision as attributes, the record's time as its timestamp,
//! and a severity (alerts by theirs; refused or blocked records WARN) — for a collector
//! that fans out to whatever backend. 2xx taken; 400 invalid; 429/5xx retried.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

use super::config::OtlpLogsConfig;
use super::{http_outcome, retry, Destination, Failure, Item, Sent};
use crate::http::client;

pub(super) struct OtlpLogs {
    endpoint: String,
    headers: Vec<(String, String)>,
    node: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn nanos(ts: Option<&str>) -> u64 {
    ts.and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    })
    .map_or(0, |t| u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0))
}

impl OtlpLogs {
    pub(super) fn new(
        c: &OtlpLogsConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> OtlpLogs {
        let mut headers: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        headers.push(("content-type".into(), "application/x-protobuf".into()));
        OtlpLogs {
            endpoint: c.endpoint.trim_end_matches('/').to_owned(),
            headers,
            node: node.to_owned(),
            tls,
            timeout,
        }
    }

    fn log(r: &Value, id: &str, now: u64) -> LogRecord {
        let f = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        let kind = f("kind");
        let (number, text) = match (kind, f("severity"), f("decision"), f("outcome")) {
            ("alert", "critical", _, _) => (SeverityNumber::Error, "ERROR"),
            ("alert", "warning", _, _) | (_, _, "block", _) | (_, _, _, "refused") => {
                (SeverityNumber::Warn, "WARN")
            }
            _ => (SeverityNumber::Info, "INFO"),
        };
        let mut attributes = vec![
            kv("event.name", &format!("sluice.{kind}")),
            kv("sluice.record.id", id),
            kv("sluice.record.kind", kind),
        ];
        for (k, field) in [
            ("gen_ai.provider.name", "provider"),
            ("gen_ai.request.model", "model"),
            ("sluice.decision", "decision"),
        ] {
            if !f(field).is_empty() {
                attributes.push(kv(k, f(field)));
            }
        }
        LogRecord {
            time_unix_nano: nanos(r.get("ts").and_then(Value::as_str)),
            observed_time_unix_nano: now,
            severity_number: number as i32,
            severity_text: text.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(r.to_string())),
            }),
            attributes,
            ..LogRecord::default()
        }
    }
}

impl Destination for OtlpLogs {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let body = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "sluice"), kv("host.name", &self.node)],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "sluice.ledger".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    log_records: items
                        .iter()
                        .map(|i| Self::log(&i.record, &i.id, now))
                        .collect(),
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
        .encode_to_vec();
        let answer = client::exchange_raw(
            &self.tls,
            &self.endpoint,
            "POST",
            "/v1/logs",
            &self.headers,
            &body,
            self.timeout,
        )
        .map_err(retry)?;
        http_outcome(&answer)?;
        Ok(Sent::default())
    }
}
