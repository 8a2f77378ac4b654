//! The retry budget each worker keeps for each upstream (see [`RetryBudget`]).

/// A worker's retry budget for one upstream, in two buckets: every request adds `ratio` of a
/// retry to the first (which holds at most `ratio` of 100 requests); the second holds the
/// worker's share of `min_per_sec` and refills at that rate (it starts full). A retry spends
/// from the first, else from the second. So over any stretch of time the node's retries stay
/// within `ratio` of its requests, plus `min_per_sec` a second, plus what the buckets held.
#[derive(Debug, Clone, Default)]
pub struct RetryBudget {
    earned: f64,
    floor: f64,
    last: Option<std::time::Instant>,
}

impl RetryBudget {
    /// A request started.
    #[inline]
    pub fn deposit(&mut self, ratio: f64) {
        self.earned = (self.earned + ratio).min(ratio * 100.0);
    }

    /// Takes one retry from the budget, if there is one; `floor_per_sec` is this worker's
    /// share of the node's floor.
    pub fn withdraw(&mut self, floor_per_sec: f64, now: std::time::Instant) -> bool {
        let cap = floor_per_sec.max(1.0);
        self.floor = match self.last {
            None => cap,
            Some(last) => (self.floor + now.duration_since(last).as_secs_f64() * floor_per_sec).min(cap),
        };
        self.last = Some(now);
        if self.earned >= 1.0 {
            self.earned -= 1.0;
            true
        } else if floor_per_sec > 0.0 && self.floor >= 1.0 {
            self.floor -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_the_ratio_plus_the_floor() {
        let mut b = RetryBudget::default();
        let t0 = std::time::Instant::now();
        let mut allowed = 0;
        for _ in 0..1000 {
            b.deposit(0.2);
            if b.withdraw(0.0, t0) {
                allowed += 1;
            }
        }
        assert!((199..=200).contains(&allowed), "a fifth of the requests: {allowed}");
        // The floor: a second's worth at once, then its rate.
        let mut b = RetryBudget::default();
        assert!((0..5).all(|_| b.withdraw(5.0, t0)), "five at once");
        assert!(!b.withdraw(5.0, t0));
        assert!(b.withdraw(5.0, t0 + Duration::from_millis(200)), "the floor earns one in 0.2 s");
        assert!(!b.withdraw(5.0, t0 + Duration::from_millis(250)));
    }
}
