//! Load balancing: the compiled, shared part (the hash ring) and each worker's own state
//! (smooth weighted round-robin counters, active requests, latency averages).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which balancer an upstream uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbKind {
    RoundRobin,
    LeastConn,
    P2cEwma,
    ConsistentHash(HashOn),
}

/// The key `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Ip,
    /// A request header (lower-case name); requests without it hash on the client IP.
    Header(String),
}

/// 64-bit FNV-1a followed by a MurmurHash3 finaliser for good avalanche on short keys.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Virtual nodes per unit of weight on the ring.
const POINTS_PER_WEIGHT: u64 = 160;

/// Most points on a ring (plus at most one per target of tiny weight): past it, every target's
/// share of points is scaled down in proportion to its weight, so large weights cost no more
/// memory or build time than small ones.
pub const MAX_RING_POINTS: u64 = 40_960;

/// A consistent-hash ring (ketama style): each target owns `160 * weight` points placed by
/// hashing its address, so adding or removing a target moves about 1/N of the keys. When that
/// comes to more than `MAX_RING_POINTS`, each target gets its weight's share of them instead
/// (at least one point per target with weight).
#[derive(Debug, Clone, Default)]
pub struct HashRing {
    points: Vec<(u64, u32)>,
}

impl HashRing {
    pub fn new(targets: &[(SocketAddr, u32)]) -> Self {
        let total: u64 = targets.iter().map(|t| u64::from(t.1)).sum();
        let points_for = |weight: u32| -> u64 {
            let w = u64::from(weight);
            if total.saturating_mul(POINTS_PER_WEIGHT) <= MAX_RING_POINTS {
                w * POINTS_PER_WEIGHT
            } else if w == 0 {
                0
            } else {
                // Rounded to nearest; u128 keeps `w * MAX_RING_POINTS` exact for any weights.
                let scaled =
                    (u128::from(w) * u128::from(MAX_RING_POINTS) * 2 + u128::from(total)) / (2 * u128::from(total));
                (scaled as u64).max(1)
            }
        };
        let mut points = Vec::with_capacity(targets.iter().map(|t| points_for(t.1)).sum::<u64>() as usize);
        let mut key = Vec::new();
        for (i, (addr, weight)) in targets.iter().enumerate() {
            let name = addr.to_string();
            for v in 0..points_for(*weight) {
                key.clear();
                key.extend_from_slice(name.as_bytes());
                key.push(b'#');
                key.extend_from_slice(v.to_string().as_bytes());
                points.push((hash64(&key), i as u32));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The target index owning `key_hash`, if any target has weight.
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        self.pick_among(key_hash, &|_| true)
    }

    /// The first point at or after `key_hash` whose target `usable` admits (so a key moves
    /// only when its own target is out).
    pub fn pick_among(&self, key_hash: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < key_hash);
        let len = self.points.len();
        (0..len).map(|k| self.points[(start + k) % len].1 as usize).find(|t| usable(*t))
    }
}

/// Ceiling of a target's latency average (ns), an hour: far above any answer time, so a target
/// at the ceiling loses every comparison with a working one, and far below where repeated
/// failure penalties would overflow to infinity (and a later sample would turn it into NaN).
const MAX_EWMA_NS: f64 = 3.6e12;

/// A target's latency average halves for every this long without a new sample of it, so a
/// target that lost every comparison (after failures, or slow answers) looks fast enough to be
/// tried again after a while: 20 s after a failure it competes with the targets that answer,
/// and even from the ceiling it takes about two minutes.
const EWMA_HALF_LIFE_S: f64 = 5.0;

/// One worker's balancing state for one upstream.
#[derive(Debug, Clone)]
pub struct LbState {
    current: Vec<i64>,
    active: Vec<u32>,
    /// Smoothed response-head latency in nanoseconds, as of `sampled`.
    ewma_ns: Vec<f64>,
    /// When each average last took a sample (or a failure).
    sampled: Vec<Instant>,
    /// The latest time a request finished: what `p2c_ewma` decays averages to when it picks,
    /// so picking reads no clock.
    clock: Instant,
    rng: u64,
    cursor: usize,
    /// This worker's retry budget for the upstream (see [`RetryBudget`]).
    pub budget: crate::resilience::budget::RetryBudget,
}

impl LbState {
    pub fn new(targets: usize, seed: u64) -> Self {
        let now = Instant::now();
        LbState {
            current: vec![0; targets],
            active: vec![0; targets],
            ewma_ns: vec![0.0; targets],
            sampled: vec![now; targets],
            clock: now,
            rng: seed | 1,
            cursor: 0,
            budget: Default::default(),
        }
    }

    /// Target `i`'s latency average at `now`: halved for every `EWMA_HALF_LIFE_S` since its
    /// last sample.
    fn ewma_at(&self, i: usize, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(self.sampled[i]).as_secs_f64();
        if idle <= 0.0 {
            self.ewma_ns[i]
        } else {
            self.ewma_ns[i] * (-idle / EWMA_HALF_LIFE_S).exp2()
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Chooses a target. `weights[i]` is target `i`'s weight; `key_hash` is used by
    /// `consistent_hash` only. `None` when no target has weight.
    pub fn pick(&mut self, kind: &LbKind, weights: &[u32], ring: &HashRing, key_hash: u64) -> Option<usize> {
        self.pick_among(kind, weights, ring, key_hash, |_| true)
    }

    /// Picks among the targets `usable` admits (as if the others had weight 0).
    pub fn pick_among(
        &mut self,
        kind: &LbKind,
        weights: &[u32],
        ring: &HashRing,
        key_hash: u64,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = weights.len();
        let weight = |i: usize| if usable(i) { weights[i] } else { 0 };
        match kind {
            LbKind::RoundRobin => {
                // Smooth weighted round-robin: every pick adds each weight to its counter,
                // takes the largest counter and subtracts the total from it.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    let w = i64::from(weight(i));
                    if w == 0 {
                        continue;
                    }
                    self.current[i] += w;
                    total += w;
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                self.current[b] -= total;
                Some(b)
            }
            LbKind::LeastConn => {
                // Fewest active requests per unit of weight; ties rotate.
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if weight(i) == 0 {
                        continue;
                    }
                    best = match best {
                        None => Some(i),
                        Some(b) => {
                            let lhs = u64::from(self.active[i]) * u64::from(weights[b]);
                            let rhs = u64::from(self.active[b]) * u64::from(weights[i]);
                            if lhs < rhs {
                                Some(i)
                            } else {
                                Some(b)
                            }
                        }
                    };
                }
                self.cursor = self.cursor.wrapping_add(1);
                best
            }
            LbKind::P2cEwma => {
                let live: usize = (0..n).filter(|i| weight(*i) > 0).count();
                if live == 0 {
                    return None;
                }
                let nth_live = |k: usize| (0..n).filter(|i| weight(*i) > 0).nth(k);
                let a = nth_live((self.next_rand() % live as u64) as usize)?;
                if live == 1 {
                    return Some(a);
                }
                let mut bk = (self.next_rand() % (live as u64 - 1)) as usize;
                let ak = (0..a).filter(|i| weight(*i) > 0).count();
                if bk >= ak {
                    bk += 1;
                }
                let b = nth_live(bk)?;
                let now = self.clock;
                let cost =
                    |i: usize| (self.ewma_at(i, now) + 1.0) * (f64::from(self.active[i]) + 1.0) / f64::from(weights[i]);
                // Averages are finite and clamped, so costs are too; `total_cmp` would still
                // rank a NaN above everything, never below.
                Some(if cost(a).total_cmp(&cost(b)).is_le() { a } else { b })
            }
            LbKind::ConsistentHash(_) => ring.pick_among(key_hash, &usable),
        }
    }

    /// A request to target `i` started.
    pub fn start(&mut self, i: usize) {
        self.active[i] += 1;
    }

    /// A request to target `i` ended at `now`; `head_latency` is the time to the response head
    /// when one was read. Only `p2c_ewma` uses the time: other balancers may pass any.
    /// Ends a request on target `i` for the balancers that keep no latency (only the count of
    /// requests in flight changes).
    pub fn release(&mut self, i: usize) {
        self.active[i] = self.active[i].saturating_sub(1);
    }

    pub fn finish(&mut self, i: usize, head_latency: Option<Duration>, now: Instant) {
        self.active[i] = self.active[i].saturating_sub(1);
        self.clock = self.clock.max(now);
        let e = self.ewma_at(i, now);
        let next = if let Some(l) = head_latency {
            const ALPHA: f64 = 0.3;
            let sample = (l.as_nanos() as f64).min(MAX_EWMA_NS);
            if e == 0.0 {
                sample
            } else {
                e + ALPHA * (sample - e)
            }
        } else {
            // A failure makes the target look four times slower than the slowest of the other
            // targets (or keeps its own average if higher), so it loses to targets that answer
            // unless they are four times busier. Further failures set the same penalty rather
            // than compounding it, and the average decays while the target is not picked, so
            // it is tried again after a while.
            let slowest_other =
                (0..self.ewma_ns.len()).filter(|j| *j != i).fold(1.0_f64, |a, j| a.max(self.ewma_at(j, now)));
            e.max(slowest_other * 4.0)
        };
        // Every operand stays within [0, MAX_EWMA_NS], so `next` is finite; the check keeps a
        // NaN from ever being stored.
        self.ewma_ns[i] = if next.is_nan() { MAX_EWMA_NS } else { next.clamp(0.0, MAX_EWMA_NS) };
        self.sampled[i] = now;
    }

    pub fn active(&self, i: usize) -> u32 {
        self.active[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, 1], 8000 + i)), 1)).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_interleaved() {
        let mut s = LbState::new(3, 1);
        let w = [5, 1, 1];
        let picks: Vec<_> = (0..7).map(|_| s.pick(&LbKind::RoundRobin, &w, &HashRing::default(), 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 5);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_is_skipped() {
        let mut s = LbState::new(2, 1);
        for kind in [LbKind::RoundRobin, LbKind::LeastConn, LbKind::P2cEwma] {
            for _ in 0..20 {
                assert_eq!(s.pick(&kind, &[0, 3], &HashRing::default(), 0), Some(1));
            }
        }
        assert_eq!(s.pick(&LbKind::RoundRobin, &[0, 0], &HashRing::default(), 0), None);
    }

    #[test]
    fn least_conn_prefers_idle() {
        let mut s = LbState::new(3, 1);
        s.start(0);
        s.start(1);
        assert_eq!(s.pick(&LbKind::LeastConn, &[1, 1, 1], &HashRing::default(), 0), Some(2));
    }

    #[test]
    fn p2c_avoids_slow_target() {
        let mut s = LbState::new(2, 7);
        let now = Instant::now();
        s.finish(0, Some(Duration::from_millis(100)), now);
        s.finish(1, Some(Duration::from_micros(100)), now);
        let picks = (0..100).filter(|_| s.pick(&LbKind::P2cEwma, &[1, 1], &HashRing::default(), 0) == Some(1)).count();
        assert_eq!(picks, 100);
    }

    #[test]
    fn p2c_never_prefers_a_target_that_keeps_failing() {
        let mut s = LbState::new(2, 11);
        let now = Instant::now();
        s.finish(1, Some(Duration::from_millis(1)), now);
        for _ in 0..600 {
            s.finish(0, None, now);
            assert!(s.ewma_ns[0].is_finite() && s.ewma_ns[0] <= MAX_EWMA_NS, "{}", s.ewma_ns[0]);
        }
        // A slow answer after the failures, then failures again: still finite, still losing.
        s.finish(0, Some(Duration::from_secs(5)), now);
        assert!(s.ewma_ns[0].is_finite(), "{}", s.ewma_ns[0]);
        let healthy = |s: &mut LbState| {
            (0..200).filter(|_| s.pick(&LbKind::P2cEwma, &[1, 1], &HashRing::default(), 0) == Some(1)).count()
        };
        assert_eq!(healthy(&mut s), 200);
        for _ in 0..3 {
            s.finish(0, None, now);
        }
        assert!(s.ewma_ns[0].is_finite(), "{}", s.ewma_ns[0]);
        assert_eq!(healthy(&mut s), 200);
        // Huge samples are clamped too.
        s.finish(0, Some(Duration::MAX), now);
        assert!(s.ewma_ns[0].is_finite() && s.ewma_ns[0] <= MAX_EWMA_NS);
        assert_eq!(healthy(&mut s), 200);
    }

    #[test]
    fn p2c_a_first_failure_loses_to_a_target_that_answers() {
        let mut s = LbState::new(3, 5);
        let now = Instant::now();
        s.finish(1, Some(Duration::from_millis(20)), now);
        s.finish(2, Some(Duration::from_millis(1)), now);
        s.finish(0, None, now);
        let picks: Vec<_> =
            (0..300).filter_map(|_| s.pick(&LbKind::P2cEwma, &[1, 1, 1], &HashRing::default(), 0)).collect();
        assert!(!picks.contains(&0), "the failed target was chosen");
    }

    #[test]
    fn p2c_failure_penalties_do_not_compound() {
        let mut s = LbState::new(2, 13);
        let now = Instant::now();
        s.finish(1, Some(Duration::from_millis(1)), now);
        for _ in 0..30 {
            s.finish(0, None, now);
        }
        // Four times the other target's average, however many failures.
        assert!((s.ewma_ns[0] - 4e6).abs() < 1.0, "{}", s.ewma_ns[0]);
    }

    #[test]
    fn p2c_a_failed_target_is_avoided_at_once_and_tried_again_later() {
        let mut s = LbState::new(2, 17);
        let t0 = Instant::now();
        let pick = |s: &mut LbState| s.pick(&LbKind::P2cEwma, &[1, 1], &HashRing::default(), 0).unwrap();
        s.finish(1, Some(Duration::from_millis(1)), t0);
        for _ in 0..30 {
            s.finish(0, None, t0);
        }
        // For the next seconds, while the healthy target keeps answering, it gets every request.
        for step in 0..100u64 {
            assert_eq!(pick(&mut s), 1, "the failed target was chosen {step} ms later", step = step * 50);
            s.start(1);
            s.finish(1, Some(Duration::from_millis(1)), t0 + Duration::from_millis(step * 50));
        }
        // A minute on, its penalty has decayed: it gets a request again.
        s.finish(1, Some(Duration::from_millis(1)), t0 + Duration::from_secs(60));
        assert!((0..20).any(|_| pick(&mut s) == 0), "the failed target is never tried again");
        // It fails again: avoided at once again, not held to the earlier penalty's decayed value.
        s.finish(0, None, t0 + Duration::from_secs(60));
        assert!((0..200).all(|_| pick(&mut s) == 1));
        // A target kept out by a slow answer at the ceiling is tried again too.
        s.finish(0, Some(Duration::MAX), t0 + Duration::from_secs(61));
        assert!((0..200).all(|_| pick(&mut s) == 1));
        s.finish(1, Some(Duration::from_millis(1)), t0 + Duration::from_secs(300));
        assert!((0..20).any(|_| pick(&mut s) == 0), "a target at the ceiling is never tried again");
    }

    /// Each target's share of the hash space.
    fn shares(ring: &HashRing, targets: usize) -> Vec<f64> {
        let mut owned = vec![0u128; targets];
        let mut prev = ring.points.last().map_or(0, |p| p.0);
        for (i, &(h, t)) in ring.points.iter().enumerate() {
            // The arc ending at this point (the first one wraps around from the last).
            let arc = if i == 0 { u128::from(h) + (1u128 << 64) - u128::from(prev) } else { u128::from(h - prev) };
            owned[t as usize] += arc;
            prev = h;
        }
        owned.iter().map(|o| *o as f64 / 2f64.powi(64)).collect()
    }

    #[test]
    fn ring_size_is_bounded_and_shares_stay_proportional() {
        let targets: Vec<(SocketAddr, u32)> = [10_000, 30_000, 0, 1]
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, 2], 9000 + i as u16)), *w))
            .collect();
        let ring = HashRing::new(&targets);
        assert!(ring.len() as u64 <= MAX_RING_POINTS + 4, "{} points", ring.len());
        let s = shares(&ring, 4);
        assert!((s[0] - 0.25).abs() < 0.02, "{s:?}");
        assert!((s[1] - 0.75).abs() < 0.02, "{s:?}");
        assert_eq!(s[2], 0.0, "{s:?}");
        assert!(s[3] > 0.0 && s[3] < 0.001, "weight 1 of 40001 still owns a little: {s:?}");
        // Weights as large as a u32 holds: still bounded.
        let huge = [(targets[0].0, u32::MAX), (targets[1].0, u32::MAX / 2)];
        let ring = HashRing::new(&huge);
        assert!(ring.len() as u64 <= MAX_RING_POINTS + 2, "{} points", ring.len());
        let s = shares(&ring, 2);
        assert!((s[0] - 2.0 / 3.0).abs() < 0.02, "{s:?}");
        // Under the cap, rings are as before: 160 points per unit of weight.
        assert_eq!(HashRing::new(&addrs(4)).len(), 640);
    }

    #[test]
    fn ring_moves_about_one_nth_when_a_target_is_added() {
        let before = HashRing::new(&addrs(4));
        let after = HashRing::new(&addrs(5));
        let keys = 20_000u64;
        let moved = (0..keys)
            .filter(|k| {
                let h = hash64(&k.to_le_bytes());
                before.pick(h) != after.pick(h)
            })
            .count() as f64;
        let frac = moved / keys as f64;
        // Ideal is 1/5 = 0.2.
        assert!((0.15..0.26).contains(&frac), "moved {frac}");
    }
}
