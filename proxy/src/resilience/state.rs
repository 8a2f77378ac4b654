//! The node's live view of an upstream's health: shared by every worker (which read it on each
//! pick and add their outcomes to it) and the health thread (which decides). Everything here
//! is a relaxed atomic; the bookkeeping behind each decision is the health thread's own (see
//! [`super::decide::Books`]).
//!
//! State lives as long as its target or upstream: a new snapshot takes over the state of every
//! target it keeps ([`UpstreamState::carry`]), and the state of a removed one goes with the last
//! snapshot that had it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// One worker's counts for the breaker, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counts {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

/// Out of rotation because outlier detection ejected it.
pub const EJECTED: u8 = 1;
/// Out of rotation because probes failed.
pub const UNHEALTHY: u8 = 2;

/// A target's state.
#[derive(Debug)]
pub struct TargetState {
    pub addr: SocketAddr,
    /// Why the target is out of rotation, a bit each ([`EJECTED`], [`UNHEALTHY`]): set and
    /// cleared by the health thread only; 0 is in rotation.
    out: AtomicU8,
    /// Failures in a row, from every worker; a success clears it.
    consecutive: AtomicU32,
    /// Times ejected, and times probes took it out (for the metrics).
    pub ejections_total: AtomicU64,
    pub unhealthy_total: AtomicU64,
}

/// What the health thread keeps of a target.
#[derive(Debug, Default)]
pub struct TargetBook {
    /// Ejections in a row (a target that stays in long enough is forgiven one at a time).
    pub ejections: u32,
    /// Back in rotation at this time.
    pub out_until: Option<Instant>,
    /// When the count of ejections in a row last changed.
    pub since: Option<Instant>,
    /// The latest decisions, newest last (at most [`HISTORY`]).
    pub history: std::collections::VecDeque<Decision>,
    /// Probes: successes and failures in a row, when the next one is due, whether one is
    /// under way, and what the last one said.
    pub probe_ok: u32,
    pub probe_failed: u32,
    pub probe_due: Option<Instant>,
    pub probing: bool,
    pub last_probe: Option<String>,
}

/// Decisions kept per target or breaker.
pub const HISTORY: usize = 16;

/// One decision of the node's, for the admin API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `ejected`, `returned`, `unhealthy`, `healthy`, `open`, `half_open`, `closed`.
    pub what: &'static str,
    pub why: String,
}

impl TargetState {
    fn new(addr: SocketAddr) -> Self {
        TargetState {
            addr,
            out: AtomicU8::new(0),
            consecutive: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            unhealthy_total: AtomicU64::new(0),
        }
    }

    /// Whether the target is in rotation.
    #[inline]
    pub fn usable(&self) -> bool {
        self.out.load(Relaxed) == 0
    }

    /// Takes the target out of rotation for `why` ([`EJECTED`] or [`UNHEALTHY`]), or puts it
    /// back as far as `why` goes.
    pub fn set_out_for(&self, why: u8, out: bool) {
        if out {
            self.out.fetch_or(why, Relaxed);
        } else {
            self.out.fetch_and(!why, Relaxed);
        }
    }

    /// Ejected by outlier detection.
    pub fn set_out(&self, out: bool) {
        self.set_out_for(EJECTED, out);
    }

    pub fn is_ejected(&self) -> bool {
        self.out.load(Relaxed) & EJECTED != 0
    }

    pub fn is_unhealthy(&self) -> bool {
        self.out.load(Relaxed) & UNHEALTHY != 0
    }

    /// Failures in a row so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Relaxed)
    }

    pub fn clear_consecutive(&self) {
        self.consecutive.store(0, Relaxed);
    }

    /// An attempt's outcome, from any worker.
    #[inline]
    pub fn report(&self, failed: bool) {
        if failed {
            self.consecutive.fetch_add(1, Relaxed);
        } else if self.consecutive.load(Relaxed) != 0 {
            // Read first: a success on a healthy target writes nothing shared.
            self.consecutive.store(0, Relaxed);
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMode {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerMode::Closed => "closed",
            BreakerMode::Open => "open",
            BreakerMode::HalfOpen => "half_open",
        }
    }
}

/// An upstream's circuit breaker.
#[derive(Debug)]
pub struct BreakerState {
    mode: AtomicU8,
    /// Requests still let through while half-open.
    permits: AtomicI32,
    /// Seconds until the breaker half-opens, for `Retry-After` (kept by the health thread).
    retry_after_s: AtomicU32,
    /// Failures in a row, from every worker.
    consecutive: AtomicU32,
    /// Outcomes of the requests let through while half-open.
    pub trial_ok: AtomicU32,
    pub trial_failed: AtomicU32,
    /// Times it opened (for the metrics).
    pub opened_total: AtomicU64,
    /// Per-worker counts (a worker past the end shares a slot, still correctly: they are added
    /// atomically).
    counts: Box<[Counts]>,
}

/// What the health thread keeps of a breaker.
#[derive(Debug, Default)]
pub struct BreakerBook {
    /// Requests and failures per slot of the window (one slot per round of decisions), and
    /// their sums.
    pub slots: std::collections::VecDeque<(u64, u64)>,
    pub sums: (u64, u64),
    /// The counts' sums at the last tick.
    pub seen: (u64, u64),
    pub open_until: Option<Instant>,
    /// When the breaker last half-opened (or handed out fresh trial permits).
    pub half_open_since: Option<Instant>,
    pub history: std::collections::VecDeque<Decision>,
}

impl BreakerState {
    fn new() -> Self {
        let slots = std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(1, 256);
        BreakerState {
            mode: AtomicU8::new(BreakerMode::Closed as u8),
            permits: AtomicI32::new(0),
            retry_after_s: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            trial_ok: AtomicU32::new(0),
            trial_failed: AtomicU32::new(0),
            opened_total: AtomicU64::new(0),
            counts: (0..slots).map(|_| Counts::default()).collect(),
        }
    }

    #[inline]
    pub fn mode(&self) -> BreakerMode {
        match self.mode.load(Relaxed) {
            1 => BreakerMode::Open,
            2 => BreakerMode::HalfOpen,
            _ => BreakerMode::Closed,
        }
    }

    pub fn set_mode(&self, m: BreakerMode, permits: i32, retry_after_s: u32) {
        self.permits.store(permits, Relaxed);
        self.retry_after_s.store(retry_after_s, Relaxed);
        self.mode.store(m as u8, Relaxed);
    }

    pub fn set_retry_after(&self, s: u32) {
        self.retry_after_s.store(s, Relaxed);
    }

    pub fn retry_after_s(&self) -> u32 {
        self.retry_after_s.load(Relaxed)
    }

    /// Takes one of the half-open permits; false when none is left.
    pub fn take_permit(&self) -> bool {
        // Read first: refusals while none is left write nothing (and never wrap the count).
        self.permits.load(Relaxed) > 0 && self.permits.fetch_sub(1, Relaxed) > 0
    }

    /// Gives back a permit whose request never reached the upstream.
    pub fn give_permit(&self) {
        if self.mode() == BreakerMode::HalfOpen {
            self.permits.fetch_add(1, Relaxed);
        }
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Relaxed)
    }

    pub fn clear_consecutive(&self) {
        self.consecutive.store(0, Relaxed);
    }

    /// A request's outcome, from worker `worker`.
    #[inline]
    pub fn report(&self, worker: usize, failed: bool) {
        let c = &self.counts[worker % self.counts.len()];
        c.requests.fetch_add(1, Relaxed);
        if failed {
            c.failures.fetch_add(1, Relaxed);
            self.consecutive.fetch_add(1, Relaxed);
        } else if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
    }

    /// Requests and failures so far, summed over the workers.
    pub fn totals(&self) -> (u64, u64) {
        self.counts.iter().fold((0, 0), |(r, f), c| (r + c.requests.load(Relaxed), f + c.failures.load(Relaxed)))
    }
}

/// An upstream's live state: its targets' (in the order of the upstream's targets) and its
/// breaker's.
#[derive(Debug)]
pub struct UpstreamState {
    pub targets: Box<[Arc<TargetState>]>,
    pub breaker: Arc<BreakerState>,
}

impl UpstreamState {
    /// The state for an upstream with `targets`, taking over what `old` (the same upstream in
    /// the snapshot before) knew of every target it keeps, and its breaker.
    pub fn carry(old: Option<&UpstreamState>, targets: &[SocketAddr]) -> UpstreamState {
        let find = |a: &SocketAddr| old.and_then(|o| o.targets.iter().find(|t| t.addr == *a)).cloned();
        UpstreamState {
            targets: targets.iter().map(|a| find(a).unwrap_or_else(|| Arc::new(TargetState::new(*a)))).collect(),
            breaker: old.map_or_else(|| Arc::new(BreakerState::new()), |o| o.breaker.clone()),
        }
    }

    /// How many targets outlier detection has ejected.
    pub fn out_count(&self) -> usize {
        self.targets.iter().filter(|t| t.is_ejected()).count()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_snapshot_keeps_the_state_of_the_targets_it_keeps() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let first = UpstreamState::carry(None, &[a, b]);
        first.targets[1].set_out(true);
        first.targets[0].report(true);
        let next = UpstreamState::carry(Some(&first), &[c, b, a]);
        assert!(Arc::ptr_eq(&next.targets[1], &first.targets[1]), "b keeps its state");
        assert!(!next.targets[1].usable());
        assert_eq!(next.targets[2].consecutive(), 1, "a keeps its count");
        assert!(next.targets[0].usable() && next.targets[0].consecutive() == 0, "c starts fresh");
        assert!(Arc::ptr_eq(&next.breaker, &first.breaker));
        // A removed target's state goes with the last snapshot that had it.
        let weak = Arc::downgrade(&first.targets[1]);
        drop(first);
        let last = UpstreamState::carry(Some(&next), &[a]);
        drop(next);
        assert!(weak.upgrade().is_none(), "b's state is retired");
        assert_eq!(last.targets.len(), 1);
    }

    #[test]
    fn a_success_clears_the_failures_in_a_row() {
        let s = UpstreamState::carry(None, &["127.0.0.1:1".parse().unwrap()]);
        let t = &s.targets[0];
        t.report(true);
        t.report(true);
        assert_eq!(t.consecutive(), 2);
        t.report(false);
        assert_eq!(t.consecutive(), 0);
        let b = &s.breaker;
        b.report(0, true);
        b.report(7, false);
        assert_eq!(b.totals(), (2, 1));
    }
}
