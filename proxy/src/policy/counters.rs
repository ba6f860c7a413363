//! Budget and rate-limit counters: kept on this node, or shared by a fleet in Redis.
//!
//! Both keep the same contract, so policies read the same whichever holds the counts:
//!
//! - **Budgets reserve, then settle.** Before a request its worst case is reserved — it
//!   must fit in `cap − spent − reserved`, checked and taken in one step — and after it
//!   the reservation is released and the real cost added (also in one step). Concurrent
//!   requests therefore cannot overspend together: the bound on overspend is what a
//!   single request can exceed its own worst case by (a stream whose output was not
//!   capped by `max_tokens` is cut by the guard once it spends past the budget), plus,
//!   with the shared store down and `local` fallback, each node's share (below).
//! - **Rate limits** count requests and tokens in one-minute windows (the sliding
//!   two-window estimate of [`super::limits`]) and hold a concurrency slot per request.
//!
//! On one node ([`Counters::local`]) reservations live in memory and spend is written
//! through to the node's [`CounterStore`]. In a fleet ([`Counters::with_fleet`]) every
//! step is one Lua script in Redis ([`RedisCounters`]), on Redis's clock, so windows and
//! budget periods agree across nodes whatever their clocks say; reservations and
//! concurrency slots are leases that the node renews while the request lives and that
//! expire `lease_ttl_ms` after a node dies.
//!
//! When Redis cannot answer within `timeout_ms`, each policy decides
//! (`on_counter_store_unavailable`): `fail_closed` refuses (503), `fail_open` allows and
//! records `counter_store_unavailable`, `local` (default) goes on with this node's own
//! counters and a per-node share of each limit (`limit / fleet.nodes`; for a budget,
//! that share of what was left when Redis last answered). Spend settled meanwhile is
//! queued and added to Redis when it returns (idempotently: each settlement carries an
//! id); rate-limit windows are not reconciled (they are a minute long).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use super::budget::{CounterStore, Period};
use super::limits::{Limited, Limiter, RateLimit};
use super::now_secs;

mod redis;
pub use self::redis::{RedisConfig, RedisCounters};

/// The `fleet:` section: what the nodes of one deployment share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// This node's name in the fleet (default: `$NODE_NAME`, else the host name).
    pub node_id: Option<String>,
    /// How many nodes share the limits: with the shared store down and `local` fallback,
    /// each node allows `1/nodes` of every limit. Default 1.
    pub nodes: u64,
    /// Shared budgets and rate limits in Redis. Without it each node counts alone.
    pub redis: Option<RedisConfig>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            node_id: None,
            nodes: 1,
            redis: None,
        }
    }
}

impl FleetConfig {
    /// `node_id`, else `$NODE_NAME`, else the host name.
    pub fn node(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "node".into())
    }
}

/// What a policy does when the shared counter store does not answer.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Count on this node with its share of the limit; reconcile later.
    #[default]
    Local,
    /// Allow, recorded with `counter_store_unavailable`.
    FailOpen,
    /// Refuse (503), recorded with `counter_store_unavailable`.
    FailClosed,
}

impl OnUnavailable {
    /// The config spelling, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::FailOpen => "fail_open",
            OnUnavailable::FailClosed => "fail_closed",
        }
    }
}

/// A budget reservation a request holds until it settles.
#[derive(Debug)]
pub struct BudgetHold {
    pub(super) key: String,
    period: i64,
    amount: f64,
    /// The lease id when the reservation is held in Redis.
    lease: Option<String>,
}

/// A rate-limit slot a request holds until it finishes.
#[derive(Debug)]
pub struct RateHold {
    key: String,
    /// The lease id when the slot is held in Redis.
    lease: Option<String>,
}

/// The answer to a budget reservation.
#[derive(Debug)]
pub enum Reserved {
    /// Taken: `spent` and `reserved` (by others) as they were before it.
    Granted {
        spent: f64,
        reserved: f64,
        hold: BudgetHold,
    },
    /// The worst case does not fit.
    Exhausted { spent: f64, reserved: f64 },
    /// The shared store did not answer and the policy does not fall back to local.
    Unavailable,
}

/// The answer to a rate-limit admission.
#[derive(Debug)]
pub enum Admitted {
    /// A slot is held.
    Granted(RateHold),
    /// Over a limit.
    Limited(Limited),
    /// The shared store did not answer and the policy does not fall back to local.
    Unavailable,
}

/// Every budget and rate-limit counter of the node, shared with the fleet when set.
pub struct Counters {
    limiter: Limiter,
    spend: Arc<dyn CounterStore>,
    /// Local reservations: `(key, period)` → USD reserved by requests in flight.
    reserved: Mutex<HashMap<(String, i64), f64>>,
    fleet: Option<Arc<RedisCounters>>,
    nodes: u64,
}

impl Counters {
    /// Counters on this node alone, spend persisted in `spend` (rate-limit windows
    /// restored from it).
    pub fn local(spend: Arc<dyn CounterStore>) -> Counters {
        let limiter = Limiter::default();
        limiter.restore(spend.load_windows());
        Counters {
            limiter,
            spend,
            reserved: Mutex::new(HashMap::new()),
            fleet: None,
            nodes: 1,
        }
    }

    /// In-memory counters (tests and tools).
    pub fn memory() -> Counters {
        Counters::local(Arc::new(super::MemoryCounters::default()))
    }

    /// Counters shared through Redis; `spend` keeps the local fallback's windows.
    pub fn with_fleet(
        spend: Arc<dyn CounterStore>,
        fleet: Arc<RedisCounters>,
        nodes: u64,
    ) -> Counters {
        Counters {
            fleet: Some(fleet),
            nodes: nodes.max(1),
            ..Counters::local(spend)
        }
    }

    /// Reserves `worst` USD under budget `key` capped at `cap` for the current `period`
    /// (in a fleet: awaits Redis's answer).
    pub async fn reserve(
        &self,
        key: &str,
        period: Period,
        cap: f64,
        worst: f64,
        on: OnUnavailable,
    ) -> Reserved {
        if let Some(fleet) = &self.fleet {
            match fleet.reserve_async(key, period, cap, worst).await {
                Ok(r) => return r,
                Err(_) => {
                    crate::metrics::COUNTER_STORE_FALLBACKS
                        .with_label_values(&[on.as_str()])
                        .inc();
                    if on != OnUnavailable::Local {
                        return Reserved::Unavailable;
                    }
                    // This node's share of what was left when Redis last answered.
                    let p = period.index(now_secs());
                    let share = (cap - fleet.last_spent(key, p)).max(0.0) / self.nodes as f64;
                    return self.reserve_here(key, p, share, fleet.pending_spend(key, p), worst);
                }
            }
        }
        let p = period.index(now_secs());
        self.reserve_here(key, p, cap, self.spend.spent(key, p), worst)
    }

    fn reserve_here(&self, key: &str, period: i64, cap: f64, spent: f64, worst: f64) -> Reserved {
        let mut map = self.reserved.lock();
        let held = map.entry((key.to_owned(), period)).or_insert(0.0);
        let reserved = *held;
        if spent + reserved + worst > cap {
            return Reserved::Exhausted { spent, reserved };
        }
        *held += worst;
        Reserved::Granted {
            spent,
            reserved,
            hold: BudgetHold {
                key: key.to_owned(),
                period,
                amount: worst,
                lease: None,
            },
        }
    }

    /// Releases `hold` (if any) and adds `usd` to budget `key`; `then` gets the spend after
    /// it as far as this node knows. Without a hold the spend goes to the current
    /// `period`. Never waits: in a fleet the settlement is made by an I/O thread, and
    /// `then` runs there.
    pub fn settle(
        &self,
        hold: Option<BudgetHold>,
        key: &str,
        period: Period,
        usd: f64,
        then: impl FnOnce(f64) + Send + 'static,
    ) {
        let mut lease = None;
        let mut at = None;
        if let Some(h) = hold {
            at = Some(h.period);
            match h.lease {
                Some(l) => lease = Some(l),
                None => {
                    let mut map = self.reserved.lock();
                    if let Some(r) = map.get_mut(&(h.key.clone(), h.period)) {
                        *r -= h.amount;
                        if *r <= 1e-12 {
                            map.remove(&(h.key, h.period));
                        }
                    }
                }
            }
        }
        match &self.fleet {
            Some(fleet) => fleet.settle_later(key, period, at, lease, usd, then),
            None => {
                let p = at.unwrap_or_else(|| period.index(now_secs()));
                self.spend.add(key, p, usd);
                then(self.spend.spent(key, p));
            }
        }
    }

    /// Takes a slot for `key` under `limit` (in a fleet: awaits Redis's answer).
    pub async fn admit(&self, key: &str, limit: &RateLimit, on: OnUnavailable) -> Admitted {
        let local = |limit: &RateLimit| match self.limiter.admit(key, limit) {
            Ok(()) => Admitted::Granted(RateHold {
                key: key.to_owned(),
                lease: None,
            }),
            Err(l) => Admitted::Limited(l),
        };
        let Some(fleet) = &self.fleet else {
            return local(limit);
        };
        match fleet.admit_async(key, limit).await {
            Ok(Ok(lease)) => Admitted::Granted(RateHold {
                key: key.to_owned(),
                lease: Some(lease),
            }),
            Ok(Err(l)) => Admitted::Limited(l),
            Err(_) => {
                crate::metrics::COUNTER_STORE_FALLBACKS
                    .with_label_values(&[on.as_str()])
                    .inc();
                if on != OnUnavailable::Local {
                    return Admitted::Unavailable;
                }
                let n = self.nodes;
                let share = |v: Option<u64>| v.map(|v| v.div_ceil(n).max(1));
                local(&RateLimit {
                    requests_per_minute: share(limit.requests_per_minute),
                    tokens_per_minute: share(limit.tokens_per_minute),
                    concurrent: share(limit.concurrent),
                })
            }
        }
    }

    /// Releases a slot and charges the tokens the request used (in a fleet: handed to an
    /// I/O thread, not awaited).
    pub fn finish(&self, hold: RateHold, tokens: u64) {
        match (hold.lease, &self.fleet) {
            (Some(lease), Some(fleet)) => fleet.finish_later(hold.key, lease, tokens),
            _ => self.limiter.finish(&hold.key, tokens),
        }
    }

    /// Saves this node's rate-limit windows (periodically and at shutdown).
    pub fn save_windows(&self) {
        self.spend.save_windows(&self.limiter.snapshot());
    }

    /// At shutdown: waits (up to `limit`) for the fleet's settlements and releases handed
    /// over so far, so the last requests' spend is counted. False when `limit` passed.
    pub fn drain(&self, limit: std::time::Duration) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.drain(limit))
    }

    /// The shared store, when the fleet has one.
    pub fn fleet(&self) -> Option<&Arc<RedisCounters>> {
        self.fleet.as_ref()
    }
}

/// [`Counters::settle`], waiting for the spend it reports (tests).
#[cfg(test)]
pub(super) fn settled(
    c: &Counters,
    hold: Option<BudgetHold>,
    key: &str,
    period: Period,
    usd: f64,
) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    c.settle(hold, key, period, usd, move |spent| {
        let _ = tx.send(spent);
    });
    rx.recv().expect("settle reports the spend")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_reservations_cannot_overspend_together() {
        let c = Counters::memory();
        let on = OnUnavailable::Local;
        let first = c.reserve("team", Period::Day, 1.0, 0.6, on).await;
        let Reserved::Granted { hold, .. } = first else {
            panic!("the first fits: {first:?}")
        };
        // A second worst case of 0.6 does not fit beside the first, whatever is spent.
        assert!(matches!(
            c.reserve("team", Period::Day, 1.0, 0.6, on).await,
            Reserved::Exhausted { reserved, .. } if (reserved - 0.6).abs() < 1e-9
        ));
        // Settling the first at its real cost frees the rest of its reservation.
        let spent = settled(&c, Some(hold), "team", Period::Day, 0.1);
        assert!((spent - 0.1).abs() < 1e-9);
        assert!(matches!(
            c.reserve("team", Period::Day, 1.0, 0.6, on).await,
            Reserved::Granted { spent, reserved, .. } if (spent - 0.1).abs() < 1e-9 && reserved == 0.0
        ));
    }

    #[tokio::test]
    async fn a_failed_request_releases_its_reservation() {
        let c = Counters::memory();
        let on = OnUnavailable::Local;
        let Reserved::Granted { hold, .. } = c.reserve("k", Period::Total, 1.0, 0.9, on).await
        else {
            panic!("fits")
        };
        assert_eq!(settled(&c, Some(hold), "k", Period::Total, 0.0), 0.0);
        assert!(matches!(
            c.reserve("k", Period::Total, 1.0, 0.9, on).await,
            Reserved::Granted { .. }
        ));
    }
}
