//! The rule grammar (`alerts.rules[]`) and the built-in rules, written in it.

use std::time::Duration;

use super::seen::Seen;
use serde::Deserialize;

use crate::ledger::By;
use crate::record::Severity;

/// `alerts:` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate rules at all. Default true.
    pub enabled: bool,
    /// Built-in rules to leave out, by name.
    pub disable: Vec<String>,
    /// Rules of your own; one named like a built-in replaces it.
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            disable: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// Which records a rule looks at; an empty list takes every value. `reasons` match the
/// records' reason codes, `*` at the end matching any suffix (`pii:*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct When {
    pub kinds: Vec<String>,
    pub decisions: Vec<String>,
    pub reasons: Vec<String>,
    pub providers: Vec<String>,
    pub models: Vec<String>,
    /// Only records whose identity has a value for each of these (`user`, `key`, …).
    pub has: Vec<String>,
}

/// What a rule measures over its window, per group.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Matching records.
    Count,
    /// Sum of `cost_usd`.
    CostUsd,
    /// Sum of input and output tokens.
    Tokens,
    /// Distinct values of a dimension (a key used from many workloads).
    Distinct(By),
    /// The group never seen before (fires once per group, never resolves).
    FirstSeen,
    /// The group's count, cost or tokens in the current window against its own baseline:
    /// fires when it reaches the threshold *and* `factor` times the mean of the group's
    /// previous `baseline` windows (with at least three windows of history).
    Spike {
        of: Box<Measure>,
        factor: f64,
        baseline: u32,
    },
}

impl Measure {
    fn parse(s: &str) -> Result<Measure, String> {
        Ok(match s {
            "count" => Measure::Count,
            "cost_usd" => Measure::CostUsd,
            "tokens" => Measure::Tokens,
            "first_seen" => Measure::FirstSeen,
            other => match (other.strip_prefix("distinct:"), other.strip_prefix("spike:")) {
                (Some(by), _) => Measure::Distinct(By::parse(by)?),
                (_, Some(of @ ("count" | "cost_usd" | "tokens"))) => Measure::Spike {
                    of: Box::new(Measure::parse(of)?),
                    factor: 3.0,
                    baseline: 24,
                },
                _ => {
                    return Err(format!(
                        "`{other}` is not a measure: count, cost_usd, tokens, distinct:<dimension>, spike:count|cost_usd|tokens or first_seen"
                    ))
                }
            },
        })
    }
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `[a-z0-9_]+`: the alerts' `rule` and the metric label.
    pub name: String,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    #[serde(default)]
    pub when: When,
    /// Group by these (the `report --by` dimensions). Default: principal.
    #[serde(default)]
    pub per: Vec<String>,
    /// Default `count`.
    #[serde(default)]
    pub measure: Option<String>,
    /// Default 10m.
    #[serde(
        default = "default_window",
        deserialize_with = "crate::ledger::de_duration"
    )]
    pub window: Duration,
    /// Fires when the measure reaches it. Default 1.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Least time an alert stays firing, and between two firings of the same group.
    /// Default: the window.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub cooldown: Option<Duration>,
    /// What it means, for the person paged.
    #[serde(default)]
    pub description: Option<String>,
    /// `spike:` measures: how many times the baseline counts as a spike. Default 3.
    #[serde(default)]
    pub factor: Option<f64>,
    /// `spike:` measures: how many previous windows make the baseline. Default 24.
    #[serde(default)]
    pub baseline: Option<u32>,
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::ledger::de_duration(d).map(Some)
}

fn default_severity() -> Severity {
    Severity::Warning
}
fn default_window() -> Duration {
    Duration::from_secs(600)
}
fn default_threshold() -> f64 {
    1.0
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub when: When,
    pub per: Vec<By>,
    pub measure: Measure,
    pub window: Duration,
    pub threshold: f64,
    pub cooldown: Duration,
    pub description: String,
}

impl RuleConfig {
    /// The rule, or what is wrong (`(key, message)`).
    ///
    /// # Errors
    /// A bad name, dimension, measure or threshold.
    pub fn compile(&self) -> Result<Rule, (String, String)> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(("name".into(), format!("`{}` must be [a-z0-9_]+", self.name)));
        }
        let per = if self.per.is_empty() {
            vec![By::Principal]
        } else {
            self.per
                .iter()
                .map(|p| By::parse(p))
                .collect::<Result<_, _>>()
                .map_err(|e| ("per".to_owned(), e))?
        };
        let mut measure = Measure::parse(self.measure.as_deref().unwrap_or("count"))
            .map_err(|e| ("measure".to_owned(), e))?;
        match &mut measure {
            Measure::Spike {
                factor, baseline, ..
            } => {
                *factor = self.factor.unwrap_or(3.0);
                *baseline = self.baseline.unwrap_or(24);
                if !(*factor > 1.0 && factor.is_finite()) {
                    return Err(("factor".into(), "must be above 1".into()));
                }
                if *baseline < 3 {
                    return Err(("baseline".into(), "must be at least 3 windows".into()));
                }
            }
            _ if self.factor.is_some() || self.baseline.is_some() => {
                return Err((
                    "factor".into(),
                    "factor and baseline go with a spike:<measure>".into(),
                ))
            }
            _ => {}
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(("threshold".into(), "must be above 0".into()));
        }
        if self.window.is_zero() {
            return Err(("window".into(), "must be above 0".into()));
        }
        Ok(Rule {
            name: self.name.clone(),
            severity: self.severity,
            when: self.when.clone(),
            per,
            measure,
            window: self.window,
            threshold: self.threshold,
            cooldown: self.cooldown.unwrap_or(self.window),
            description: self.description.clone().unwrap_or_default(),
        })
    }
}

impl When {
    /// Whether `r` is a record the rule looks at.
    pub fn matches(&self, r: &Seen) -> bool {
        fn f(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("")
        }
        let takes = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !(takes(&self.kinds, &r.kind)
            && takes(&self.decisions, f(&r.decision))
            && takes(&self.providers, f(&r.provider))
            && takes(&self.models, f(&r.model)))
        {
            return false;
        }
        if !self.reasons.is_empty() {
            let hit = r.reason_codes.as_deref().is_some_and(|codes| {
                codes.iter().any(|c| {
                    self.reasons.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => c.starts_with(prefix),
                        None => c == p,
                    })
                })
            });
            if !hit {
                return false;
            }
        }
        self.has.iter().all(|h| {
            let key = if h == "key" {
                "api_key_fingerprint"
            } else {
                h.as_str()
            };
            r.identity
                .as_ref()
                .and_then(|i| i.get(key))
                .is_some_and(|v| !v.is_null() && v != "")
        })
    }
}

/// The built-in rules, in the same grammar as your own.
pub fn builtins() -> Vec<RuleConfig> {
    let yaml = r#"
- name: prompt_injection
  severity: critical
  description: A prompt-injection or jailbreak attempt was detected in a request.
  when: {kinds: [interaction], reasons: [prompt_injection]}
  window: 10m
  threshold: 1
- name: secrets_in_prompts
  severity: critical
  description: Credentials or secrets were found in a prompt (blocked or redacted).
  when: {kinds: [interaction], reasons: ["secret:*"]}
  window: 10m
  threshold: 1
- name: repeated_guardrail_blocks
  severity: warning
  description: The same identity keeps sending requests that guardrails block.
  when: {kinds: [interaction], decisions: [block], reasons: ["pii:*", "secret:*", prompt_injection]}
  window: 10m
  threshold: 5
- name: pii_in_prompts
  severity: warning
  description: Personal data keeps leaving in prompts.
  when: {kinds: [interaction], reasons: ["pii:*"]}
  window: 1h
  threshold: 10
- name: invalid_keys
  severity: warning
  description: Repeated requests with an unknown virtual key or no provider key (probing or a leaked, revoked key).
  when: {kinds: [interaction], reasons: [invalid_virtual_key, no_provider_key]}
  window: 10m
  threshold: 5
- name: key_used_from_many_workloads
  severity: warning
  description: One virtual key is used from several workloads (shared or leaked key).
  when: {kinds: [interaction], has: [user]}
  per: [user]
  measure: distinct:workload
  window: 1h
  threshold: 3
- name: rate_limit_storm
  severity: warning
  description: An identity keeps hitting its rate limit.
  when: {kinds: [interaction], reasons: ["rate_limit_*"]}
  window: 5m
  threshold: 20
- name: budget_exhausted
  severity: warning
  description: An identity ran out of budget.
  when: {kinds: [interaction], reasons: ["budget_exceeded*"]}
  window: 1h
  threshold: 1
- name: spend_spike
  severity: warning
  description: An identity spends far more than its own usual hourly spend.
  when: {kinds: [interaction]}
  measure: spike:cost_usd
  window: 1h
  baseline: 24
  factor: 4
  threshold: 5
- name: token_spike
  severity: warning
  description: An identity uses far more tokens than its own usual hourly use.
  when: {kinds: [interaction]}
  measure: spike:tokens
  window: 1h
  baseline: 24
  factor: 4
  threshold: 200000
- name: new_caller
  severity: info
  description: A process, pod or user called an AI provider for the first time.
  when: {kinds: [interaction]}
  measure: first_seen
  window: 1h
"#;
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| unreachable!("built-in rules parse: {e}"))
}

impl AlertsConfig {
    /// The rules in force: the built-ins not disabled nor replaced, then your own.
    ///
    /// # Errors
    /// `(key under alerts, message)` for each bad rule.
    pub fn rules(&self) -> Result<Vec<Rule>, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        let own: std::collections::HashSet<&str> =
            self.rules.iter().map(|r| r.name.as_str()).collect();
        let builtins = builtins();
        for d in &self.disable {
            if !builtins.iter().any(|b| &b.name == d) {
                errs.push((
                    "disable".to_owned(),
                    format!(
                        "`{d}` is not a built-in rule ({})",
                        builtins
                            .iter()
                            .map(|b| b.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        for b in builtins {
            if !self.disable.contains(&b.name) && !own.contains(b.name.as_str()) {
                out.push(b.compile().map_err(|e| vec![e])?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            if !seen.insert(r.name.as_str()) {
                errs.push((
                    format!("rules[{i}].name"),
                    format!("`{}` is defined twice", r.name),
                ));
            }
            match r.compile() {
                Ok(rule) => out.push(rule),
                Err((k, m)) => errs.push((format!("rules[{i}].{k}"), m)),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }
}
