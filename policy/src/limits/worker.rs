//! One worker's shard of every limit: the leases it spends without synchronisation, deciding a
//! request by sliding window or token bucket, going back to the bank when a lease runs out,
//! remembering refusals, evicting keys past its cap, and its concurrency slots.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::limits::bank::LimitBank;
use crate::limits::evict::Eviction;
use crate::limits::spec::{Algorithm, ConcurrencyLimit, RateLimit};

/// Keys tracked per worker unless configured otherwise; past the cap the least recently used
/// half goes.
pub const DEFAULT_KEYS_PER_WORKER: usize = 65_536;

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
    /// The node's bank this worker leases from.
    bank: Arc<LimitBank>,
    workers: u64,
    max_keys: usize,
    leases: FxHashMap<(u64, u64), Lease>,
    conc: FxHashMap<u64, LocalConc>,
}

fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl WorkerLimits {
    /// The shard of one of `workers` workers, tracking at most `max_keys` keys, leasing from
    /// `bank`.
    pub fn new(workers: usize, max_keys: usize, bank: Arc<LimitBank>) -> Self {
        WorkerLimits {
            bank,
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
                Algorithm::SlidingWindow => self.bank.lease_window(l, key, now_ms, workers),
                Algorithm::TokenBucket { burst } => self.bank.lease_bucket(l, burst, key, now_ms, workers),
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
    pub(super) fn acquire(&mut self, c: &ConcurrencyLimit) -> bool {
        let workers = self.workers;
        let local = self.conc.entry(c.id).or_insert_with(|| LocalConc {
            shared: self.bank.slots.entry(c.id).or_insert_with(|| Arc::new(AtomicI64::new(c.max as i64))).clone(),
            max: c.max,
            allowance: 0,
            in_flight: 0,
        });
        if local.in_flight < local.allowance {
            local.in_flight += 1;
            return true;
        }
        let want = LimitBank::batch(local.max, workers) as i64;
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
    pub(crate) fn release(&mut self, id: u64) {
        let workers = self.workers;
        if let Some(local) = self.conc.get_mut(&id) {
            local.in_flight = local.in_flight.saturating_sub(1);
            let keep = LimitBank::batch(local.max, workers);
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
    use crate::error::ConfigErrors;
    use crate::limits::spec::limit;
    use crate::limits::{ConcurrencyLimitSpec, RateLimitSpec};

    /// A bank of its own for each test.
    fn bank() -> Arc<LimitBank> {
        Arc::new(LimitBank::new(1 << 20))
    }

    #[test]
    fn sliding_window_admits_the_limit_per_window_across_workers() {
        let l = limit(1000, "1s", None, None, "t.sliding");
        let node = bank();
        let mut workers: Vec<WorkerLimits> =
            (0..4).map(|_| WorkerLimits::new(4, DEFAULT_KEYS_PER_WORKER, node.clone())).collect();
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
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER, bank());
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
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER, bank());
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
        let mut w = WorkerLimits::new(1, DEFAULT_KEYS_PER_WORKER, bank());
        for k in 0..(DEFAULT_KEYS_PER_WORKER as u64 + 10) {
            w.rate(&l, k, 40_000_000 + k);
        }
        assert!(w.tracked_keys() <= DEFAULT_KEYS_PER_WORKER, "{}", w.tracked_keys());
        assert!(w.tracked_keys() > DEFAULT_KEYS_PER_WORKER / 4);
    }

    #[test]
    fn a_refused_key_outlives_a_spray_through_the_worker_cap() {
        let l = limit(2, "1m", None, None, "t.worker_spray");
        let mut w = WorkerLimits::new(1, 64, bank());
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
    fn worker_eviction_keeps_refused_leases_over_idle_ones() {
        // Half the shard refused until one time, half idle: the idle half goes.
        let mut leases: FxHashMap<(u64, u64), Lease> = FxHashMap::default();
        for k in 0..40u64 {
            leases.insert((0, k), Lease { denied_until: 90_000, used_ms: 1_000, ..Lease::default() });
        }
        for k in 40..64u64 {
            leases.insert((0, k), Lease { used_ms: 1_000 + k, ..Lease::default() });
        }
        let mut w = WorkerLimits::new(1, 64, bank());
        w.leases = leases;
        w.evict(2_000);
        assert!((0..40u64).all(|k| w.leases.contains_key(&(0, k))), "a refused lease was dropped");
        assert!(w.leases.len() < 64);
    }

    #[test]
    fn concurrency_never_exceeds_the_maximum() {
        let mut errors = ConfigErrors::default();
        let c = ConcurrencyLimit::compile(&ConcurrencyLimitSpec { max_in_flight: 10 }, "t.conc", &mut errors).unwrap();
        let node = bank();
        let mut a = WorkerLimits::new(2, DEFAULT_KEYS_PER_WORKER, node.clone());
        let mut b = WorkerLimits::new(2, DEFAULT_KEYS_PER_WORKER, node);
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
}
