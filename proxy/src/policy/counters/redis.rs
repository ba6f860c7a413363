//! Budgets and rate limits shared by a fleet, in Redis.
//!
//! Every step is one Lua script, atomic on the server and timed on its clock (`TIME`):
//! reserve a budget's worst case, settle it, admit a request under a rate limit, finish
//! it. Keys carry a hash tag (`{b:…}`, `{r:…}`) so that one counter's keys share a Redis
//! Cluster slot, and are named by a hash of the counter (identities never appear in key
//! names). Budget keys expire two periods after their last use, rate-limit keys after
//! three minutes, so Redis holds only live counters.
//!
//! Calls run on the request path with `timeout_ms` bounding connect, write and read; a
//! call that fails or times out marks the store down, and until a background probe
//! finds it answering again no request waits on it (each policy's
//! `on_counter_store_unavailable` decides). The same thread renews the leases of the
//! requests in flight every third of `lease_ttl_ms` and pushes spend settled while the
//! store was down.
//!
//! Calls are synchronous, on a pool of `connections` connections, made by as many I/O
//! threads of their own (`sluice-fleet-io`): a request's task hands its call over and awaits the
//! answer, so no runtime worker blocks on Redis (a loopback or in-cluster round trip is
//! a fraction of a millisecond; the timeout caps the worst case). Settling a budget and
//! releasing a slot, at the end of an exchange, are handed over without waiting. (They
//! ran under `tokio::task::block_in_place` before: each blocked worker handed its other
//! tasks to another thread, so under load the process kept starting threads, each with
//! an allocator heap of its own — 15 → 59 threads and 36 → 694 MB of RSS in ten seconds
//! of 100 KB prompts.) A request whose future is dropped while its call is in flight
//! (the client left) gets nothing held: what the call took is released at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::super::budget::Period;
use super::super::limits::{Limited, RateLimit};
use super::Reserved;
use crate::metrics;

/// `fleet.redis:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// A single Redis (or a proxy in front of replicas): `redis://[user:password@]host:port[/db]`.
    /// Keep a password out of the file with `${REDIS_URL}` (expanded from the environment
    /// when the config is read).
    #[serde(default)]
    pub url: Option<String>,
    /// Or a Redis Cluster: some of its nodes' URLs (`redis://host:7000`); the rest and the
    /// slots are discovered. Every counter's keys share a slot (hash tags).
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Or Redis with replicas behind Sentinel: the master is asked of the sentinels at
    /// each new connection, so a failover is followed.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Bound on connecting, writing and reading one call, in ms. Default 50.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How long a dead node's reservations and concurrency slots survive it, in ms
    /// (live ones are renewed every third of it). Default 30000.
    #[serde(default = "default_lease")]
    pub lease_ttl_ms: u64,
    /// Prefix of every key. Default `sluice`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Connections to Redis, each with an I/O thread making one call at a time: the most
    /// calls in flight at once (further calls wait their turn). A request makes two on
    /// its path, so with a round trip of `r` ms a node serves at most about
    /// `connections × 500 / r` requests a second. Default 16.
    #[serde(default = "default_connections")]
    pub connections: usize,
}

/// `fleet.redis.sentinel:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The sentinels (`redis://host:26379`).
    pub nodes: Vec<String>,
    /// The monitored master's name (`sentinel monitor <name> …`).
    pub master: String,
}

fn default_timeout() -> u64 {
    50
}
fn default_lease() -> u64 {
    30_000
}
fn default_connections() -> usize {
    16
}

fn default_prefix() -> String {
    "sluice".into()
}

impl RedisConfig {
    /// Whether the configured Redis answers a PING now (`sluice doctor`).
    ///
    /// # Errors
    /// What failed, as Redis's client says it.
    pub fn ping(&self) -> redis::RedisResult<()> {
        let timeout = Duration::from_millis(self.timeout_ms.max(500));
        let mut conn = Client::new(self)?.connect(timeout)?;
        redis::cmd("PING").query::<String>(conn.like()).map(|_| ())
    }

    /// Problems with the section, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let given = usize::from(self.url.is_some())
            + usize::from(!self.cluster.is_empty())
            + usize::from(self.sentinel.is_some());
        match given {
            0 => out.push((
                "url",
                "missing: write url: redis://host:6379, cluster: [redis://host:7000, …] or sentinel: {nodes: [redis://host:26379], master: mymaster}".into(),
            )),
            1 => {}
            _ => out.push((
                "url",
                "give one of url (one Redis), cluster (a Redis Cluster's nodes) or sentinel, not several".into(),
            )),
        }
        let sentinels = self.sentinel.iter().flat_map(|s| &s.nodes);
        if self
            .sentinel
            .as_ref()
            .is_some_and(|s| s.nodes.is_empty() || s.master.is_empty())
        {
            out.push((
                "sentinel",
                "needs nodes (the sentinels' URLs) and master (its name)".into(),
            ));
        }
        for u in self.url.iter().chain(&self.cluster).chain(sentinels) {
            if let Err(e) = redis::Client::open(u.as_str()) {
                out.push((
                    if self.url.is_some() { "url" } else { "cluster" },
                    format!("{u:?} is not a Redis URL ({e}); write redis://host:6379 or redis://:password@host:6379/0"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            out.push((
                "timeout_ms",
                format!(
                    "{} is out of range; use 1 to 10000 (default 50)",
                    self.timeout_ms
                ),
            ));
        }
        if !(1..=256).contains(&self.connections) {
            out.push((
                "connections",
                format!(
                    "{} is out of range; use 1 to 256 (default 16)",
                    self.connections
                ),
            ));
        }
        if self.lease_ttl_ms < 1_000 {
            out.push((
                "lease_ttl_ms",
                format!(
                    "{} is too short; use at least 1000 (default 30000)",
                    self.lease_ttl_ms
                ),
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            out.push(("prefix", "must be non-empty and without braces".into()));
        }
        out
    }
}

/// Lua: the calendar period of `secs` as `Period::index` computes it (days since the
/// epoch; year × 12 + month, UTC; 0).
const PERIOD_LUA: &str = r#"
local function period(secs, kind)
  if kind == 'day' then return math.floor(secs / 86400) end
  if kind == 'total' then return 0 end
  local z = math.floor(secs / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y * 12 + m
end
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now_ms = secs * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Reservations whose lease ran out (their node died) give their amount back.
local function expire(h, r, a)
  local dead = redis.call('ZRANGEBYSCORE', r, '-inf', now_ms)
  for _, m in ipairs(dead) do
    local amt = redis.call('HGET', a, m)
    if amt then
      local p = string.match(m, '^(%-?%d+):')
      redis.call('HINCRBYFLOAT', h, 'reserved:' .. p, -tonumber(amt))
      redis.call('HDEL', a, m)
    end
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', r, '-inf', now_ms) end
end
local function keep(keys, ttl)
  if ttl > 0 then for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ttl) end end
end
"#;

/// KEYS: hash, reservations (zset), amounts, done. ARGV: kind, cap, worst, lease,
/// lease ttl ms, key ttl ms. Returns {granted, period, spent, reserved}.
const RESERVE: &str = r#"
expire(KEYS[1], KEYS[2], KEYS[3])
local p = period(secs, ARGV[1])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent:' .. p) or '0')
local reserved = math.max(0, tonumber(redis.call('HGET', KEYS[1], 'reserved:' .. p) or '0'))
local worst = tonumber(ARGV[3])
if spent + reserved + worst > tonumber(ARGV[2]) then
  return {0, p, tostring(spent), tostring(reserved)}
end
local m = p .. ':' .. ARGV[4]
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved:' .. p, ARGV[3])
redis.call('HSET', KEYS[3], m, ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[5]), m)
keep({KEYS[1], KEYS[2], KEYS[3]}, tonumber(ARGV[6]))
return {1, p, tostring(spent), tostring(reserved)}
"#;

/// KEYS: hash, reservations, amounts, done. ARGV: period ('' = now), kind, lease ('' =
/// none), usd, op id, key ttl ms. Returns the spend after it. Idempotent on the op id
/// (kept an hour), so a retried or reconciled settlement counts once.
const SETTLE: &str = r#"
local p = ARGV[1]
if p == '' then p = tostring(period(secs, ARGV[2])) end
if redis.call('ZSCORE', KEYS[4], ARGV[5]) then
  return redis.call('HGET', KEYS[1], 'spent:' .. p) or '0'
end
redis.call('ZADD', KEYS[4], now_ms, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms - 3600000)
if ARGV[3] ~= '' then
  local m = p .. ':' .. ARGV[3]
  local amt = redis.call('HGET', KEYS[3], m)
  if amt then
    redis.call('HINCRBYFLOAT', KEYS[1], 'reserved:' .. p, -tonumber(amt))
    redis.call('HDEL', KEYS[3], m)
    redis.call('ZREM', KEYS[2], m)
  end
end
local spent = redis.call('HINCRBYFLOAT', KEYS[1], 'spent:' .. p, ARGV[4])
keep({KEYS[1], KEYS[4]}, math.max(tonumber(ARGV[6]), 3600000))
return spent
"#;

/// Lua: the one-minute windows of a rate-limit hash, rolled to now (as `Window::roll`).
const WINDOW_LUA: &str = r#"
local minute = math.floor(secs / 60)
local frac = ((secs % 60) + tonumber(t[2]) / 1e6) / 60
local function load(h)
  local v = redis.call('HMGET', h, 'm', 'rc', 'rp', 'tc', 'tp')
  local w = {m = tonumber(v[1] or minute), rc = tonumber(v[2] or '0'), rp = tonumber(v[3] or '0'),
             tc = tonumber(v[4] or '0'), tp = tonumber(v[5] or '0')}
  if w.m ~= minute then
    if minute == w.m + 1 then w.rp = w.rc; w.tp = w.tc else w.rp = 0; w.tp = 0 end
    w.rc = 0; w.tc = 0; w.m = minute
  end
  return w
end
local function store(h, w)
  redis.call('HSET', h, 'm', w.m, 'rc', w.rc, 'rp', w.rp, 'tc', w.tc, 'tp', w.tp)
  redis.call('PEXPIRE', h, 180000)
end
"#;

/// KEYS: windows hash, leases (zset). ARGV: requests/min, tokens/min, concurrent (-1:
/// none), lease, lease ttl ms. Returns {admitted, reason, retry after s}.
const ADMIT: &str = r#"
local w = load(KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local retry = math.max(1, math.ceil((1 - frac) * 60))
if conc >= 0 and redis.call('ZCARD', KEYS[2]) >= conc then
  return {0, 'concurrency_limit', 1}
end
if rpm >= 0 and w.rp * (1 - frac) + w.rc + 1 > rpm then
  return {0, 'rate_limit_requests', retry}
end
if tpm >= 0 and w.tp * (1 - frac) + w.tc >= tpm then
  return {0, 'rate_limit_tokens', retry}
end
w.rc = w.rc + 1
store(KEYS[1], w)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) * 4)
return {1, '', 0}
"#;

/// KEYS: windows hash, leases. ARGV: lease, tokens.
const FINISH: &str = r#"
local w = load(KEYS[1])
w.tc = w.tc + tonumber(ARGV[2])
store(KEYS[1], w)
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: lease zsets; ARGV: lease ttl ms, then one member per key. Pushes each live
/// lease's expiry forward (only those still there: `XX`).
const RENEW: &str = r#"
local ttl = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, 'XX', now_ms + ttl, ARGV[i + 1])
end
return #KEYS
"#;

/// The store could not answer (down, or slower than `timeout_ms`).
#[derive(Debug, thiserror::Error)]
#[error("the shared counter store did not answer")]
pub struct Down;

/// Spend settled while the store was down, to push when it returns.
///
/// Settlements made while the store was known down are summed per budget and period
/// into one entry (so a long outage costs memory per budget, not per request); one whose
/// call was attempted keeps its own entry and id, since Redis may have applied it.
struct Pending {
    key: String,
    kind: Period,
    period: Option<i64>,
    usd: f64,
    op: String,
    /// Settlements summed into it (for the gauge).
    count: u64,
    /// Sent at least once: its id is spoken for, nothing more may be added to it.
    attempted: bool,
}

/// A live request's lease is renewed for at most this long: a request that never
/// finishes (a bug, a hung client) cannot hold a slot or a reservation forever.
const MAX_LEASE_AGE: Duration = Duration::from_secs(3600);

struct Scripts {
    reserve: redis::Script,
    settle: redis::Script,
    admit: redis::Script,
    finish: redis::Script,
    renew: redis::Script,
}

/// Budgets and rate limits in Redis, shared by every node configured with it.
pub struct RedisCounters {
    client: Client,
    pool: Mutex<Vec<Conn>>,
    timeout: Duration,
    lease_ttl: Duration,
    prefix: String,
    node: String,
    up: AtomicBool,
    next_lease: AtomicU64,
    scripts: Scripts,
    /// Leases of requests in flight: member → its zset and when it was taken, renewed by
    /// the maintenance thread (for at most [`MAX_LEASE_AGE`]).
    live: Mutex<HashMap<String, (String, Instant)>>,
    pending: Mutex<Vec<Pending>>,
    /// The shared spend each budget had when Redis last said, for the local fallback.
    last_spent: Mutex<HashMap<(String, i64), f64>>,
    /// Calls for the I/O threads ([`RedisCounters::start`]); before they run, calls are
    /// made where they are asked for.
    io: OnceLock<mpsc::Sender<Job>>,
    /// Connections kept for reuse, and I/O threads (`connections`).
    connections: usize,
    /// Calls handed to the I/O threads, and how many of them are made
    /// ([`RedisCounters::drain`]).
    handed: AtomicU64,
    made: Mutex<u64>,
    made_cv: Condvar,
}

/// A call handed to an I/O thread.
type Job = Box<dyn FnOnce(&RedisCounters) + Send>;

impl RedisCounters {
    /// Connects (without waiting for Redis: a store that does not answer yet starts down,
    /// and the maintenance thread started by [`RedisCounters::start`] brings it up).
    ///
    /// # Errors
    /// An unusable URL (the config check catches it first).
    pub fn new(config: &RedisConfig, node: &str) -> Result<RedisCounters, redis::RedisError> {
        let script = |body: &str, with_windows: bool| {
            let mut src = String::from(PERIOD_LUA);
            if with_windows {
                src.push_str(WINDOW_LUA);
            }
            src.push_str(body);
            redis::Script::new(&src)
        };
        let store = RedisCounters {
            client: Client::new(config)?,
            pool: Mutex::new(Vec::new()),
            timeout: Duration::from_millis(config.timeout_ms),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            prefix: config.prefix.clone(),
            node: node.to_owned(),
            up: AtomicBool::new(false),
            next_lease: AtomicU64::new(0),
            scripts: Scripts {
                reserve: script(RESERVE, false),
                settle: script(SETTLE, false),
                admit: script(ADMIT, true),
                finish: script(FINISH, true),
                renew: script(RENEW, false),
            },
            live: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            last_spent: Mutex::new(HashMap::new()),
            io: OnceLock::new(),
            connections: config.connections.max(1),
            handed: AtomicU64::new(0),
            made: Mutex::new(0),
            made_cv: Condvar::new(),
        };
        metrics::COUNTER_STORE_UP
            .with_label_values(&["redis"])
            .set(0);
        if store.ping() {
            store.mark_up();
        } else {
            tracing::warn!(node, "fleet: Redis does not answer yet; policies use their on_counter_store_unavailable until it does");
        }
        Ok(store)
    }

    /// Starts the I/O threads, and the maintenance thread: lease renewal, probing while
    /// down, reconciliation.
    pub fn start(self: &Arc<Self>) {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for _ in 0..self.connections {
            let (me, queue) = (Arc::downgrade(self), queue.clone());
            match std::thread::Builder::new()
                .name("sluice-fleet-io".into())
                .spawn(move || io_thread(&me, &queue))
            {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::error!(error = %e, "fleet: cannot start an I/O thread");
                }
            }
        }
        if started > 0 {
            let _ = self.io.set(jobs);
        }
        let me = Arc::downgrade(self);
        let tick = (self.lease_ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(10));
        let spawned = std::thread::Builder::new()
            .name("sluice-fleet".into())
            .spawn(move || {
                let mut last_renew = Instant::now();
                loop {
                    std::thread::sleep(tick.min(Duration::from_millis(500)));
                    let Some(store) = me.upgrade() else { return };
                    if !store.up.load(Ordering::Acquire) {
                        if store.ping() && store.reconcile() {
                            store.mark_up();
                        }
                        continue;
                    }
                    if last_renew.elapsed() >= tick {
                        store.renew();
                        last_renew = Instant::now();
                    }
                    if !store.pending.lock().is_empty() {
                        store.reconcile();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "fleet: cannot start the maintenance thread; leases of live requests will expire");
        }
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.node, "fleet: Redis answers; shared counters in use");
        }
        metrics::COUNTER_STORE_UP
            .with_label_values(&["redis"])
            .set(1);
    }

    fn mark_down(&self, op: &str, e: &redis::RedisError) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(node = %self.node, op, error = %e, "fleet: Redis does not answer; policies fall back to their on_counter_store_unavailable");
        }
        metrics::COUNTER_STORE_UP
            .with_label_values(&["redis"])
            .set(0);
    }

    fn connect(&self) -> redis::RedisResult<Conn> {
        self.client.connect(self.timeout)
    }

    /// Hands `job` to the I/O threads (made here when there are none).
    fn hand_over(&self, job: Job) {
        let Some(jobs) = self.io.get() else {
            return job(self);
        };
        self.handed.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            job(self);
            self.made_one();
        }
    }

    fn made_one(&self) {
        *self.made.lock() += 1;
        self.made_cv.notify_all();
    }

    /// Makes `call` on an I/O thread and awaits its answer: the request's task waits, its
    /// runtime worker does not. `None` when it could not be made (the store is closing).
    /// If the request is gone when the answer comes (its future was dropped: the client
    /// left), `undo` gets the answer, so nothing the call took stays held for it.
    async fn ask<T: Send + 'static>(
        &self,
        call: impl FnOnce(&RedisCounters) -> T + Send + 'static,
        undo: impl FnOnce(&RedisCounters, T) + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.hand_over(Box::new(move |store| {
            if let Err(unwanted) = answer.send(call(store)) {
                undo(store, unwanted);
            }
        }));
        answered.await.ok()
    }

    /// Waits (up to `limit`) until every call handed over so far is made — at shutdown,
    /// so the last requests' settlements reach Redis (or the queue for it). False when
    /// `limit` passed first.
    pub fn drain(&self, limit: Duration) -> bool {
        let target = self.handed.load(Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        let mut made = self.made.lock();
        while *made < target {
            if self.made_cv.wait_until(&mut made, deadline).timed_out() {
                return *made >= target;
            }
        }
        true
    }

    /// Runs `f` on a pooled connection, off the async worker; any failure marks the
    /// store down. Refuses at once while the store is down.
    fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn redis::ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, Down> {
        if !self.is_up() {
            return Err(Down);
        }
        self.call_anyway(op, f)
    }

    fn call_anyway<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn redis::ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, Down> {
        let started = Instant::now();
        let result = (|| {
            let pooled = self.pool.lock().pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect()?,
            };
            let r = f(conn.like());
            if r.is_ok() {
                let mut pool = self.pool.lock();
                if pool.len() < self.connections {
                    pool.push(conn);
                }
            }
            r
        })();
        metrics::COUNTER_STORE_SECONDS
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|e| {
            metrics::COUNTER_STORE_ERRORS.with_label_values(&[op]).inc();
            // The other pooled connections most likely lead to the same dead server (or,
            // after a failover, to the old master): the next call connects anew.
            self.pool.lock().clear();
            self.mark_down(op, &e);
            Down
        })
    }

    fn ping(&self) -> bool {
        self.call_anyway("ping", |c| redis::cmd("PING").query::<String>(c))
            .is_ok()
    }

    fn lease(&self) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{}:{}:{n}", self.node, std::process::id())
    }

    fn tag(&self, kind: char, key: &str) -> String {
        let h = Sha256::digest(key.as_bytes());
        format!("{}:{{{kind}:{}}}", self.prefix, hex::encode(&h[..16]))
    }

    fn budget_keys(&self, key: &str) -> [String; 4] {
        let base = self.tag('b', key);
        [
            base.clone(),
            format!("{base}:r"),
            format!("{base}:a"),
            format!("{base}:d"),
        ]
    }

    fn key_ttl_ms(period: Period) -> u64 {
        match period {
            Period::Day => 3 * 86_400_000,
            Period::Month => 70 * 86_400_000,
            Period::Total => 0,
        }
    }

    /// See [`super::Counters::reserve`].
    pub(super) fn reserve(
        &self,
        key: &str,
        kind: Period,
        cap: f64,
        worst: f64,
    ) -> Result<Reserved, Down> {
        let keys = self.budget_keys(key);
        let lease = self.lease();
        let (granted, period, spent, reserved): (i64, i64, String, String) =
            self.call("reserve", |c| {
                self.scripts
                    .reserve
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(kind.as_str())
                    .arg(cap)
                    .arg(worst)
                    .arg(&lease)
                    .arg(self.lease_ttl.as_millis() as u64)
                    .arg(Self::key_ttl_ms(kind))
                    .invoke(c)
            })?;
        let spent = spent.parse().unwrap_or(0.0);
        let reserved = reserved.parse().unwrap_or(0.0);
        self.last_spent
            .lock()
            .insert((key.to_owned(), period), spent);
        if granted == 0 {
            return Ok(Reserved::Exhausted { spent, reserved });
        }
        let member = format!("{period}:{lease}");
        self.live
            .lock()
            .insert(member, (keys[1].clone(), Instant::now()));
        Ok(Reserved::Granted {
            spent,
            reserved,
            hold: super::BudgetHold {
                key: key.to_owned(),
                period,
                amount: worst,
                lease: Some(lease),
            },
        })
    }

    /// See [`super::Counters::settle`]: never fails; a settlement Redis cannot take now
    /// is queued and pushed when it returns.
    pub(super) fn settle(
        &self,
        key: &str,
        kind: Period,
        period: Option<i64>,
        lease: Option<String>,
        usd: f64,
    ) -> f64 {
        if let (Some(p), Some(l)) = (period, &lease) {
            self.live.lock().remove(&format!("{p}:{l}"));
        }
        let op = format!("{}:s", lease.clone().unwrap_or_else(|| self.lease()));
        let mut pending = Pending {
            key: key.to_owned(),
            kind,
            period,
            usd,
            op,
            count: 1,
            attempted: false,
        };
        if self.is_up() {
            match self.push(&pending, lease.as_deref(), false) {
                Ok(spent) => return spent,
                Err(Down) => pending.attempted = true,
            }
        }
        // The reservation itself expires with its lease; the spend is kept.
        let p = period.unwrap_or_else(|| kind.index(super::now_secs()));
        let spent = self.last_spent(key, p) + self.pending_spend(key, p) + usd;
        if usd > 0.0 {
            let mut q = self.pending.lock();
            let same = |e: &&mut Pending| {
                !e.attempted
                    && e.key == pending.key
                    && e.period == pending.period
                    && e.kind == pending.kind
            };
            match (pending.attempted, q.iter_mut().find(same)) {
                (false, Some(e)) => {
                    e.usd += pending.usd;
                    e.count += 1;
                }
                _ => q.push(pending),
            }
            metrics::COUNTER_STORE_PENDING.set(q.iter().map(|e| e.count as i64).sum());
        }
        spent
    }

    /// One settlement to Redis; `anyway`: even while the store is marked down (the
    /// maintenance thread reconciling before it marks it up).
    fn push(&self, s: &Pending, lease: Option<&str>, anyway: bool) -> Result<f64, Down> {
        let keys = self.budget_keys(&s.key);
        let call = |c: &mut dyn redis::ConnectionLike| {
            self.scripts
                .settle
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .key(&keys[3])
                .arg(s.period.map(|p| p.to_string()).unwrap_or_default())
                .arg(s.kind.as_str())
                .arg(lease.unwrap_or(""))
                .arg(s.usd)
                .arg(&s.op)
                .arg(Self::key_ttl_ms(s.kind))
                .invoke::<String>(c)
        };
        let spent: f64 = if anyway {
            self.call_anyway("settle", call)?
        } else {
            self.call("settle", call)?
        }
        .parse()
        .unwrap_or(0.0);
        if let Some(p) = s.period {
            self.last_spent.lock().insert((s.key.clone(), p), spent);
        }
        Ok(spent)
    }

    /// Pushes queued settlements; true when none is left.
    fn reconcile(&self) -> bool {
        let queued: Vec<Pending> = std::mem::take(&mut *self.pending.lock());
        let mut left = Vec::new();
        let mut failed = false;
        for mut s in queued {
            if failed {
                left.push(s);
                continue;
            }
            s.attempted = true;
            if self.push(&s, None, true).is_err() {
                failed = true;
                left.push(s);
            }
        }
        let mut q = self.pending.lock();
        let pushed = !failed;
        left.append(&mut q);
        *q = left;
        metrics::COUNTER_STORE_PENDING.set(q.iter().map(|e| e.count as i64).sum());
        if pushed && q.is_empty() {
            tracing::info!(node = %self.node, "fleet: spend settled while Redis was down is reconciled");
        }
        pushed && q.is_empty()
    }

    /// Spend of budget `key` in `period` settled here and not yet in Redis.
    pub(super) fn pending_spend(&self, key: &str, period: i64) -> f64 {
        self.pending
            .lock()
            .iter()
            .filter(|s| s.key == key && s.period.is_none_or(|p| p == period))
            .map(|s| s.usd)
            .sum()
    }

    /// The shared spend of budget `key` in `period` when Redis last said (0 if never).
    pub(super) fn last_spent(&self, key: &str, period: i64) -> f64 {
        self.last_spent
            .lock()
            .get(&(key.to_owned(), period))
            .copied()
            .unwrap_or(0.0)
    }

    /// See [`super::Counters::admit`]: the lease of the slot taken, or why not.
    pub(super) fn admit(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> Result<Result<String, Limited>, Down> {
        let base = self.tag('r', key);
        let leases = format!("{base}:l");
        let lease = self.lease();
        let n = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let (admitted, reason, retry): (i64, String, u64) = self.call("admit", |c| {
            self.scripts
                .admit
                .key(&base)
                .key(&leases)
                .arg(n(limit.requests_per_minute))
                .arg(n(limit.tokens_per_minute))
                .arg(n(limit.concurrent))
                .arg(&lease)
                .arg(self.lease_ttl.as_millis() as u64)
                .invoke(c)
        })?;
        if admitted == 1 {
            self.live
                .lock()
                .insert(lease.clone(), (leases, Instant::now()));
            return Ok(Ok(lease));
        }
        let (reason, detail) = match reason.as_str() {
            "concurrency_limit" => (
                "concurrency_limit",
                format!("{} concurrent requests", limit.concurrent.unwrap_or(0)),
            ),
            "rate_limit_tokens" => (
                "rate_limit_tokens",
                format!("{} tokens per minute", limit.tokens_per_minute.unwrap_or(0)),
            ),
            _ => (
                "rate_limit_requests",
                format!(
                    "{} requests per minute",
                    limit.requests_per_minute.unwrap_or(0)
                ),
            ),
        };
        Ok(Err(Limited {
            reason,
            retry_after: retry.max(1),
            detail,
        }))
    }

    /// See [`super::Counters::finish`]: a failure only loses the token charge (the slot's
    /// lease expires by itself).
    pub(super) fn finish(&self, key: &str, lease: &str, tokens: u64) {
        self.live.lock().remove(lease);
        let base = self.tag('r', key);
        let leases = format!("{base}:l");
        let _ = self.call("finish", |c| {
            self.scripts
                .finish
                .key(&base)
                .key(&leases)
                .arg(lease)
                .arg(tokens)
                .invoke::<i64>(c)
        });
    }

    /// [`Self::reserve`] on an I/O thread, awaited; a reservation granted to a request
    /// that is gone by then is released.
    pub(super) async fn reserve_async(
        &self,
        key: &str,
        kind: Period,
        cap: f64,
        worst: f64,
    ) -> Result<Reserved, Down> {
        let key = key.to_owned();
        self.ask(
            move |s| s.reserve(&key, kind, cap, worst),
            move |s, unwanted| {
                if let Ok(Reserved::Granted { hold, .. }) = unwanted {
                    s.settle(&hold.key, kind, Some(hold.period), hold.lease, 0.0);
                }
            },
        )
        .await
        .unwrap_or(Err(Down))
    }

    /// [`Self::admit`] on an I/O thread, awaited; a slot granted to a request that is
    /// gone by then is released.
    pub(super) async fn admit_async(
        &self,
        key: &str,
        limit: &RateLimit,
    ) -> Result<Result<String, Limited>, Down> {
        let (key, limit) = (key.to_owned(), limit.clone());
        let release = key.clone();
        self.ask(
            move |s| s.admit(&key, &limit),
            move |s, unwanted| {
                if let Ok(Ok(lease)) = unwanted {
                    s.finish(&release, &lease, 0);
                }
            },
        )
        .await
        .unwrap_or(Err(Down))
    }

    /// [`Self::settle`] on an I/O thread, not awaited: `then` gets the spend after it.
    pub(super) fn settle_later(
        &self,
        key: &str,
        kind: Period,
        period: Option<i64>,
        lease: Option<String>,
        usd: f64,
        then: impl FnOnce(f64) + Send + 'static,
    ) {
        let key = key.to_owned();
        self.hand_over(Box::new(move |s| {
            then(s.settle(&key, kind, period, lease, usd));
        }));
    }

    /// [`Self::finish`] on an I/O thread, not awaited.
    pub(super) fn finish_later(&self, key: String, lease: String, tokens: u64) {
        self.hand_over(Box::new(move |s| s.finish(&key, &lease, tokens)));
    }

    fn renew(&self) {
        let live: Vec<(String, String)> = {
            let mut map = self.live.lock();
            map.retain(|member, (_, taken)| {
                let keep = taken.elapsed() < MAX_LEASE_AGE;
                if !keep {
                    tracing::warn!(lease = %member, "fleet: a request held its lease for an hour; no longer renewed (it expires)");
                }
                keep
            });
            map.iter()
                .map(|(m, (k, _))| (m.clone(), k.clone()))
                .collect()
        };
        if live.is_empty() {
            return;
        }
        // One call per lease: in a Redis Cluster each lease's key may live on another
        // node (and its expiry is on that node's clock).
        let _ = self.call("renew", |c| {
            for (member, key) in &live {
                self.scripts
                    .renew
                    .key(key)
                    .arg(self.lease_ttl.as_millis() as u64)
                    .arg(member)
                    .invoke::<i64>(c)?;
            }
            Ok(())
        });
    }
}

/// One Redis, a Redis Cluster, or a master found through Sentinel.
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(Mutex<redis::sentinel::SentinelClient>),
}

impl Client {
    fn new(config: &RedisConfig) -> redis::RedisResult<Client> {
        let timeout = Duration::from_millis(config.timeout_ms);
        if let Some(s) = &config.sentinel {
            return Ok(Client::Sentinel(Mutex::new(
                redis::sentinel::SentinelClient::build(
                    s.nodes.iter().map(String::as_str).collect(),
                    s.master.clone(),
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )?,
            )));
        }
        Ok(match &config.url {
            Some(url) => Client::Single(redis::Client::open(url.as_str())?),
            None => Client::Cluster(
                redis::cluster::ClusterClient::builder(config.cluster.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?,
            ),
        })
    }

    /// A new connection, bounded by `timeout` (through Sentinel: to the master it names now).
    fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        let single = |c: &redis::Client| -> redis::RedisResult<Conn> {
            let conn = c.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            Ok(Conn::Single(conn))
        };
        match self {
            Client::Single(c) => single(c),
            Client::Cluster(c) => Ok(Conn::Cluster(Box::new(c.get_connection()?))),
            Client::Sentinel(s) => {
                let master = s.lock().get_client()?;
                single(&master)
            }
        }
    }
}

/// A pooled connection of either kind.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

/// An I/O thread: makes the calls handed over, one at a time, until the store is gone.
/// A call that panics is counted as made and answers nothing (its request sees the store
/// down and its policy's `on_counter_store_unavailable` applies); the thread goes on.
fn io_thread(me: &Weak<RedisCounters>, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let next = queue.lock().recv();
        let Ok(job) = next else { return };
        let Some(store) = me.upgrade() else { return };
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&store)));
        if made.is_err() {
            tracing::error!(
                "fleet: a Redis call panicked; its request goes on without the shared counters"
            );
        }
        store.made_one();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Admitted, Counters, OnUnavailable};
    use super::*;

    /// A throwaway `redis-server` on a free loopback port (installed by `cargo xtask
    /// setup`), killed on drop.
    struct Server(std::process::Child, u16);

    impl Server {
        fn start() -> Server {
            Server::start_with(&[])
        }

        fn start_with(extra: &[&str]) -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let dir =
                std::env::temp_dir().join(format!("sluice-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(extra)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect(
                    "redis-server is missing: `cargo xtask setup` installs Debian's redis-server",
                );
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Server(child, port)
        }

        fn store(&self, lease_ttl_ms: u64) -> Arc<RedisCounters> {
            let config = RedisConfig {
                url: Some(format!("redis://127.0.0.1:{}", self.1)),
                cluster: Vec::new(),
                sentinel: None,
                timeout_ms: 200,
                lease_ttl_ms,
                prefix: "t".into(),
                connections: 4,
            };
            Arc::new(RedisCounters::new(&config, "n1").expect("store"))
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!(
                "sluice-redis-{}-{}",
                std::process::id(),
                self.1
            )));
        }
    }

    /// Three masters made a Redis Cluster with `redis-cli --cluster create`.
    fn cluster() -> (Vec<Server>, RedisConfig) {
        let nodes: Vec<Server> = (0..3)
            .map(|_| Server::start_with(&["--cluster-enabled", "yes"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.1)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in &addrs {
            let port = a.rsplit(':').next().unwrap_or_default();
            loop {
                let info = std::process::Command::new("redis-cli")
                    .args(["-p", port, "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never came up: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let config = RedisConfig {
            url: None,
            cluster: addrs.iter().map(|a| format!("redis://{a}")).collect(),
            sentinel: None,
            timeout_ms: 500,
            lease_ttl_ms: 30_000,
            prefix: "c".into(),
            connections: 16,
        };
        (nodes, config)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_redis_cluster_shares_budgets_and_limits_across_its_slots() {
        let (_nodes, config) = cluster();
        assert!(config.ping().is_ok());
        let store = |n: &str| Arc::new(RedisCounters::new(&config, n).expect("store"));
        let (a, b) = (store("n1"), store("n2"));
        assert!(a.is_up() && b.is_up());
        let mem = || Arc::new(crate::policy::MemoryCounters::default());
        let (a, b) = (
            Counters::with_fleet(mem(), a, 2),
            Counters::with_fleet(mem(), b, 2),
        );
        let on = OnUnavailable::FailClosed;
        // Many budgets and limits: their keys land on all three masters' slots.
        for i in 0..30 {
            let key = format!("team-{i}");
            let Reserved::Granted { hold, .. } = a.reserve(&key, Period::Month, 1.0, 0.7, on).await
            else {
                panic!("{key}: node a's reservation fits")
            };
            assert!(
                matches!(
                    b.reserve(&key, Period::Month, 1.0, 0.7, on).await,
                    Reserved::Exhausted { .. }
                ),
                "{key}"
            );
            assert!(
                (super::super::settled(&a, Some(hold), &key, Period::Month, 0.25) - 0.25).abs()
                    < 1e-9,
                "{key}"
            );
            let limit = RateLimit {
                requests_per_minute: Some(1),
                ..RateLimit::default()
            };
            let Admitted::Granted(h) = a.admit(&key, &limit, on).await else {
                panic!("{key}: first")
            };
            assert!(
                matches!(b.admit(&key, &limit, on).await, Admitted::Limited(_)),
                "{key}: second"
            );
            a.finish(h, 5);
        }
        // Lease renewal works key by key across the masters.
        let c = store("n3");
        let lease = c.admit(
            "renewed",
            &RateLimit {
                concurrent: Some(1),
                ..RateLimit::default()
            },
        );
        assert!(matches!(lease, Ok(Ok(_))));
        c.renew();
    }

    #[test]
    fn through_sentinel_the_counters_follow_a_failover() {
        // No diskless-sync delay: Redis's default waits 5 s before the first full sync.
        let master = Server::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = Server::start_with(&["--replicaof", "127.0.0.1", &master.1.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = std::process::Command::new("redis-cli")
                .args(["-p", &replica.1.to_string(), "INFO", "replication"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never synced: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A sentinel: redis-server in sentinel mode, its config file written here (it
        // rewrites it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("sluice-sentinel-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds m 60000\nsentinel failover-timeout m 2000\n",
                master.1
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Server(
            std::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
            port,
        );
        // The sentinel fails over when told to (below), not on its own: on a loaded machine
        // a short down-after-milliseconds could promote the replica while the master still
        // takes the writes under test.
        let sentinel_cli = |args: &[&str]| {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinel_cli(&["SENTINEL", "replicas", "m"]).contains(&replica.1.to_string()) {
            assert!(
                Instant::now() < deadline,
                "the sentinel never saw the replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let config = RedisConfig {
            url: None,
            cluster: Vec::new(),
            sentinel: Some(SentinelConfig {
                nodes: vec![format!("redis://127.0.0.1:{port}")],
                master: "m".into(),
            }),
            // Generous: on a loaded two-core machine (the whole suite in parallel) a 300 ms
            // call timeout once made the settle below fall back to its local queue, so the
            // replica never had the spend when the master died. The dead master refuses
            // connections, so this does not slow the failover down.
            timeout_ms: 3_000,
            lease_ttl_ms: 30_000,
            prefix: "s".into(),
            connections: 16,
        };
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let store = Arc::new(RedisCounters::new(&config, "n1").expect("store"));
        assert!(store.is_up(), "the master was found through the sentinel");
        let Ok(Reserved::Granted { hold, .. }) = store.reserve("team", Period::Total, 1.0, 0.5)
        else {
            panic!("fits")
        };
        let spent = store.settle("team", Period::Total, Some(hold.period), hold.lease, 0.3);
        assert!(
            store.is_up() && (spent - 0.3).abs() < 1e-9,
            "the settle reached the master (up: {}, spent: {spent})",
            store.is_up()
        );
        // The replica has the writes (its replication offset reaches the master's; `WAIT`
        // from another client would not do: it waits for that client's own writes, none,
        // and once answered at once while the replica was still at offset 0), then the
        // master stops answering and the sentinel is told to fail over: it promotes the
        // replica, and the store, after failed calls, finds it. Stopped rather than killed,
        // so its port stays taken: a Redis that a test running in parallel started on a
        // freed port would be a stranger the replica could resync from before promotion.
        let offset = |port: u16, field: &str| -> i64 {
            let info = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "INFO", "replication"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            info.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(field)?
                        .strip_prefix(':')?
                        .parse()
                        .ok()
                })
                .unwrap_or(-1)
        };
        let written = offset(master.1, "master_repl_offset");
        assert!(written > 0, "the master has the writes in its stream");
        let deadline = Instant::now() + Duration::from_secs(30);
        while offset(replica.1, "slave_repl_offset") < written {
            assert!(
                Instant::now() < deadline,
                "the replica never caught up with offset {written}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let master_pid = nix::unistd::Pid::from_raw(master.0.id() as i32);
        nix::sys::signal::kill(master_pid, nix::sys::signal::Signal::SIGSTOP)
            .expect("stop the master");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = sentinel_cli(&["SENTINEL", "FAILOVER", "m"]);
            if answer == "OK" {
                break;
            }
            assert!(Instant::now() < deadline, "no failover: {answer}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !store.is_up() && store.ping() {
                store.mark_up();
            }
            if let Ok(Reserved::Exhausted { spent, .. }) =
                store.reserve("team", Period::Total, 1.0, 0.8)
            {
                assert!(
                    (spent - 0.3).abs() < 1e-9,
                    "the spend survived the failover: {spent}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never reached the promoted replica"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(sentinel);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lua_periods_are_rusts() {
        let server = Server::start();
        let store = server.store(30_000);
        let probe = redis::Script::new(&format!(
            "{PERIOD_LUA}\nreturn period(tonumber(ARGV[1]), ARGV[2])"
        ));
        for secs in [
            0_i64,
            951_782_400,
            1_709_164_800,
            1_735_689_599,
            1_735_689_600,
            1_763_900_000,
            4_102_444_800,
        ] {
            for kind in [Period::Day, Period::Month, Period::Total] {
                let lua: i64 = store
                    .call("probe", |c| probe.arg(secs).arg(kind.as_str()).invoke(c))
                    .expect("redis answers");
                assert_eq!(lua, kind.index(secs), "{kind:?} at {secs}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_nodes_share_one_budget_and_one_rate_limit() {
        let server = Server::start();
        let a = Counters::with_fleet(
            Arc::new(crate::policy::MemoryCounters::default()),
            server.store(30_000),
            2,
        );
        let b = Counters::with_fleet(
            Arc::new(crate::policy::MemoryCounters::default()),
            server.store(30_000),
            2,
        );
        let on = OnUnavailable::FailClosed;
        let Reserved::Granted { hold, .. } = a.reserve("team", Period::Day, 1.0, 0.7, on).await
        else {
            panic!("node a's reservation fits")
        };
        assert!(
            matches!(b.reserve("team", Period::Day, 1.0, 0.7, on).await, Reserved::Exhausted { reserved, .. } if (reserved - 0.7).abs() < 1e-9)
        );
        assert!(
            (super::super::settled(&a, Some(hold), "team", Period::Day, 0.2) - 0.2).abs() < 1e-9
        );
        let Reserved::Granted {
            spent, reserved, ..
        } = b.reserve("team", Period::Day, 1.0, 0.7, on).await
        else {
            panic!("the rest fits once a settled")
        };
        assert!((spent - 0.2).abs() < 1e-9 && reserved.abs() < 1e-9);

        let limit = RateLimit {
            requests_per_minute: Some(3),
            concurrent: Some(2),
            ..RateLimit::default()
        };
        let Admitted::Granted(h1) = a.admit("k", &limit, on).await else {
            panic!("1st")
        };
        let Admitted::Granted(h2) = b.admit("k", &limit, on).await else {
            panic!("2nd")
        };
        assert!(
            matches!(a.admit("k", &limit, on).await, Admitted::Limited(l) if l.reason == "concurrency_limit")
        );
        b.finish(h2, 10);
        let Admitted::Granted(h3) = a.admit("k", &limit, on).await else {
            panic!("3rd")
        };
        a.finish(h1, 0);
        match b.admit("k", &limit, on).await {
            Admitted::Limited(l) => {
                assert!(l.reason == "rate_limit_requests" && (1..=60).contains(&l.retry_after))
            }
            other => {
                panic!("the 4th request in a minute is over 3/min across both nodes: {other:?}")
            }
        }
        a.finish(h3, 0);
    }

    /// Requests' calls go through the I/O threads: a single-worker runtime keeps
    /// serving while many calls are in flight, the thread count stays put however many
    /// calls are made, a request dropped mid-call (the client left) keeps no slot or
    /// reservation, and settlements handed over are made by the time `drain` returns.
    #[test]
    fn calls_are_made_off_the_runtime_and_a_dropped_request_holds_nothing() {
        // The runtime's threads carry a name of their own, so other tests' threads are
        // not counted.
        const NAME: &str = "fleet-io-test";
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(NAME)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(calls_off_the_runtime(NAME));
    }

    async fn calls_off_the_runtime(name: &str) {
        let server = Server::start();
        let store = server.store(30_000);
        store.start();
        let c = Arc::new(Counters::with_fleet(
            Arc::new(crate::policy::MemoryCounters::default()),
            store.clone(),
            1,
        ));
        let on = OnUnavailable::FailClosed;
        let one = RateLimit {
            concurrent: Some(1),
            ..RateLimit::default()
        };
        // The runtime's threads: its worker, and any a blocked worker hands its tasks to.
        let threads = || {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.trim() == name)
                })
                .count()
        };
        let before = threads();
        // 400 admissions and settlements from 40 tasks on one worker.
        let mut tasks = Vec::new();
        for t in 0..40 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let key = format!("k{t}-{i}");
                    let limit = RateLimit {
                        requests_per_minute: Some(100),
                        ..RateLimit::default()
                    };
                    let Admitted::Granted(h) = c.admit(&key, &limit, on).await else {
                        panic!("{key}: admitted")
                    };
                    c.finish(h, 1);
                    let Reserved::Granted { hold, .. } =
                        c.reserve(&key, Period::Day, 1.0, 0.1, on).await
                    else {
                        panic!("{key}: reserved")
                    };
                    c.settle(Some(hold), &key, Period::Day, 0.01, |_| {});
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert!(
            threads() <= before,
            "no thread started per call: {before} before, {} after",
            threads()
        );
        assert!(c.drain(Duration::from_secs(10)), "settlements made");
        let spent = store.last_spent("k39-9", Period::Day.index(super::super::now_secs()));
        assert!(
            (spent - 0.01).abs() < 1e-9,
            "the last settlement reached Redis: {spent}"
        );

        // A request whose future is dropped while its call is in flight.
        for _ in 0..20 {
            let mut admit = Box::pin(c.admit("single", &one, on));
            match futures::poll!(admit.as_mut()) {
                std::task::Poll::Ready(Admitted::Granted(h)) => c.finish(h, 0),
                std::task::Poll::Ready(other) => panic!("the slot is free: {other:?}"),
                std::task::Poll::Pending => {}
            }
            drop(admit);
            let mut reserve = Box::pin(c.reserve("budget", Period::Day, 1.0, 0.9, on));
            match futures::poll!(reserve.as_mut()) {
                std::task::Poll::Ready(Reserved::Granted { hold, .. }) => {
                    c.settle(Some(hold), "budget", Period::Day, 0.0, |_| {})
                }
                std::task::Poll::Ready(other) => panic!("the budget has room: {other:?}"),
                std::task::Poll::Pending => {}
            }
            drop(reserve);
            assert!(c.drain(Duration::from_secs(10)));
            // What the dropped calls took is released: the next request gets both.
            let Admitted::Granted(h) = c.admit("single", &one, on).await else {
                panic!("the dropped request's slot was released")
            };
            c.finish(h, 0);
            let Reserved::Granted { hold, .. } =
                c.reserve("budget", Period::Day, 1.0, 0.9, on).await
            else {
                panic!("the dropped request's reservation was released")
            };
            c.settle(Some(hold), "budget", Period::Day, 0.0, |_| {});
            assert!(c.drain(Duration::from_secs(10)));
        }
    }

    #[test]
    fn a_dead_nodes_leases_expire_and_settlements_count_once() {
        let server = Server::start();
        let dead = server.store(1_000);
        let live = server.store(1_000);
        let limit = RateLimit {
            concurrent: Some(1),
            ..RateLimit::default()
        };
        assert!(matches!(dead.admit("k", &limit), Ok(Ok(_))));
        assert!(matches!(
            dead.reserve("team", Period::Total, 1.0, 0.9),
            Ok(Reserved::Granted { .. })
        ));
        // Never finished, never renewed (no maintenance thread): gone after the lease.
        assert!(matches!(live.admit("k", &limit), Ok(Err(_))));
        assert!(matches!(
            live.reserve("team", Period::Total, 1.0, 0.9),
            Ok(Reserved::Exhausted { .. })
        ));
        std::thread::sleep(Duration::from_millis(1_200));
        assert!(matches!(live.admit("k", &limit), Ok(Ok(_))));
        let Ok(Reserved::Granted { hold, .. }) = live.reserve("team", Period::Total, 1.0, 0.9)
        else {
            panic!("the dead node's reservation expired")
        };
        // A settlement pushed twice (a retry, a reconciliation) counts once.
        let s = Pending {
            key: "team".into(),
            kind: Period::Total,
            period: Some(hold.period),
            usd: 0.25,
            op: "op-1".into(),
            count: 1,
            attempted: true,
        };
        assert!((live.push(&s, hold.lease.as_deref(), false).unwrap() - 0.25).abs() < 1e-9);
        assert!((live.push(&s, None, false).unwrap() - 0.25).abs() < 1e-9);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_that_does_not_answer_fails_fast_and_queues_spend() {
        let server = Server::start();
        let store = server.store(30_000);
        let on_local = Counters::with_fleet(
            Arc::new(crate::policy::MemoryCounters::default()),
            store.clone(),
            4,
        );
        let Reserved::Granted { hold, .. } = on_local
            .reserve("team", Period::Day, 1.0, 0.1, OnUnavailable::Local)
            .await
        else {
            panic!("fits")
        };
        super::super::settled(&on_local, Some(hold), "team", Period::Day, 0.2);
        drop(server);
        // The first call finds it down; then nothing waits on it.
        assert!(matches!(
            on_local
                .reserve("team", Period::Day, 1.0, 0.1, OnUnavailable::FailOpen)
                .await,
            Reserved::Unavailable
        ));
        assert!(!store.is_up());
        let started = Instant::now();
        assert!(matches!(
            on_local
                .reserve("team", Period::Day, 1.0, 0.1, OnUnavailable::FailClosed)
                .await,
            Reserved::Unavailable
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
        // Local: a quarter of the 0.8 left when Redis last answered.
        assert!(matches!(
            on_local
                .reserve("team", Period::Day, 1.0, 0.19, OnUnavailable::Local)
                .await,
            Reserved::Granted { .. }
        ));
        assert!(matches!(
            on_local
                .reserve("team", Period::Day, 1.0, 0.02, OnUnavailable::Local)
                .await,
            Reserved::Exhausted { .. }
        ));
        super::super::settled(&on_local, None, "team", Period::Day, 0.05);
        assert!(
            (store.pending_spend("team", Period::Day.index(super::super::now_secs())) - 0.05).abs()
                < 1e-9
        );
    }
}
