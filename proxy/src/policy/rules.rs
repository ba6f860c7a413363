//! Step 3 of the governance order: provider and model allow/deny rules.
//!
//! The cheapest check, and a denied model makes everything after it moot, so it runs
//! first among the checks that read the body. Deny wins over allow; an empty allow list
//! allows everything not denied; globs are case-insensitive (`gpt-4o*`, `claude-*`).

use serde::Deserialize;

use super::verdict::{PolicyOutcome, Verdict};
use super::{Facts, Policy};

/// Allow and deny globs; deny wins; an empty allow list allows everything not denied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowDeny {
    /// Globs allowed.
    pub allow: Vec<String>,
    /// Globs denied.
    pub deny: Vec<String>,
}

/// Checks `p`'s provider and model rules against the request.
pub(super) fn check(p: &Policy, facts: &Facts<'_>, v: &mut Verdict, out: &mut PolicyOutcome) {
    let provider = facts.adapter.name();
    if let Some(rule) = &p.providers {
        if !allowed(rule, provider) {
            v.note("provider_denied");
            out.refuse = Some((403, format!("provider {provider} is not allowed")));
            return;
        }
    }
    if let (Some(rule), true) = (&p.models, facts.llm_call) {
        let model = facts.model.as_deref().unwrap_or("");
        if !allowed(rule, model) {
            v.note("model_denied");
            out.refuse = Some((403, format!("model {model:?} is not allowed")));
        }
    }
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
