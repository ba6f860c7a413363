//! Rate limits: requests per minute, tokens per minute and concurrent requests, per
//! identity within a policy's scope.
//!
//! This is step 2 of the governance order ([`Engine::admit`]): decided on identity alone,
//! before the body is read, so an over-limit client costs nothing more.
//!
//! Windows are one minute, counted with the two-window approximation of a sliding window
//! (the previous minute's count weighted by how much of it still overlaps), which is exact
//! enough for governance and needs two integers per key. Tokens are charged when a
//! response completes (the real count, streams and cancellations included), so a burst
//! can overshoot `tokens_per_minute` by at most the requests already in flight.
//!
//! On one node the counters live in memory, and their windows are saved to the counter
//! store every few seconds and at shutdown ([`Limiter::snapshot`]) and loaded at start
//! ([`Limiter::restore`]): a restart within the minute keeps the count (in-flight slots
//! are not kept: those requests died with the process). In a fleet the same windows are
//! kept in Redis (`super::counters`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Deserialize;

use super::counters::{Admitted, OnUnavailable};
use super::verdict::{Refusal, Verdict};
use super::{limit_key, Admission, Engine, Mode};
use crate::record::Identity;

/// `rate_limit:` of a policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Requests per minute per identity.
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output) per minute per identity.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once per identity.
    pub concurrent: Option<u64>,
}

#[derive(Default, Clone, Copy)]
struct Window {
    minute: u64,
    current: u64,
    previous: u64,
}

impl Window {
    fn roll(&mut self, minute: u64) {
        if minute != self.minute {
            self.previous = if minute == self.minute + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.minute = minute;
        }
    }

    /// The sliding-window estimate at `frac` (0–1) into the current minute.
    fn estimate(&self, frac: f64) -> f64 {
        self.previous as f64 * (1.0 - frac) + self.current as f64
    }
}

#[derive(Default)]
struct Counters {
    requests: Window,
    tokens: Window,
    in_flight: u64,
}

/// One key's windows as saved: `(key, minute, requests now, requests before, tokens now,
/// tokens before)`.
pub type WindowRow = (String, u64, u64, u64, u64, u64);

/// Why a request was limited, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// `rate_limit_requests`, `rate_limit_tokens` or `concurrency_limit`.
    pub reason: &'static str,
    /// Seconds until a retry can succeed.
    pub retry_after: u64,
    /// What was exceeded, for the message.
    pub detail: String,
}

/// All rate-limit counters, keyed by policy and identity.
#[derive(Default)]
pub struct Limiter {
    counters: Mutex<HashMap<String, Counters>>,
}

fn now_minute() -> (u64, f64) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = t.as_secs_f64();
    ((secs / 60.0) as u64, (secs % 60.0) / 60.0)
}

impl Limiter {
    /// Admit one request for `key` under `limit`, or say why not. An admitted request
    /// holds a concurrency slot until [`Limiter::finish`]. (Never inlined: the bench's
    /// per-phase breakdown names it — its async callers are folded into the request's.)
    #[inline(never)]
    pub fn admit(&self, key: &str, limit: &RateLimit) -> Result<(), Limited> {
        let (minute, frac) = now_minute();
        let mut map = self.counters.lock();
        let c = map.entry(key.to_string()).or_default();
        c.requests.roll(minute);
        c.tokens.roll(minute);
        let until_next_minute = ((1.0 - frac) * 60.0).ceil().max(1.0) as u64;
        if let Some(max) = limit.concurrent {
            if c.in_flight >= max {
                return Err(Limited {
                    reason: "concurrency_limit",
                    retry_after: 1,
                    detail: format!("{max} concurrent requests"),
                });
            }
        }
        if let Some(max) = limit.requests_per_minute {
            if c.requests.estimate(frac) + 1.0 > max as f64 {
                return Err(Limited {
                    reason: "rate_limit_requests",
                    retry_after: until_next_minute,
                    detail: format!("{max} requests per minute"),
                });
            }
        }
        if let Some(max) = limit.tokens_per_minute {
            if c.tokens.estimate(frac) >= max as f64 {
                return Err(Limited {
                    reason: "rate_limit_tokens",
                    retry_after: until_next_minute,
                    detail: format!("{max} tokens per minute"),
                });
            }
        }
        c.requests.current += 1;
        c.in_flight += 1;
        Ok(())
    }

    /// The windows still current (this minute or the last), rolled to now, for saving.
    pub fn snapshot(&self) -> Vec<WindowRow> {
        let (minute, _) = now_minute();
        self.counters
            .lock()
            .iter()
            .filter_map(|(k, c)| {
                let (mut req, mut tok) = (c.requests, c.tokens);
                req.roll(minute);
                tok.roll(minute);
                let live = req.current + req.previous + tok.current + tok.previous > 0;
                live.then(|| {
                    let (rc, rp, tc, tp) = (req.current, req.previous, tok.current, tok.previous);
                    (k.clone(), minute, rc, rp, tc, tp)
                })
            })
            .collect()
    }

    /// Load saved windows (at start), keeping only what is still current.
    pub fn restore(&self, rows: Vec<WindowRow>) {
        let (minute, _) = now_minute();
        let mut map = self.counters.lock();
        for (key, m, rc, rp, tc, tp) in rows {
            if m + 1 < minute {
                continue;
            }
            let mut c = Counters {
                requests: Window {
                    minute: m,
                    current: rc,
                    previous: rp,
                },
                tokens: Window {
                    minute: m,
                    current: tc,
                    previous: tp,
                },
                in_flight: 0,
            };
            c.requests.roll(minute);
            c.tokens.roll(minute);
            map.insert(key, c);
        }
    }

    /// Release the concurrency slot and charge the tokens actually used.
    pub fn finish(&self, key: &str, tokens: u64) {
        let (minute, _) = now_minute();
        let mut map = self.counters.lock();
        if let Some(c) = map.get_mut(key) {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.tokens.roll(minute);
            c.tokens.current += tokens;
        }
    }
}

impl Engine {
    /// Step 2: takes a slot in every rate limit that covers `identity`. An enforcing
    /// limit that is full refuses (429 with `Retry-After`, recorded in `v`) and releases
    /// the slots taken so far; a shadow limit that is full is only noted in `v`.
    pub(super) async fn admit(
        &self,
        identity: &Identity,
        v: &mut Verdict,
    ) -> Result<Admission, ()> {
        let who = limit_key(identity);
        let mut held = Admission::default();
        for c in self.in_scope(identity) {
            let Some(limit) = &c.policy.rate_limit else {
                continue;
            };
            let id = format!("{}@v{}", c.policy.id, c.policy.version);
            let key = format!("{id}|{who}");
            let on = c.policy.on_counter_store_unavailable;
            match self.counters.admit(&key, limit, on).await {
                Admitted::Granted(hold) => held.rates.push(hold),
                Admitted::Limited(l) if c.policy.mode == Mode::Shadow => {
                    v.shadow_refuse(id, l.reason)
                }
                Admitted::Unavailable if on == OnUnavailable::FailOpen => {
                    v.note("counter_store_unavailable")
                }
                Admitted::Unavailable if c.policy.mode == Mode::Shadow => {
                    v.shadow_refuse(id, "counter_store_unavailable")
                }
                Admitted::Unavailable => {
                    self.finish(held, 0, identity, None);
                    let refusal = Refusal {
                        status: 503,
                        message: format!(
                            "Sluice policy {id} cannot reach the fleet's rate-limit counters and refuses without them (on_counter_store_unavailable: fail_closed); retry shortly."
                        ),
                        retry_after: Some(1),
                    };
                    v.refuse(Some(id), "counter_store_unavailable", refusal);
                    return Err(());
                }
                Admitted::Limited(l) => {
                    self.finish(held, 0, identity, None);
                    let message = format!(
                        "Rate limited by Sluice policy {id}: more than {}; retry after {} s.",
                        l.detail, l.retry_after
                    );
                    let refusal = Refusal {
                        status: 429,
                        message,
                        retry_after: Some(l.retry_after),
                    };
                    v.refuse(Some(id), l.reason, refusal);
                    return Err(());
                }
            }
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_and_retry_after() {
        let l = Limiter::default();
        let limit = RateLimit {
            requests_per_minute: Some(2),
            ..RateLimit::default()
        };
        assert!(l.admit("k", &limit).is_ok());
        l.finish("k", 0);
        assert!(l.admit("k", &limit).is_ok());
        l.finish("k", 0);
        let e = l.admit("k", &limit).unwrap_err();
        assert_eq!(e.reason, "rate_limit_requests");
        assert!((1..=60).contains(&e.retry_after));
        assert!(l.admit("other", &limit).is_ok(), "keys are independent");
    }

    #[test]
    fn concurrency_slots_are_released() {
        let l = Limiter::default();
        let limit = RateLimit {
            concurrent: Some(1),
            ..RateLimit::default()
        };
        assert!(l.admit("k", &limit).is_ok());
        assert_eq!(
            l.admit("k", &limit).unwrap_err().reason,
            "concurrency_limit"
        );
        l.finish("k", 0);
        assert!(l.admit("k", &limit).is_ok());
    }

    #[test]
    fn tokens_are_charged_on_finish() {
        let l = Limiter::default();
        let limit = RateLimit {
            tokens_per_minute: Some(100),
            ..RateLimit::default()
        };
        assert!(l.admit("k", &limit).is_ok());
        l.finish("k", 150);
        assert_eq!(
            l.admit("k", &limit).unwrap_err().reason,
            "rate_limit_tokens"
        );
    }

    #[test]
    fn snapshot_and_restore_keep_the_minute() {
        let l = Limiter::default();
        let limit = RateLimit {
            requests_per_minute: Some(2),
            tokens_per_minute: Some(1000),
            ..RateLimit::default()
        };
        assert!(l.admit("k", &limit).is_ok());
        l.finish("k", 400);
        assert!(l.admit("k", &limit).is_ok());
        let rows = l.snapshot();
        assert_eq!(rows.len(), 1);
        let restarted = Limiter::default();
        restarted.restore(rows);
        // Same minute (or the next, weighted): the third request is still over the limit,
        // and no concurrency slot leaked across the restart.
        let e = restarted.admit("k", &limit).unwrap_err();
        assert_eq!(e.reason, "rate_limit_requests");
        // Stale windows are dropped.
        let old = Limiter::default();
        old.restore(vec![("k".into(), 5, 9, 9, 9, 9)]);
        assert!(old.admit("k", &limit).is_ok());
    }

    #[test]
    fn windows_slide() {
        let mut w = Window {
            minute: 10,
            current: 60,
            previous: 0,
        };
        w.roll(11);
        assert_eq!(w.previous, 60);
        assert!((w.estimate(0.5) - 30.0).abs() < 1e-9);
        w.roll(13);
        assert_eq!((w.previous, w.current), (0, 0));
    }
}
