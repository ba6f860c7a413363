//! Governance: who is calling, and what may pass.
//!
//! A request goes through [`Engine::evaluate`] once its body has been read (before
//! anything is sent upstream). The order is one explicit function, [`Engine::evaluate`],
//! and it is the order a compliance reader should expect:
//!
//! 1. **identity** — the virtual key (`sk-sluice-…`) or the fingerprint of the client's own
//!    provider key, plus the workload identity from the probe, select the policies in scope;
//! 2. **provider and model rules** — cheapest, and a denied model makes everything after it moot;
//! 3. **prompt guardrails** — secrets, PII and prompt injection in the text that would leave.
//!    Redaction rewrites the body the provider receives; block answers the client with the
//!    provider's own error format.
//!
//! Each policy runs in `enforce` or `shadow` mode. A shadow policy records the decision it
//! would have taken (`shadow_block`, `shadow_redact`) and lets the request through untouched,
//! so a rollout can be judged on real traffic first. The first enforcing block wins; all
//! triggered reasons are recorded.
//!
//! 4. **budgets** — the worst case must fit in what is left (see [`budget`]); the tightest
//!    enforcing budget also travels with the request ([`StreamBudget`]) so a stream whose
//!    real output spends past it is cut mid-way;
//! 5. **response guardrails** — the first policy in scope with a `response:` section
//!    decides how the answer is checked ([`ResponsePlan`]): redacted on the fly (streams
//!    through a bounded window, see [`crate::guardrails::StreamRedactor`]) or recorded.
//!
//! Rate limits are decided earlier, on identity alone, by [`Engine::admit`].

mod body;
mod budget;
mod keys;
mod limits;
mod lint;

use std::sync::Arc;

use serde::Deserialize;

pub use budget::{Budget, CounterStore, MemoryCounters, Period, SqliteCounters, StoreError};
pub use limits::{Limited, Limiter, RateLimit, WindowRow};
pub use lint::{lint, LintFinding};

pub use keys::{
    fingerprint, presented_key, KeyError, ResolvedKey, Secret, VirtualKey, VirtualKeys,
    VIRTUAL_KEY_PREFIX,
};

use crate::guardrails::{Category, Group, Scanner};
use crate::record::Identity;

/// The `policy:` section of the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Virtual keys clients present instead of provider keys.
    pub virtual_keys: Vec<VirtualKey>,
    /// Policies, evaluated in this order.
    pub policies: Vec<Policy>,
}

/// One named, versioned policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Stable id, shown in records and in refusals.
    pub id: String,
    /// Version, bumped on every change; records carry `id@vN`.
    #[serde(default = "one")]
    pub version: u32,
    /// `enforce` (default) or `shadow`.
    #[serde(default)]
    pub mode: Mode,
    /// Who the policy applies to; empty = everyone.
    #[serde(default)]
    pub scope: Scope,
    /// Model allow/deny globs (`gpt-4o*`, `claude-*`).
    #[serde(default)]
    pub models: Option<AllowDeny>,
    /// Provider allow/deny globs (`openai`, `anthropic`, …).
    #[serde(default)]
    pub providers: Option<AllowDeny>,
    /// Guardrails on the prompt before it leaves.
    #[serde(default)]
    pub prompt: Option<Guardrails>,
    /// Guardrails on the answer before it reaches the client (streams included, checked
    /// on the fly with a bounded window). The first policy in scope with a `response:`
    /// section governs the answer.
    #[serde(default)]
    pub response: Option<ResponseGuardrails>,
    /// Rate limits per identity (the strongest one known: virtual-key user, else the
    /// client's key fingerprint, else the process and uid, else the client address).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Spend cap per identity (or shared), checked with a worst-case estimate before the
    /// request and settled with the real cost after it.
    #[serde(default)]
    pub budget: Option<Budget>,
}

fn one() -> u32 {
    1
}

/// Enforce or only record.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decisions take effect.
    #[default]
    Enforce,
    /// Decisions are recorded, traffic is untouched.
    Shadow,
}

/// Identity selectors; a list that is empty matches everyone, several lists must all match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    /// Virtual-key users.
    pub users: Vec<String>,
    /// Virtual-key teams.
    pub teams: Vec<String>,
    /// Virtual-key projects.
    pub projects: Vec<String>,
    /// Process names (globs), from the probe.
    pub processes: Vec<String>,
    /// User ids, from the probe.
    pub uids: Vec<u32>,
    /// Kubernetes pod UIDs.
    pub pods: Vec<String>,
}

/// Allow and deny globs; deny wins; an empty allow list allows everything not denied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowDeny {
    /// Globs allowed.
    pub allow: Vec<String>,
    /// Globs denied.
    pub deny: Vec<String>,
}

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

/// Guardrail actions on the answer. `block` is not offered: the status line has left by
/// the time the answer arrives, so the strongest action is to redact.
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

/// What is left of the tightest enforcing budget once a request was admitted, so a
/// stream can be cut when its real output spends it.
#[derive(Debug, Clone)]
pub struct StreamBudget {
    /// The budget's policy, `id@vN`.
    pub policy_id: String,
    /// USD left in the budget before this request.
    pub headroom_usd: f64,
    /// The prompt's estimated cost.
    pub input_usd: f64,
    /// Price of one output token.
    pub output_usd_per_token: f64,
}

impl StreamBudget {
    /// Whether `output_tokens` more would spend past the budget.
    pub fn exceeded(&self, output_tokens: u64) -> bool {
        self.input_usd + output_tokens as f64 * self.output_usd_per_token > self.headroom_usd
    }
}

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

/// The outcome of evaluating one request.
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
    /// HTTP status and message for a refusal.
    pub refusal: Option<(u16, String)>,
    /// How the answer is guarded, when a policy in scope has `response:` guardrails.
    pub response: Option<ResponsePlan>,
    /// The tightest enforcing budget, for cutting a stream that spends past it.
    pub stream_budget: Option<StreamBudget>,
}

/// What a request looks like to the policy.
pub struct Facts<'a> {
    /// The provider's adapter (its label, its prices).
    pub adapter: &'a dyn crate::providers::Adapter,
    /// Model, when known.
    pub model: Option<&'a str>,
    /// The caller.
    pub identity: &'a Identity,
    /// The request body as read (JSON), when it could be read whole.
    pub body: Option<&'a [u8]>,
    /// Estimated input tokens (for the budget's worst case).
    pub input_tokens: u64,
    /// The maximum output the request asks for, when it says.
    pub max_output_tokens: Option<u64>,
}

/// The compiled policy set.
pub struct Engine {
    policies: Vec<Compiled>,
    /// Virtual keys.
    pub keys: VirtualKeys,
    limiter: Arc<Limiter>,
    spend: Arc<dyn CounterStore>,
    /// The policies as configured, to describe what a reload changed.
    config: PolicyConfig,
}

/// Rate-limit slots a request holds until it finishes.
#[derive(Debug, Default)]
pub struct Admission {
    keys: Vec<String>,
}

struct Compiled {
    policy: Policy,
    scanner: Option<Arc<Scanner>>,
    /// Response categories redacted, and only recorded.
    response_redact: Option<Arc<Scanner>>,
    response_detect: Option<Arc<Scanner>>,
}

/// A scanner for the categories of the groups whose action passes `pick`, if any.
fn response_scanner(g: &ResponseGuardrails, pick: impl Fn(Action) -> bool) -> Option<Arc<Scanner>> {
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

impl Engine {
    /// Compile a validated config section.
    ///
    /// # Errors
    /// A virtual key whose provider secret cannot be read.
    pub fn new(cfg: &PolicyConfig, spend: Arc<dyn CounterStore>) -> Result<Engine, KeyError> {
        let policies = cfg
            .policies
            .iter()
            .map(|p| {
                let shadow = p.mode == Mode::Shadow;
                let response = p.response.as_ref();
                Compiled {
                    scanner: p.prompt.as_ref().map(|g| {
                        Arc::new(Scanner::all().with_injection_threshold(g.injection_threshold))
                    }),
                    response_redact: response
                        .filter(|_| !shadow)
                        .and_then(|g| response_scanner(g, |a| a == Action::Redact)),
                    response_detect: response.and_then(|g| {
                        response_scanner(g, |a| {
                            a == Action::Alert || (shadow && a >= Action::Redact)
                        })
                    }),
                    policy: p.clone(),
                }
            })
            .collect();
        let limiter = Limiter::default();
        limiter.restore(spend.load_windows());
        Ok(Engine {
            policies,
            keys: VirtualKeys::new(&cfg.virtual_keys)?,
            limiter: Arc::new(limiter),
            spend,
            config: cfg.clone(),
        })
    }

    /// A new engine for a changed config that keeps this one's counters (rate windows,
    /// in-flight slots, budget spend), so a reload neither resets nor double-counts.
    ///
    /// # Errors
    /// As [`Engine::new`].
    pub fn reload(&self, cfg: &PolicyConfig) -> Result<Engine, KeyError> {
        let mut next = Engine::new(cfg, self.spend.clone())?;
        next.limiter = self.limiter.clone();
        Ok(next)
    }

    /// What changed between this engine's policies and `next`'s, for the audit trail:
    /// `{"added": [...], "removed": [...], "changed": [...]}` of `id@vN`, plus whether the
    /// virtual keys changed (never the keys themselves).
    pub fn diff(&self, next: &Engine) -> serde_json::Value {
        let show = |p: &Policy| format!("{}@v{}", p.id, p.version);
        let old: std::collections::BTreeMap<_, _> = self
            .config
            .policies
            .iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let new: std::collections::BTreeMap<_, _> = next
            .config
            .policies
            .iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let added: Vec<_> = new
            .iter()
            .filter(|(k, _)| !old.contains_key(*k))
            .map(|(_, p)| show(p))
            .collect();
        let removed: Vec<_> = old
            .iter()
            .filter(|(k, _)| !new.contains_key(*k))
            .map(|(_, p)| show(p))
            .collect();
        let changed: Vec<_> = new
            .iter()
            .filter_map(|(k, p)| {
                let o = old.get(k)?;
                let differs = format!("{o:?}") != format!("{p:?}");
                differs.then(|| format!("{} -> {}", show(o), show(p)))
            })
            .collect();
        let users = |c: &PolicyConfig| -> Vec<String> {
            c.virtual_keys.iter().map(|k| k.user.clone()).collect()
        };
        serde_json::json!({
            "added": added,
            "removed": removed,
            "changed": changed,
            "virtual_key_users_before": users(&self.config),
            "virtual_key_users_after": users(&next.config),
        })
    }

    /// Save the rate-limit windows to the counter store (periodically and at shutdown),
    /// so a restart keeps the minute's counts.
    pub fn save_counters(&self) {
        self.spend.save_windows(&self.limiter.snapshot());
    }

    /// Add the real cost of a finished request to every budget that covers its caller.
    pub fn settle(&self, identity: &Identity, cost_usd: f64) {
        let period_now = now_secs();
        for c in &self.policies {
            if let (Some(b), true) = (&c.policy.budget, in_scope(&c.policy.scope, identity)) {
                let key = budget_key(&c.policy, b, identity);
                self.spend.add(&key, b.period.index(period_now), cost_usd);
            }
        }
    }

    /// Rate limits, decided on identity alone before the body is read, so an over-limit
    /// client costs nothing more. On refusal, the deciding policy (`id@vN`) and why; a
    /// shadow policy's would-be refusal is only noted in `shadow`.
    pub fn admit(
        &self,
        identity: &Identity,
        shadow: &mut Vec<(String, Limited)>,
    ) -> Result<Admission, (String, Limited)> {
        let who = limit_key(identity);
        let mut held = Admission::default();
        for c in &self.policies {
            let (Some(limit), true) = (&c.policy.rate_limit, in_scope(&c.policy.scope, identity))
            else {
                continue;
            };
            let id = format!("{}@v{}", c.policy.id, c.policy.version);
            let key = format!("{id}|{who}");
            match self.limiter.admit(&key, limit) {
                Ok(()) => held.keys.push(key),
                Err(l) if c.policy.mode == Mode::Shadow => shadow.push((id, l)),
                Err(l) => {
                    self.finish(held, 0);
                    return Err((id, l));
                }
            }
        }
        Ok(held)
    }

    /// Release rate-limit slots and charge the tokens the request used.
    pub fn finish(&self, admission: Admission, tokens: u64) {
        for key in admission.keys {
            self.limiter.finish(&key, tokens);
        }
    }

    /// Whether any policy needs the request body.
    pub fn needs_body(&self) -> bool {
        self.policies.iter().any(|c| {
            let p = &c.policy;
            p.prompt.is_some() || p.models.is_some() || p.budget.is_some() || p.response.is_some()
        })
    }

    /// Evaluate a request, in the order documented at the top of this module.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Verdict {
        let mut v = Verdict::default();
        // The redacted body is built once and shared by later redacting policies.
        let mut body: Option<serde_json::Value> = None;
        for c in &self.policies {
            let p = &c.policy;
            // 1. Identity: is this policy about this caller at all?
            if !in_scope(&p.scope, facts.identity) {
                continue;
            }
            let id = format!("{}@v{}", p.id, p.version);
            let mut block: Option<String> = None;
            let mut redact = false;
            let mut budget_block = false;

            // 2. Provider and model rules.
            if let Some(rule) = &p.providers {
                if !allowed(rule, facts.adapter.name()) {
                    v.reason_codes.push("provider_denied".into());
                    block = Some(format!("provider {} is not allowed", facts.adapter.name()));
                }
            }
            if let (Some(rule), None) = (&p.models, &block) {
                let model = facts.model.unwrap_or("");
                if !allowed(rule, model) {
                    v.reason_codes.push("model_denied".into());
                    block = Some(format!("model {model:?} is not allowed"));
                }
            }

            // 3. Prompt guardrails over every text field of the body.
            if let (Some(g), Some(scanner), None) = (&p.prompt, &c.scanner, &block) {
                let source = match &body {
                    Some(b) => Some(b.clone()),
                    None => facts.body.and_then(|b| serde_json::from_slice(b).ok()),
                };
                if let Some(mut json) = source {
                    let found = body::scan(&json, scanner);
                    for cat in &found {
                        if !v.triggered.contains(cat) {
                            v.triggered.push(*cat);
                        }
                    }
                    let action_of = |cat: &Category| match cat.group() {
                        Group::Pii => g.pii,
                        Group::Secret => g.secrets,
                        Group::Injection => match g.injection {
                            Action::Redact => Action::Block,
                            a => a,
                        },
                    };
                    let worst = found.iter().map(action_of).max().unwrap_or(Action::Allow);
                    for cat in found.iter().filter(|c| action_of(c) != Action::Allow) {
                        v.reason_codes.push(reason(*cat));
                    }
                    match worst {
                        Action::Block => {
                            let names: Vec<_> = found
                                .iter()
                                .filter(|c| action_of(c) == Action::Block)
                                .map(|c| c.as_str())
                                .collect();
                            block = Some(format!("the prompt contains {}", names.join(", ")));
                        }
                        Action::Redact => {
                            let cats: Vec<Category> = found
                                .iter()
                                .copied()
                                .filter(|c| action_of(c) == Action::Redact)
                                .collect();
                            body::redact(&mut json, scanner, &cats);
                            redact = true;
                            if p.mode == Mode::Enforce {
                                body = Some(json);
                            }
                        }
                        Action::Alert | Action::Allow => {}
                    }
                }
            }

            // 4. Budget: only a request that would otherwise pass reserves its worst case.
            if let (Some(b), None) = (&p.budget, &block) {
                let price = facts
                    .model
                    .and_then(|m| crate::pricing::PriceTable::embedded().lookup(facts.adapter, m));
                match price {
                    None => {
                        v.reason_codes.push("budget_unpriced_model".into());
                        block = Some(format!(
                            "model {:?} has no price, so its spend cannot be budgeted",
                            facts.model.unwrap_or("")
                        ));
                    }
                    Some(price) => {
                        let out = facts.max_output_tokens.unwrap_or(b.default_max_tokens);
                        let worst = (facts.input_tokens as f64 * price.input_per_mtok
                            + out as f64 * price.output_per_mtok)
                            / 1e6;
                        let key = budget_key(p, b, facts.identity);
                        let spent = self.spend.spent(&key, b.period.index(now_secs()));
                        let headroom = b.usd - spent;
                        let tighter = v
                            .stream_budget
                            .as_ref()
                            .is_none_or(|s| headroom < s.headroom_usd);
                        if p.mode == Mode::Enforce && tighter {
                            v.stream_budget = Some(StreamBudget {
                                policy_id: id.clone(),
                                headroom_usd: headroom,
                                input_usd: facts.input_tokens as f64 * price.input_per_mtok / 1e6,
                                output_usd_per_token: price.output_per_mtok / 1e6,
                            });
                        }
                        if spent + worst > b.usd {
                            v.reason_codes.push("budget_exceeded".into());
                            block = Some(format!(
                                "budget exhausted: ${spent:.6} of ${:.6} spent this {:?} period, this request may cost up to ${worst:.6}",
                                b.usd, b.period
                            ));
                            budget_block = true;
                        }
                    }
                }
            }

            // 5. The answer's guardrails: the first policy in scope that has them.
            if let (Some(_), None, None) = (&p.response, &block, &v.response) {
                v.response = Some(ResponsePlan {
                    policy_id: id.clone(),
                    shadow: p.mode == Mode::Shadow,
                    redact: c.response_redact.clone(),
                    detect: c.response_detect.clone(),
                });
            }

            // Combine: the first enforcing block decides; shadow decisions are recorded.
            match (block, p.mode) {
                (Some(why), Mode::Enforce) => {
                    v.decision = Decision::Block;
                    v.policy_id = Some(id.clone());
                    v.mode = Some("enforce");
                    v.refusal = Some((
                        if budget_block { 429 } else { 403 },
                        format!("Request blocked by Sluice policy {id}: {why}."),
                    ));
                    v.rewritten_body = None;
                    return v;
                }
                (Some(_), Mode::Shadow)
                    if matches!(v.decision, Decision::Allow | Decision::ShadowRedact) =>
                {
                    v.decision = Decision::ShadowBlock;
                    v.policy_id = Some(id);
                    v.mode = Some("shadow");
                }
                (None, Mode::Enforce) if redact => {
                    v.decision = Decision::Redact;
                    v.policy_id = Some(id);
                    v.mode = Some("enforce");
                }
                (None, Mode::Shadow) if redact && v.decision == Decision::Allow => {
                    v.decision = Decision::ShadowRedact;
                    v.policy_id = Some(id);
                    v.mode = Some("shadow");
                }
                _ => {}
            }
        }
        if v.decision == Decision::Redact {
            v.rewritten_body = body.and_then(|b| serde_json::to_vec(&b).ok());
        }
        v
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A budget counter: shared by name, else per policy (not version: a policy edit must not
/// reset spend) and identity.
fn budget_key(p: &Policy, b: &Budget, identity: &Identity) -> String {
    match &b.shared {
        Some(name) => format!("shared:{name}"),
        None => format!("{}|{}", p.id, limit_key(identity)),
    }
}

/// The identity rate limits count against: the strongest one known.
fn limit_key(id: &Identity) -> String {
    if let Some(u) = &id.user {
        return format!("user:{u}");
    }
    if let Some(f) = &id.api_key_fingerprint {
        return format!("key:{f}");
    }
    if let (Some(p), Some(uid)) = (&id.process, id.uid) {
        return format!("process:{p}:{uid}");
    }
    match &id.client_addr {
        Some(a) => format!(
            "addr:{}",
            a.rsplit_once(':').map_or(a.as_str(), |(ip, _)| ip)
        ),
        None => "anonymous".into(),
    }
}

fn reason(cat: Category) -> String {
    match cat.group() {
        Group::Pii => format!("pii:{}", cat.as_str()),
        Group::Secret => format!("secret:{}", cat.as_str()),
        Group::Injection => "prompt_injection".to_string(),
    }
}

/// The reason code of a finding in the answer: `response_pii:email`,
/// `response_secret:aws_key`.
pub fn response_reason(cat: Category) -> String {
    format!("response_{}", reason(cat))
}

/// Redact everything `scanner` finds in every text leaf of a JSON document (an answer,
/// an event); the categories found are added to `found`.
pub fn redact_body(doc: &mut serde_json::Value, scanner: &Scanner, found: &mut Vec<Category>) {
    body::redact_all(doc, scanner, found);
}

fn in_scope(s: &Scope, id: &Identity) -> bool {
    let any = |list: &[String], value: Option<&str>| {
        list.is_empty() || value.is_some_and(|v| list.iter().any(|p| glob(p, v)))
    };
    any(&s.users, id.user.as_deref())
        && any(&s.teams, id.team.as_deref())
        && any(&s.projects, id.project.as_deref())
        && any(&s.processes, id.process.as_deref())
        && any(&s.pods, id.pod_uid.as_deref())
        && (s.uids.is_empty() || id.uid.is_some_and(|u| s.uids.contains(&u)))
}

fn allowed(rule: &AllowDeny, value: &str) -> bool {
    if rule.deny.iter().any(|p| glob(p, value)) {
        return false;
    }
    rule.allow.is_empty() || rule.allow.iter().any(|p| glob(p, value))
}

/// Shell-style glob with `*` (any run) and `?` (one char), case-insensitive.
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let v: Vec<char> = value.to_lowercase().chars().collect();
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests;
