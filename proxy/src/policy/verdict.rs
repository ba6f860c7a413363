//! The verdict on one exchange and the rules that combine decisions into it.
//!
//! Every step of the governance order (see [`super::Engine::apply_request_policies`])
//! and what happens to the answer afterwards changes the verdict only through the
//! methods here, so the precedence is written once:
//!
//! - an **enforcing refusal** wins and ends evaluation (the first one decides);
//! - an enforcing **redaction** replaces any earlier non-refusing decision;
//! - a **shadow** refusal is recorded when nothing stronger was decided
//!   (`allow`, `shadow_redact`), a shadow redaction only over `allow`;
//! - reason codes accumulate, each once, in the order the steps found them.

use super::Mode;
use crate::guardrails::Category;

/// The decision recorded on an interaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Passed untouched.
    #[default]
    Allow,
    /// Passed with spans redacted.
    Redact,
    /// Refused.
    Block,
    /// A shadow policy would have refused it.
    ShadowBlock,
    /// A shadow policy would have redacted it.
    ShadowRedact,
}

impl Decision {
    /// Label for metrics and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Redact => "redact",
            Decision::Block => "block",
            Decision::ShadowBlock => "shadow_block",
            Decision::ShadowRedact => "shadow_redact",
        }
    }
}

/// How Sluice answers a request it refuses: in the provider's error format, with this
/// status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 401 unknown key, 403 policy, 429 rate limit or budget, 503 ledger.
    pub status: u16,
    /// What the client's SDK shows: which policy and why.
    pub message: String,
    /// Seconds for `Retry-After` when retrying later can succeed (rate limits).
    pub retry_after: Option<u64>,
}

/// What one policy's steps 3–5 concluded, before it is folded into the verdict.
#[derive(Debug, Default)]
pub(super) struct PolicyOutcome {
    /// Why it refuses, and with which status.
    pub(super) refuse: Option<(u16, String)>,
    /// It redacted the prompt.
    pub(super) redacted: bool,
}

/// The outcome of governing one exchange.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// What happens.
    pub decision: Decision,
    /// Why, e.g. `model_denied`, `pii:email`, `secret:aws_key`, `prompt_injection`.
    pub reason_codes: Vec<String>,
    /// The deciding policy, `id@vN`.
    pub policy_id: Option<String>,
    /// Detector categories that fired (any mode).
    pub triggered: Vec<Category>,
    /// `enforce` or `shadow`, for the deciding policy.
    pub mode: Option<&'static str>,
    /// The body to forward instead of the client's (redaction).
    pub rewritten_body: Option<Vec<u8>>,
    /// The answer Sluice gives instead of forwarding, when refused.
    pub refusal: Option<Refusal>,
    /// How the answer is guarded, when a policy in scope has `response:` guardrails.
    pub response: Option<super::ResponsePlan>,
    /// The tightest enforcing budget, for cutting a stream that spends past it.
    pub stream_budget: Option<super::StreamBudget>,
}

impl Verdict {
    /// Adds a reason code unless it is there already.
    pub fn note(&mut self, code: impl Into<String>) {
        let code = code.into();
        if !self.reason_codes.contains(&code) {
            self.reason_codes.push(code);
        }
    }

    /// Adds detector categories that fired, each once.
    pub fn triggered(&mut self, found: &[Category]) {
        for cat in found {
            if !self.triggered.contains(cat) {
                self.triggered.push(*cat);
            }
        }
    }

    /// Refuse, enforcing: `block`, the deciding policy (none for refusals that are not a
    /// policy's, like an unknown virtual key), the reason code and the answer. A refused
    /// request forwards nothing, so no rewritten body survives.
    pub fn refuse(&mut self, policy_id: Option<String>, reason: &str, refusal: Refusal) {
        self.decision = Decision::Block;
        if policy_id.is_some() {
            self.policy_id = policy_id;
            self.mode = Some("enforce");
        }
        if !reason.is_empty() {
            self.note(reason);
        }
        self.rewritten_body = None;
        self.refusal = Some(refusal);
    }

    /// A shadow policy would have refused (`reason`): recorded when nothing stronger was
    /// decided, the request goes on.
    pub fn shadow_refuse(&mut self, policy_id: String, reason: &str) {
        if !reason.is_empty() {
            self.note(reason);
        }
        if matches!(self.decision, Decision::Allow | Decision::ShadowRedact) {
            self.decision = Decision::ShadowBlock;
            self.policy_id = Some(policy_id);
            self.mode = Some("shadow");
        }
    }

    /// Folds one policy's outcome in; returns `true` when it refused (evaluation stops:
    /// the first enforcing refusal decides).
    pub(super) fn merge_policy(&mut self, id: String, mode: Mode, out: PolicyOutcome) -> bool {
        match (out.refuse, mode) {
            (Some((status, why)), Mode::Enforce) => {
                let message = format!("Request blocked by Sluice policy {id}: {why}.");
                let refusal = Refusal {
                    status,
                    message,
                    retry_after: None,
                };
                // The step already noted its reason code.
                self.refuse(Some(id), "", refusal);
                return true;
            }
            (Some(_), Mode::Shadow) => self.shadow_refuse(id, ""),
            (None, Mode::Enforce) if out.redacted => {
                self.decision = Decision::Redact;
                self.policy_id = Some(id);
                self.mode = Some("enforce");
            }
            (None, Mode::Shadow) if out.redacted && self.decision == Decision::Allow => {
                self.decision = Decision::ShadowRedact;
                self.policy_id = Some(id);
                self.mode = Some("shadow");
            }
            _ => {}
        }
        false
    }

    /// Folds in what happened to the answer under the response plan: categories
    /// redacted on the way (enforce: `redact`), found and only recorded (`alert`; shadow:
    /// `shadow_redact`), and whether part of the answer could not be inspected.
    pub fn answer_checked(
        &mut self,
        redacted: &[Category],
        detected: &[Category],
        overflowed: bool,
    ) {
        let Some(plan) = self.response.clone() else {
            return;
        };
        if overflowed {
            self.note("response_not_inspected_by_policy");
        }
        for cat in redacted.iter().chain(detected) {
            self.triggered(std::slice::from_ref(cat));
            self.note(super::response_reason(*cat));
        }
        let (decision, mode, acted) = if plan.shadow {
            (Decision::ShadowRedact, "shadow", !detected.is_empty())
        } else {
            (Decision::Redact, "enforce", !redacted.is_empty())
        };
        if acted && matches!(self.decision, Decision::Allow | Decision::ShadowRedact) {
            self.decision = decision;
            self.policy_id = Some(plan.policy_id);
            self.mode = Some(mode);
        }
    }

    /// A stream cut mid-way because its real output spent past a budget.
    pub fn cut_mid_stream(&mut self, policy_id: String) {
        self.decision = Decision::Block;
        self.policy_id = Some(policy_id);
        self.mode = Some("enforce");
        self.note("budget_exceeded_mid_stream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_written_once() {
        let mut v = Verdict::default();
        v.shadow_refuse("rl@v1".into(), "rate_limit_requests");
        assert_eq!(v.decision, Decision::ShadowBlock);
        // An enforcing redaction replaces a shadow refusal.
        let redacted = PolicyOutcome {
            redacted: true,
            ..PolicyOutcome::default()
        };
        assert!(!v.merge_policy("p@v1".into(), Mode::Enforce, redacted));
        assert_eq!((v.decision, v.mode), (Decision::Redact, Some("enforce")));
        // A later shadow refusal does not override it.
        v.shadow_refuse("s@v1".into(), "model_denied");
        assert_eq!(v.decision, Decision::Redact);
        // The first enforcing refusal decides and drops the rewritten body.
        v.rewritten_body = Some(b"{}".to_vec());
        let refuse = PolicyOutcome {
            refuse: Some((403, "model \"x\" is not allowed".into())),
            ..PolicyOutcome::default()
        };
        assert!(v.merge_policy("q@v2".into(), Mode::Enforce, refuse));
        assert_eq!(v.decision, Decision::Block);
        assert_eq!(v.policy_id.as_deref(), Some("q@v2"));
        assert!(v.rewritten_body.is_none());
        let r = v.refusal.clone().unwrap();
        assert_eq!(r.status, 403);
        assert!(r.message.contains("q@v2") && r.message.contains("not allowed"));
        assert_eq!(v.reason_codes, ["rate_limit_requests", "model_denied"]);
    }

    #[test]
    fn a_cut_stream_is_a_block() {
        let mut v = Verdict::default();
        v.cut_mid_stream("budget@v1".into());
        v.cut_mid_stream("budget@v1".into());
        assert_eq!(v.decision, Decision::Block);
        assert_eq!(v.reason_codes, ["budget_exceeded_mid_stream"]);
    }
}
