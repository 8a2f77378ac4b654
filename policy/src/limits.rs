//! `rate_limit` and `concurrency_limit`: node-wide limits kept in per-worker shards.
//!
//! A node-wide count needs state shared by the workers, but touching it on every request
//! would put a lock or a contended atomic on the request path. So workers lease: a worker
//! takes a batch of admissions from the shared bank and spends it locally without any
//! synchronisation; only when its lease runs out does it go back to the bank (one short
//! critical section on one shard of a concurrent map). Batches shrink as the bank empties
//! (a quarter of what is left, split across the workers), so near the limit a lease is one
//! request, and a worker told "nothing left" remembers until when and answers 429 locally.
//!
//! Bounds, sliding window: the bank grants at most `limit` admissions per fixed window, and
//! a lease never outlives the window it was granted in, so no window admits more than
//! `limit`. Admissions a worker leased but did not use are lost to its window: at most one
//! batch per worker, and batches are small when little is left, so under load every window
//! admits all but a handful of its `limit`.
//!
//! Keys: both the bank and every worker's shard track a bounded number of keys. Past the cap,
//! the least recently used go first (a key refused until later counts as used until then, and
//! goes only when the idle keys are too few; a bucket counts as used until it is full again,
//! since forgetting it is treating it as full; entries of finished windows and full buckets go
//! before anything else), so a client spraying keys displaces only keys idle longer than its
//! own, and every new key still gets its own counter (a local limit for keys past the cap would
//! instead multiply their limit by the number of workers, and still need a bounded table). The
//! bank is striped by key hash and evicts one stripe at a time, so no eviction reads more than
//! a stripe, whatever the number of cores.
//! `key: ip` counts an IPv6 client by its /64 (one host's usual allocation); IPv4
//! addresses count on their own.
//!
//! Concurrency: the bank holds the free slots; a worker takes a few, keeps up to one batch of
//! unused ones and gives the rest back when requests end. In flight node-wide never exceeds
//! `max_in_flight`; slots parked on idle workers (one batch each) may turn a request away
//! early.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::RefMut;
use dashmap::DashMap;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::chain::{Policy, Reply, RequestInfo, Verdict};
use crate::context::Context;
use crate::error::ConfigErrors;
use crate::headers::{is_valid_header_name, HeaderList};

/// `rate_limit: {limit, window, key, algorithm, burst}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests admitted per window (node-wide).
    pub limit: u64,
    /// The window, as a duration (`"1s"`, `"1m"`, `"1h"`...).
    pub window: String,
    /// What is counted separately: `ip` (the default), `route`, `header:NAME`; `consumer`
    /// once identities exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `sliding_window` (the default) or `token_bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Token bucket only: the most requests admitted at once after a quiet spell (default:
    /// `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `concurrency_limit: {max_in_flight}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitSpec {
    /// Requests of the route in flight at once, node-wide.
    pub max_in_flight: u64,
}

/// Largest lease a worker takes at once.
const MAX_BATCH: u64 = 64;
/// Keys tracked per worker unless configured otherwise; past the cap the least recently used
/// half goes.
pub const DEFAULT_KEYS_PER_WORKER: usize = 65_536;

/// Sets the bank's key cap (at start, from the per-worker cap and the worker count); past it
/// the least recently used quarter goes.
pub fn set_bank_key_cap(keys: usize) {
    bank().cap.store(keys.max(1024), Ordering::Relaxed);
}

/// The address a `key: ip` limit counts a client under: an IPv4 address (also written as
/// IPv4-mapped IPv6) on its own, an IPv6 address by its /64 prefix, since one host or customer
/// is usually handed a whole /64 and could otherwise count as 2^64 clients.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

/// Sampled ages to pick an eviction cut from: enough for a cut within a few percent of the
/// wanted share, small enough for the stack.
const AGE_SAMPLES: usize = 256;

/// The age below which about `num/den` of `ages` fall (rounded down), from a sample of at most
/// `AGE_SAMPLES` of them. `None` when there is nothing to sample.
fn eviction_cut(ages: impl Iterator<Item = u64>, num: usize, den: usize) -> Option<u64> {
    let mut sample = [0u64; AGE_SAMPLES];
    let mut n = 0;
    for a in ages.take(AGE_SAMPLES) {
        sample[n] = a;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let sample = &mut sample[..n];
    let (_, cut, _) = sample.select_nth_unstable(n * num / den);
    Some(*cut)
}

/// One eviction, freeing about `1/den` of a table, least recently seen first. The first pass
/// drops entries that hold nothing any more and entries last seen strictly before the cut,
/// with entries exactly at the cut only up to the quota, and never an entry seen "in the
/// future" (a key refused until later): refused keys often share one time (the end of their
/// window), and dropping them all would give every one of them a fresh counter. Only when that
/// frees less than half the quota (most of the table is refused keys) does a second pass drop
/// those too, the same way, so the table stays bounded and no more than the quota of them go.
struct Eviction {
    cut: u64,
    now_ms: u64,
    quota: usize,
    freed: usize,
}

impl Eviction {
    /// `ages`: what eviction goes by, for the entries of a table of `len` of them.
    fn new(ages: impl Iterator<Item = u64>, len: usize, den: usize, now_ms: u64) -> Option<Eviction> {
        let cut = eviction_cut(ages, 1, den)?;
        Some(Eviction { cut, now_ms, quota: (len / den).max(1), freed: 0 })
    }

    fn drops(&mut self, seen: u64, first: bool) -> bool {
        let drop =
            (seen < self.cut || (seen == self.cut && self.freed < self.quota)) && (!first || seen <= self.now_ms);
        self.freed += usize::from(drop);
        drop
    }

    /// First pass: whether to keep an entry seen at `seen`; `done`: it holds nothing any more.
    fn keep_first(&mut self, seen: u64, done: bool) -> bool {
        if done {
            self.freed += 1;
            return false;
        }
        !self.drops(seen, true)
    }

    /// Whether the first pass fell well short of the quota.
    fn wants_second(&self) -> bool {
        self.freed < self.quota / 2
    }

    /// Second pass: as the first, entries seen in the future included.
    fn keep_second(&mut self, seen: u64) -> bool {
        !self.drops(seen, false)
    }
}

/// Bank entries tracked per stripe at least, whatever the cap: enough for a meaningful sample.
const MIN_STRIPE_KEYS: usize = 64;

/// One part of a bank table. Keys are spread over the stripes by hash, and each stripe counts
/// its entries and evicts on its own, so an eviction reads and locks one stripe (a share of the
/// table that does not grow with the number of cores) instead of the whole table.
#[repr(align(128))]
struct Stripe<V> {
    map: DashMap<(u64, u64), V>,
    /// Entries in `map`, kept on insert and eviction (never below the true count): reading
    /// `DashMap::len` would lock every shard.
    len: AtomicUsize,
    /// Set while a worker evicts: the others go on (the cap is soft by what they add meanwhile).
    evicting: AtomicBool,
}

/// A bank table: the entries of every limit and key, striped.
struct Table<V> {
    stripes: Box<[Stripe<V>]>,
    mask: usize,
}

impl<V> Table<V> {
    /// `stripes`: a power of two.
    fn new(stripes: usize) -> Table<V> {
        let stripes = stripes.max(1).next_power_of_two();
        Table {
            stripes: (0..stripes)
                .map(|_| Stripe {
                    map: DashMap::with_shard_amount(2),
                    len: AtomicUsize::new(0),
                    evicting: AtomicBool::new(false),
                })
                .collect(),
            mask: stripes - 1,
        }
    }

    fn stripe(&self, k: (u64, u64)) -> &Stripe<V> {
        // Both halves are keyed hashes (or 0): mix them and take high bits.
        let h = (k.0 ^ k.1.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.stripes[(h >> 40) as usize & self.mask]
    }

    /// The entry of `k`, made with `new` if missing. A new key past its stripe's share of `cap`
    /// first makes room in that stripe: entries `done` says hold nothing any more and the least
    /// recently used quarter by `seen` go. A key already tracked costs one map access, as
    /// without a cap.
    fn entry(
        &self,
        k: (u64, u64),
        cap: usize,
        now_ms: u64,
        new: impl FnOnce() -> V,
        seen: impl Fn(&V) -> u64,
        done: impl Fn(&V) -> bool,
    ) -> RefMut<'_, (u64, u64), V> {
        let s = self.stripe(k);
        match s.map.entry(k) {
            Entry::Occupied(o) => return o.into_ref(),
            Entry::Vacant(v) => {
                if s.len.load(Ordering::Relaxed) < (cap / self.stripes.len()).max(MIN_STRIPE_KEYS) {
                    s.len.fetch_add(1, Ordering::Relaxed);
                    return v.insert(new());
                }
            }
        }
        // The shard is unlocked again: evicting takes it.
        s.evict(now_ms, seen, done);
        match s.map.entry(k) {
            Entry::Occupied(o) => o.into_ref(),
            Entry::Vacant(v) => {
                s.len.fetch_add(1, Ordering::Relaxed);
                v.insert(new())
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.map.len()).sum()
    }
}

impl<V> Stripe<V> {
    /// One worker evicts a stripe at a time; each eviction reads the stripe once (twice when
    /// most of it is refused keys) and frees about a quarter of it, so its cost spread over the
    /// new keys it makes room for stays constant, and no eviction reads more than a stripe.
    fn evict(&self, now_ms: u64, seen: impl Fn(&V) -> u64, done: impl Fn(&V) -> bool) {
        if self.evicting.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        let len = self.len.load(Ordering::Relaxed);
        if let Some(mut ev) = Eviction::new(self.map.iter().map(|e| seen(e.value())), len, 4, now_ms) {
            self.map.retain(|_, v| ev.keep_first(seen(&*v), done(&*v)));
            if ev.wants_second() {
                self.map.retain(|_, v| ev.keep_second(seen(&*v)));
            }
            self.len.fetch_sub(ev.freed.min(len), Ordering::Relaxed);
        }
        self.evicting.store(false, Ordering::Release);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    Ip,
    Route,
    /// Lower-case header name; requests without it are counted by client address.
    Header(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    SlidingWindow,
    TokenBucket { burst: u64 },
}

/// The compiled `rate_limit` of one route.
#[derive(Debug)]
pub struct RateLimit {
    /// Identifies the counters: the route's path in the config and the limit's settings, so an
    /// unchanged limit keeps its counters across config changes.
    id: u64,
    limit: u64,
    window_ms: u64,
    key: KeyKind,
    algorithm: Algorithm,
}

fn hasher() -> &'static RandomState {
    static H: OnceLock<RandomState> = OnceLock::new();
    H.get_or_init(RandomState::new)
}

fn keyed_hash(v: impl Hash) -> u64 {
    hasher().hash_one(v)
}

impl RateLimit {
    pub fn compile(spec: &RateLimitSpec, path: &str, errors: &mut ConfigErrors) -> Option<RateLimit> {
        let before = errors.0.len();
        if spec.limit == 0 || spec.limit > 1_000_000_000 {
            errors.push(format!("{path}.limit"), "must be between 1 and 1000000000");
        }
        let window = match crate::duration::parse_duration(&spec.window) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                errors.push(format!("{path}.window"), "must be at least 100ms");
                Duration::from_secs(1)
            }
            Err(e) => {
                errors.push(format!("{path}.window"), e);
                Duration::from_secs(1)
            }
        };
        let key = match spec.key.as_deref().unwrap_or("ip") {
            "ip" => KeyKind::Ip,
            "route" => KeyKind::Route,
            "consumer" => {
                errors.push(
                    format!("{path}.key"),
                    "\"consumer\" needs consumer identities, which this version does not have yet; use ip, route or header:NAME",
                );
                KeyKind::Ip
            }
            other => match other.strip_prefix("header:") {
                Some(name) if is_valid_header_name(name) => KeyKind::Header(name.to_ascii_lowercase()),
                _ => {
                    errors
                        .push(format!("{path}.key"), format!("{other:?}: expected ip, route, consumer or header:NAME"));
                    KeyKind::Ip
                }
            },
        };
        let algorithm = match spec.algorithm.as_deref().unwrap_or("sliding_window") {
            "sliding_window" => {
                if spec.burst.is_some() {
                    errors.push(format!("{path}.burst"), "burst only applies to algorithm: token_bucket");
                }
                Algorithm::SlidingWindow
            }
            "token_bucket" => {
                let burst = spec.burst.unwrap_or(spec.limit);
                if burst == 0 || burst > 1_000_000_000 {
                    errors.push(format!("{path}.burst"), "must be between 1 and 1000000000");
                }
                Algorithm::TokenBucket { burst }
            }
            other => {
                errors.push(
                    format!("{path}.algorithm"),
                    format!("unknown algorithm {other:?}: expected sliding_window or token_bucket"),
                );
                Algorithm::SlidingWindow
            }
        };
        if errors.0.len() != before {
            return None;
        }
        let id = keyed_hash((path, spec.limit, &spec.window, &spec.key, &spec.algorithm, spec.burst));
        Some(RateLimit { id, limit: spec.limit, window_ms: window.as_millis() as u64, key, algorithm })
    }

    fn key_hash(&self, req: &RequestInfo<'_>) -> u64 {
        match &self.key {
            KeyKind::Route => 0,
            KeyKind::Ip => keyed_hash(ip_key(req.client_ip)),
            // The client's own header: on a cached route the upstream list holds fewer.
            KeyKind::Header(name) => match req.client_headers.get(name) {
                Some(v) => keyed_hash(v),
                None => keyed_hash(ip_key(req.client_ip)),
            },
        }
    }
}

impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn priority(&self) -> u32 {
        2000
    }

    fn on_request<'a>(&'a self, req: &RequestInfo<'_>, _headers: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        let key = self.key_hash(req);
        let now = cx.now_ms();
        let decision = cx.state().borrow_mut().limits.rate(self, key, now);
        cx.extras.push("ratelimit-limit", self.limit);
        cx.extras.push("x-ratelimit-limit", self.limit);
        cx.extras.push("ratelimit-remaining", decision.remaining);
        cx.extras.push("x-ratelimit-remaining", decision.remaining);
        cx.extras.push("ratelimit-reset", decision.reset_s);
        cx.extras.push("x-ratelimit-reset", decision.reset_s);
        match decision.retry_after_s {
            None => Verdict::Continue,
            Some(s) => {
                let mut r =
                    Reply::json_error(429, "rate_limited", "too many requests: the route's rate limit is reached");
                r.headers.push(("retry-after".into(), s.to_string()));
                Verdict::Respond(r)
            }
        }
    }
}

/// The compiled `concurrency_limit` of one route.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    id: u64,
    max: u64,
    shared: Arc<AtomicI64>,
}

impl ConcurrencyLimit {
    pub fn compile(spec: &ConcurrencyLimitSpec, path: &str, errors: &mut ConfigErrors) -> Option<ConcurrencyLimit> {
        if spec.max_in_flight == 0 || spec.max_in_flight > 10_000_000 {
            errors.push(format!("{path}.max_in_flight"), "must be between 1 and 10000000");
            return None;
        }
        let id = keyed_hash((path, spec.max_in_flight, "concurrency"));
        let shared =
            bank().slots.entry(id).or_insert_with(|| Arc::new(AtomicI64::new(spec.max_in_flight as i64))).clone();
        Some(ConcurrencyLimit { id, max: spec.max_in_flight, shared })
    }
}

impl Policy for ConcurrencyLimit {
    fn name(&self) -> &'static str {
        "concurrency_limit"
    }

    fn priority(&self) -> u32 {
        1990
    }

    fn on_request<'a>(&'a self, _: &RequestInfo<'_>, _: &mut HeaderList<'a>, cx: &mut Context) -> Verdict {
        let state = cx.state().clone();
        let ok = state.borrow_mut().limits.acquire(self);
        if ok {
            cx.hold(Permit { state, id: self.id });
            Verdict::Continue
        } else {
            Verdict::Respond(Reply::json_error(
                503,
                "concurrency_limited",
                "too many requests in flight on this route; try again shortly",
            ))
        }
    }
}

/// A concurrency slot held until the request ends; dropping it frees the slot.
pub struct Permit {
    state: std::rc::Rc<std::cell::RefCell<crate::context::WorkerPolicyState>>,
    id: u64,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({:x})", self.id)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.limits.release(self.id);
        }
    }
}

/// The node-wide side: what every worker leases from.
struct Bank {
    windows: Table<WindowEntry>,
    buckets: Table<BucketEntry>,
    /// Free concurrency slots by limit.
    slots: DashMap<u64, Arc<AtomicI64>>,
    /// Keys tracked in `windows` and in `buckets`, each.
    cap: AtomicUsize,
}

impl Bank {
    fn new(cap: usize, stripes: usize) -> Bank {
        Bank {
            windows: Table::new(stripes),
            buckets: Table::new(stripes),
            slots: DashMap::new(),
            cap: AtomicUsize::new(cap),
        }
    }
}

fn bank() -> &'static Bank {
    static B: OnceLock<Bank> = OnceLock::new();
    // Four stripes per core: the cap grows with the workers, a stripe's share of it does not.
    B.get_or_init(|| Bank::new(1 << 20, std::thread::available_parallelism().map_or(1, usize::from) * 4))
}

#[derive(Debug, Clone, Copy)]
struct WindowEntry {
    window: u64,
    window_ms: u64,
    cur: u64,
    prev: u64,
    /// Last lease, or until when the key is refused if later: what eviction goes by.
    seen_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct BucketEntry {
    tokens: f64,
    last_ms: u64,
    /// When the bucket is full again if left alone: past it, forgetting it changes nothing.
    full_at_ms: u64,
}

/// What the bank answered a worker.
struct Grant {
    granted: u64,
    /// Left in the bank after this grant.
    left: u64,
    /// When nothing was granted: when to ask again.
    retry_at_ms: u64,
}

impl Bank {
    fn batch(left: u64, workers: u64) -> u64 {
        (left / (4 * workers.max(1))).clamp(1, MAX_BATCH).min(left)
    }

    fn lease_window(&self, l: &RateLimit, key: u64, now_ms: u64, workers: u64) -> Grant {
        let mut e = self.windows.entry(
            (l.id, key),
            self.cap.load(Ordering::Relaxed),
            now_ms,
            || WindowEntry { window: now_ms / l.window_ms, window_ms: l.window_ms, cur: 0, prev: 0, seen_ms: now_ms },
            |e| e.seen_ms,
            |e| u128::from(e.window + 2) * u128::from(e.window_ms) <= u128::from(now_ms),
        );
        // A worker whose clock read is older than the entry's window counts in that window:
        // a window never goes back, so its count is never reset twice.
        let now_ms = now_ms.max(e.window * l.window_ms);
        e.seen_ms = e.seen_ms.max(now_ms);
        let w = now_ms / l.window_ms;
        let start = w * l.window_ms;
        let end = start + l.window_ms;
        if e.window != w {
            e.prev = if e.window + 1 == w { e.cur } else { 0 };
            e.cur = 0;
            e.window = w;
        }
        // The previous window counts for the part of it still inside the sliding window.
        let elapsed = now_ms - start;
        let wide = |x: u64| u128::from(x);
        let prev_share = (wide(e.prev) * wide(l.window_ms - elapsed)).div_ceil(wide(l.window_ms)) as u64;
        let left = l.limit.saturating_sub(prev_share.saturating_add(e.cur));
        if left == 0 {
            // Ask again once the previous window's share has shrunk by one, or next window.
            let retry = if e.cur < l.limit && e.prev > 0 {
                let room = l.limit - e.cur - 1;
                let keep = (wide(room) * wide(l.window_ms) / wide(e.prev)).min(wide(l.window_ms)) as u64;
                (start + l.window_ms - keep).clamp(now_ms + 1, end)
            } else {
                end
            };
            // A refused key matters until then: eviction keeps it over keys idle since before.
            e.seen_ms = e.seen_ms.max(retry);
            return Grant { granted: 0, left: 0, retry_at_ms: retry };
        }
        let g = Bank::batch(left, workers);
        e.cur += g;
        Grant { granted: g, left: left - g, retry_at_ms: 0 }
    }

    fn lease_bucket(&self, l: &RateLimit, burst: u64, key: u64, now_ms: u64, workers: u64) -> Grant {
        let rate = l.limit as f64 / l.window_ms as f64; // tokens per millisecond
                                                        // Forgetting a bucket is treating it as full: those nearest to full go first.
        let mut e = self.buckets.entry(
            (l.id, key),
            self.cap.load(Ordering::Relaxed),
            now_ms,
            || BucketEntry { tokens: burst as f64, last_ms: now_ms, full_at_ms: now_ms },
            |b| b.full_at_ms,
            |b| b.full_at_ms <= now_ms,
        );
        // Time only moves forward: an older clock read refills nothing.
        let now_ms = now_ms.max(e.last_ms);
        let t = (e.tokens + (now_ms - e.last_ms) as f64 * rate).min(burst as f64);
        e.tokens = t;
        e.last_ms = now_ms;
        let left = t.floor() as u64;
        if left == 0 {
            let wait = ((1.0 - t) / rate).ceil().max(1.0) as u64;
            return Grant { granted: 0, left: 0, retry_at_ms: now_ms + wait };
        }
        let g = Bank::batch(left, workers);
        e.tokens -= g as f64;
        e.full_at_ms = now_ms.saturating_add(((burst as f64 - e.tokens) / rate).ceil() as u64);
        drop(e);
        Grant { granted: g, left: left - g, retry_at_ms: 0 }
    }
}

/// What a worker decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub remaining: u64,
    pub reset_s: u64,
    /// `Some(seconds)`: refused; ask again after this long.
    pub retry_after_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    /// Window index (sliding window) or expiry in ms (token bucket) of the lease.
    valid: u64,
    tokens: u64,
    /// The bank's count of what is left after the last grant.
    bank_left: u64,
    /// Refused until then (ms).
    denied_until: u64,
    /// Last use, for eviction.
    used_ms: u64,
}

impl Lease {
    /// What eviction goes by: the last use, or the end of a refusal if later.
    fn seen_ms(&self) -> u64 {
        self.used_ms.max(self.denied_until)
    }
}

#[derive(Debug)]
struct LocalConc {
    shared: Arc<AtomicI64>,
    max: u64,
    allowance: u64,
    in_flight: u64,
}

/// One worker's shard of every limit.
#[derive(Debug)]
pub struct WorkerLimits {
    workers: u64,
    max_keys: usize,
    leases: FxHashMap<(u64, u64), Lease>,
    conc: FxHashMap<u64, LocalConc>,
}

fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl WorkerLimits {
    /// The shard of one of `workers` workers, tracking at most `max_keys` keys.
    pub fn new(workers: usize, max_keys: usize) -> Self {
        WorkerLimits {
            workers: workers.max(1) as u64,
            max_keys: max_keys.max(16),
            leases: FxHashMap::default(),
            conc: FxHashMap::default(),
        }
    }

    /// Keys tracked by this worker.
    pub fn tracked_keys(&self) -> usize {
        self.leases.len()
    }

    /// Drops the least recently used half of the leases (a refused key counts as used until
    /// its refusal ends, and goes after the others). Reads the map once per `max_keys / 2` new
    /// keys (twice when most of it is refused keys) and allocates nothing.
    fn evict(&mut self, now_ms: u64) {
        let len = self.leases.len();
        if let Some(mut ev) = Eviction::new(self.leases.values().map(Lease::seen_ms), len, 2, now_ms) {
            self.leases.retain(|_, l| ev.keep_first(l.seen_ms(), false));
            if ev.wants_second() {
                self.leases.retain(|_, l| ev.keep_second(l.seen_ms()));
            }
        }
    }

    /// Decides one request under `l` for key `key` at `now_ms`.
    pub fn rate(&mut self, l: &RateLimit, key: u64, now_ms: u64) -> RateDecision {
        if self.leases.len() >= self.max_keys && !self.leases.contains_key(&(l.id, key)) {
            self.evict(now_ms);
        }
        let workers = self.workers;
        let lease = self.leases.entry((l.id, key)).or_default();
        lease.used_ms = now_ms;
        let (valid_now, reset_ms) = match l.algorithm {
            Algorithm::SlidingWindow => {
                let w = now_ms / l.window_ms;
                (w, (w + 1) * l.window_ms - now_ms)
            }
            Algorithm::TokenBucket { .. } => (now_ms, l.window_ms.min(1000)),
        };
        let lease_ok = match l.algorithm {
            Algorithm::SlidingWindow => lease.valid == valid_now,
            // A token-bucket lease is spent within a second or dropped.
            Algorithm::TokenBucket { .. } => lease.valid > now_ms,
        };
        if !lease_ok {
            lease.tokens = 0;
        }
        if lease.tokens == 0 {
            if now_ms < lease.denied_until {
                let wait = lease.denied_until - now_ms;
                return RateDecision {
                    remaining: 0,
                    reset_s: secs_ceil(reset_ms),
                    retry_after_s: Some(secs_ceil(wait)),
                };
            }
            let g = match l.algorithm {
                Algorithm::SlidingWindow => bank().lease_window(l, key, now_ms, workers),
                Algorithm::TokenBucket { burst } => bank().lease_bucket(l, burst, key, now_ms, workers),
            };
            if g.granted == 0 {
                lease.denied_until = g.retry_at_ms;
                let wait = g.retry_at_ms.saturating_sub(now_ms).max(1);
                return RateDecision {
                    remaining: 0,
                    reset_s: secs_ceil(reset_ms),
                    retry_after_s: Some(secs_ceil(wait)),
                };
            }
            lease.tokens = g.granted;
            lease.bank_left = g.left;
            lease.valid = match l.algorithm {
                Algorithm::SlidingWindow => valid_now,
                Algorithm::TokenBucket { .. } => now_ms + 1000,
            };
        }
        lease.tokens -= 1;
        RateDecision { remaining: lease.bank_left + lease.tokens, reset_s: secs_ceil(reset_ms), retry_after_s: None }
    }

    /// Takes a concurrency slot of `c`; false when none is free node-wide.
    fn acquire(&mut self, c: &ConcurrencyLimit) -> bool {
        let workers = self.workers;
        let local = self.conc.entry(c.id).or_insert_with(|| LocalConc {
            shared: c.shared.clone(),
            max: c.max,
            allowance: 0,
            in_flight: 0,
        });
        if local.in_flight < local.allowance {
            local.in_flight += 1;
            return true;
        }
        let want = Bank::batch(local.max, workers) as i64;
        let mut cur = local.shared.load(Ordering::Acquire);
        loop {
            if cur <= 0 {
                return false;
            }
            let take = want.min(cur);
            match local.shared.compare_exchange_weak(cur, cur - take, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    local.allowance += take as u64;
                    local.in_flight += 1;
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Frees a slot of limit `id`, giving spare slots back to the bank.
    fn release(&mut self, id: u64) {
        let workers = self.workers;
        if let Some(local) = self.conc.get_mut(&id) {
            local.in_flight = local.in_flight.saturating_sub(1);
            let keep = Bank::batch(local.max, workers);
            let spare = local.allowance - local.in_flight;
            if spare > keep {
                let give = spare - keep;
                local.allowance -= give;
                local.shared.fetch_add(give as i64, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u64, window: &str, algorithm: Option<&str>, burst: Option<u64>, path: &str) -> RateLimit {
        let spec = RateLimitSpec {
            limit,
            window: window.into(),
            key: Some("route".into()),
            algorithm: algorithm.map(String::from),
            burst,
        };
        RateLimit::compile(&spec, path, &mut ConfigErrors::default()).unwrap()
    }

    #[test]
    fn sliding_window_admits_the_limit_per_window_across_workers() {
        let l = limit(1000, "1s", None, None, "t.sliding");
        let mut workers: Vec<WorkerLimits> = (0..4).map(|_| WorkerLimits::new(4, DEFAULT_KEYS_PER_WORKER)).collect();
        // 4 workers offer 3x the limit, round-robin, over 6 windows; count per fixed window.
        let mut admitted = [0u64; 7];
        let start = 10_000_000u64;
        for i in 0..18_000u64 {
            let now = start + i / 3; // 3 requests per millisecond
            let w = &mut workers[(i % 4) as usize];
            if w.rate(&l, 0, now).retry_after_s.is_none() {
                admitted[((now - start) / 1000) as usize] += 1;
            }
        }
        for (i, a) in admitted.iter().take(6).enumerate() {
            assert!(*a <= 1000, "window {i} admitted {a}");
            if i > 0 {
                assert!(*a >= 990, "window {i} admitted {a}");
            }
        }
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let l = limit(10, "1s", Some("token_bucket"), Some(50), "t.bucket");
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER);
        let t0 = 20_000_000u64;
        let burst = (0..100).filter(|_| w.rate(&l, 0, t0).retry_after_s.is_none()).count();
        assert_eq!(burst, 50);
        // Then 10 per second.
        let mut later = 0;
        for ms in (1..=2000).step_by(10) {
            later += (0..10).filter(|_| w.rate(&l, 0, t0 + ms).retry_after_s.is_none()).count();
        }
        assert!((19..=21).contains(&later), "{later}");
    }

    #[test]
    fn refusals_say_when_to_come_back() {
        let l = limit(2, "10s", None, None, "t.refuse");
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER);
        let t0 = 30_000_000u64;
        assert!(w.rate(&l, 0, t0).retry_after_s.is_none());
        let d = w.rate(&l, 0, t0);
        assert_eq!((d.retry_after_s, d.remaining), (None, 0));
        let d = w.rate(&l, 0, t0 + 1);
        assert_eq!(d.retry_after_s, Some(10));
        assert_eq!(d.reset_s, 10);
    }

    #[test]
    fn key_cap_evicts_the_stalest() {
        let spec = RateLimitSpec { limit: 5, window: "1m".into(), key: None, algorithm: None, burst: None };
        let l = RateLimit::compile(&spec, "t.cap", &mut ConfigErrors::default()).unwrap();
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER);
        for k in 0..(DEFAULT_KEYS_PER_WORKER as u64 + 10) {
            w.rate(&l, k, 40_000_000 + k);
        }
        assert!(w.tracked_keys() <= DEFAULT_KEYS_PER_WORKER, "{}", w.tracked_keys());
        assert!(w.tracked_keys() > DEFAULT_KEYS_PER_WORKER / 4);
    }

    #[test]
    fn spraying_keys_past_the_bank_cap_leaves_new_keys_their_own_counter() {
        let bank = Bank::new(1024, 8);
        let l = limit(3, "1m", None, None, "t.spray");
        let t0 = 50_000_000u64;
        let steady = u64::MAX - 1;
        let granted = |k: u64, now: u64| bank.lease_window(&l, k, now, 1).granted;
        assert_eq!((0..4).map(|i| granted(steady, t0 + i)).collect::<Vec<_>>(), [1, 1, 1, 0]);
        for k in 0..10_000u64 {
            assert_eq!(granted(k, t0 + 10 + k / 8), 1, "key {k} refused on its first request");
            // A key refused until the window ends stays refused meanwhile.
            if k % 1000 == 0 {
                assert_eq!(granted(steady, t0 + 10 + k / 8), 0, "after {k} keys");
            }
        }
        assert!(bank.windows.len() <= 1024, "{} windows tracked", bank.windows.len());
        let later = t0 + 10 + 10_000 / 8;
        assert_eq!((0..4).map(|_| granted(u64::MAX - 2, later)).collect::<Vec<_>>(), [1, 1, 1, 0]);
        assert_eq!(granted(steady, later), 0);
        // A bucket: same.
        let b = limit(2, "1m", Some("token_bucket"), Some(2), "t.spray_bucket");
        let take = |k: u64, now: u64| bank.lease_bucket(&b, 2, k, now, 1).granted;
        assert_eq!((0..3).map(|_| take(steady, t0)).collect::<Vec<_>>(), [1, 1, 0]);
        for k in 0..5000u64 {
            assert_eq!(take(k, t0 + 1 + k / 8), 1, "bucket key {k} refused on its first request");
        }
        assert!(bank.buckets.len() <= 1024, "{} buckets tracked", bank.buckets.len());
        assert_eq!(take(steady, t0 + 1 + 5000 / 8), 0, "an empty bucket outlives the spray");
    }

    #[test]
    fn a_refused_key_outlives_a_spray_through_the_worker_cap() {
        let l = limit(2, "1m", None, None, "t.worker_spray");
        let mut w = WorkerLimits::new(1, 64);
        let t0 = 60_000_000u64;
        let steady = u64::MAX - 3;
        let admitted = |w: &mut WorkerLimits, k: u64, now: u64| w.rate(&l, k, now).retry_after_s.is_none();
        assert!(admitted(&mut w, steady, t0) && admitted(&mut w, steady, t0));
        assert!(!admitted(&mut w, steady, t0));
        for k in 0..1000u64 {
            assert!(admitted(&mut w, k, t0 + 1 + k), "key {k}");
            assert!(w.tracked_keys() <= 64);
        }
        let d = w.rate(&l, steady, t0 + 1001);
        assert!(d.retry_after_s.is_some(), "{d:?}");
    }

    #[test]
    fn keys_refused_until_one_time_outlive_evictions() {
        let bank = Bank::new(1024, 1);
        let l = limit(1, "1m", None, None, "t.ties");
        let t0 = 70_020_000u64; // the start of a window
        let granted = |k: u64, now: u64| bank.lease_window(&l, k, now, 1).granted;
        // 224 keys used once, then 800 keys refused until the end of the window: three
        // quarters of the bank share one time, the end of the window.
        for k in 0..224u64 {
            assert_eq!(granted(k, t0 + k), 1);
        }
        for k in 1000..1800u64 {
            assert_eq!((granted(k, t0 + 300), granted(k, t0 + 300)), (1, 0));
        }
        assert_eq!(bank.windows.len(), 1024);
        // New keys past the cap take the place of idle keys, never of refused ones.
        for k in 10_000..11_000u64 {
            assert_eq!(granted(k, t0 + 400 + (k - 10_000) / 4), 1, "key {k}");
        }
        let later = t0 + 1000;
        let reopened: Vec<u64> = (1000..1800u64).filter(|k| granted(*k, later) > 0).collect();
        assert!(
            reopened.is_empty(),
            "{} refused keys got a fresh counter: {:?}",
            reopened.len(),
            &reopened[..5.min(reopened.len())]
        );
        assert!(bank.windows.len() <= 1024, "{}", bank.windows.len());
        let s = &bank.windows.stripes[0];
        assert_eq!(s.len.load(Ordering::Relaxed), s.map.len());
    }

    #[test]
    fn a_bank_full_of_refused_keys_drops_no_more_than_a_quarter() {
        let bank = Bank::new(1024, 1);
        let l = limit(1, "1m", None, None, "t.all_refused");
        let t0 = 70_020_000u64;
        let granted = |k: u64, now: u64| bank.lease_window(&l, k, now, 1).granted;
        for k in 0..1024u64 {
            assert_eq!((granted(k, t0 + 100), granted(k, t0 + 100)), (1, 0));
        }
        // One new key: the bank stays bounded, and only ties up to the quota go.
        assert_eq!(granted(5000, t0 + 200), 1);
        assert!(bank.windows.len() <= 1024, "{}", bank.windows.len());
        let reopened = (0..1024u64).filter(|k| granted(*k, t0 + 300) > 0).count();
        assert!((1..=256).contains(&reopened), "{reopened} refused keys got a fresh counter");
        let s = &bank.windows.stripes[0];
        assert_eq!(s.len.load(Ordering::Relaxed), s.map.len());
    }

    #[test]
    fn worker_eviction_keeps_refused_leases_over_idle_ones() {
        // Half the shard refused until one time, half idle: the idle half goes.
        let mut leases: FxHashMap<(u64, u64), Lease> = FxHashMap::default();
        for k in 0..40u64 {
            leases.insert((0, k), Lease { denied_until: 90_000, used_ms: 1_000, ..Lease::default() });
        }
        for k in 40..64u64 {
            leases.insert((0, k), Lease { used_ms: 1_000 + k, ..Lease::default() });
        }
        let mut w = WorkerLimits::new(1, 64);
        w.leases = leases;
        w.evict(2_000);
        assert!((0..40u64).all(|k| w.leases.contains_key(&(0, k))), "a refused lease was dropped");
        assert!(w.leases.len() < 64);
    }

    fn ip_hash(l: &RateLimit, ip: &str) -> u64 {
        let req = RequestInfo {
            method: "GET",
            host: "h",
            path: "/",
            query: None,
            client_ip: ip.parse().unwrap(),
            route_id: "r",
            client_headers: crate::chain::ClientHeaders(&|_| None),
        };
        l.key_hash(&req)
    }

    #[test]
    fn ip_keys_group_ipv6_by_64_and_keep_ipv4_addresses_apart() {
        let spec =
            RateLimitSpec { limit: 5, window: "1m".into(), key: Some("ip".into()), algorithm: None, burst: None };
        let l = RateLimit::compile(&spec, "t.ip", &mut ConfigErrors::default()).unwrap();
        let h = |ip: &str| ip_hash(&l, ip);
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:abcd::7"));
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
        assert_ne!(h("192.0.2.1"), h("192.0.2.2"));
        assert_eq!(h("::ffff:192.0.2.1"), h("192.0.2.1"), "IPv4-mapped addresses count as IPv4");
        assert_ne!(h("::ffff:192.0.2.1"), h("::ffff:192.0.2.2"));
        assert_eq!(ip_key("2001:db8::5".parse().unwrap()), "2001:db8::".parse::<IpAddr>().unwrap());
        // Requests without the header of a header key count by address, grouped the same way.
        let spec = RateLimitSpec { key: Some("header:x-key".into()), ..spec };
        let l = RateLimit::compile(&spec, "t.ip_header", &mut ConfigErrors::default()).unwrap();
        assert_eq!(ip_hash(&l, "2001:db8:9::1"), ip_hash(&l, "2001:db8:9::2"));
    }

    #[test]
    fn concurrency_never_exceeds_the_maximum() {
        let mut errors = ConfigErrors::default();
        let c = ConcurrencyLimit::compile(&ConcurrencyLimitSpec { max_in_flight: 10 }, "t.conc", &mut errors).unwrap();
        let mut a = WorkerLimits::new(2, DEFAULT_KEYS_PER_WORKER);
        let mut b = WorkerLimits::new(2, DEFAULT_KEYS_PER_WORKER);
        let mut held = 0;
        for i in 0..40 {
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            if w.acquire(&c) {
                held += 1;
            }
        }
        assert_eq!(held, 10);
        a.release(c.id);
        assert!(b.acquire(&c) || a.acquire(&c));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let mut errors = ConfigErrors::default();
        let spec = RateLimitSpec {
            limit: 0,
            window: "soon".into(),
            key: Some("consumer".into()),
            algorithm: Some("leaky".into()),
            burst: None,
        };
        assert!(RateLimit::compile(&spec, "p", &mut errors).is_none());
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["p.limit", "p.window", "p.key", "p.algorithm"]);
    }
}
