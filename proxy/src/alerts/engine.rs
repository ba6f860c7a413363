//! Rule evaluation over the record stream: per rule and group, a window of the matching
//! records; an alert fires when the rule's measure over the window reaches its threshold
//! (once — while it fires, more matches only update the window), and resolves when the
//! measure has fallen below the threshold and the cooldown since it fired has passed.
//!
//! Windows run on the records' own timestamps (replaying the same records gives the same
//! alerts); resolution is checked against the clock, since "nothing happened" has no
//! record. Pure: the caller reads the ledger and writes the alerts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::rules::{Measure, Rule};
pub use super::seen::Seen;
use crate::ledger::{value_of, By, Sums};
use crate::record::{Alert, AlertState};

struct Entry {
    ts_ms: i64,
    value: f64,
    distinct: Option<String>,
}

/// Record ids an alert cites (the newest).
const CITED: usize = 10;

/// One rule's state for one group, kept incrementally: each record costs O(1) amortised
/// (O(log n) for a spike's buckets), whatever the window's length or traffic.
#[derive(Default)]
struct Window {
    /// Plain measures: the records inside the window, oldest first.
    entries: VecDeque<Entry>,
    /// Their values' sum.
    sum: f64,
    /// `distinct:` measures: how many records inside the window carry each value.
    distinct: HashMap<String, u32>,
    /// Spikes: the measure's sum per window (index = timestamp / window), over the
    /// baseline and the current window. A spike keeps no records: a day's baseline of
    /// hourly windows is 25 numbers, not a day of records.
    buckets: BTreeMap<i64, f64>,
    /// The newest record ids, cited by an alert.
    recent: VecDeque<String>,
    /// The group's first record since its window was last empty: how much history a
    /// spike's baseline has (quiet windows count as zero).
    first_ms: Option<i64>,
}

impl Window {
    /// Adds a matching record.
    fn push(&mut self, rule: &Rule, entry: Entry, id: String) {
        self.first_ms.get_or_insert(entry.ts_ms);
        if self.recent.len() == CITED {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        if matches!(rule.measure, Measure::Spike { .. }) {
            let w = window_ms(rule);
            *self.buckets.entry(entry.ts_ms.div_euclid(w)).or_default() += entry.value;
            return;
        }
        self.sum += entry.value;
        if let Some(d) = &entry.distinct {
            *self.distinct.entry(d.clone()).or_default() += 1;
        }
        self.entries.push_back(entry);
    }

    /// The rule's measure at `at` (the window evicted first) and whether it is over.
    fn evaluate(&mut self, rule: &Rule, at: i64) -> (f64, bool) {
        let w = window_ms(rule);
        self.evict(rule, at);
        match &rule.measure {
            Measure::Spike {
                factor, baseline, ..
            } => {
                let cur = at.div_euclid(w);
                let now = self.buckets.get(&cur).copied().unwrap_or(0.0);
                let oldest = self.first_ms.map_or(cur, |f| f.div_euclid(w));
                let from = oldest.max(cur - i64::from(*baseline));
                let n = (cur - from).max(0);
                let mean = if n == 0 {
                    0.0
                } else {
                    self.buckets.range(from..cur).map(|(_, v)| v).sum::<f64>() / n as f64
                };
                let over = cur - oldest >= 3 && now >= rule.threshold && now >= factor * mean;
                (now, over)
            }
            Measure::Distinct(_) => {
                let v = self.distinct.len() as f64;
                (v, v >= rule.threshold)
            }
            _ => (self.sum, self.sum >= rule.threshold),
        }
    }

    /// Drops what fell out of the rule's span at `at`: the window, or for a spike the
    /// baseline and the current window.
    fn evict(&mut self, rule: &Rule, at: i64) {
        let w = window_ms(rule);
        if let Measure::Spike { baseline, .. } = &rule.measure {
            let keep_from = (at - w * (i64::from(*baseline) + 1)).div_euclid(w);
            while self
                .buckets
                .first_key_value()
                .is_some_and(|(b, _)| *b < keep_from)
            {
                self.buckets.pop_first();
            }
            return;
        }
        let before_ms = at - w;
        while self.entries.front().is_some_and(|e| e.ts_ms < before_ms) {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.sum -= e.value;
            if let Some(d) = e.distinct {
                if let Some(n) = self.distinct.get_mut(&d) {
                    *n -= 1;
                    if *n == 0 {
                        self.distinct.remove(&d);
                    }
                }
            }
        }
        if self.entries.is_empty() {
            self.sum = 0.0; // no drift from adding and removing floats
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.buckets.is_empty()
    }
}

fn window_ms(rule: &Rule) -> i64 {
    rule.window.as_millis().max(1) as i64
}

/// An alert that fired and has not resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Firing {
    pub rule: String,
    pub group: BTreeMap<String, String>,
    pub fired_ms: i64,
    pub value: f64,
    #[serde(default)]
    pub identity: Option<Value>,
}

/// What survives a restart.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// Records up to this seq were evaluated.
    pub seq: i64,
    /// By dedup key.
    pub firing: BTreeMap<String, Firing>,
    /// By dedup key: when it last fired (cooldown between firings).
    pub last_fired_ms: BTreeMap<String, i64>,
    /// `first_seen` rules: the groups already seen, as `rule|key`.
    pub seen: HashSet<String>,
}

pub struct Engine {
    rules: std::sync::Arc<Vec<Rule>>,
    windows: HashMap<(usize, Vec<String>), Window>,
    pub state: State,
}

/// `rule|k=v|…` hashed: the same for every alert of one rule and group.
fn dedup_key(rule: &str, group: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    for (k, v) in group {
        h.update(b"|");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn ts_ms(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl Engine {
    pub fn new(rules: Vec<Rule>, state: State) -> Engine {
        Engine {
            rules: std::sync::Arc::new(rules),
            windows: HashMap::new(),
            state,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The longest window (how far back a restart replays).
    pub fn max_window_ms(&self) -> i64 {
        self.rules
            .iter()
            .map(|r| r.window.as_millis() as i64)
            .max()
            .unwrap_or(0)
    }

    /// Feeds one record; returns the alerts it fires. `replay`: only fill the windows
    /// (records evaluated before a restart).
    pub fn observe(&mut self, r: &Seen, replay: bool) -> Vec<Alert> {
        if r.kind == "alert" {
            return Vec::new();
        }
        let empty = Map::new();
        let id_map = r.identity.as_ref().unwrap_or(&empty);
        let sums = Sums {
            provider: r.provider.clone(),
            model: r.model.clone(),
            ..Sums::default()
        };
        let at = ts_ms(&r.ts);
        let rec_id = r.id.clone();
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.when.matches(r) {
                continue;
            }
            let key: Vec<String> = rule
                .per
                .iter()
                .map(|b| value_of(b, id_map, &sums))
                .collect();
            let group: BTreeMap<String, String> = rule
                .per
                .iter()
                .map(By::column)
                .zip(key.iter().cloned())
                .collect();
            if rule.measure == Measure::FirstSeen {
                let seen_key = format!("{}|{}", rule.name, key.join("|"));
                if self.state.seen.insert(seen_key) && !replay {
                    out.push(self.alert(
                        i,
                        &group,
                        1.0,
                        AlertState::Firing,
                        vec![rec_id.clone()],
                        r.identity_value(),
                        at,
                    ));
                }
                continue;
            }
            let base = match &rule.measure {
                Measure::Spike { of, .. } => of.as_ref(),
                m => m,
            };
            let value = match base {
                Measure::CostUsd => r.cost_usd.unwrap_or(0.0),
                Measure::Tokens => r.usage.as_ref().map_or(0.0, |u| {
                    u.input_tokens.unwrap_or(0.0) + u.output_tokens.unwrap_or(0.0)
                }),
                _ => 1.0,
            };
            let distinct = match &rule.measure {
                Measure::Distinct(by) => Some(value_of(by, id_map, &sums)),
                _ => None,
            };
            let w = self.windows.entry((i, key)).or_default();
            w.push(
                rule,
                Entry {
                    ts_ms: at,
                    value,
                    distinct,
                },
                rec_id.clone(),
            );
            let (measured, over) = w.evaluate(rule, at);
            if replay || !over {
                continue;
            }
            let dedup = dedup_key(&rule.name, &group);
            if self.state.firing.contains_key(&dedup) {
                continue;
            }
            let cooled = self
                .state
                .last_fired_ms
                .get(&dedup)
                .is_none_or(|t| at - t >= rule.cooldown.as_millis() as i64);
            if !cooled {
                continue;
            }
            let records: Vec<String> = w.recent.iter().rev().cloned().collect();
            out.push(self.alert(
                i,
                &group,
                measured,
                AlertState::Firing,
                records,
                r.identity_value(),
                at,
            ));
        }
        out
    }

    /// Resolves what has calmed down by `now_ms`.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        // Groups whose windows emptied are forgotten (a window is rebuilt on its next
        // record): memory follows the groups active within a window, not all ever seen.
        let rules = self.rules.clone();
        self.windows.retain(|(i, _), w| {
            let Some(rule) = rules.get(*i) else {
                return false;
            };
            w.evict(rule, now_ms);
            !w.is_empty()
        });
        let firing: Vec<(String, Firing)> = self
            .state
            .firing
            .iter()
            .map(|(k, f)| (k.clone(), f.clone()))
            .collect();
        for (dedup, f) in firing {
            let Some((i, rule)) = rules.iter().enumerate().find(|(_, r)| r.name == f.rule) else {
                // A rule removed from the config: its alerts end.
                self.state.firing.remove(&dedup);
                continue;
            };
            if rule.measure == Measure::FirstSeen {
                self.state.firing.remove(&dedup);
                continue;
            }
            if now_ms - f.fired_ms < rule.cooldown.as_millis() as i64 {
                continue;
            }
            // The window's key: the group's values in `per` order.
            let key: Vec<String> = rule
                .per
                .iter()
                .map(|b| f.group.get(&b.column()).cloned().unwrap_or_default())
                .collect();
            let (measured, over) = match self.windows.get_mut(&(i, key)) {
                Some(w) => w.evaluate(rule, now_ms),
                None => (0.0, false),
            };
            if !over {
                out.push(self.alert(
                    i,
                    &f.group,
                    measured,
                    AlertState::Resolved,
                    Vec::new(),
                    f.identity.clone(),
                    now_ms,
                ));
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn alert(
        &mut self,
        i: usize,
        group: &BTreeMap<String, String>,
        value: f64,
        state: AlertState,
        records: Vec<String>,
        identity: Option<Value>,
        at_ms: i64,
    ) -> Alert {
        let rule = &self.rules[i];
        let dedup = dedup_key(&rule.name, group);
        let who = group
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let what = match &rule.measure {
            Measure::Count => format!("{value} matching records"),
            Measure::CostUsd => format!("{value:.4} USD"),
            Measure::Tokens => format!("{value} tokens"),
            Measure::Distinct(by) => format!("{value} distinct {}", by.column()),
            Measure::FirstSeen => "first call".to_owned(),
            Measure::Spike {
                of,
                factor,
                baseline,
            } => format!(
                "{value:.4} {} (over {factor}x its mean of the previous {baseline} windows)",
                match of.as_ref() {
                    Measure::CostUsd => "USD",
                    Measure::Tokens => "tokens",
                    _ => "records",
                }
            ),
        };
        let window = humanize(rule.window.as_secs());
        let summary = match state {
            AlertState::Firing if rule.measure == Measure::FirstSeen => {
                format!("{}: first call to an AI provider from {who}", rule.name)
            }
            AlertState::Firing => format!(
                "{}: {what} in {window} for {who} (threshold {})",
                rule.name, rule.threshold
            ),
            AlertState::Resolved => format!(
                "{} resolved for {who}: {what} in the last {window}, below {}",
                rule.name, rule.threshold
            ),
        };
        match state {
            AlertState::Firing => {
                if rule.measure != Measure::FirstSeen {
                    self.state.firing.insert(
                        dedup.clone(),
                        Firing {
                            rule: rule.name.clone(),
                            group: group.clone(),
                            fired_ms: at_ms,
                            value,
                            identity: identity.clone(),
                        },
                    );
                }
                self.state.last_fired_ms.insert(dedup.clone(), at_ms);
            }
            AlertState::Resolved => {
                self.state.firing.remove(&dedup);
            }
        }
        let description = if rule.description.is_empty() {
            summary
        } else {
            format!("{summary} — {}", rule.description)
        };
        Alert {
            id: crate::record::new_id(),
            ts: crate::record::rfc3339(std::time::SystemTime::now()),
            kind: "alert",
            rule: rule.name.clone(),
            severity: rule.severity,
            state,
            group: group.clone(),
            summary: description,
            value,
            threshold: rule.threshold,
            window_s: rule.window.as_secs(),
            dedup_key: dedup,
            records,
            identity,
        }
    }
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RuleConfig;
    use serde_json::json;

    fn rule(yaml: &str) -> Rule {
        serde_yaml_ng::from_str::<RuleConfig>(yaml)
            .unwrap()
            .compile()
            .unwrap()
    }

    /// What the rules read of a stored record is what they read of it displayed whole,
    /// for every kind the ledger holds; a field of an unexpected type is taken as absent
    /// and the rest still read.
    #[test]
    fn the_metadata_alone_gives_the_rules_what_the_whole_record_does() {
        use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Record, Target};
        let dir = crate::testing::TempDir::new("alerts-seen");
        let cfg = crate::ledger::LedgerConfig {
            dir: dir.path().to_path_buf(),
            ..crate::ledger::LedgerConfig::default()
        };
        let ledger = crate::ledger::Ledger::open(&cfg).unwrap();
        let mut blocked = crate::testing::sample_interaction(1);
        if let Record::Interaction(x) = &mut blocked {
            x.decision = "block";
            x.reason_codes = vec!["secret:aws_key".into(), "pii:email".into()];
            x.identity.user = Some("alice".into());
            x.identity.api_key_fingerprint = Some("sha256:abcd".into());
        }
        let admin = Record::Admin(Box::new(Admin::new(
            AdminAction::Update,
            AdminOutcome::Success,
            Initiator {
                id: "ops".into(),
                role: "admin".into(),
                ip: None,
            },
            Target {
                kind: "policy".into(),
                id: "dlp".into(),
            },
            json!({"changed": ["dlp"]}),
        )));
        for r in [crate::testing::sample_interaction(0), blocked, admin] {
            ledger.append(&r).unwrap();
        }
        ledger.flush();
        let metas = crate::ledger::follow::metadata_after(dir.path(), 0, 10).unwrap();
        let whole = crate::ledger::follow::stored_after(dir.path(), 0, 10).unwrap();
        assert_eq!(metas.len(), 3);
        for (m, w) in metas.iter().zip(&whole) {
            assert!(m.content.is_none() && w.content.is_some() == (w.seq <= 2));
            assert_eq!(
                Seen::parse(&m.meta),
                Seen::of(&w.display(true)),
                "seq {}",
                m.seq
            );
        }
        let blocked = Seen::parse(&metas[1].meta);
        assert_eq!(blocked.decision.as_deref(), Some("block"));
        assert_eq!(blocked.reason_codes.as_ref().map(Vec::len), Some(2));
        assert!(blocked.cost_usd.is_some() && blocked.usage.is_some());
        assert_eq!(Seen::parse(&metas[2].meta).kind, "admin");
        let odd = Seen::parse(
            r#"{"kind":"interaction","id":"x","reason_codes":"one","cost_usd":"1","identity":{"user":"u"}}"#,
        );
        assert_eq!(odd.kind, "interaction");
        assert_eq!((odd.reason_codes, odd.cost_usd), (None, None));
        assert_eq!(odd.identity.unwrap()["user"], "u");
        assert_eq!(Seen::parse("not json"), Seen::default());
    }

    fn rec(ms: i64, user: &str, decision: &str, addr: &str) -> Value {
        let t =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
        json!({
            "id": format!("r{ms}"), "kind": "interaction", "decision": decision,
            "ts": t.format(&time::format_description::well_known::Rfc3339).unwrap(),
            "identity": {"user": user, "client_addr": addr},
        })
    }

    #[test]
    fn fires_once_while_firing_resolves_after_cooldown_and_fires_again() {
        let r = rule("{name: b, when: {decisions: [block]}, per: [user], window: 10s, threshold: 2, cooldown: 10s}");
        let mut e = Engine::new(vec![r], State::default());
        let t0 = 1_700_000_000_000;
        assert!(e
            .observe(&Seen::of(&rec(t0, "a", "block", "1.1.1.1:1")), false)
            .is_empty());
        assert!(e
            .observe(&Seen::of(&rec(t0 + 1, "a", "allow", "1.1.1.1:1")), false)
            .is_empty());
        let f = e.observe(&Seen::of(&rec(t0 + 2, "a", "block", "1.1.1.1:2")), false);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].state, AlertState::Firing);
        assert_eq!(f[0].value, 2.0);
        assert_eq!(f[0].group.get("user").map(String::as_str), Some("a"));
        // More blocks while firing: no repeat.
        assert!(e
            .observe(&Seen::of(&rec(t0 + 3, "a", "block", "1.1.1.1:3")), false)
            .is_empty());
        // Another user is another group.
        assert!(e
            .observe(&Seen::of(&rec(t0 + 4, "b", "block", "1.1.1.1:3")), false)
            .is_empty());
        // Not calm yet, or not cooled down: still firing.
        assert!(e.tick(t0 + 5_000).is_empty());
        // Calm and cooled: resolved with the same dedup key.
        let r = e.tick(t0 + 20_000);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].state, AlertState::Resolved);
        assert_eq!(r[0].dedup_key, f[0].dedup_key);
        assert_eq!(r[0].value, 0.0);
        // Quiet groups are forgotten.
        assert!(e.windows.is_empty(), "{}", e.windows.len());
        // A new burst after the cooldown fires again.
        assert!(e
            .observe(&Seen::of(&rec(t0 + 30_000, "a", "block", "x:1")), false)
            .is_empty());
        assert_eq!(
            e.observe(&Seen::of(&rec(t0 + 30_001, "a", "block", "x:1")), false)
                .len(),
            1
        );
    }

    #[test]
    fn replay_fills_windows_without_firing_and_distinct_counts_workloads() {
        let r = rule("{name: k, when: {has: [user]}, per: [user], measure: 'distinct:workload', window: 1h, threshold: 3}");
        let mut e = Engine::new(vec![r], State::default());
        let t0 = 1_700_000_000_000;
        // The same address from many ports is one workload.
        for p in 0..5 {
            assert!(e
                .observe(
                    &Seen::of(&rec(
                        t0 + p,
                        "a",
                        "allow",
                        &format!("10.0.0.1:{}", 1000 + p)
                    )),
                    true
                )
                .is_empty());
        }
        assert!(e
            .observe(&Seen::of(&rec(t0 + 10, "a", "allow", "10.0.0.2:5")), true)
            .is_empty());
        // Replayed: the window holds two workloads; the third, live, fires.
        let f = e.observe(&Seen::of(&rec(t0 + 20, "a", "allow", "10.0.0.3:5")), false);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].value, 3.0);
        // A record without a user does not count.
        let mut e2 = Engine::new(e.rules().to_vec(), State::default());
        assert!(e2
            .observe(
                &Seen::of(&json!({"kind": "interaction", "identity": {}})),
                false
            )
            .is_empty());
    }

    /// The incremental window against a recount from scratch, over records that arrive,
    /// age out and repeat values: the sum and the distinct count agree at every step.
    #[test]
    fn incremental_windows_agree_with_a_recount() {
        let sum_rule = rule("{name: s, measure: cost_usd, window: 10s}");
        let distinct_rule = rule("{name: d, measure: 'distinct:workload', window: 10s}");
        let mut sums = Window::default();
        let mut distinct = Window::default();
        let mut all: Vec<(i64, f64, String)> = Vec::new();
        for i in 0..500_i64 {
            let at = i * 700; // 14 or 15 records per window
            let value = (i % 7) as f64 * 0.25;
            let who = format!("w{}", i % 13);
            all.push((at, value, who.clone()));
            let entry = |d: Option<String>| Entry {
                ts_ms: at,
                value,
                distinct: d,
            };
            sums.push(&sum_rule, entry(None), i.to_string());
            distinct.push(&distinct_rule, entry(Some(who)), i.to_string());
            let live: Vec<_> = all.iter().filter(|(t, _, _)| *t >= at - 10_000).collect();
            let want_sum: f64 = live.iter().map(|(_, v, _)| v).sum();
            let want_distinct = live.iter().map(|(_, _, w)| w).collect::<HashSet<_>>().len();
            assert!(
                (sums.evaluate(&sum_rule, at).0 - want_sum).abs() < 1e-9,
                "at {at}"
            );
            assert_eq!(
                distinct.evaluate(&distinct_rule, at).0,
                want_distinct as f64
            );
        }
        assert_eq!(sums.recent.len(), CITED);
        // Everything ages out: the window is empty and forgotten.
        sums.evict(&sum_rule, 10_000_000);
        assert!(sums.is_empty() && sums.sum == 0.0);
    }

    #[test]
    fn first_seen_fires_once_per_group_and_alerts_are_not_evaluated() {
        let r = rule("{name: n, measure: first_seen}");
        let mut e = Engine::new(vec![r], State::default());
        let t0 = 1_700_000_000_000;
        assert_eq!(
            e.observe(&Seen::of(&rec(t0, "a", "allow", "x:1")), false)
                .len(),
            1
        );
        assert!(e
            .observe(&Seen::of(&rec(t0 + 1, "a", "allow", "x:2")), false)
            .is_empty());
        assert_eq!(
            e.observe(&Seen::of(&rec(t0 + 2, "b", "allow", "x:2")), false)
                .len(),
            1
        );
        assert!(e
            .observe(
                &Seen::of(&json!({"kind": "alert", "identity": {"user": "c"}})),
                false
            )
            .is_empty());
        assert!(e.tick(t0 + 10_000_000).is_empty());
    }

    #[test]
    fn the_builtins_compile_and_a_rule_of_ones_own_replaces_one() {
        let c: crate::alerts::AlertsConfig = serde_yaml_ng::from_str(
            "{disable: [new_caller], rules: [{name: pii_in_prompts, threshold: 50}]}",
        )
        .unwrap();
        let rules = c.rules().unwrap();
        assert!(!rules.iter().any(|r| r.name == "new_caller"));
        let pii: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.name == "pii_in_prompts")
            .collect();
        assert_eq!(pii.len(), 1);
        assert_eq!(pii[0].threshold, 50.0);
        assert!(rules.len() >= 8);
    }

    fn spend(ms: i64, user: &str, usd: f64) -> Value {
        let mut r = rec(ms, user, "allow", "10.0.0.1:1");
        r["cost_usd"] = json!(usd);
        r
    }

    #[test]
    fn the_builtin_spend_spike_fires_against_the_identitys_own_baseline() {
        let rules = crate::alerts::AlertsConfig::default().rules().unwrap();
        let spike = rules.into_iter().find(|r| r.name == "spend_spike").unwrap();
        let mut e = Engine::new(vec![spike], State::default());
        let h = 3_600_000;
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % h;
        // A day at about a dollar an hour: no alert.
        for hour in 0..24 {
            for q in 0..4 {
                assert!(e
                    .observe(
                        &Seen::of(&spend(t0 + hour * h + q * 60_000, "a", 0.25)),
                        false
                    )
                    .is_empty());
            }
        }
        // A new identity's first big hour is not a spike against a baseline it lacks.
        assert!(e
            .observe(&Seen::of(&spend(t0 + 24 * h, "new", 50.0)), false)
            .is_empty());
        // Six dollars within the next hour: over 4x the baseline and over the $5 floor.
        let mut fired = Vec::new();
        for q in 0..6 {
            fired.extend(e.observe(&Seen::of(&spend(t0 + 24 * h + q * 60_000, "a", 1.0)), false));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert!(fired[0].summary.contains("USD"), "{}", fired[0].summary);
        assert!(fired[0].value >= 5.0);
        // The hour after, quiet again: resolved.
        let r = e.tick(t0 + 26 * h);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].state, AlertState::Resolved);
    }

    #[test]
    fn a_spike_baseline_counts_quiet_windows_as_zero() {
        let r = rule("{name: s, when: {has: [user]}, per: [user], measure: 'spike:count', window: 2s, baseline: 3, factor: 3, threshold: 4}");
        let mut e = Engine::new(vec![r], State::default());
        let t0 = 1_700_000_000_000;
        // One request every ~3 s (some windows empty), then a burst of 14 in one window.
        for (k, dt) in [1_168, 4_597, 7_380, 10_233, 12_934].iter().enumerate() {
            assert!(e
                .observe(
                    &Seen::of(&rec(t0 + dt, "a", "allow", &format!("x:{k}"))),
                    false
                )
                .is_empty());
        }
        let fired: usize = (0..14)
            .map(|k| {
                e.observe(&Seen::of(&rec(t0 + 15_720 + k, "a", "allow", "x:9")), false)
                    .len()
            })
            .sum();
        assert_eq!(fired, 1);
    }
}
