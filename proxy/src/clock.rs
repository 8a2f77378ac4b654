//! The worker's clock. Wall time (the cache's freshness and stored dates, the limits' windows,
//! the access log's timestamps) comes from here, shifted by a skew that only a gateway started
//! for tests lets anyone move (`--test-clock`): tests of expiry and windows move time instead
//! of sleeping. Monotonic time (deadlines, durations) stays the runtime's own, because the
//! runtime's timers run on it.
//!
//! Hot path: one clock read and, when movable, one relaxed load.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The time since the Unix epoch, as the system clock says.
#[inline]
fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, as the system clock says.
#[inline]
fn system_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// A monotonic instant and the system clock's reading then, in microseconds since the Unix
/// epoch, taken together (see [`Clock::unix_ms_at`]).
pub type Anchor = (monoio::time::Instant, u64);

/// Reads both clocks now.
pub fn anchor() -> Anchor {
    (monoio::time::Instant::now(), since_epoch().as_micros() as u64)
}

/// A worker's clock (cheap to clone; every worker of a gateway shares the skew).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    skew_ms: Option<Arc<AtomicI64>>,
}

/// Moves the clocks of a gateway started for tests.
#[derive(Debug, Clone)]
pub struct ClockHand {
    skew_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock, never moved.
    pub fn real() -> Clock {
        Clock { skew_ms: None }
    }

    /// A clock tests may move, and its hand.
    pub fn movable() -> (Clock, ClockHand) {
        let skew = Arc::new(AtomicI64::new(0));
        (Clock { skew_ms: Some(skew.clone()) }, ClockHand { skew_ms: skew })
    }

    /// How far this clock is ahead of the system's, in milliseconds.
    #[inline]
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.as_ref().map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Milliseconds since the Unix epoch.
    #[inline]
    pub fn unix_ms(&self) -> u64 {
        system_ms().saturating_add_signed(self.skew_ms())
    }

    /// Milliseconds since the Unix epoch at `now`, counted from `anchor` (which the worker takes
    /// once a second) rather than read: the access log stamps every request without a second
    /// clock read beside the monotonic one its duration needs. A step of the system clock shows
    /// within a second.
    #[inline]
    pub fn unix_ms_at(&self, (at, us): Anchor, now: monoio::time::Instant) -> u64 {
        let since = now.saturating_duration_since(at).as_micros() as u64;
        (us.saturating_add(since) / 1000).saturating_add_signed(self.skew_ms())
    }
}

impl ClockHand {
    /// Moves every clock of the gateway forward by `ms`; returns the skew now.
    pub fn advance(&self, ms: u64) -> i64 {
        self.skew_ms.fetch_add(ms as i64, Ordering::Relaxed) + ms as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_clock_runs_ahead_and_a_real_one_does_not() {
        let (clock, hand) = Clock::movable();
        let before = Clock::real().unix_ms();
        assert_eq!(hand.advance(90_000), 90_000);
        let moved = clock.unix_ms();
        assert!(moved >= before + 90_000 && moved < before + 100_000);
        assert_eq!(Clock::real().skew_ms(), 0);
        assert_eq!(clock.clone().skew_ms(), 90_000, "clones share the skew");
    }

    #[test]
    fn wall_time_counted_from_an_anchor_agrees_with_the_system_clock() {
        let (clock, hand) = Clock::movable();
        let wall = anchor();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (before, counted, after) =
            (Clock::real().unix_ms(), clock.unix_ms_at(wall, monoio::time::Instant::now()), Clock::real().unix_ms());
        assert!(before <= counted + 1 && counted <= after + 1, "{before} {counted} {after}");
        hand.advance(5_000);
        let moved = clock.unix_ms_at(wall, monoio::time::Instant::now());
        assert!(moved >= counted + 5_000 && moved < counted + 6_000, "{counted} {moved}");
        // At the anchor's own instant, its own reading.
        assert_eq!(Clock::real().unix_ms_at(wall, wall.0), wall.1 / 1000);
    }
}
