//! What the alert rules read of a record ([`Seen`]): a few typed fields of its stored
//! metadata.

use serde::Deserialize;
use serde_json::{Map, Value};

/// What the rules read of a record: a few fields of its stored metadata, parsed without
/// building the rest (and the record's content is not read at all). Before this the
/// rules' thread read each record whole — its compressed content too — and built a JSON
/// value of every field, the heaviest work per record after the ledger's own.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Seen {
    pub kind: String,
    pub id: String,
    pub ts: String,
    pub decision: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub reason_codes: Option<Vec<String>>,
    pub cost_usd: Option<f64>,
    pub usage: Option<SeenUsage>,
    pub identity: Option<Map<String, Value>>,
}

/// `usage` of a [`Seen`] record.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SeenUsage {
    pub input_tokens: Option<f64>,
    pub output_tokens: Option<f64>,
}

impl Seen {
    /// From a record's stored metadata (canonical JSON). A record whose fields have
    /// other types than these (a kind written by a later version) is read field by
    /// field instead, each field of another type taken as absent.
    pub fn parse(meta: &str) -> Seen {
        serde_json::from_str(meta).unwrap_or_else(|_| {
            serde_json::from_str::<Value>(meta).map_or_else(|_| Seen::default(), |v| Seen::of(&v))
        })
    }

    /// Field by field from a record as JSON.
    pub fn of(r: &Value) -> Seen {
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        Seen {
            kind: s("kind").unwrap_or_default(),
            id: s("id").unwrap_or_default(),
            ts: s("ts").unwrap_or_default(),
            decision: s("decision"),
            provider: s("provider"),
            model: s("model"),
            reason_codes: r.get("reason_codes").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            }),
            cost_usd: n(r, "cost_usd"),
            usage: r.get("usage").filter(|u| u.is_object()).map(|u| SeenUsage {
                input_tokens: n(u, "input_tokens"),
                output_tokens: n(u, "output_tokens"),
            }),
            identity: r.get("identity").and_then(Value::as_object).cloned(),
        }
    }

    /// The identity as the alert carries it.
    pub(super) fn identity_value(&self) -> Option<Value> {
        self.identity.clone().map(Value::Object)
    }
}
