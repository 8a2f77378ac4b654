//! The node-wide side every worker leases from: the striped tables of sliding-window counts
//! and token buckets with their key cap, the free concurrency slots, and the batch a lease
//! takes.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::RefMut;
use dashmap::DashMap;

use crate::limits::evict::Eviction;
use crate::limits::spec::RateLimit;

/// Largest lease a worker takes at once.
const MAX_BATCH: u64 = 64;

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

/// The node-wide side of the limits: what every worker leases from. One per node, made by
/// whoever starts the workers and handed to each of them (through
/// [`crate::WorkerPolicyState::new`]); compiling a configuration never touches it.
pub struct LimitBank {
    windows: Table<WindowEntry>,
    buckets: Table<BucketEntry>,
    /// Free concurrency slots by limit.
    pub(super) slots: DashMap<u64, Arc<AtomicI64>>,
    /// Keys tracked in `windows` and in `buckets`, each.
    cap: AtomicUsize,
}

impl std::fmt::Debug for LimitBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitBank")
    }
}

impl LimitBank {
    /// A bank tracking about `keys` keys in each of its tables (at least 1024); past it the
    /// least recently used quarter goes.
    pub fn new(keys: usize) -> LimitBank {
        // Four stripes per core: the cap grows with the workers, a stripe's share of it does not.
        LimitBank::with_stripes(keys.max(1024), std::thread::available_parallelism().map_or(1, usize::from) * 4)
    }

    fn with_stripes(cap: usize, stripes: usize) -> LimitBank {
        LimitBank {
            windows: Table::new(stripes),
            buckets: Table::new(stripes),
            slots: DashMap::new(),
            cap: AtomicUsize::new(cap),
        }
    }
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
pub(super) struct Grant {
    pub(super) granted: u64,
    /// Left in the bank after this grant.
    pub(super) left: u64,
    /// When nothing was granted: when to ask again.
    pub(super) retry_at_ms: u64,
}

impl LimitBank {
    pub(super) fn batch(left: u64, workers: u64) -> u64 {
        (left / (4 * workers.max(1))).clamp(1, MAX_BATCH).min(left)
    }

    pub(super) fn lease_window(&self, l: &RateLimit, key: u64, now_ms: u64, workers: u64) -> Grant {
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
        let g = LimitBank::batch(left, workers);
        e.cur += g;
        Grant { granted: g, left: left - g, retry_at_ms: 0 }
    }

    pub(super) fn lease_bucket(&self, l: &RateLimit, burst: u64, key: u64, now_ms: u64, workers: u64) -> Grant {
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
        let g = LimitBank::batch(left, workers);
        e.tokens -= g as f64;
        e.full_at_ms = now_ms.saturating_add(((burst as f64 - e.tokens) / rate).ceil() as u64);
        drop(e);
        Grant { granted: g, left: left - g, retry_at_ms: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::spec::limit;

    #[test]
    fn spraying_keys_past_the_bank_cap_leaves_new_keys_their_own_counter() {
        let bank = LimitBank::with_stripes(1024, 8);
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
    fn keys_refused_until_one_time_outlive_evictions() {
        let bank = LimitBank::with_stripes(1024, 1);
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
        let bank = LimitBank::with_stripes(1024, 1);
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
}
