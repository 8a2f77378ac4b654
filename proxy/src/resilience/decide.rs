//! The node's decisions, made by one thread for every worker: which targets are ejected, and
//! where each breaker stands. Workers see a decision on their next pick (they read the flags
//! the decision sets).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::policy::{BreakerPolicy, Passive, Settings};
use super::state::{
    unix_ms, BreakerBook, BreakerMode, BreakerState, Decision, TargetBook, TargetState, UpstreamState, HISTORY,
    UNHEALTHY,
};

/// The health thread's bookkeeping per target and per breaker, by the address of their shared
/// state; an entry goes when its state is retired.
#[derive(Default)]
pub struct Books {
    targets: HashMap<usize, (Weak<TargetState>, TargetBook)>,
    breakers: HashMap<usize, (Weak<BreakerState>, BreakerBook)>,
}

impl Books {
    fn target(&mut self, t: &Arc<TargetState>) -> &mut TargetBook {
        let key = Arc::as_ptr(t) as usize;
        let e = self.targets.entry(key).or_insert_with(|| (Arc::downgrade(t), TargetBook::default()));
        if e.0.upgrade().is_none_or(|live| !Arc::ptr_eq(&live, t)) {
            // The address was reused by a new state: start over.
            *e = (Arc::downgrade(t), TargetBook::default());
        }
        &mut e.1
    }

    fn breaker(&mut self, b: &Arc<BreakerState>) -> &mut BreakerBook {
        let key = Arc::as_ptr(b) as usize;
        let e = self.breakers.entry(key).or_insert_with(|| (Arc::downgrade(b), BreakerBook::default()));
        if e.0.upgrade().is_none_or(|live| !Arc::ptr_eq(&live, b)) {
            *e = (Arc::downgrade(b), BreakerBook::default());
        }
        &mut e.1
    }

    /// Drops the books of retired states.
    pub fn prune(&mut self) {
        self.targets.retain(|_, (w, _)| w.strong_count() > 0);
        self.breakers.retain(|_, (w, _)| w.strong_count() > 0);
    }

    /// The decisions kept for a target, oldest first.
    pub fn target_history(&mut self, t: &Arc<TargetState>) -> Vec<Decision> {
        self.target(t).history.iter().cloned().collect()
    }

    /// What is kept of a target.
    pub fn target_book(&mut self, t: &Arc<TargetState>) -> &mut TargetBook {
        self.target(t)
    }

    /// The decisions kept for a breaker, oldest first.
    pub fn breaker_history(&mut self, b: &Arc<BreakerState>) -> Vec<Decision> {
        self.breaker(b).history.iter().cloned().collect()
    }
}

/// How often the health thread decides.
pub const TICK: Duration = Duration::from_millis(50);

/// Ejections in a row count up to this many times the base ejection.
const MAX_MULTIPLIER: u32 = 10;

fn remember(history: &mut std::collections::VecDeque<Decision>, what: &'static str, why: String) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(Decision { at_ms: unix_ms(), what, why });
}

/// One round of decisions for upstream `id`.
pub fn decide(id: &str, settings: &Settings, state: &UpstreamState, now: Instant, books: &mut Books) {
    if let Some(p) = &settings.passive {
        eject(id, p, state, now, books);
    }
    if let Some(b) = &settings.breaker {
        breaker(id, b, state, now, books);
    }
}

/// Puts back in rotation what a check that is no longer configured took out: ejections once
/// `passive` is gone, probe verdicts once `active` is gone.
pub fn reconcile(settings: &Settings, state: &UpstreamState, books: &mut Books) {
    for t in state.targets.iter() {
        if settings.passive.is_none() && t.is_ejected() {
            t.set_out(false);
            let book = books.target(t);
            book.out_until = None;
            book.ejections = 0;
        }
        if settings.active.is_none() && t.is_unhealthy() {
            t.set_out_for(UNHEALTHY, false);
        }
        if settings.active.is_none() {
            let book = books.target(t);
            (book.probe_ok, book.probe_failed, book.probe_due, book.last_probe) = (0, 0, None, None);
        }
    }
}

/// A probe of `t` ended with `outcome`: after `healthy_after` successes in a row an unhealthy
/// target is back, after `unhealthy_after` failures in a row a healthy one is out.
pub fn probed(
    id: &str,
    t: &Arc<TargetState>,
    outcome: Result<(), String>,
    (healthy_after, unhealthy_after): (u32, u32),
    books: &mut Books,
) {
    let book = books.target(t);
    book.probing = false;
    match outcome {
        Ok(()) => {
            book.probe_ok += 1;
            book.probe_failed = 0;
            book.last_probe = Some("ok".into());
            if t.is_unhealthy() && book.probe_ok >= healthy_after {
                t.set_out_for(UNHEALTHY, false);
                log::warn!("upstream {id}: target {} healthy again", t.addr);
                remember(&mut book.history, "healthy", format!("{} probes in a row succeeded", book.probe_ok));
            }
        }
        Err(why) => {
            book.probe_failed += 1;
            book.probe_ok = 0;
            if !t.is_unhealthy() && book.probe_failed >= unhealthy_after {
                t.set_out_for(UNHEALTHY, true);
                t.unhealthy_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::warn!("upstream {id}: target {} unhealthy: {why}", t.addr);
                remember(
                    &mut book.history,
                    "unhealthy",
                    format!("{} probes in a row failed: {why}", book.probe_failed),
                );
            }
            book.last_probe = Some(why);
        }
    }
}

/// Outlier ejection. At most `max_ejected_percent` of the targets are out at once (rounded
/// down: with 4 targets and 50%, two, never three).
fn eject(id: &str, p: &Passive, state: &UpstreamState, now: Instant, books: &mut Books) {
    let max_out = state.targets.len() * p.max_ejected_percent as usize / 100;
    let mut out = state.out_count();
    // Fewer targets, or a lower percentage, than when they were ejected: those whose ejection
    // ends soonest come back first.
    while out > max_out {
        let soonest =
            state.targets.iter().filter(|t| t.is_ejected()).min_by_key(|t| books.target(t).out_until.unwrap_or(now));
        let Some(t) = soonest else { break };
        let book = books.target(t);
        book.out_until = None;
        book.since = Some(now);
        t.clear_consecutive();
        t.set_out(false);
        out -= 1;
        log::warn!("upstream {id}: target {} back in rotation: over max_ejected_percent", t.addr);
        remember(&mut book.history, "returned", "more targets were out than max_ejected_percent allows".into());
    }
    for t in state.targets.iter() {
        let TargetBook { ejections, out_until, since, history, .. } = books.target(t);
        if let Some(until) = *out_until {
            if now < until {
                continue;
            }
            *out_until = None;
            *since = Some(now);
            t.clear_consecutive();
            t.set_out(false);
            out -= 1;
            log::warn!("upstream {id}: target {} back in rotation", t.addr);
            remember(history, "returned", "its ejection ended".into());
        }
        // A target that stayed in for a whole base ejection is forgiven one ejection.
        if *ejections > 0 && since.is_some_and(|s| now.duration_since(s) >= p.base_ejection) {
            *ejections -= 1;
            *since = Some(now);
        }
        let failures = t.consecutive();
        if failures >= p.consecutive_failures && out < max_out {
            *ejections = (*ejections + 1).min(MAX_MULTIPLIER);
            let length = p.base_ejection * *ejections;
            *out_until = Some(now + length);
            *since = Some(now);
            t.clear_consecutive();
            t.set_out(true);
            t.ejections_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out += 1;
            log::warn!("upstream {id}: target {} ejected for {length:?} after {failures} failures in a row", t.addr);
            remember(history, "ejected", format!("{failures} failures in a row; out for {} ms", length.as_millis()));
        }
    }
}

fn breaker(id: &str, p: &BreakerPolicy, state: &UpstreamState, now: Instant, books: &mut Books) {
    let b = &state.breaker;
    let book = books.breaker(b);
    let totals = b.totals();
    let delta = (totals.0.saturating_sub(book.seen.0), totals.1.saturating_sub(book.seen.1));
    book.seen = totals;
    let slots = (p.window.as_millis() / TICK.as_millis()).max(1) as usize;
    book.slots.push_back(delta);
    book.sums = (book.sums.0 + delta.0, book.sums.1 + delta.1);
    while book.slots.len() > slots {
        if let Some(old) = book.slots.pop_front() {
            book.sums = (book.sums.0 - old.0, book.sums.1 - old.1);
        }
    }
    let open_for_s = p.open_for.as_secs_f64().ceil() as u32;
    match b.mode() {
        BreakerMode::Closed => {
            let (requests, failures) = book.sums;
            let by_ratio = requests >= u64::from(p.min_requests)
                && failures as f64 >= p.failure_ratio * requests as f64
                && failures > 0;
            let in_a_row = p.consecutive_failures.filter(|c| b.consecutive() >= *c);
            if by_ratio || in_a_row.is_some() {
                let why = match in_a_row {
                    Some(c) => format!("{c} failures in a row"),
                    None => format!("{failures} of {requests} requests failed in the window"),
                };
                book.open_until = Some(now + p.open_for);
                b.set_mode(BreakerMode::Open, 0, open_for_s);
                b.opened_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::warn!("upstream {id}: circuit breaker open: {why}");
                remember(&mut book.history, "open", why);
            }
        }
        BreakerMode::Open => {
            let until = book.open_until.unwrap_or(now);
            if now >= until {
                b.trial_ok.store(0, std::sync::atomic::Ordering::Relaxed);
                b.trial_failed.store(0, std::sync::atomic::Ordering::Relaxed);
                b.set_mode(BreakerMode::HalfOpen, p.half_open_requests as i32, 0);
                book.half_open_since = Some(now);
                log::warn!("upstream {id}: circuit breaker half-open");
                remember(&mut book.history, "half_open", format!("open for {} ms", p.open_for.as_millis()));
            } else {
                b.set_retry_after(until.duration_since(now).as_secs_f64().ceil() as u32);
            }
        }
        BreakerMode::HalfOpen => {
            let failed = b.trial_failed.load(std::sync::atomic::Ordering::Relaxed);
            let ok = b.trial_ok.load(std::sync::atomic::Ordering::Relaxed);
            if failed > 0 {
                book.open_until = Some(now + p.open_for);
                b.set_mode(BreakerMode::Open, 0, open_for_s);
                b.opened_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::warn!("upstream {id}: circuit breaker open again: a trial request failed");
                remember(&mut book.history, "open", "a trial request failed".into());
            } else if ok < p.half_open_requests
                && book.half_open_since.is_some_and(|t| now.duration_since(t) >= p.open_for)
            {
                // Trials that never reported (their clients went away): hand out fresh ones
                // rather than stay half-open for good.
                b.set_mode(BreakerMode::HalfOpen, p.half_open_requests.saturating_sub(ok) as i32, 0);
                book.half_open_since = Some(now);
            } else if ok >= p.half_open_requests {
                book.slots.clear();
                book.sums = (0, 0);
                b.clear_consecutive();
                b.set_mode(BreakerMode::Closed, 0, 0);
                log::warn!("upstream {id}: circuit breaker closed: {ok} trial requests succeeded");
                remember(&mut book.history, "closed", format!("{ok} trial requests succeeded"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::Statuses;
    use super::*;
    use std::net::SocketAddr;

    fn passive(pct: u32) -> Settings {
        Settings {
            passive: Some(Passive {
                consecutive_failures: 2,
                failure_statuses: Statuses::of(&[502]),
                base_ejection: Duration::from_secs(10),
                max_ejected_percent: pct,
            }),
            ..Settings::default()
        }
    }

    fn targets(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect()
    }

    #[test]
    fn never_more_than_the_percentage_is_ejected() {
        let s = passive(50);
        let mut books = Books::default();
        let state = UpstreamState::carry(None, &targets(4));
        for t in state.targets.iter() {
            t.report(true);
            t.report(true);
        }
        let now = Instant::now();
        decide("u", &s, &state, now, &mut books);
        assert_eq!(state.out_count(), 2, "4 targets, 50%: two out, never three");
        decide("u", &s, &state, now + TICK, &mut books);
        assert_eq!(state.out_count(), 2);
        // 3 targets at 50%: one (1.5 rounded down).
        let three = UpstreamState::carry(None, &targets(3));
        for t in three.targets.iter() {
            t.report(true);
            t.report(true);
        }
        decide("u", &s, &three, now, &mut books);
        assert_eq!(three.out_count(), 1);
    }

    #[test]
    fn fewer_targets_bring_ejected_ones_back_and_a_removed_check_lets_go() {
        let s = passive(50);
        let mut books = Books::default();
        let all = targets(4);
        let state = UpstreamState::carry(None, &all);
        for t in state.targets.iter().take(2) {
            t.report(true);
            t.report(true);
        }
        let now = Instant::now();
        decide("u", &s, &state, now, &mut books);
        assert_eq!(state.out_count(), 2);
        // Only the two ejected targets remain: 50% of 2 is 1.
        let shrunk = UpstreamState::carry(Some(&state), &all[..2]);
        decide("u", &s, &shrunk, now + TICK, &mut books);
        assert_eq!(shrunk.out_count(), 1, "one comes back");
        // The passive check removed: its ejection ends at once.
        reconcile(&Settings::default(), &shrunk, &mut books);
        assert!(shrunk.targets.iter().all(|t| t.usable()));
    }

    #[test]
    fn ejections_in_a_row_last_longer_and_end() {
        let s = passive(100);
        let mut books = Books::default();
        let state = UpstreamState::carry(None, &targets(1));
        let t = &state.targets[0];
        let t0 = Instant::now();
        t.report(true);
        t.report(true);
        decide("u", &s, &state, t0, &mut books);
        assert!(!t.usable());
        decide("u", &s, &state, t0 + Duration::from_secs(9), &mut books);
        assert!(!t.usable(), "still out before its 10 s");
        decide("u", &s, &state, t0 + Duration::from_secs(10), &mut books);
        assert!(t.usable(), "back after 10 s");
        t.report(true);
        t.report(true);
        let t1 = t0 + Duration::from_secs(11);
        decide("u", &s, &state, t1, &mut books);
        assert!(!t.usable());
        decide("u", &s, &state, t1 + Duration::from_secs(19), &mut books);
        assert!(!t.usable(), "the second ejection in a row lasts 20 s");
        decide("u", &s, &state, t1 + Duration::from_secs(20), &mut books);
        assert!(t.usable());
        let whats: Vec<_> = books.target_history(t).iter().map(|d| d.what).collect();
        assert_eq!(whats, ["ejected", "returned", "ejected", "returned"]);
    }

    #[test]
    fn the_breaker_opens_half_opens_and_closes() {
        let s = Settings {
            breaker: Some(BreakerPolicy {
                failure_ratio: 0.5,
                min_requests: 4,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(15),
                half_open_requests: 2,
                consecutive_failures: None,
                failure_statuses: Statuses::of(&[502]),
            }),
            ..Settings::default()
        };
        let mut books = Books::default();
        let state = UpstreamState::carry(None, &targets(1));
        let b = &state.breaker;
        let t0 = Instant::now();
        b.report(0, true);
        b.report(1, false);
        b.report(0, true);
        decide("u", &s, &state, t0, &mut books);
        assert_eq!(b.mode(), BreakerMode::Closed, "3 requests: under min_requests");
        b.report(1, false);
        decide("u", &s, &state, t0 + TICK, &mut books);
        assert_eq!(b.mode(), BreakerMode::Open, "2 of 4 failed: the ratio is reached");
        assert_eq!(b.retry_after_s(), 15);
        decide("u", &s, &state, t0 + Duration::from_secs(15) + TICK, &mut books);
        assert_eq!(b.mode(), BreakerMode::HalfOpen);
        assert!(b.take_permit() && b.take_permit() && !b.take_permit(), "two trial requests");
        b.trial_ok.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        decide("u", &s, &state, t0 + Duration::from_secs(16), &mut books);
        assert_eq!(b.mode(), BreakerMode::Closed);
    }
}
