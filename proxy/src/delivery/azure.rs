//! Azure Monitor Logs Ingestion API: `POST <endpoint>/dataCollectionRules/<DCR immutable
//! id>/streams/<stream>?api-version=2023-01-01` with a JSON array of rows, authorised by
//! a Microsoft Entra ID token (OAuth 2.0 client credentials, scope
//! `https://monitor.azure.com/.default`) that is cached and renewed five minutes before it
//! expires, or at once when the API answers 401.
//!
//! Each row: `TimeGenerated`, `RecordId`, `Kind`, `Node`, `Provider`, `Model`, `Decision`,
//! `Principal` and the whole record as `Record` (dynamic) — the stream declaration the DCR
//! needs is in the README. The API takes at most 1 MB a call: a larger batch is halved.
//! 204 is success; 400 invalid (narrowed down, dead-lettered); 401/403/429/5xx retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::AzureMonitorConfig;
use super::{http_outcome, retry, Destination, Failure, Item, Sent};
use crate::http::client;

const MAX_BYTES: usize = 1024 * 1024;
const SCOPE: &str = "https://monitor.azure.com/.default";

pub(super) struct AzureMonitor {
    endpoint: String,
    path: String,
    authority: String,
    tenant: String,
    client_id: String,
    secret: String,
    node: String,
    token: Option<(String, Instant)>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::http::s3::encode(k, false),
                crate::http::s3::encode(v, false)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl AzureMonitor {
    pub(super) fn new(
        c: &AzureMonitorConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<AzureMonitor, String> {
        Ok(AzureMonitor {
            endpoint: c.endpoint.trim_end_matches('/').to_owned(),
            path: format!(
                "/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
                crate::http::s3::encode(&c.dcr_immutable_id, false),
                crate::http::s3::encode(&c.stream, false)
            ),
            authority: c.authority.trim_end_matches('/').to_owned(),
            tenant: c.tenant_id.clone(),
            client_id: c.client_id.clone(),
            secret: c.client_secret.read()?,
            node: node.to_owned(),
            token: None,
            tls,
            timeout,
        })
    }

    /// A valid token, fetched when there is none or it expires within five minutes.
    fn token(&mut self) -> Result<String, Failure> {
        if let Some((t, until)) = &self.token {
            if Instant::now() + Duration::from_secs(300) < *until {
                return Ok(t.clone());
            }
        }
        let body = form(&[
            ("client_id", &self.client_id),
            ("client_secret", &self.secret),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ]);
        let headers = [(
            "content-type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        )];
        let answer = client::exchange_trusting(
            &self.tls,
            &self.authority,
            "POST",
            &format!("/{}/oauth2/v2.0/token", self.tenant),
            &headers,
            &body,
            self.timeout,
        )
        .map_err(retry)?;
        if answer.status != 200 {
            return Err(Failure::Retry(format!(
                "Entra ID refused the sink's client credentials (HTTP {}; check tenant_id, client_id and client_secret): {}",
                answer.status,
                answer.body.chars().take(300).collect::<String>()
            )));
        }
        let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| Failure::Retry("Entra ID answered without an access_token".into()))?
            .to_owned();
        let life = v["expires_in"].as_u64().unwrap_or(3599);
        self.token = Some((token.clone(), Instant::now() + Duration::from_secs(life)));
        Ok(token)
    }
}

impl Destination for AzureMonitor {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let rows: Vec<Value> = items
            .iter()
            .map(|i| {
                let r = &i.record;
                let principal = match r.get("identity").and_then(Value::as_object) {
                    Some(id) => Some(crate::ledger::principal(id)),
                    None => r["initiator"]["id"].as_str().map(str::to_owned),
                };
                json!({
                    "TimeGenerated": r["ts"], "RecordId": i.id, "Kind": r["kind"], "Node": self.node,
                    "Provider": r["provider"], "Model": r["model"], "Decision": r["decision"],
                    "Principal": principal, "Record": r,
                })
            })
            .collect();
        let body = Value::Array(rows).to_string();
        if body.len() > MAX_BYTES {
            return Err(Failure::TooLarge);
        }
        let token = self.token()?;
        let headers = [
            ("content-type".to_owned(), "application/json".to_owned()),
            ("authorization".to_owned(), format!("Bearer {token}")),
        ];
        let answer = super::post(
            &self.tls,
            &self.endpoint,
            &self.path,
            &headers,
            &body,
            self.timeout,
        )?;
        if answer.status == 401 {
            // Revoked or expired early: a new one next time.
            self.token = None;
        }
        http_outcome(&answer)?;
        Ok(Sent::default())
    }
}
