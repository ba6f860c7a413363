//! A generic HTTPS webhook: each batch is one `POST` of
//! `{"sink": …, "node": …, "records": [...]}`, signed so the receiver can tell it came
//! from this node and is not a replay:
//!
//! - `x-sluice-timestamp`: Unix seconds when it was sent;
//! - `x-sluice-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` — the
//!   receiver recomputes it over the raw body and rejects a mismatch or a timestamp older
//!   than its tolerance (5 minutes is usual);
//! - `idempotency-key: <first record id>..<last record id>` — the same on a retry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::Mac;

use super::config::WebhookConfig;
use super::{http_outcome, Destination, Failure, Item, Sent};

pub(super) struct Webhook {
    url: String,
    key: Vec<u8>,
    sink: String,
    node: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Webhook {
    pub(super) fn new(
        c: &WebhookConfig,
        sink: &str,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Webhook, String> {
        Ok(Webhook {
            url: c.url.clone(),
            key: c.secret.read()?.into_bytes(),
            sink: sink.to_owned(),
            node: node.to_owned(),
            tls,
            timeout,
        })
    }
}

/// `v1=<hex>` over `"<timestamp>.<body>"`.
pub(crate) fn signature(key: &[u8], timestamp: u64, body: &str) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Destination for Webhook {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let records: Vec<&serde_json::Value> = items.iter().map(|i| &i.record).collect();
        let body = serde_json::json!({
            "sink": self.sink,
            "node": self.node,
            "records": records,
        })
        .to_string();
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = format!(
            "{}..{}",
            items.first().map_or("", |i| i.id.as_str()),
            items.last().map_or("", |i| i.id.as_str())
        );
        let headers = [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-sluice-timestamp".to_owned(), ts.to_string()),
            (
                "x-sluice-signature".to_owned(),
                signature(&self.key, ts, &body),
            ),
            ("idempotency-key".to_owned(), key),
        ];
        let answer = super::post(&self.tls, &self.url, "", &headers, &body, self.timeout)?;
        http_outcome(&answer)?;
        Ok(Sent::default())
    }
}
