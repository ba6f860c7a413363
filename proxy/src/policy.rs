//! Governance: who is calling, and what may pass.
//!
//! [`Engine::apply_request_policies`] is the one place that states the order in which a
//! request is governed, before anything is sent upstream; each step lives in its own
//! file:
//!
//! | step | file | decides |
//! |---|---|---|
//! | 1. identity and key | `policy/keys.rs` | who is calling: a virtual key (`sk-sluice-…`, swapped for the real provider key) or the fingerprint of the client's own key, plus the workload from the probe |
//! | 2. rate limits | `policy/limits.rs` | requests, tokens and concurrency per identity |
//! | 3. provider and model rules | `policy/rules.rs` | allow/deny globs |
//! | 4. prompt guardrails | `policy/prompt.rs` | secrets, PII, prompt injection: block, redact, alert |
//! | 5. budgets | `policy/budget.rs` | the worst case must fit in what is left |
//! | 6. response plan | `policy/response.rs` | how the answer is checked as it flows |
//!
//! How decisions combine (the first enforcing refusal wins, shadow decisions are only
//! recorded, …) is written once, as methods of [`Verdict`] (`policy/verdict.rs`).
//!
//! Each policy runs in `enforce` or `shadow` mode. A shadow policy records the decision it
//! would have taken (`shadow_block`, `shadow_redact`) and lets the request through
//! untouched, so a rollout can be judged on real traffic first.
//!
//! What this module is not: it does no I/O of its own (the request body comes through
//! [`RequestBody`]), writes no records and answers no client; the proxy does that with
//! the [`Verdict`].

mod body;
mod budget;
mod counters;
mod keys;
mod limits;
mod lint;
mod prompt;
mod response;
mod rules;
mod verdict;

use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;

pub use budget::{
    Budget, CounterStore, MemoryCounters, Period, SqliteCounters, StoreError, StreamBudget,
};
pub use counters::{
    Admitted, BudgetHold, Counters, FleetConfig, OnUnavailable, RateHold, RedisConfig,
    RedisCounters, Reserved,
};
pub use keys::{
    fingerprint, presented_key, scrub_path, Carrier, KeyError, KeySwap, ResolvedKey, Secret,
    VirtualKey, VirtualKeys, CREDENTIAL_HEADERS, CREDENTIAL_PARAMS, VIRTUAL_KEY_PREFIX,
};
pub use limits::{Limited, Limiter, RateLimit, WindowRow};
pub use lint::{lint, LintFinding};
pub use prompt::{Action, Guardrails};
pub use response::{response_reason, ResponseGuardrails, ResponsePlan};
pub use rules::{glob, AllowDeny};
pub use verdict::{Decision, Refusal, Verdict};

use crate::guardrails::{Category, Group, Scanner};
use crate::providers::{Adapter, Endpoint};
use crate::record::Identity;
use prompt::PromptBody;
use verdict::PolicyOutcome;

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
    /// Spend cap per identity (or shared): the worst case is reserved before the request
    /// and settled with the real cost after it.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// With a fleet's shared counter store down: `local` (default: this node's share of
    /// each limit), `fail_open` or `fail_closed` — for this policy's budget and rate
    /// limits.
    #[serde(default)]
    pub on_counter_store_unavailable: OnUnavailable,
    /// What the prompt guardrails do with a body they cannot judge — not parseable as
    /// the provider's JSON (`body_unparseable`, 400) or larger than `max_inspect_bytes`
    /// (`body_too_large`, 413): `refuse` (default) or `allow`, which forwards it after
    /// the lenient scan and records the reason on every such request.
    #[serde(default)]
    pub on_uninspectable: OnUninspectable,
}

/// See [`Policy::on_uninspectable`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUninspectable {
    /// Refuse (enforce) or record a would-be refusal (shadow).
    #[default]
    Refuse,
    /// Forward, recorded with the reason and `uninspectable_allowed`.
    Allow,
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
    /// Teams: the virtual key's, else the client network's (`networks:`).
    pub teams: Vec<String>,
    /// Virtual-key projects.
    pub projects: Vec<String>,
    /// Process names (globs), from the probe.
    pub processes: Vec<String>,
    /// User ids, from the probe.
    pub uids: Vec<u32>,
    /// Kubernetes pod UIDs.
    pub pods: Vec<String>,
    /// Kubernetes namespaces (globs), from the kubelet's files on the node.
    pub namespaces: Vec<String>,
    /// Kubernetes pod names (globs), from the kubelet's files on the node.
    pub pod_names: Vec<String>,
    /// Kubernetes service accounts (globs), from the Kubernetes API.
    pub service_accounts: Vec<String>,
    /// Kubernetes pod labels, each `key: glob` must match (from the Kubernetes API).
    pub pod_labels: std::collections::BTreeMap<String, String>,
    /// Client networks by name (globs), from `networks:`.
    pub networks: Vec<String>,
    /// Client network environments (globs), from `networks:`.
    pub environments: Vec<String>,
}

/// What a request looks like to steps 3–6.
pub struct Facts<'a> {
    /// The provider's adapter (its label, its prices).
    pub adapter: &'a dyn Adapter,
    /// Model, when known: from the body, else from the path.
    pub model: Option<String>,
    /// The caller.
    pub identity: &'a Identity,
    /// The request body as read, when it was read.
    pub body: Option<&'a [u8]>,
    /// The body parsed strictly as JSON (`None`: not parseable, or no body).
    pub json: Option<serde_json::Value>,
    /// Why the body cannot be judged, if it cannot: `body_unparseable`, `body_too_large`.
    pub uninspectable: Option<&'static str>,
    /// The prompt's size in tokens, for the budget's worst case: a bound from bytes at
    /// once, the tokenizer's count only when a decision needs it.
    pub input_tokens: InputTokens,
    /// The maximum output the request asks for, when it says.
    pub max_output_tokens: Option<u64>,
    /// The adapter knows the endpoint: an LLM call with a model and a price. Other
    /// requests to a provider (file uploads, assistants, batches) are judged by the
    /// prompt guardrails alone — their content still may not leave unjudged.
    pub llm_call: bool,
}

impl<'a> Facts<'a> {
    /// The facts of a request whose body is `body` (`truncated`: cut at
    /// `max_inspect_bytes`): the model from the body or the path, the input estimated from
    /// the messages, the requested maximum output, whether the body can be judged.
    pub fn of(
        adapter: &'a dyn Adapter,
        endpoint: Option<&Endpoint>,
        identity: &'a Identity,
        body: &'a [u8],
        truncated: bool,
    ) -> Facts<'a> {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let uninspectable = if truncated {
            Some("body_too_large")
        } else if json.is_none() {
            Some("body_unparseable")
        } else {
            None
        };
        let parsed = endpoint
            .map(|ep| adapter.parse_request(ep, body))
            .unwrap_or_default();
        let max_output_tokens = adapter.max_output_tokens(&parsed);
        let model = parsed
            .model
            .or_else(|| endpoint.and_then(|ep| ep.model_from_path.clone()));
        // The texts move into the count: no copy of the prompt on the request path.
        let input_tokens = InputTokens::of(parsed.messages.into_iter().map(|m| m.content));
        Facts {
            adapter,
            max_output_tokens,
            model,
            llm_call: endpoint.is_some(),
            identity,
            body: Some(body),
            json,
            uninspectable,
            input_tokens,
        }
    }
}

/// A prompt's input tokens, counted only when needed.
///
/// Every token of the tokenizer is at least one byte, so the prompt's length in bytes is an
/// upper bound of its token count, known for free. The budget reserves its worst case with
/// that bound; only a request the bound would refuse is counted exactly (the tokenizer runs
/// over the whole prompt, the most expensive step of a small request), and the provider's
/// reported usage settles the real spend either way.
#[derive(Debug)]
pub struct InputTokens {
    texts: Vec<String>,
    bytes: u64,
    exact: std::sync::OnceLock<u64>,
}

impl InputTokens {
    /// The input of these message texts.
    pub fn of(texts: impl Iterator<Item = String>) -> InputTokens {
        let texts: Vec<String> = texts.collect();
        let bytes = texts.iter().map(|t| t.len() as u64).sum();
        InputTokens {
            texts,
            bytes,
            exact: std::sync::OnceLock::new(),
        }
    }

    /// A count already known (tests, replays).
    pub fn known(tokens: u64) -> InputTokens {
        InputTokens {
            texts: Vec::new(),
            bytes: tokens,
            exact: std::sync::OnceLock::from(tokens),
        }
    }

    /// No fewer tokens than this: the prompt's bytes.
    pub fn upper_bound(&self) -> u64 {
        self.bytes
    }

    /// The tokenizer's count (computed once, on first call).
    pub fn exact(&self) -> u64 {
        *self.exact.get_or_init(|| {
            self.texts
                .iter()
                .map(|t| crate::providers::estimate_tokens(t))
                .sum()
        })
    }
}

/// The compiled policy set.
pub struct Engine {
    policies: Vec<Compiled>,
    /// Virtual keys.
    pub keys: VirtualKeys,
    /// Budget and rate-limit counters, kept across reloads.
    counters: Arc<Counters>,
    /// The policies as configured, to describe what a reload changed.
    config: PolicyConfig,
}

/// What a request holds until it finishes: rate-limit slots and budget reservations.
#[derive(Debug, Default)]
pub struct Admission {
    rates: Vec<RateHold>,
    budgets: Vec<BudgetHold>,
}

struct Compiled {
    policy: Policy,
    scanner: Option<Arc<Scanner>>,
    /// Response categories redacted, and only recorded.
    response_redact: Option<Arc<Scanner>>,
    response_detect: Option<Arc<Scanner>>,
}

impl Engine {
    /// Compile a validated config section.
    ///
    /// # Errors
    /// A virtual key whose provider secret cannot be read.
    pub fn new(cfg: &PolicyConfig, counters: Arc<Counters>) -> Result<Engine, KeyError> {
        let policies = cfg
            .policies
            .iter()
            .map(|p| {
                let (response_redact, response_detect) =
                    response::scanners(p.response.as_ref(), p.mode);
                Compiled {
                    scanner: p.prompt.as_ref().map(|g| {
                        Arc::new(Scanner::all().with_injection_threshold(g.injection_threshold))
                    }),
                    response_redact,
                    response_detect,
                    policy: p.clone(),
                }
            })
            .collect();
        // Every budget's cap is exported from the start; its spend as it is settled.
        for p in &cfg.policies {
            if let Some(b) = &p.budget {
                crate::metrics::BUDGET_LIMIT_USD
                    .with_label_values(&[budget::gauge_name(p, b), b.period.as_str()])
                    .set(b.usd);
            }
        }
        Ok(Engine {
            policies,
            keys: VirtualKeys::new(&cfg.virtual_keys)?,
            counters,
            config: cfg.clone(),
        })
    }

    /// A new engine for a changed config that keeps this one's counters (rate windows,
    /// in-flight slots, budget spend), so a reload neither resets nor double-counts.
    ///
    /// # Errors
    /// As [`Engine::new`].
    pub fn reload(&self, cfg: &PolicyConfig) -> Result<Engine, KeyError> {
        Engine::new(cfg, self.counters.clone())
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
        self.counters.save_windows();
    }

    /// At shutdown: waits (up to `limit`) for the fleet's settlements and releases
    /// handed to its I/O threads; false (and a warning) when some were still unmade.
    pub fn drain_counters(&self, limit: std::time::Duration) -> bool {
        let drained = self.counters.drain(limit);
        if !drained {
            tracing::warn!(?limit, "fleet: settlements still unmade at shutdown; their reservations expire with their leases and their spend is not counted");
        }
        drained
    }
}

/// A request as governance sees it before its body is read.
pub struct Request<'a> {
    /// The provider's adapter.
    pub adapter: &'static dyn Adapter,
    /// The endpoint, when the adapter knows it (`None`: not an LLM call it parses).
    pub endpoint: Option<&'a Endpoint>,
    /// The credential the client presented and the header it came in
    /// ([`presented_key`]).
    pub presented_key: Option<(Carrier, String)>,
    /// The connection's workload identity (process, pod, client address).
    pub workload: Identity,
}

/// Where governance reads the request body from, once the steps that need no body have
/// passed (the proxy's session, or a buffer in tests).
pub trait RequestBody {
    /// Why the body could not be read (the client went away, …).
    type Error;
    /// The whole body, read before anything is forwarded; `None` when it is not read
    /// whole (larger than can be held for replay, or of unknown length).
    fn read_whole(
        &mut self,
    ) -> impl Future<Output = Result<Option<WholeBody<'_>>, Self::Error>> + Send;
}

/// A request body read before forwarding.
pub struct WholeBody<'a> {
    /// Its bytes, up to `max_inspect_bytes`.
    pub bytes: &'a [u8],
    /// It was longer than that: only its start is in `bytes`.
    pub truncated: bool,
}

/// The outcome of [`Engine::apply_request_policies`]: who is calling and what happens.
#[derive(Debug, Default)]
pub struct Governed {
    /// The caller: the workload plus what the key says (user, team, project, key
    /// fingerprint).
    pub identity: Identity,
    /// The decision; `verdict.refusal` is set when the request must not be forwarded.
    pub verdict: Verdict,
    /// The real provider key to send instead of the client's virtual key.
    pub swap_key: Option<KeySwap>,
    /// Rate-limit slots held until the exchange ends ([`Engine::finish`]).
    pub admission: Option<Admission>,
    /// The body was read (and judged) whole.
    pub body_read: bool,
    /// The body must still be judged ([`Engine::judge_body`]) before any of it is
    /// forwarded: it was too large to read before the upstream is asked (or of unknown
    /// length), so the proxy holds it back as it arrives.
    pub body_pending: bool,
}

impl Engine {
    /// Governs one request, in this order, before anything is sent upstream:
    ///
    /// 1. **Identity and key** — who is calling selects the policies in scope, so it
    ///    comes first; an unknown virtual key is refused (401) before anything is counted.
    /// 2. **Rate limits** — on identity alone, before the body is read, so an
    ///    over-limit client costs nothing more (429 with `Retry-After`).
    ///
    /// Then the body is read whole, and for every policy in scope, in config order:
    ///
    /// 3. **Provider and model rules** — the cheapest check, and a denied model makes
    ///    everything after it moot.
    /// 4. **Prompt guardrails** — on what would leave; redaction rewrites the body later
    ///    policies see and the provider receives.
    /// 5. **Budget** — only a request that would otherwise pass reserves its worst case,
    ///    so a refused request never counts against anyone's spend.
    /// 6. **Response plan** — decided last: a refused request has no answer to check.
    ///
    /// The first enforcing refusal ends evaluation.
    ///
    /// # Errors
    /// Only when reading the body fails; every policy outcome is in [`Governed`].
    pub async fn apply_request_policies<B: RequestBody + Send>(
        &self,
        req: Request<'_>,
        body: &mut B,
    ) -> Result<Governed, B::Error> {
        let mut v = Verdict::default();
        let provider = req.adapter.name();
        // 1. Identity and key.
        let mut identity = req.workload;
        let swap_key = match self
            .keys
            .identify(req.presented_key, provider, &mut identity)
        {
            Ok(swap) => swap,
            Err((reason, refusal)) => {
                v.refuse(None, reason, refusal);
                return Ok(Governed::refused(identity, v));
            }
        };
        // 2. Rate limits.
        let admission = match self.admit(&identity, &mut v).await {
            Ok(admission) => admission,
            Err(()) => return Ok(Governed::refused(identity, v)),
        };
        let mut governed = Governed {
            identity,
            verdict: v,
            swap_key,
            admission: Some(admission),
            body_read: false,
            body_pending: false,
        };
        if !self.needs_body() {
            return Ok(governed);
        }
        let endpoint = req.endpoint;
        match body.read_whole().await {
            Ok(Some(whole)) => {
                self.judge_body(&mut governed, req.adapter, endpoint, whole)
                    .await
            }
            Ok(None) => governed.body_pending = true,
            Err(e) => {
                // The client went away (or stalled past the body deadline) after its
                // slots were taken: nothing else would release them, and a concurrency
                // limit would stay full for good.
                if let Some(admission) = governed.admission.take() {
                    self.finish(admission, 0, &governed.identity, None);
                }
                return Err(e);
            }
        }
        Ok(governed)
    }

    /// Steps 3–6 on a body read whole (see [`Engine::apply_request_policies`]): for a body
    /// held back as it arrived, called once it is complete — or as soon as it passes
    /// `max_inspect_bytes` — and before any of it is forwarded.
    pub async fn judge_body(
        &self,
        governed: &mut Governed,
        adapter: &dyn Adapter,
        endpoint: Option<&Endpoint>,
        whole: WholeBody<'_>,
    ) {
        governed.body_read = true;
        governed.body_pending = false;
        let facts = Facts::of(
            adapter,
            endpoint,
            &governed.identity,
            whole.bytes,
            whole.truncated,
        );
        let held = governed.admission.get_or_insert_with(Admission::default);
        self.evaluate_into(&facts, &mut governed.verdict, &mut held.budgets)
            .await;
    }

    /// Steps 3–6 of [`Engine::apply_request_policies`] for every policy in scope, folded
    /// into `v`; budget reservations taken go to `holds`.
    async fn evaluate_into(&self, facts: &Facts<'_>, v: &mut Verdict, holds: &mut Vec<BudgetHold>) {
        let mut prompt = PromptBody::default();
        for c in self.in_scope(facts.identity) {
            let p = &c.policy;
            let id = format!("{}@v{}", p.id, p.version);
            let mut out = PolicyOutcome::default();
            // 3. Provider and model rules.
            rules::check(p, facts, v, &mut out);
            // 4. Prompt guardrails.
            if out.refuse.is_none() {
                prompt::check(c, facts, &mut prompt, v, &mut out);
            }
            // 5. Budget.
            if out.refuse.is_none() {
                budget::check(self, c, &id, facts, v, &mut out, holds).await;
            }
            // 6. Response plan.
            if out.refuse.is_none() {
                response::plan(c, &id, v);
            }
            if v.merge_policy(id, p.mode, out) {
                return;
            }
        }
        if v.decision == Decision::Redact {
            v.rewritten_body = prompt.into_rewritten();
        }
    }

    /// Steps 3–6 alone, on facts already gathered (tests, tools): budget reservations
    /// are released at once. It waits for the counters (a fleet's Redis) on this thread:
    /// not for a runtime worker.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Verdict {
        let mut v = Verdict::default();
        let mut holds = Vec::new();
        futures::executor::block_on(self.evaluate_into(facts, &mut v, &mut holds));
        self.finish(
            Admission {
                rates: Vec::new(),
                budgets: holds,
            },
            0,
            facts.identity,
            None,
        );
        v
    }

    /// The policies whose scope covers `identity`, in config order.
    fn in_scope<'s>(&'s self, identity: &'s Identity) -> impl Iterator<Item = &'s Compiled> {
        self.policies
            .iter()
            .filter(move |c| in_scope(&c.policy.scope, identity))
    }

    /// Ends a request: releases its rate-limit slots charging the `tokens` it used, and
    /// settles every budget that covers `identity` with its real cost (`None`: it cost
    /// nothing countable), releasing its reservations.
    pub fn finish(
        &self,
        admission: Admission,
        tokens: u64,
        identity: &Identity,
        cost_usd: Option<f64>,
    ) {
        for hold in admission.rates {
            self.counters.finish(hold, tokens);
        }
        budget::settle(self, admission.budgets, identity, cost_usd);
    }

    /// Whether any policy needs the request body.
    pub fn needs_body(&self) -> bool {
        self.policies.iter().any(|c| {
            let p = &c.policy;
            p.prompt.is_some()
                || p.models.is_some()
                || p.providers.is_some()
                || p.budget.is_some()
                || p.response.is_some()
        })
    }
}

impl Governed {
    fn refused(identity: Identity, verdict: Verdict) -> Governed {
        Governed {
            identity,
            verdict,
            swap_key: None,
            admission: None,
            body_read: false,
            body_pending: false,
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The identity rate limits count against: the strongest one known.
fn limit_key(id: &Identity) -> String {
    if let Some(u) = &id.user {
        return format!("user:{u}");
    }
    if let Some(f) = &id.api_key_fingerprint {
        return format!("key:{f}");
    }
    // In a pod, the pod: every replica's `python` as uid 0 must not share one limit.
    if let Some(k) = &id.kubernetes {
        return format!("pod:{}/{}", k.namespace, k.pod);
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

/// Redact everything `scanner` finds in every text leaf of a JSON document (an answer,
/// an event); the categories found are added to `found`.
pub fn redact_body(doc: &mut serde_json::Value, scanner: &Scanner, found: &mut Vec<Category>) {
    body::redact_all(doc, scanner, found);
}

fn in_scope(s: &Scope, id: &Identity) -> bool {
    let k8s = id.kubernetes.as_ref();
    let any = |list: &[String], value: Option<&str>| {
        list.is_empty() || value.is_some_and(|v| list.iter().any(|p| glob(p, v)))
    };
    let net = id.network.as_ref();
    let team = id
        .team
        .as_deref()
        .or_else(|| net.and_then(|n| n.team.as_deref()));
    any(&s.users, id.user.as_deref())
        && any(&s.teams, team)
        && any(&s.networks, net.map(|n| n.name.as_str()))
        && any(&s.environments, net.and_then(|n| n.environment.as_deref()))
        && any(&s.projects, id.project.as_deref())
        && any(&s.processes, id.process.as_deref())
        && any(&s.pods, id.pod_uid.as_deref())
        && (s.uids.is_empty() || id.uid.is_some_and(|u| s.uids.contains(&u)))
        && any(&s.namespaces, k8s.map(|k| k.namespace.as_str()))
        && any(&s.pod_names, k8s.map(|k| k.pod.as_str()))
        && any(
            &s.service_accounts,
            k8s.and_then(|k| k.service_account.as_deref()),
        )
        && s.pod_labels.iter().all(|(key, pattern)| {
            k8s.and_then(|k| k.labels.get(key))
                .is_some_and(|v| glob(pattern, v))
        })
}

#[cfg(test)]
mod tests;
