//! Elasticsearch / OpenSearch `_bulk`: each record is `create`d in the index or data
//! stream with its record id as `_id` (so a batch sent again after a crash or a lost
//! answer does not duplicate: the copy answers 409 and counts as delivered), as an ECS
//! document — `@timestamp`, `event.*`, `host.name`, `process.*`, `user.name`,
//! `source.*`, `orchestrator.*` — with the whole record under `sluice`.
//!
//! The answer is read item by item: 201 (or 409) taken; 429 or 5xx on any item sends
//! the batch again; any other error dead-letters that record with Elasticsearch's
//! `error.type` and `reason`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::config::ElasticConfig;
use super::{http_outcome, Destination, Failure, Item, Sent};

pub(super) struct Elastic {
    url: String,
    index: String,
    auth: Option<String>,
    node: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Elastic {
    pub(super) fn new(
        c: &ElasticConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Elastic, String> {
        let auth = match (&c.api_key, &c.username, &c.password) {
            (Some(k), _, _) => Some(format!("ApiKey {}", k.read()?)),
            (None, Some(u), Some(p)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.read()?))
            )),
            _ => None,
        };
        Ok(Elastic {
            url: c.url.clone(),
            index: c.index.clone(),
            auth,
            node: node.to_owned(),
            tls,
            timeout,
        })
    }
}

/// The record as an ECS document.
pub(crate) fn ecs(r: &Value, node: &str) -> Value {
    let s = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
    let id = r.get("identity").cloned().unwrap_or(Value::Null);
    let outcome = match (kind, r.get("decision").and_then(Value::as_str)) {
        ("interaction", Some("allow" | "redact")) => "success",
        ("interaction", Some(_)) => "failure",
        ("admin", _) => match r.get("outcome").and_then(Value::as_str) {
            Some("success") => "success",
            Some(_) => "failure",
            None => "unknown",
        },
        _ => "unknown",
    };
    let (ip, port) = id
        .get("client_addr")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map_or((Value::Null, Value::Null), |a| {
            (json!(a.ip().to_string()), json!(a.port()))
        });
    let mut doc = json!({
        "@timestamp": s(r, "ts"),
        "event": {
            "id": s(r, "id"),
            "kind": "event",
            "category": [if kind == "admin" { "configuration" } else { "network" }],
            "action": kind,
            "outcome": outcome,
            "dataset": "sluice.audit",
            "module": "sluice",
        },
        "host": { "name": node },
        "process": { "pid": s(&id, "pid"), "name": s(&id, "process"), "executable": s(&id, "exe") },
        "user": { "name": s(&id, "user") },
        "source": { "ip": ip, "port": port },
        "sluice": r,
    });
    if let Some(k) = id.get("kubernetes").filter(|k| k.is_object()) {
        doc["orchestrator"] = json!({
            "type": "kubernetes",
            "namespace": s(k, "namespace"),
            "resource": { "type": "pod", "name": s(k, "pod") },
        });
    }
    strip_nulls(&mut doc);
    doc
}

/// ECS leaves absent fields out rather than `null`.
fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, x| k == "sluice" || !x.is_null());
        for (k, x) in m.iter_mut() {
            if k != "sluice" {
                strip_nulls(x);
            }
        }
        m.retain(|k, x| k == "sluice" || !matches!(x, Value::Object(o) if o.is_empty()));
    }
}

impl Destination for Elastic {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let mut body = String::new();
        for item in items {
            body.push_str(
                &json!({ "create": { "_index": self.index, "_id": item.id } }).to_string(),
            );
            body.push('\n');
            body.push_str(&ecs(&item.record, &self.node).to_string());
            body.push('\n');
        }
        let mut headers = vec![("content-type".to_owned(), "application/x-ndjson".to_owned())];
        if let Some(a) = &self.auth {
            headers.push(("authorization".to_owned(), a.clone()));
        }
        let answer = super::post(
            &self.tls,
            &self.url,
            "/_bulk",
            &headers,
            &body,
            self.timeout,
        )?;
        http_outcome(&answer)?;
        let v: Value = serde_json::from_str(&answer.body).map_err(|e| {
            Failure::Retry(format!("_bulk answer is not JSON ({e}); sending again"))
        })?;
        if v.get("errors").and_then(Value::as_bool) != Some(true) {
            return Ok(Sent::default());
        }
        let results = v
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut rejected = Vec::new();
        for (i, res) in results.iter().enumerate() {
            let Some(r) = res.get("create").or_else(|| res.get("index")) else {
                continue;
            };
            let status = r.get("status").and_then(Value::as_u64).unwrap_or(0);
            match status {
                200..=299 | 409 => {}
                429 | 500..=599 => {
                    return Err(Failure::Retry(format!(
                        "_bulk item {i}: HTTP {status} ({}); sending the batch again",
                        r["error"]["type"].as_str().unwrap_or("busy")
                    )))
                }
                _ => rejected.push((
                    i,
                    format!(
                        "_bulk HTTP {status}: {}: {}",
                        r["error"]["type"].as_str().unwrap_or("error"),
                        r["error"]["reason"].as_str().unwrap_or("")
                    ),
                )),
            }
        }
        Ok(Sent {
            rejected,
            consumed: None,
        })
    }
}
