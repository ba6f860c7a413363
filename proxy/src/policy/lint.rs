//! Static analysis of a policy chain: what a compliance reader would miss by eye.
//!
//! The chain is ordered and the first enforcing block wins, so a rule can be written and
//! never take effect. [`lint`] reports, per policy:
//!
//! - **empty scopes** — `users`/`teams`/`projects` that no virtual key has together (nor,
//!   for `teams` alone, a configured client network), so the policy selects nobody;
//! - **unreachable policies** — an earlier enforcing policy whose scope covers this one's
//!   denies every provider or every model (`deny: ["*"]`), so nothing reaches it;
//! - **dead allow entries** — an allow glob that a deny glob of the same policy matches
//!   (deny wins), or of an earlier enforcing policy covering this one's scope;
//! - **conflicting rules** — policies whose scopes overlap, one allowing what the other
//!   denies (the deny wins wherever both apply; say which is meant);
//! - **shadowed response guardrails** — only the first policy in scope with `response:`
//!   governs the answer; a later one whose scope is covered never does.
//!
//! Findings are warnings: the file is valid, it just does not say what it seems to.

use super::{glob, AllowDeny, Mode, PolicyConfig, Scope};

/// One finding, about `policies[index]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LintFinding {
    /// Index of the policy in the chain.
    pub index: usize,
    /// Key path inside the policy, e.g. `models.allow`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Every finding of the chain, in chain order. `network_teams`: the teams of the
/// configured client networks (`networks:`), which `scope.teams` selects too.
pub fn lint(cfg: &PolicyConfig, network_teams: &[&str]) -> Vec<LintFinding> {
    let mut out = Vec::new();
    let ps = &cfg.policies;
    for (i, p) in ps.iter().enumerate() {
        let mut say = |key: &str, message: String| {
            out.push(LintFinding {
                index: i,
                key: key.into(),
                message,
            })
        };
        if !scope_has_keys(&p.scope, cfg, network_teams) {
            say(
                "scope",
                format!(
                    "selects nobody: no virtual key has users {:?}, teams {:?} and projects {:?} together; fix the scope or the keys",
                    p.scope.users, p.scope.teams, p.scope.projects
                ),
            );
        }
        for (what, rule) in [("providers", &p.providers), ("models", &p.models)] {
            if let Some(r) = rule {
                for a in &r.allow {
                    if let Some(d) = r.deny.iter().find(|d| glob(d, a)) {
                        say(
                            &format!("{what}.allow"),
                            format!("{a:?} never takes effect: deny {d:?} of the same policy matches it (deny wins)"),
                        );
                    }
                }
            }
        }
        for (j, earlier) in ps[..i].iter().enumerate() {
            if earlier.mode != Mode::Enforce {
                continue;
            }
            let covers = scope_covers(&earlier.scope, &p.scope);
            if covers {
                for (what, rule) in [
                    ("providers", &earlier.providers),
                    ("models", &earlier.models),
                ] {
                    if rule.as_ref().is_some_and(denies_all) {
                        say(
                            "id",
                            format!(
                                "unreachable: policy {:?} (#{}) comes first, covers this scope and denies every {}",
                                earlier.id,
                                j + 1,
                                &what[..what.len() - 1]
                            ),
                        );
                    }
                }
                if earlier.response.is_some() && p.response.is_some() {
                    say(
                        "response",
                        format!(
                            "never applies: policy {:?} (#{}) comes first with response guardrails for a scope covering this one (the first policy in scope governs the answer)",
                            earlier.id,
                            j + 1
                        ),
                    );
                }
            }
            if p.mode != Mode::Enforce || !scopes_overlap(&earlier.scope, &p.scope) {
                continue;
            }
            for (what, a, b) in [
                ("providers", &earlier.providers, &p.providers),
                ("models", &earlier.models, &p.models),
            ] {
                let (Some(a), Some(b)) = (a, b) else { continue };
                for (allow, deny, here) in [(&b.allow, &a.deny, true), (&a.allow, &b.deny, false)] {
                    for x in allow {
                        if let Some(d) = deny.iter().find(|d| glob(d, x)) {
                            let msg = if here {
                                format!("allows {x:?}, which policy {:?} (#{}) denies ({d:?}) for an overlapping scope: the deny wins there", earlier.id, j + 1)
                            } else {
                                format!("denies {x:?} ({d:?}), which policy {:?} (#{}) allows for an overlapping scope: the deny wins there", earlier.id, j + 1)
                            };
                            say(
                                &format!("{what}.{}", if here { "allow" } else { "deny" }),
                                msg,
                            );
                        }
                    }
                }
            }
        }
    }
    out
}

fn denies_all(r: &AllowDeny) -> bool {
    r.deny.iter().any(|d| d.chars().all(|c| c == '*'))
}

/// Whether some virtual key carries the scope's users, teams and projects together.
fn scope_has_keys(s: &Scope, cfg: &PolicyConfig, network_teams: &[&str]) -> bool {
    if s.users.is_empty() && s.teams.is_empty() && s.projects.is_empty() {
        return true;
    }
    if s.users.is_empty()
        && s.projects.is_empty()
        && network_teams
            .iter()
            .any(|t| s.teams.iter().any(|p| glob(p, t)))
    {
        return true;
    }
    let any = |list: &[String], v: &Option<String>| {
        list.is_empty()
            || v.as_deref()
                .is_some_and(|v| list.iter().any(|p| glob(p, v)))
    };
    cfg.virtual_keys.iter().any(|k| {
        any(&s.users, &Some(k.user.clone()))
            && any(&s.teams, &k.team)
            && any(&s.projects, &k.project)
    })
}

/// Every selector list of `a` is empty or matches every entry of `b`'s (non-empty) list.
fn scope_covers(a: &Scope, b: &Scope) -> bool {
    let covers = |x: &[String], y: &[String]| {
        x.is_empty() || (!y.is_empty() && y.iter().all(|v| x.iter().any(|p| glob(p, v))))
    };
    covers(&a.users, &b.users)
        && covers(&a.teams, &b.teams)
        && covers(&a.projects, &b.projects)
        && covers(&a.processes, &b.processes)
        && covers(&a.pods, &b.pods)
        && covers(&a.networks, &b.networks)
        && covers(&a.environments, &b.environments)
        && (a.uids.is_empty() || (!b.uids.is_empty() && b.uids.iter().all(|u| a.uids.contains(u))))
}

/// Some identity could be in both scopes (a conservative reading: lists that are both
/// non-empty must share a value one of them matches).
fn scopes_overlap(a: &Scope, b: &Scope) -> bool {
    let meet = |x: &[String], y: &[String]| {
        x.is_empty() || y.is_empty() || x.iter().any(|p| y.iter().any(|q| glob(p, q) || glob(q, p)))
    };
    meet(&a.users, &b.users)
        && meet(&a.teams, &b.teams)
        && meet(&a.projects, &b.projects)
        && meet(&a.processes, &b.processes)
        && meet(&a.pods, &b.pods)
        && (a.uids.is_empty() || b.uids.is_empty() || a.uids.iter().any(|u| b.uids.contains(u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> PolicyConfig {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn a_clean_chain_has_no_findings() {
        let c = cfg(r#"
virtual_keys:
  - {key: sk-sluice-a, user: alice, team: ml, provider_keys: {}}
policies:
  - {id: models, models: {allow: ["gpt-4o*", "claude-*"]}}
  - {id: ml, scope: {teams: [ml]}, budget: {usd: 10}}
  - {id: dlp, prompt: {pii: redact}, response: {secrets: redact}}
"#);
        assert_eq!(lint(&c, &[]), vec![]);
    }

    #[test]
    fn finds_empty_scopes_unreachable_policies_dead_and_conflicting_rules() {
        let c = cfg(r#"
virtual_keys:
  - {key: sk-sluice-a, user: alice, team: ml, provider_keys: {}}
  - {key: sk-sluice-b, user: bob, team: web, provider_keys: {}}
policies:
  - {id: nobody, scope: {users: [alice], teams: [web]}, models: {deny: ["o3*"]}}
  - {id: self-dead, models: {allow: ["gpt-4o-mini"], deny: ["gpt-4o*"]}}
  - {id: ml-allows, scope: {teams: [ml]}, models: {allow: ["o3-mini"]}}
  - {id: web-off, scope: {teams: [web]}, providers: {deny: ["*"]}}
  - {id: web-later, scope: {teams: [web], users: [bob]}, budget: {usd: 5}}
  - {id: answers, response: {secrets: redact}}
  - {id: answers-ml, scope: {teams: [ml]}, response: {pii: redact}}
  - {id: everyone-denies, models: {deny: ["o3-mini"]}}
"#);
        let found = lint(&c, &[]);
        let about = |id: &str| -> Vec<&LintFinding> {
            let i = c.policies.iter().position(|p| p.id == id).unwrap();
            found.iter().filter(|f| f.index == i).collect()
        };
        assert!(about("nobody")[0].message.contains("selects nobody"));
        assert_eq!(about("self-dead")[0].key, "models.allow");
        assert!(about("web-later")
            .iter()
            .any(|f| f.message.contains("unreachable") && f.message.contains("web-off")));
        assert!(about("answers-ml")
            .iter()
            .any(|f| f.key == "response" && f.message.contains("answers")));
        assert!(about("everyone-denies")
            .iter()
            .any(|f| f.key == "models.deny" && f.message.contains("ml-allows")));
        // ml-allows itself is fine: nothing before it denies o3-mini for ml.
        assert!(about("ml-allows").is_empty(), "{:?}", about("ml-allows"));
    }
}
