//! Load balancing: the compiled, shared part (the hash ring) and each worker's own state
//! (smooth weighted round-robin counters, active requests, latency averages).

use std::net::SocketAddr;
use std::time::Duration;

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
const POINTS_PER_WEIGHT: u32 = 160;

/// A consistent-hash ring (ketama style): each target owns `160 * weight` points placed by
/// hashing its address, so adding or removing a target moves about 1/N of the keys.
#[derive(Debug, Clone, Default)]
pub struct HashRing {
    points: Vec<(u64, u32)>,
}

impl HashRing {
    pub fn new(targets: &[(SocketAddr, u32)]) -> Self {
        let mut points = Vec::new();
        for (i, (addr, weight)) in targets.iter().enumerate() {
            let name = addr.to_string();
            for v in 0..weight.saturating_mul(POINTS_PER_WEIGHT) {
                let mut key = name.clone().into_bytes();
                key.push(b'#');
                key.extend_from_slice(v.to_string().as_bytes());
                points.push((hash64(&key), i as u32));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// The target index owning `key_hash`, if any target has weight.
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|p| p.0 < key_hash);
        let i = if i == self.points.len() { 0 } else { i };
        Some(self.points[i].1 as usize)
    }
}

/// One worker's balancing state for one upstream.
#[derive(Debug, Clone)]
pub struct LbState {
    current: Vec<i64>,
    active: Vec<u32>,
    /// Smoothed response-head latency in nanoseconds.
    ewma_ns: Vec<f64>,
    rng: u64,
    cursor: usize,
}

impl LbState {
    pub fn new(targets: usize, seed: u64) -> Self {
        LbState {
            current: vec![0; targets],
            active: vec![0; targets],
            ewma_ns: vec![0.0; targets],
            rng: seed | 1,
            cursor: 0,
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
        let n = weights.len();
        match kind {
            LbKind::RoundRobin => {
                // Smooth weighted round-robin: every pick adds each weight to its counter,
                // takes the largest counter and subtracts the total from it.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for (i, &w) in weights.iter().enumerate() {
                    let w = i64::from(w);
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
                    if weights[i] == 0 {
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
                let live: usize = weights.iter().filter(|w| **w > 0).count();
                if live == 0 {
                    return None;
                }
                let nth_live = |k: usize| weights.iter().enumerate().filter(|(_, w)| **w > 0).nth(k).map(|x| x.0);
                let a = nth_live((self.next_rand() % live as u64) as usize)?;
                if live == 1 {
                    return Some(a);
                }
                let mut bk = (self.next_rand() % (live as u64 - 1)) as usize;
                let ak = weights[..a].iter().filter(|w| **w > 0).count();
                if bk >= ak {
                    bk += 1;
                }
                let b = nth_live(bk)?;
                let cost = |i: usize| (self.ewma_ns[i] + 1.0) * f64::from(self.active[i] + 1) / f64::from(weights[i]);
                Some(if cost(a) <= cost(b) { a } else { b })
            }
            LbKind::ConsistentHash(_) => ring.pick(key_hash),
        }
    }

    /// A request to target `i` started.
    pub fn start(&mut self, i: usize) {
        self.active[i] += 1;
    }

    /// A request to target `i` ended; `head_latency` is the time to the response head when one
    /// was read.
    pub fn finish(&mut self, i: usize, head_latency: Option<Duration>) {
        self.active[i] = self.active[i].saturating_sub(1);
        if let Some(l) = head_latency {
            const ALPHA: f64 = 0.3;
            let sample = l.as_nanos() as f64;
            let e = &mut self.ewma_ns[i];
            *e = if *e == 0.0 { sample } else { *e + ALPHA * (sample - *e) };
        } else {
            // A failure: make the target look slow for a while.
            self.ewma_ns[i] = self.ewma_ns[i].max(1.0) * 4.0;
        }
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
        s.finish(0, Some(Duration::from_millis(100)));
        s.finish(1, Some(Duration::from_micros(100)));
        let picks = (0..100).filter(|_| s.pick(&LbKind::P2cEwma, &[1, 1], &HashRing::default(), 0) == Some(1)).count();
        assert_eq!(picks, 100);
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
