//! Alert channels: sinks that take `kind: "alert"` records only and turn each into the
//! message a person gets — a Slack incoming webhook, PagerDuty Events API v2 (`trigger`,
//! and `resolve` with the same `dedup_key`), a Microsoft Teams workflow webhook (an
//! Adaptive Card). One request per alert, in order; a failure part-way sends the rest
//! again after the ones that went through.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::{PagerDutyConfig, Secret};
use super::{http_outcome, Destination, Failure, Item, Sent};

/// Which product.
pub(super) enum Kind {
    Slack,
    PagerDuty { routing_key: String },
    Teams,
}

pub(super) struct Channel {
    kind: Kind,
    url: String,
    node: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";

impl Channel {
    /// A webhook whose URL is its secret: Slack's or Teams' (`kind`).
    pub(super) fn webhook(
        kind: Kind,
        url: &Secret,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Channel, String> {
        Ok(Channel {
            kind,
            url: url.read()?,
            node: node.to_owned(),
            tls,
            timeout,
        })
    }

    pub(super) fn pagerduty(
        c: &PagerDutyConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Channel, String> {
        Ok(Channel {
            kind: Kind::PagerDuty {
                routing_key: c.routing_key.read()?,
            },
            url: c.url.clone().unwrap_or_else(|| PAGERDUTY_EVENTS.to_owned()),
            node: node.to_owned(),
            tls,
            timeout,
        })
    }

    /// The request body for one alert.
    fn body(&self, a: &Value) -> Value {
        let f = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("");
        let severity = f("severity");
        let resolved = f("state") == "resolved";
        let group = a
            .get("group")
            .and_then(Value::as_object)
            .map(|g| {
                g.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let title = format!(
            "{} {} {}",
            if resolved { "RESOLVED" } else { "ALERT" },
            severity.to_uppercase(),
            f("rule")
        );
        match &self.kind {
            Kind::Slack => json!({
                "text": format!("{title}: {}", f("summary")),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": title}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": f("summary")}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": format!("*Group*\n{group}")},
                        {"type": "mrkdwn", "text": format!("*Node*\n{}", self.node)},
                        {"type": "mrkdwn", "text": format!("*Value / threshold*\n{} / {}", a["value"], a["threshold"])},
                        {"type": "mrkdwn", "text": format!("*Alert id*\n{}", f("id"))},
                    ]},
                ],
            }),
            Kind::PagerDuty { routing_key } if resolved => json!({
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": f("dedup_key"),
            }),
            Kind::PagerDuty { routing_key } => json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": f("dedup_key"),
                "payload": {
                    "summary": f("summary").chars().take(1024).collect::<String>(),
                    "source": self.node,
                    "severity": match severity { "critical" => "critical", "warning" => "warning", _ => "info" },
                    "timestamp": f("ts"),
                    "component": "sluice",
                    "group": f("rule"),
                    "class": f("rule"),
                    "custom_details": {
                        "group": a["group"], "value": a["value"], "threshold": a["threshold"],
                        "window_s": a["window_s"], "records": a["records"], "alert_id": f("id"),
                    },
                },
            }),
            Kind::Teams => json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": title},
                            {"type": "TextBlock", "text": f("summary"), "wrap": true},
                            {"type": "FactSet", "facts": [
                                {"title": "Group", "value": group},
                                {"title": "Node", "value": self.node},
                                {"title": "Value / threshold", "value": format!("{} / {}", a["value"], a["threshold"])},
                                {"title": "Alert id", "value": f("id")},
                            ]},
                        ],
                    },
                }],
            }),
        }
    }
}

impl Destination for Channel {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        for (i, item) in items.iter().enumerate() {
            let body = self.body(&item.record).to_string();
            let headers = [("content-type".to_owned(), "application/json".to_owned())];
            let outcome = super::post(&self.tls, &self.url, "", &headers, &body, self.timeout)
                .and_then(|a| http_outcome(&a));
            match outcome {
                Ok(()) => {}
                Err(Failure::Retry(_)) if i > 0 => {
                    return Ok(Sent {
                        rejected: Vec::new(),
                        consumed: Some(i),
                    })
                }
                Err(Failure::Reject(reason)) => {
                    // This alert alone is invalid (one request each): park it, go on.
                    return Ok(Sent {
                        rejected: vec![(i, reason)],
                        consumed: Some(i + 1),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Sent::default())
    }
}
