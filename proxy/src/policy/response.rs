//! Step 6 of the governance order: how the answer will be checked.
//!
//! The first policy in scope with a `response:` section governs the answer; its plan
//! travels with the exchange and is applied as the answer flows (streams redacted on the
//! fly through a bounded window, see [`crate::guardrails::StreamRedactor`]). `block` is
//! not offered: the status line has left when the answer arrives, so the strongest
//! action is to redact. It is decided last because a refused request has no answer.

use std::sync::Arc;

use serde::Deserialize;

use super::prompt::Action;
use super::verdict::Verdict;
use super::{Compiled, Mode};
use crate::guardrails::{Category, Group, Scanner};

/// Guardrail actions on the answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseGuardrails {
    /// Emails, phones, cards, IBANs, SSNs, IPs in the answer.
    pub pii: Action,
    /// Keys, tokens, private keys, JWTs, connection strings in the answer.
    pub secrets: Action,
}

/// How the answer to one request is guarded, from the governing policy.
#[derive(Clone)]
pub struct ResponsePlan {
    /// The governing policy, `id@vN`.
    pub policy_id: String,
    /// `shadow`: findings are recorded as `shadow_redact`, nothing is changed.
    pub shadow: bool,
    /// Categories to redact in what the client receives (enforce mode only).
    pub redact: Option<Arc<Scanner>>,
    /// Categories only recorded (`alert`, and everything a shadow policy would redact).
    pub detect: Option<Arc<Scanner>>,
}

impl std::fmt::Debug for ResponsePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponsePlan")
            .field("policy_id", &self.policy_id)
            .field("shadow", &self.shadow)
            .field("redact", &self.redact.is_some())
            .field("detect", &self.detect.is_some())
            .finish()
    }
}

/// The scanners a policy's `response:` section compiles to: what to redact (enforce
/// only) and what to record.
pub(super) fn scanners(
    g: Option<&ResponseGuardrails>,
    mode: Mode,
) -> (Option<Arc<Scanner>>, Option<Arc<Scanner>>) {
    let Some(g) = g else {
        return (None, None);
    };
    let shadow = mode == Mode::Shadow;
    let redact = (!shadow)
        .then(|| scanner_for(g, |a| a == Action::Redact))
        .flatten();
    let detect = scanner_for(g, |a| a == Action::Alert || (shadow && a >= Action::Redact));
    (redact, detect)
}

/// A scanner for the categories of the groups whose action passes `pick`, if any.
fn scanner_for(g: &ResponseGuardrails, pick: impl Fn(Action) -> bool) -> Option<Arc<Scanner>> {
    let cats: Vec<Category> = Category::ALL
        .iter()
        .copied()
        .filter(|c| match c.group() {
            Group::Pii => pick(g.pii),
            Group::Secret => pick(g.secrets),
            Group::Injection => false,
        })
        .collect();
    (!cats.is_empty()).then(|| Arc::new(Scanner::new(&cats)))
}

/// Sets the response plan from policy `c` when it is the first in scope to have one.
pub(super) fn plan(c: &Compiled, id: &str, v: &mut Verdict) {
    if c.policy.response.is_none() || v.response.is_some() {
        return;
    }
    v.response = Some(ResponsePlan {
        policy_id: id.to_owned(),
        shadow: c.policy.mode == Mode::Shadow,
        redact: c.response_redact.clone(),
        detect: c.response_detect.clone(),
    });
}

/// The reason code of a finding in the answer: `response_pii:email`,
/// `response_secret:aws_key`.
pub fn response_reason(cat: Category) -> String {
    format!("response_{}", super::reason(cat))
}
