//! Splunk HTTP Event Collector: `POST <url>/services/collector/event` with
//! `Authorization: Splunk <token>`, a batch as concatenated event objects
//! (`{"time", "host", "source", "sourcetype", "index", "event"}`), as Splunk documents.
//!
//! Answers (Splunk's HEC status codes): `0` success; `9` server busy (503) and `8`
//! internal error (500) are retried; `2`/`3`/`4`/`1` (token missing, invalid, disabled)
//! are retried with the error kept in `sluice sinks status`, since only an operator can
//! fix them; `6`/`12`/`13` with `invalid-event-number: n` mean events before `n` were
//! taken and event `n` is invalid — it is dead-lettered and the rest sent again; `7`
//! (incorrect index) and the channel errors are configuration, retried. With `ack: true`
//! a batch counts only once `/services/collector/ack` says it was indexed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::SplunkConfig;
use super::{http_outcome, Destination, Failure, Item, Sent};
use crate::http::client;

/// How long an indexer acknowledgement is waited for before the batch is sent again.
const ACK_WAIT: Duration = Duration::from_secs(30);

pub(super) struct Splunk {
    url: String,
    token: String,
    node: String,
    index: Option<String>,
    sourcetype: String,
    /// The request channel when acknowledgement is on.
    channel: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Splunk {
    pub(super) fn new(
        c: &SplunkConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Splunk, String> {
        Ok(Splunk {
            url: c.url.clone(),
            token: c.token.read()?,
            node: node.to_owned(),
            index: c.index.clone(),
            sourcetype: c.sourcetype.clone(),
            channel: c.ack.then(|| uuid::Uuid::now_v7().to_string()),
            tls,
            timeout,
        })
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("authorization".to_owned(), format!("Splunk {}", self.token)),
        ];
        if let Some(c) = &self.channel {
            h.push(("x-splunk-request-channel".to_owned(), c.clone()));
        }
        h
    }

    fn post(&self, path: &str, body: &str) -> Result<client::Answer, Failure> {
        super::post(
            &self.tls,
            &self.url,
            path,
            &self.headers(),
            body,
            self.timeout,
        )
    }

    /// Waits until the indexers acknowledge `ack_id`.
    fn wait_for_ack(&self, ack_id: u64) -> Result<(), Failure> {
        let until = Instant::now() + ACK_WAIT;
        let body = json!({ "acks": [ack_id] }).to_string();
        loop {
            let answer = self.post("/services/collector/ack", &body)?;
            http_outcome(&answer)?;
            let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            if v["acks"][ack_id.to_string()].as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(Failure::Retry(format!(
                    "no indexer acknowledgement for ack id {ack_id} within {} s; sending again",
                    ACK_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Seconds since the epoch, with milliseconds, of an RFC 3339 `ts`.
fn epoch(ts: Option<&str>) -> Option<f64> {
    let t =
        time::OffsetDateTime::parse(ts?, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

impl Destination for Splunk {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let mut body = String::new();
        for item in items {
            let mut e = json!({
                "host": self.node,
                "source": "sluice",
                "sourcetype": self.sourcetype,
                "event": item.record,
            });
            if let Some(t) = epoch(item.record.get("ts").and_then(Value::as_str)) {
                e["time"] = json!((t * 1000.0).round() / 1000.0);
            }
            if let Some(i) = &self.index {
                e["index"] = json!(i);
            }
            body.push_str(&e.to_string());
            body.push('\n');
        }
        let answer = self.post("/services/collector/event", &body)?;
        let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let code = v.get("code").and_then(Value::as_i64);
        let text = v.get("text").and_then(Value::as_str).unwrap_or("");
        if answer.status == 400 {
            if let Some(n) = v.get("invalid-event-number").and_then(Value::as_u64) {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n < items.len() {
                    return Ok(Sent {
                        rejected: vec![(
                            n,
                            format!("Splunk HEC code {}: {text}", code.unwrap_or(-1)),
                        )],
                        consumed: Some(n + 1),
                    });
                }
            }
            if matches!(code, Some(7 | 10 | 11 | 14)) {
                return Err(Failure::Retry(format!(
                    "Splunk HEC code {}: {text} (check the sink's index and the token's settings)",
                    code.unwrap_or(-1)
                )));
            }
        }
        http_outcome(&answer).map_err(|f| match f {
            Failure::Retry(_) if code.is_some() => {
                Failure::Retry(format!("Splunk HEC code {}: {text}", code.unwrap_or(-1)))
            }
            other => other,
        })?;
        if self.channel.is_some() {
            let Some(ack) = v.get("ackId").and_then(Value::as_u64) else {
                return Err(Failure::Retry(
                    "ack: true but Splunk answered without an ackId (enable indexer acknowledgement on the token)".into(),
                ));
            };
            self.wait_for_ack(ack)?;
        }
        Ok(Sent::default())
    }
}
