//! Step 4 of the governance order: guardrails on the prompt, before it leaves.
//!
//! Secrets, PII and prompt injection are looked for in every text field of the body
//! ([`super::body`]). `block` refuses; `redact` rewrites the body the provider receives
//! (typed markers such as `[REDACTED:EMAIL]`), and later redacting policies work on the
//! already redacted body; `alert` only records. It runs after the provider and model
//! rules (a request refused there is never scanned) and before the budget, so a request
//! refused for what it carries never reserves spend.

use serde::Deserialize;
use serde_json::Value;

use super::verdict::{PolicyOutcome, Verdict};
use super::{body, Compiled, Facts, Mode, OnUninspectable};
use crate::guardrails::{Category, Group};

/// What to do when a detector group fires.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing.
    #[default]
    Allow,
    /// Record only.
    Alert,
    /// Replace the spans with typed markers.
    Redact,
    /// Refuse the request.
    Block,
}

/// Guardrail actions per detector group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guardrails {
    /// Emails, phones, cards, IBANs, SSNs, IPs.
    pub pii: Action,
    /// Cloud keys, tokens, private keys, JWTs, connection strings.
    pub secrets: Action,
    /// Prompt injection and jailbreaks (`redact` is treated as `block`).
    pub injection: Action,
    /// Injection score from which the detector fires, 0–1. Default 0.5.
    pub injection_threshold: f32,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            pii: Action::Allow,
            secrets: Action::Allow,
            injection: Action::Allow,
            injection_threshold: 0.5,
        }
    }
}

/// The request body as the prompt guardrails see it: parsed once, and redacted in place
/// by enforcing policies so later ones see (and forward) the redacted text.
#[derive(Default)]
pub(super) struct PromptBody {
    /// The body as enforcing redactions left it; `None` until one redacted.
    redacted: Option<Value>,
}

impl PromptBody {
    /// The body to forward, when an enforcing policy redacted it.
    pub(super) fn into_rewritten(self) -> Option<Vec<u8>> {
        self.redacted.and_then(|b| serde_json::to_vec(&b).ok())
    }
}

/// Checks policy `c`'s prompt guardrails. Detection reads every string of the body
/// leniently ([`body::scan_raw`]: duplicated keys, JSON the strict parser refuses, text
/// that is not JSON at all), or the body as earlier enforcing policies redacted it; a
/// body that cannot be judged (unparseable, too large) is then refused unless the policy
/// says `on_uninspectable: allow`. Redaction needs the strictly parsed body.
pub(super) fn check(
    c: &Compiled,
    facts: &Facts<'_>,
    prompt: &mut PromptBody,
    v: &mut Verdict,
    out: &mut PolicyOutcome,
) {
    let (Some(g), Some(scanner)) = (&c.policy.prompt, &c.scanner) else {
        return;
    };
    let Some(raw) = facts.body.filter(|b| !b.is_empty()) else {
        return; // nothing the client sends, nothing to judge
    };
    let found = match &prompt.redacted {
        Some(json) => body::scan(json, scanner),
        None => body::scan_raw(raw, facts.json.is_some(), scanner),
    };
    v.triggered(&found);
    let action_of = |cat: &Category| match cat.group() {
        Group::Pii => g.pii,
        Group::Secret => g.secrets,
        Group::Injection => match g.injection {
            Action::Redact => Action::Block,
            a => a,
        },
    };
    for cat in found.iter().filter(|c| action_of(c) != Action::Allow) {
        v.note(super::reason(*cat));
    }
    let worst = found.iter().map(action_of).max().unwrap_or(Action::Allow);
    if worst == Action::Block {
        let names: Vec<_> = found
            .iter()
            .filter(|c| action_of(c) == Action::Block)
            .map(|c| c.as_str())
            .collect();
        out.refuse = Some((403, format!("the prompt contains {}", names.join(", "))));
        return;
    }
    if let (Some(reason), None) = (facts.uninspectable, &prompt.redacted) {
        v.note(reason);
        match c.policy.on_uninspectable {
            OnUninspectable::Allow => v.note("uninspectable_allowed"),
            OnUninspectable::Refuse => {
                let (status, why) = if reason == "body_too_large" {
                    (
                        413,
                        "the body is larger than max_inspect_bytes, so it cannot be checked whole",
                    )
                } else {
                    (400, "the body is not valid JSON, so it cannot be checked")
                };
                out.refuse = Some((status, why.to_owned()));
                return;
            }
        }
    }
    if worst == Action::Redact {
        let source = prompt.redacted.take().or_else(|| facts.json.clone());
        let Some(mut json) = source else {
            return; // unparseable and allowed: forwarded as sent (recorded above)
        };
        let cats: Vec<Category> = found
            .iter()
            .copied()
            .filter(|c| action_of(c) == Action::Redact)
            .collect();
        body::redact(&mut json, scanner, &cats);
        out.redacted = true;
        if c.policy.mode == Mode::Enforce {
            prompt.redacted = Some(json);
        }
    }
}
