//! Datadog Logs intake v2: `POST https://http-intake.logs.<site>/api/v2/logs` with
//! `DD-API-KEY`, a JSON array of logs, each `{ddsource, ddtags, hostname, service,
//! message, timestamp, sluice: <record>}` (the record as attributes under `sluice`, so
//! every field is a facet). Datadog's limits are kept: at most 1,000 logs and 5 MB
//! uncompressed per request (more is sent in halves). Answers: 202 taken; 400 invalid
//! (narrowed down and dead-lettered); 401/403 bad key and 408/429/5xx retried; 413 too
//! large.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::DatadogConfig;
use super::{http_outcome, Destination, Failure, Item, Sent};

const MAX_LOGS: usize = 1000;
const MAX_BYTES: usize = 5 * 1024 * 1024;

pub(super) struct Datadog {
    url: String,
    key: String,
    node: String,
    service: String,
    tags: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Datadog {
    pub(super) fn new(
        c: &DatadogConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Datadog, String> {
        Ok(Datadog {
            url: c
                .url
                .clone()
                .unwrap_or_else(|| format!("https://http-intake.logs.{}", c.site)),
            key: c.api_key.read()?,
            node: node.to_owned(),
            service: c.service.clone(),
            tags: c.tags.join(","),
            tls,
            timeout,
        })
    }
}

/// One line a person reads in the log explorer.
fn summary(r: &Value) -> String {
    let f = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-");
    match f("kind") {
        "interaction" => format!(
            "{} {} {} {}",
            f("provider"),
            f("model"),
            f("decision"),
            r.get("status").map_or_else(|| "-".into(), Value::to_string)
        ),
        "admin" => format!("admin {} {}", f("action"), f("outcome")),
        k => k.to_owned(),
    }
}

impl Destination for Datadog {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        if items.len() > MAX_LOGS {
            return Err(Failure::TooLarge);
        }
        let logs: Vec<Value> = items
            .iter()
            .map(|i| {
                let r = &i.record;
                let f = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
                let mut tags = format!("kind:{}", f("kind"));
                for k in ["provider", "decision"] {
                    if !f(k).is_empty() {
                        tags.push_str(&format!(",{k}:{}", f(k)));
                    }
                }
                if !self.tags.is_empty() {
                    tags.push(',');
                    tags.push_str(&self.tags);
                }
                json!({
                    "ddsource": "sluice",
                    "ddtags": tags,
                    "hostname": self.node,
                    "service": self.service,
                    "message": summary(r),
                    "timestamp": f("ts"),
                    "sluice": r,
                })
            })
            .collect();
        let body = Value::Array(logs).to_string();
        if body.len() > MAX_BYTES {
            return Err(Failure::TooLarge);
        }
        let headers = [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("dd-api-key".to_owned(), self.key.clone()),
        ];
        let answer = super::post(
            &self.tls,
            &self.url,
            "/api/v2/logs",
            &headers,
            &body,
            self.timeout,
        )?;
        http_outcome(&answer)?;
        Ok(Sent::default())
    }
}
